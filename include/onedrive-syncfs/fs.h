/* The read-only FUSE mount: the store's tree, the .sync/ control files, kernel invalidation.
 *
 * Life cycle (src/main.c): fs_mount_new() creates the session and mounts; fs_mount_attach()
 * connects the engine once it exists (after daemonizing: the engine owns threads, which a
 * fork would lose); fs_mount_run() serves requests until unmount or a signal; fs_mount_detach()
 * stops notifications before the engine is freed; fs_mount_free() unmounts and destroys.
 */
#pragma once

#include <sys/types.h>

#include <glib.h>

#include <onedrive-syncfs/store.h>
#include <onedrive-syncfs/sync-engine.h>

G_BEGIN_DECLS

#define FS_ERROR (fs_error_quark ())
GQuark fs_error_quark (void);

typedef enum {
  FS_ERROR_FAILED,
  FS_ERROR_MOUNTPOINT,   /* missing, not a directory, or already a mount point (busy) */
  FS_ERROR_OPTIONS,      /* libfuse refused the mount options */
  FS_ERROR_SESSION,      /* the kernel mount failed */
} FsErrorCode;

/* Control inodes live above every store inode (SQLite rowids stay far below 2^40). */
#define FS_CONTROL_INO_BIT (G_GUINT64_CONSTANT (1) << 63)

typedef struct {
  Store       *store;           /* borrowed; outlives the mount; may be NULL until set */
  const char  *cache_dir;       /* objects/ holds the verified files */
  const char  *changes_file;    /* the engine's change feed (JSON Lines); may not exist yet */
  uid_t        owner_uid;       /* the only user who may write control files */
  gid_t        owner_gid;
  gboolean     allow_other;
} FsConfig;

typedef struct _FsMount FsMount;

/* Creates the low-level session with @fuse_argv (argv[0] first) and mounts it at @mountpoint.
 * Borrows everything in @config (strings are copied). Installs no signal handlers: the daemon
 * decides when the loop ends (fs_mount_exit). FS_ERROR_MOUNTPOINT / FS_ERROR_OPTIONS /
 * FS_ERROR_SESSION on failure. */
FsMount *fs_mount_new (const FsConfig *config, char **fuse_argv, const char *mountpoint, GError **error);

/* Sets the store requests read (borrowed); before fs_mount_run() only. fs_mount_new() may get
 * a NULL store so that the database is opened after fuse_daemonize()'s fork. */
void fs_mount_set_store (FsMount *mount, Store *store);

/* Connects the engine: control files start working and engine notifications reach the kernel
 * through the invalidation thread and the events thread (which serves .sync/events readers),
 * which this starts. @engine is borrowed until detach. */
void fs_mount_attach (FsMount *mount, SyncEngine *engine);

/* Serves requests until the mount is unmounted (fusermount3 -u) or fs_mount_exit() was called
 * and the loop woke up. Returns 0 or a negative errno. After it returns no kernel notification
 * is sent any more (nobody would answer the requests they may wait for). */
int fs_mount_run (FsMount *mount, gboolean singlethread);

/* Ends every open .sync/events stream while the loop still serves: from now on a read gets
 * the events already emitted, then end-of-file (a blocked read is answered at once). Waits
 * until each open events file has been given its end-of-file or closed, at most @timeout_us,
 * so a reader sees the end and not ECONNABORTED, which is all the kernel gives a read still
 * queued when the daemon closes its connection. Call once the engine is idle, before
 * fs_mount_exit(). */
void fs_mount_end_event_streams (FsMount *mount, gint64 timeout_us);

/* Asks the loop to end (async-signal-safe: it only sets a flag). The multi-threaded loop
 * notices when the thread running fs_mount_run() is interrupted by a signal or a request
 * arrives; the daemon wakes it with a signal. */
void fs_mount_exit (FsMount *mount);

/* Stops the invalidation and events threads and forgets the engine: after this no engine callback touches
 * the session. Pending blocked reads of .sync/events are answered. Safe to call twice. */
void fs_mount_detach (FsMount *mount);

/* Unmounts if still mounted, removes signal handlers, destroys the session. */
void fs_mount_free (FsMount *mount);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FsMount, fs_mount_free)

/* The engine's notification callback (sync_engine_set_notify): queues work for the
 * invalidation thread or wakes the events thread, and returns at once (it takes the mount's
 * lock briefly, so it must not be called with it held). @user_data is the FsMount. */
void fs_mount_notify (SyncNotifyKind kind, guint64 ino, guint64 parent_ino, const char *name,
                      gpointer user_data);

/* The fuse_set_log_func adapter: libfuse's messages go through g_log, domain "odsf-fuse". */
void fs_route_fuse_log (void);

G_END_DECLS
