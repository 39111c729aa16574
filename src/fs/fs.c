/* The read-only FUSE mount over the store, and the .sync/ control files.
 *
 * Inodes. A directory's FUSE inode is its store inode (the root is 1 in both). A file's FUSE
 * inode is its store inode with the entry's content generation in bits 40..62:
 *
 *     fuse_ino = store_ino | (generation mod 2^23) << 40
 *
 * So an update of a file's content yields a new FUSE inode, exactly as replacing a file by
 * rename does on a local disk, and that is what makes reads consistent without any locking:
 *   - the kernel's page cache is per inode, so pages of one generation always hold that
 *     generation's bytes: every open may keep the cache (keep_cache), across opens, forever;
 *   - an fd opened before an update keeps its old inode, its old i_size and its pages, and
 *     reads come to us with its fh, an fd on the old cache object (the engine replaces
 *     objects by rename, so that fd still holds the old bytes even after the unlink);
 *   - a new open goes through a lookup that returns the new inode once the invalidation
 *     thread has dropped the old dentry; an open that still races onto the old inode gets
 *     ESTALE, which makes the VFS revalidate the path and retry, landing on the new one.
 * Stable otherwise: inode numbers do not change while the content does not. Bit 63 marks the
 * control inodes (.sync and its files). 2^23 generations wrap only for a file updated eight
 * million times while one of its old fds stays open.
 *
 * Kernel notifications are never sent from a request handler nor while holding mount->lock:
 * the kernel may wait on a request that needs that lock before it completes a notification.
 * inval_entry and inval_inode (and the status pollers' wake-ups) come from the invalidation
 * thread only; the events stream's poll wake-ups from the events thread (below), which is
 * safe because the kernel completes a poll wake-up without waiting on any request.
 *
 * The status never runs ahead of the tree. The engine publishes a change and then moves its
 * status on (to "completed", say), but the kernel forgets its cached entry for the change only
 * when the invalidation thread gets to the note. A reader that saw "completed" and then looked
 * at the tree could still find a deleted file in the kernel's dentry cache. So an open of
 * .sync/status takes the snapshot, counts the publish notes queued by then, and replies only
 * once the invalidation thread has handled that many (bounded by STATUS_BARRIER_US, in case
 * the thread waits for a request no loop thread is free to serve).
 *
 * Nor does the event stream. An indexer that reads "file_published P" and at once stats P
 * must see the new entry, not the kernel's stale one. The engine queues a change's publish
 * notes before it appends the change's event, so when lines are taken from the engine, the
 * publish notes counted right after cover every one of them. Those lines wait in the
 * handle's buffer (a read blocks, poll says not readable) until the invalidation thread has
 * handled that many notes. Held lines cost no loop thread: the events thread serves the
 * readers (takes lines for a blocked read or a poller, answers the read, wakes the poller)
 * at each engine event, after each handled publish note, and when the oldest lines held for
 * a waiting reader reach EVENTS_BARRIER_US. An engine event wakes it directly, not through
 * the note queue, where it would wait behind the very publish notes it is bounded against.
 * So the bound holds with no other activity, even while the invalidation thread is stuck in
 * a notification: a line reaches a blocked reader at most about 2 s after it was appended.
 * Lines go out at once when the invalidation thread has stopped (barrier_off; detach answers
 * blocked reads) or the loop has ended. Whichever path releases a handle's lines (the events
 * thread, a read, a poll) also answers the read blocked on it (events_serve): a poll on the
 * same open file must not take the release for itself. The test seam
 * ODSF_TEST_INVALIDATION_DELAY_MS (read at mount) makes the invalidation thread sleep before
 * each publish note, so the integration tests can show a reader never overtakes the
 * invalidations, and that the bound holds (docs/events.md).
 *
 * Lock order: mount->lock, then barrier_lock or the engine's locks (sync_engine_events_read),
 * then libfuse's internal locks (fuse_reply_* while holding mount->lock is fine). The
 * interrupt callback runs with libfuse's req->lock held and takes mount->lock, so
 * fuse_req_interrupt_func() is never called while mount->lock is held.
 */
#define G_LOG_DOMAIN "odsf-fs"

#include "config.h"

#define FUSE_USE_VERSION FUSE_MAKE_VERSION (3, 14)
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include <onedrive-syncfs/fs.h>

G_DEFINE_QUARK (fs-error-quark, fs_error)

#define GEN_SHIFT      40
#define STORE_INO_MASK ((G_GUINT64_CONSTANT (1) << GEN_SHIFT) - 1)
#define GEN_MASK       ((G_GUINT64_CONSTANT (1) << 23) - 1)

/* We invalidate explicitly on every published change, so the kernel may cache for long. */
#define ENTRY_TIMEOUT 60.0
#define ATTR_TIMEOUT  60.0

/* How long a status open waits for the invalidations it must not overtake, and how long event
 * lines are held back for theirs (see the top). */
#define STATUS_BARRIER_US (2 * G_USEC_PER_SEC)
#define EVENTS_BARRIER_US STATUS_BARRIER_US
/* The test seam's ceiling: a typo in a test must not stall a mount for minutes. */
#define TEST_DELAY_MAX_MS 10000

enum {
  CTL_DIR = 1,
  CTL_START,
  CTL_CANCEL,
  CTL_STATUS,
  CTL_EVENTS,
  CTL_CHANGES,
};
#define CTL_INO(n) (FS_CONTROL_INO_BIT | (guint64) (n))
#define CONTROL_DIR_NAME "sync"   /* shown as ".sync" at the root */
/* A remote folder named ".sync" at the root is reachable as .sync/remote. */
#define REMOTE_SHADOW_NAME "remote"

static const struct {
  const char *name;
  int         id;
  mode_t      mode;
} control_files[] = {
  { "start",   CTL_START,   S_IFREG | 0200 },
  { "cancel",  CTL_CANCEL,  S_IFREG | 0200 },
  { "status",  CTL_STATUS,  S_IFREG | 0444 },
  { "events",  CTL_EVENTS,  S_IFREG | 0400 },
  { "changes", CTL_CHANGES, S_IFREG | 0400 },
};

typedef enum {
  NOTE_PUBLISHED,
  NOTE_STATUS,
  NOTE_QUIT,
} NoteKind;

typedef struct {
  NoteKind kind;
  guint64  ino;
  guint64  parent_ino;
  char    *name;
} Note;

typedef struct {
  char  *json;
  gsize  len;
  guint  serial;                      /* mount->status_serial at open */
  struct fuse_pollhandle *ph;         /* protected by mount->lock */
} StatusHandle;

/* Lines the engine handed over that the reader's buffer could not take yet: a reader with a
 * small buffer (Python's 8 KiB) still gets every line, in pieces. */
#define EVENTS_REFILL_BYTES (64 * 1024)

typedef struct {
  GString   *buffered;                /* protected by mount->lock */
  gsize      buffered_off;
  /* The buffered lines go out once published_done reaches barrier (see the top). */
  guint64    barrier;                 /* protected by mount->lock */
  gint64     filled_at;               /* protected by mount->lock: monotonic time of the fill */
  gboolean   released;                /* protected by mount->lock: barrier reached (or given up) */
  guint64    cursor;                  /* protected by mount->lock */
  fuse_req_t pending;                 /* a read waiting for events; protected by mount->lock */
  size_t     pending_size;
  struct fuse_pollhandle *ph;         /* protected by mount->lock */
  gboolean   ended;                   /* protected by mount->lock: end-of-file was given */
} EventsHandle;

typedef struct {
  gboolean wrote;                     /* a write (or the implicit empty start) happened */
} CommandHandle;

typedef struct {
  int     fd;                         /* -1: empty file without a cache object */
  guint64 fuse_ino;
} FileHandle;

/* The attributes of a file generation that is still open: an fstat on an fd opened before an
 * update must describe what that fd reads, not the newer content. */
typedef struct {
  guint       opens;
  struct stat st;
} OpenGeneration;

typedef struct {
  GPtrArray *entries;                 /* StoreEntry*, the store's children */
  gboolean   is_root;
  gboolean   is_control;
  gboolean   has_remote_shadow;       /* is_control: a remote .sync exists */
  guint64    self_ino, parent_ino;
} DirHandle;

struct _FsMount {
  struct fuse_session *se;
  Store      *store;
  char       *cache_dir;
  char       *objects_dir;
  char       *changes_file;
  char       *mountpoint;
  uid_t       uid;
  gid_t       gid;
  gboolean    allow_other;
  gint64      started;
  gboolean    mounted;
  gint        loop_ended;             /* atomic: no request is served any more */

  /* Set by attach before the loop runs and cleared by detach after it ended, so request
   * handlers read it without a lock. */
  SyncEngine *engine;

  GMutex      lock;
  gboolean    closed;                 /* protected by lock: detach ran */
  gboolean    events_ending;          /* protected by lock: streams end once drained */
  GCond       events_cond;            /* with lock: an events stream ended or was closed */
  /* The events thread (see the top) serves event readers when woken or when a hold is due. */
  GThread    *events_thread;
  GCond       serve_cond;             /* with lock: wakes the events thread */
  gboolean    serve_due;              /* protected by lock: news for event readers */
  gboolean    serve_quit;             /* protected by lock: the events thread must stop */
  GPtrArray  *status_handles;         /* StatusHandle*, protected by lock */
  GPtrArray  *events_handles;         /* EventsHandle*, protected by lock */

  /* Publish notes queued and handled by the invalidation thread (see the top). */
  GMutex      barrier_lock;
  GCond       barrier_cond;
  guint64     published_queued;       /* protected by barrier_lock */
  guint64     published_done;         /* protected by barrier_lock */
  gboolean    barrier_off;            /* protected by barrier_lock: the thread stopped */
  gulong      test_delay_us;          /* the test seam: sleep before each publish note */

  guint       status_serial;          /* atomic */
  gint        status_note_queued;     /* atomic: coalesces NOTE_STATUS */

  GMutex      open_lock;
  GHashTable *open_generations;       /* fuse ino → OpenGeneration*, protected by open_lock */
  /* Every handle given to the kernel → its destroy function, protected by open_lock. After a
   * lazy unmount no release comes for files still open: teardown frees what is left. */
  GHashTable *live_handles;

  GAsyncQueue *notes;                 /* Note* for the invalidation thread */
  GThread     *thread;
};

/* ---- helpers ------------------------------------------------------------------------- */

static void
note_free (Note *note)
{
  g_free (note->name);
  g_free (note);
}

static gboolean
is_control (fuse_ino_t ino)
{
  return (ino & FS_CONTROL_INO_BIT) != 0;
}

static int
control_id (fuse_ino_t ino)
{
  return (int) (ino & ~FS_CONTROL_INO_BIT);
}

static guint64
store_ino_of (fuse_ino_t ino)
{
  return ino & STORE_INO_MASK;
}

static fuse_ino_t
fuse_ino_of (const StoreEntry *entry)
{
  if (entry->kind == STORE_KIND_DIR)
    return entry->ino;
  return entry->ino | ((entry->generation & GEN_MASK) << GEN_SHIFT);
}

/* The one place a GError becomes an errno (style: convert exactly once, at the boundary). */
static int
errno_from_error (const GError *error)
{
  if (error == NULL)
    return EIO;
  if (error->domain == STORE_ERROR)
    switch (error->code)
      {
      case STORE_ERROR_NOT_FOUND: return ENOENT;
      case STORE_ERROR_FULL:      return ENOSPC;
      default:                    return EIO;
      }
  if (error->domain == SYNC_ERROR)
    switch (error->code)
      {
      case SYNC_ERROR_BUSY:    return EBUSY;
      case SYNC_ERROR_INVALID: return EINVAL;
      default:                 return EIO;
      }
  return EIO;
}

static void
entry_to_stat (FsMount *m, const StoreEntry *entry, struct stat *st)
{
  memset (st, 0, sizeof *st);
  st->st_ino = fuse_ino_of (entry);
  if (entry->kind == STORE_KIND_DIR)
    {
      /* Owner-writable so that rm/rmdir (exclusion) reach us; creation is refused (EROFS). */
      st->st_mode = S_IFDIR | 0755;
      st->st_nlink = 2;
    }
  else
    {
      /* 0644 like a file on a read-only mount: a write open reaches us and gets EROFS,
       * which says why, where 0444 would only say EACCES. */
      st->st_mode = S_IFREG | 0644;
      st->st_nlink = 1;
    }
  st->st_uid = m->uid;
  st->st_gid = m->gid;
  st->st_size = entry->size > 0 ? entry->size : 0;
  st->st_blksize = 128 * 1024;
  st->st_blocks = (st->st_size + 511) / 512;
  /* The root and synthetic folders have no time of their own: show the mount's. */
  st->st_mtim.tv_sec = entry->mtime != 0 ? entry->mtime : m->started;
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
}

/* Blocks until the invalidation thread has handled every publish note queued so far (the
 * status barrier, see the top). Called by a status open after its snapshot was taken, with no
 * lock held. */
static void
wait_for_invalidations (FsMount *m)
{
  gint64 deadline = g_get_monotonic_time () + STATUS_BARRIER_US;
  g_mutex_lock (&m->barrier_lock);
  guint64 target = m->published_queued;
  while (m->published_done < target && !m->barrier_off && !g_atomic_int_get (&m->loop_ended))
    if (!g_cond_wait_until (&m->barrier_cond, &m->barrier_lock, deadline))
      {
        g_debug ("status served before %" G_GUINT64_FORMAT " invalidations were sent",
                 target - m->published_done);
        break;
      }
  g_mutex_unlock (&m->barrier_lock);
}

static char *
status_snapshot (FsMount *m, gsize *len)
{
  char *json;
  if (m->engine != NULL)
    {
      g_autofree char *doc = sync_engine_status_json (m->engine);
      json = g_strconcat (doc != NULL ? doc : "{}", "\n", NULL);
    }
  else
    json = g_strdup ("{\"state\":\"stopping\"}\n");
  *len = strlen (json);
  return json;
}

static gint64
changes_size (FsMount *m)
{
  struct stat st;
  if (m->changes_file == NULL || stat (m->changes_file, &st) != 0)
    return 0;
  return st.st_size;
}

static void
control_to_stat (FsMount *m, int id, struct stat *st)
{
  memset (st, 0, sizeof *st);
  st->st_ino = CTL_INO (id);
  st->st_uid = m->uid;
  st->st_gid = m->gid;
  st->st_mtim.tv_sec = m->started;
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
  st->st_blksize = 4096;
  if (id == CTL_DIR)
    {
      st->st_mode = S_IFDIR | 0555;
      st->st_nlink = 2;
      return;
    }
  st->st_nlink = 1;
  for (gsize i = 0; i < G_N_ELEMENTS (control_files); i++)
    if (control_files[i].id == id)
      st->st_mode = control_files[i].mode;
  if (id == CTL_STATUS)
    {
      /* The size a fresh open would read, so tools that trust st_size see it all. */
      gsize len = 0;
      g_autofree char *json = status_snapshot (m, &len);
      st->st_size = (off_t) len;
    }
  else if (id == CTL_CHANGES)
    st->st_size = changes_size (m);
}

static int
control_by_name (const char *name)
{
  for (gsize i = 0; i < G_N_ELEMENTS (control_files); i++)
    if (g_str_equal (control_files[i].name, name))
      return control_files[i].id;
  return 0;
}

static void
reply_control_entry (fuse_req_t req, FsMount *m, int id)
{
  struct fuse_entry_param e = { 0 };
  e.ino = CTL_INO (id);
  e.generation = 1;
  control_to_stat (m, id, &e.attr);
  e.entry_timeout = ENTRY_TIMEOUT;
  /* status and changes change size all the time. */
  e.attr_timeout = (id == CTL_DIR) ? ATTR_TIMEOUT : 0.0;
  fuse_reply_entry (req, &e);
}

static void
fill_entry (FsMount *m, const StoreEntry *entry, struct fuse_entry_param *e)
{
  memset (e, 0, sizeof *e);
  e->ino = fuse_ino_of (entry);
  e->generation = 1;
  entry_to_stat (m, entry, &e->attr);
  e->entry_timeout = ENTRY_TIMEOUT;
  e->attr_timeout = ATTR_TIMEOUT;
}

/* The remote item shown as .sync/remote: a root child named ".sync". */
static gboolean
lookup_remote_shadow (FsMount *m, StoreEntry *out)
{
  g_autoptr (GError) error = NULL;
  return store_lookup (m->store, STORE_ROOT_INO, ".sync", out, &error);
}

/* ---- tree operations ----------------------------------------------------------------- */

static void
fs_init (void *userdata, struct fuse_conn_info *conn)
{
  if (conn->capable & FUSE_CAP_SPLICE_WRITE)
    conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE)
    conn->want |= FUSE_CAP_SPLICE_MOVE;
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;   /* `echo > .sync/start` needs no truncate */
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  g_debug ("FUSE protocol %u.%u, capable 0x%x, want 0x%x",
           conn->proto_major, conn->proto_minor, conn->capable, conn->want);
}

static void
fs_lookup (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  FsMount *m = fuse_req_userdata (req);
  g_auto (StoreEntry) entry = { 0 };
  g_autoptr (GError) error = NULL;

  if (parent == FUSE_ROOT_ID && g_str_equal (name, ".sync"))
    {
      reply_control_entry (req, m, CTL_DIR);
      return;
    }
  if (is_control (parent))
    {
      if (control_id (parent) != CTL_DIR)
        {
          fuse_reply_err (req, ENOTDIR);
          return;
        }
      int id = control_by_name (name);
      if (id != 0)
        {
          reply_control_entry (req, m, id);
          return;
        }
      if (g_str_equal (name, REMOTE_SHADOW_NAME) && lookup_remote_shadow (m, &entry))
        {
          struct fuse_entry_param e;
          fill_entry (m, &entry, &e);
          fuse_reply_entry (req, &e);
          return;
        }
      fuse_reply_err (req, ENOENT);
      return;
    }
  if (parent != store_ino_of (parent))
    {
      fuse_reply_err (req, ENOTDIR);   /* a file's generation-tagged inode */
      return;
    }
  if (!store_lookup (m->store, parent, name, &entry, &error))
    {
      int err = errno_from_error (error);
      if (err != ENOENT)
        g_warning ("lookup %" G_GUINT64_FORMAT "/%s: %s", (guint64) parent, name, error->message);
      fuse_reply_err (req, err);
      return;
    }
  struct fuse_entry_param e;
  fill_entry (m, &entry, &e);
  fuse_reply_entry (req, &e);
}

static void
fs_forget (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
  /* Nothing to release: the store, not the daemon, holds the inodes. */
  fuse_reply_none (req);
}

static void
fs_forget_multi (fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
  fuse_reply_none (req);
}

static void
fs_getattr (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);
  struct stat st;

  if (is_control (ino))
    {
      control_to_stat (m, control_id (ino), &st);
      fuse_reply_attr (req, &st, control_id (ino) == CTL_DIR ? ATTR_TIMEOUT : 0.0);
      return;
    }

  g_auto (StoreEntry) entry = { 0 };
  g_autoptr (GError) error = NULL;
  gboolean found = store_getattr (m->store, store_ino_of (ino), &entry, &error);
  if (!found || fuse_ino_of (&entry) != ino)
    {
      /* An older generation: answer for the fd that still reads it. */
      g_mutex_lock (&m->open_lock);
      guint64 key = ino;
      OpenGeneration *og = g_hash_table_lookup (m->open_generations, &key);
      if (og != NULL)
        st = og->st;
      g_mutex_unlock (&m->open_lock);
      if (og != NULL)
        {
          fuse_reply_attr (req, &st, ATTR_TIMEOUT);
          return;
        }
      if (!found)
        {
          fuse_reply_err (req, errno_from_error (error));
          return;
        }
    }
  entry_to_stat (m, &entry, &st);
  st.st_ino = ino;
  fuse_reply_attr (req, &st, ATTR_TIMEOUT);
}

static void
fs_setattr (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);
  /* Opening a control file with O_TRUNC (a shell's `>`) truncates to 0: nothing to do. */
  if (is_control (ino) && (control_id (ino) == CTL_START || control_id (ino) == CTL_CANCEL)
      && (to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME
                     | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)) == 0
      && (!(to_set & FUSE_SET_ATTR_SIZE) || attr->st_size == 0))
    {
      struct stat st;
      control_to_stat (m, control_id (ino), &st);
      fuse_reply_attr (req, &st, 0.0);
      return;
    }
  fuse_reply_err (req, EROFS);
}

static void
fs_readlink (fuse_req_t req, fuse_ino_t ino)
{
  fuse_reply_err (req, EINVAL);
}

static void
fs_refuse_mknod (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_mkdir (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_symlink (fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_rename (fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                  const char *newname, unsigned int flags)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_link (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_create (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                  struct fuse_file_info *fi)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_setxattr (fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                    size_t size, int flags)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_removexattr (fuse_req_t req, fuse_ino_t ino, const char *name)
{
  fuse_reply_err (req, EROFS);
}

static void
fs_refuse_fallocate (fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                     struct fuse_file_info *fi)
{
  fuse_reply_err (req, EROFS);
}

/* unlink and rmdir exclude: the entry leaves the mount and the cache and is not downloaded
 * again until a start with clear-exclusions. Nothing is deleted on OneDrive. */
static void
exclude_entry (fuse_req_t req, fuse_ino_t parent, const char *name, gboolean want_dir)
{
  FsMount *m = fuse_req_userdata (req);
  g_auto (StoreEntry) entry = { 0 };
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) objects = NULL;

  if (is_control (parent) && !g_str_equal (name, REMOTE_SHADOW_NAME))
    {
      fuse_reply_err (req, EPERM);
      return;
    }
  if (parent == FUSE_ROOT_ID && g_str_equal (name, ".sync"))
    {
      fuse_reply_err (req, EPERM);
      return;
    }
  gboolean found = is_control (parent)
                     ? lookup_remote_shadow (m, &entry)
                     : store_lookup (m->store, store_ino_of (parent), name, &entry, &error);
  if (!found)
    {
      fuse_reply_err (req, error != NULL ? errno_from_error (error) : ENOENT);
      return;
    }
  if (want_dir && entry.kind != STORE_KIND_DIR)
    {
      fuse_reply_err (req, ENOTDIR);
      return;
    }
  if (!want_dir && entry.kind == STORE_KIND_DIR)
    {
      fuse_reply_err (req, EISDIR);
      return;
    }
  if (fuse_req_ctx (req)->uid != m->uid && fuse_req_ctx (req)->uid != 0)
    {
      fuse_reply_err (req, EACCES);
      return;
    }
  if (!store_exclude (m->store, entry.ino, &objects, &error))
    {
      g_warning ("excluding %s: %s", name, error->message);
      fuse_reply_err (req, errno_from_error (error));
      return;
    }
  /* Open fds keep reading: an unlinked object lives on until its last fd is closed. */
  for (guint i = 0; objects != NULL && i < objects->len; i++)
    {
      g_autofree char *path = g_build_filename (m->objects_dir, (const char *) objects->pdata[i], NULL);
      if (g_unlink (path) != 0 && errno != ENOENT)
        g_warning ("unlink(%s): %s", path, g_strerror (errno));
    }
  g_info ("excluded %s%s (%u cache objects removed)", name, want_dir ? "/" : "",
          objects != NULL ? objects->len : 0);
  fuse_reply_err (req, 0);
}

static void
fs_unlink (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  exclude_entry (req, parent, name, FALSE);
}

static void
fs_rmdir (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  exclude_entry (req, parent, name, TRUE);
}

static void
fs_statfs (fuse_req_t req, fuse_ino_t ino)
{
  FsMount *m = fuse_req_userdata (req);
  struct statvfs st = { 0 };
  struct statvfs cache = { 0 };
  guint64 bytes = 0, files = 0;
  g_autoptr (GError) error = NULL;

  if (!store_usage (m->store, &bytes, &files, &error))
    g_debug ("statfs: %s", error->message);
  if (statvfs (m->cache_dir, &cache) != 0)
    memset (&cache, 0, sizeof cache);

  /* Used = what the mirror holds; free = what the disk under the cache has left. */
  st.f_bsize = 4096;
  st.f_frsize = 4096;
  guint64 free_blocks = cache.f_frsize ? (guint64) cache.f_bavail * cache.f_frsize / 4096 : 0;
  st.f_blocks = (bytes + 4095) / 4096 + free_blocks;
  st.f_bfree = free_blocks;
  st.f_bavail = free_blocks;
  st.f_files = files + (cache.f_favail > 0 ? cache.f_favail : 0);
  st.f_ffree = cache.f_favail;
  st.f_favail = cache.f_favail;
  st.f_namemax = 255;
  fuse_reply_statfs (req, &st);
}

/* ---- directories --------------------------------------------------------------------- */

static void
dir_handle_free (DirHandle *d)
{
  if (d->entries != NULL)
    g_ptr_array_unref (d->entries);
  g_free (d);
}

/* Registered before the reply that hands @h to the kernel: its release may run at once. */
static void
track (FsMount *m, gpointer h, GDestroyNotify destroy)
{
  g_mutex_lock (&m->open_lock);
  g_hash_table_insert (m->live_handles, h, (gpointer) destroy);
  g_mutex_unlock (&m->open_lock);
}

static void
untrack (FsMount *m, gpointer h)
{
  g_mutex_lock (&m->open_lock);
  g_hash_table_remove (m->live_handles, h);
  g_mutex_unlock (&m->open_lock);
}

/* Replies to an open or opendir whose handle is tracked; drops it when the opener is gone. */
static void
reply_open_tracked (fuse_req_t req, FsMount *m, struct fuse_file_info *fi, gpointer h,
                    GDestroyNotify destroy)
{
  track (m, h, destroy);
  if (fuse_reply_open (req, fi) != 0)
    {
      /* The opener went away (interrupted): no release will come for this handle. */
      untrack (m, h);
      destroy (h);
    }
}

static void
fs_opendir (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);
  g_autoptr (GError) error = NULL;
  DirHandle *d = g_new0 (DirHandle, 1);
  d->self_ino = ino;

  if (is_control (ino))
    {
      if (control_id (ino) != CTL_DIR)
        {
          dir_handle_free (d);
          fuse_reply_err (req, ENOTDIR);
          return;
        }
      g_auto (StoreEntry) shadow = { 0 };
      d->is_control = TRUE;
      d->parent_ino = FUSE_ROOT_ID;
      d->has_remote_shadow = lookup_remote_shadow (m, &shadow);
      d->entries = g_ptr_array_new ();
    }
  else
    {
      if (ino != store_ino_of (ino))
        {
          dir_handle_free (d);
          fuse_reply_err (req, ENOTDIR);
          return;
        }
      /* The children are read at the first readdir, not here: when the kernel serves the
       * listing from its cache (cache_readdir) no readdir comes and nothing is read. */
      d->is_root = ino == FUSE_ROOT_ID;
      g_auto (StoreEntry) self = { 0 };
      d->parent_ino = (d->is_root || !store_getattr (m->store, ino, &self, NULL))
                        ? FUSE_ROOT_ID : self.parent_ino;
      /* The kernel may keep the listing: every change of a folder's children reaches us as
       * a publish and the invalidation thread drops the parent's cached listing then (the
       * root's also on every status change: new sources add synthetic folders to it without
       * a publish). An rm or rmdir through the mount drops it in the kernel itself. */
      fi->cache_readdir = 1;
      fi->keep_cache = 1;
    }
  fi->fh = (uint64_t) (uintptr_t) d;
  reply_open_tracked (req, m, fi, d, (GDestroyNotify) dir_handle_free);
}

/* Position i of a listing: 0 ".", 1 "..", then (root) ".sync", then the children. A child
 * named ".sync" at the root is skipped here: it is listed as .sync/remote. */
static void
do_readdir (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi,
            gboolean plus)
{
  FsMount *m = fuse_req_userdata (req);
  DirHandle *d = (DirHandle *) (uintptr_t) fi->fh;
  if (d->entries == NULL)
    {
      /* One snapshot per open directory: offsets stay meaningful while the engine publishes.
       * readdir calls on one handle are serialised by the kernel. */
      g_autoptr (GError) error = NULL;
      d->entries = store_readdir (m->store, d->self_ino, &error);
      if (d->entries == NULL)
        {
          fuse_reply_err (req, errno_from_error (error));
          return;
        }
    }
  g_autofree char *buf = g_malloc (size);
  size_t used = 0;
  guint n_extra = d->is_control ? G_N_ELEMENTS (control_files) + (d->has_remote_shadow ? 1 : 0)
                                : (d->is_root ? 1 : 0);
  guint64 total = 2 + n_extra + d->entries->len;

  for (guint64 i = (guint64) off; i < total; i++)
    {
      struct fuse_entry_param e = { 0 };
      const char *name;
      StoreEntry *child = NULL;
      g_auto (StoreEntry) shadow = { 0 };
      int ctl = 0;

      if (i == 0 || i == 1)
        {
          name = i == 0 ? "." : "..";
          e.attr.st_ino = i == 0 ? d->self_ino : d->parent_ino;
          e.attr.st_mode = S_IFDIR;
        }
      else if (i < 2 + n_extra && d->is_root)
        {
          name = ".sync";
          ctl = CTL_DIR;
        }
      else if (i < 2 + n_extra && d->is_control)
        {
          guint k = (guint) (i - 2);
          if (k < G_N_ELEMENTS (control_files))
            {
              name = control_files[k].name;
              ctl = control_files[k].id;
            }
          else
            {
              if (!lookup_remote_shadow (m, &shadow))
                continue;
              name = REMOTE_SHADOW_NAME;
              child = &shadow;
            }
        }
      else
        {
          child = d->entries->pdata[i - 2 - n_extra];
          name = child->name;
          if (d->is_root && g_str_equal (name, ".sync"))
            continue;
        }

      if (ctl != 0)
        {
          e.ino = CTL_INO (ctl);
          control_to_stat (m, ctl, &e.attr);
          e.entry_timeout = ENTRY_TIMEOUT;
          e.attr_timeout = ctl == CTL_DIR ? ATTR_TIMEOUT : 0.0;
        }
      else if (child != NULL)
        fill_entry (m, child, &e);

      size_t need = plus
        ? fuse_add_direntry_plus (req, buf + used, size - used, name, &e, (off_t) (i + 1))
        : fuse_add_direntry (req, buf + used, size - used, name, &e.attr, (off_t) (i + 1));
      if (need > size - used)
        break;
      used += need;
    }
  fuse_reply_buf (req, buf, used);
}

static void
fs_readdir (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
  do_readdir (req, ino, size, off, fi, FALSE);
}

static void
fs_readdirplus (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
  do_readdir (req, ino, size, off, fi, TRUE);
}

static void
fs_releasedir (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);
  untrack (m, (gpointer) (uintptr_t) fi->fh);
  dir_handle_free ((DirHandle *) (uintptr_t) fi->fh);
  fuse_reply_err (req, 0);
}

/* ---- regular files ------------------------------------------------------------------- */

static void
open_generation_ref (FsMount *m, guint64 fino, const struct stat *st)
{
  g_mutex_lock (&m->open_lock);
  OpenGeneration *og = g_hash_table_lookup (m->open_generations, &fino);
  if (og == NULL)
    {
      guint64 *key = g_new (guint64, 1);
      *key = fino;
      og = g_new0 (OpenGeneration, 1);
      og->st = *st;
      g_hash_table_insert (m->open_generations, key, og);
    }
  og->opens++;
  g_mutex_unlock (&m->open_lock);
}

static void
open_generation_unref (FsMount *m, guint64 fino)
{
  g_mutex_lock (&m->open_lock);
  OpenGeneration *og = g_hash_table_lookup (m->open_generations, &fino);
  if (og != NULL && --og->opens == 0)
    g_hash_table_remove (m->open_generations, &fino);
  g_mutex_unlock (&m->open_lock);
}

static void open_control (fuse_req_t req, FsMount *m, int id, struct fuse_file_info *fi);

static gboolean
handles_remove (GPtrArray *handles, gpointer h)
{
  return g_ptr_array_remove_fast (handles, h);
}

/* Lists a control-file handle in @handles (so a stop can reach it) and replies to the open.
 * When the reply fails the opener is gone and no release will come, so the handle is
 * dropped again here. */
static void
reply_open_handle (FsMount *m, fuse_req_t req, struct fuse_file_info *fi, GPtrArray *handles,
                   gpointer h, GDestroyNotify destroy)
{
  g_mutex_lock (&m->lock);
  g_ptr_array_add (handles, h);
  g_mutex_unlock (&m->lock);
  fi->fh = (uint64_t) (uintptr_t) h;
  track (m, h, destroy);
  if (fuse_reply_open (req, fi) != 0)
    {
      untrack (m, h);
      g_mutex_lock (&m->lock);
      handles_remove (handles, h);
      g_mutex_unlock (&m->lock);
      destroy (h);
    }
}

static void
file_handle_free (FileHandle *h)
{
  if (h->fd >= 0)
    close (h->fd);
  g_free (h);
}

static void
status_handle_free (StatusHandle *h)
{
  if (h->ph != NULL)
    fuse_pollhandle_destroy (h->ph);
  g_free (h->json);
  g_free (h);
}

static void
events_handle_free (EventsHandle *h)
{
  if (h->ph != NULL)
    fuse_pollhandle_destroy (h->ph);
  g_string_free (h->buffered, TRUE);
  g_free (h);
}

static void
fs_open (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);

  if (is_control (ino))
    {
      open_control (req, m, control_id (ino), fi);
      return;
    }
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
    {
      fuse_reply_err (req, EROFS);
      return;
    }

  /* Twice at most: the engine may replace the object between our read of the entry and the
   * open(2) of its cache object; the second look tells a replacement from a real loss. */
  for (int attempt = 0; attempt < 2; attempt++)
    {
      g_auto (StoreEntry) entry = { 0 };
      g_autoptr (GError) error = NULL;
      if (!store_getattr (m->store, store_ino_of (ino), &entry, &error))
        {
          fuse_reply_err (req, errno_from_error (error));
          return;
        }
      if (entry.kind == STORE_KIND_DIR)
        {
          fuse_reply_err (req, EISDIR);
          return;
        }
      if (fuse_ino_of (&entry) != ino)
        {
          /* The kernel still holds the previous generation's dentry: ESTALE makes the VFS
           * revalidate the path, look it up again and open the new inode. */
          fuse_reply_err (req, ESTALE);
          return;
        }
      int fd = -1;
      if (entry.cache_object != NULL)
        {
          g_autofree char *path = g_build_filename (m->objects_dir, entry.cache_object, NULL);
          fd = open (path, O_RDONLY | O_CLOEXEC);
          if (fd < 0)
            {
              int saved = errno;
              if (saved == ENOENT && attempt == 0)
                continue;
              g_warning ("open(%s): %s", path, g_strerror (saved));
              fuse_reply_err (req, saved == ENOENT ? ESTALE : EIO);
              return;
            }
        }
      else if (entry.size > 0)
        {
          g_warning ("%s has %" G_GINT64_FORMAT " bytes but no cache object", entry.name, entry.size);
          fuse_reply_err (req, EIO);
          return;
        }

      struct stat st;
      entry_to_stat (m, &entry, &st);
      open_generation_ref (m, ino, &st);

      FileHandle *h = g_new0 (FileHandle, 1);
      h->fd = fd;
      h->fuse_ino = ino;
      fi->fh = (uint64_t) (uintptr_t) h;
      /* This inode's pages can only ever hold this generation's bytes. */
      fi->keep_cache = 1;
      fi->noflush = 1;
      track (m, h, (GDestroyNotify) file_handle_free);
      if (fuse_reply_open (req, fi) != 0)
        {
          /* The opener went away (interrupted): no release will come for this handle. */
          untrack (m, h);
          open_generation_unref (m, ino);
          file_handle_free (h);
        }
      return;
    }
  fuse_reply_err (req, ESTALE);
}

static void read_control (fuse_req_t req, FsMount *m, int id, size_t size, off_t off,
                          struct fuse_file_info *fi);

static void
reply_from_fd (fuse_req_t req, int fd, size_t size, off_t off)
{
  if (fd < 0)
    {
      fuse_reply_buf (req, NULL, 0);
      return;
    }
  /* Zero copy where the kernel allows: libfuse splices from the cache file into /dev/fuse. */
  struct fuse_bufvec buf = FUSE_BUFVEC_INIT (size);
  buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
  buf.buf[0].fd = fd;
  buf.buf[0].pos = off;
  fuse_reply_data (req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void
fs_read (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);
  if (is_control (ino))
    {
      read_control (req, m, control_id (ino), size, off, fi);
      return;
    }
  FileHandle *h = (FileHandle *) (uintptr_t) fi->fh;
  reply_from_fd (req, h->fd, size, off);
}

static void release_control (fuse_req_t req, FsMount *m, int id, struct fuse_file_info *fi);

static void
fs_release (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);
  if (is_control (ino))
    {
      release_control (req, m, control_id (ino), fi);
      return;
    }
  FileHandle *h = (FileHandle *) (uintptr_t) fi->fh;
  untrack (m, h);
  open_generation_unref (m, h->fuse_ino);
  file_handle_free (h);
  fuse_reply_err (req, 0);
}

/* ---- control files ------------------------------------------------------------------- */

static void
open_control (fuse_req_t req, FsMount *m, int id, struct fuse_file_info *fi)
{
  int acc = fi->flags & O_ACCMODE;
  const struct fuse_ctx *ctx = fuse_req_ctx (req);

  switch (id)
    {
    case CTL_DIR:
      fuse_reply_err (req, EISDIR);
      return;

    case CTL_START:
    case CTL_CANCEL:
      if (acc == O_RDONLY)
        {
          fuse_reply_err (req, EACCES);
          return;
        }
      /* default_permissions already checks the mode; this holds without it too. */
      if (ctx->uid != m->uid && ctx->uid != 0)
        {
          fuse_reply_err (req, EACCES);
          return;
        }
      fi->direct_io = 1;
      fi->nonseekable = 1;
      CommandHandle *ch = g_new0 (CommandHandle, 1);
      fi->fh = (uint64_t) (uintptr_t) ch;
      reply_open_tracked (req, m, fi, ch, g_free);
      return;

    case CTL_STATUS:
      {
        if (acc != O_RDONLY)
          {
            fuse_reply_err (req, EACCES);
            return;
          }
        StatusHandle *h = g_new0 (StatusHandle, 1);
        h->serial = (guint) g_atomic_int_get (&m->status_serial);
        h->json = status_snapshot (m, &h->len);
        wait_for_invalidations (m);
        /* direct_io: reads ignore the size the kernel cached, so every reader gets the whole
         * snapshot of its own open. */
        fi->direct_io = 1;
        reply_open_handle (m, req, fi, m->status_handles, h, (GDestroyNotify) status_handle_free);
        return;
      }

    case CTL_EVENTS:
      {
        if (acc != O_RDONLY)
          {
            fuse_reply_err (req, EACCES);
            return;
          }
        EventsHandle *h = g_new0 (EventsHandle, 1);
        h->buffered = g_string_new (NULL);
        h->cursor = m->engine != NULL ? sync_engine_events_head (m->engine) : 0;
        fi->direct_io = 1;
        fi->nonseekable = 1;
        reply_open_handle (m, req, fi, m->events_handles, h, (GDestroyNotify) events_handle_free);
        return;
      }

    case CTL_CHANGES:
      {
        if (acc != O_RDONLY)
          {
            fuse_reply_err (req, EACCES);
            return;
          }
        int fd = m->changes_file != NULL ? open (m->changes_file, O_RDONLY | O_CLOEXEC) : -1;
        if (fd < 0 && m->changes_file != NULL && errno != ENOENT)
          g_warning ("open(%s): %s", m->changes_file, g_strerror (errno));
        /* The feed only grows (or is trimmed by rename): byte offsets are the cursor. */
        fi->direct_io = 1;
        fi->fh = (uint64_t) (unsigned) (fd + 1);   /* 0 = no file yet */
        fuse_reply_open (req, fi);
        return;
      }
    default:
      fuse_reply_err (req, ENOENT);
    }
}

static int run_command (FsMount *m, int id, const char *buf, size_t size);

static void
release_control (fuse_req_t req, FsMount *m, int id, struct fuse_file_info *fi)
{
  switch (id)
    {
    case CTL_STATUS:
      {
        StatusHandle *h = (StatusHandle *) (uintptr_t) fi->fh;
        untrack (m, h);
        g_mutex_lock (&m->lock);
        handles_remove (m->status_handles, h);
        g_mutex_unlock (&m->lock);
        status_handle_free (h);
        break;
      }
    case CTL_EVENTS:
      {
        EventsHandle *h = (EventsHandle *) (uintptr_t) fi->fh;
        untrack (m, h);
        g_mutex_lock (&m->lock);
        handles_remove (m->events_handles, h);
        g_cond_broadcast (&m->events_cond);
        g_mutex_unlock (&m->lock);
        events_handle_free (h);
        break;
      }
    case CTL_CHANGES:
      if (fi->fh != 0)
        close ((int) fi->fh - 1);
      break;
    case CTL_START:
    case CTL_CANCEL:
      {
        /* A start file opened for writing and closed without a write (`: > .sync/start`,
         * Python's write('')) is an empty start. Not at flush: a shell's `>` dup2()s and
         * closes the first fd before echo writes, and that close flushes too. A refusal
         * cannot reach close() from here; the engine records it as last_rejected_start. */
        CommandHandle *h = (CommandHandle *) (uintptr_t) fi->fh;
        untrack (m, h);
        if (!h->wrote && (fi->flags & O_ACCMODE) != O_RDONLY && m->engine != NULL)
          run_command (m, id, "", 0);
        g_free (h);
        break;
      }
    default:
      break;
    }
  fuse_reply_err (req, 0);
}

/* Replies with a private copy of @data. Once the kernel has the reply, the reader may close
 * the file and our release may free the handle's buffer while fuse_reply_buf() is still
 * returning; the bytes were copied by then, but a sanitizer that checks writev's buffers after
 * the call would see freed memory. A copy of a status document or a few event lines is cheap. */
static void
reply_copy (fuse_req_t req, const char *data, gsize len)
{
  g_autofree char *copy = g_memdup2 (data, len);
  fuse_reply_buf (req, copy, len);
}

/* Interrupt of a blocked events read (the reader got a signal): answer EINTR. Runs with
 * libfuse's req->lock held; @data is the mount, which outlives every request. */
static void
events_read_interrupted (fuse_req_t req, void *data)
{
  FsMount *m = data;
  g_mutex_lock (&m->lock);
  for (guint i = 0; i < m->events_handles->len; i++)
    {
      EventsHandle *h = m->events_handles->pdata[i];
      if (h->pending == req)
        {
          h->pending = NULL;
          fuse_reply_err (req, EINTR);
          break;
        }
    }
  g_mutex_unlock (&m->lock);
}

/* Under m->lock: once @h's buffer is drained, takes the next lines from the engine and the
 * barrier they must wait for (see the top). */
static void
events_refill (FsMount *m, EventsHandle *h, size_t size)
{
  if (h->buffered_off < h->buffered->len || m->engine == NULL || m->closed)
    return;
  g_string_truncate (h->buffered, 0);
  h->buffered_off = 0;
  sync_engine_events_read (m->engine, &h->cursor, h->buffered, MAX (size, EVENTS_REFILL_BYTES));
  if (h->buffered->len == 0)
    return;
  /* Counted after the read: the notes of every line just read were queued before it. */
  g_mutex_lock (&m->barrier_lock);
  h->barrier = m->published_queued;
  h->released = m->published_done >= h->barrier;
  g_mutex_unlock (&m->barrier_lock);
  h->filled_at = g_get_monotonic_time ();
}

/* Under m->lock: may @h's buffered lines go out, their invalidations sent? */
static gboolean
events_released (FsMount *m, EventsHandle *h)
{
  if (h->released)
    return TRUE;
  g_mutex_lock (&m->barrier_lock);
  guint64 missing = h->barrier > m->published_done ? h->barrier - m->published_done : 0;
  h->released = missing == 0 || m->barrier_off || g_atomic_int_get (&m->loop_ended);
  g_mutex_unlock (&m->barrier_lock);
  if (!h->released && g_get_monotonic_time () - h->filled_at >= EVENTS_BARRIER_US)
    {
      g_debug ("events served before %" G_GUINT64_FORMAT " invalidations were sent", missing);
      h->released = TRUE;
    }
  return h->released;
}

/* Under m->lock: would a read of @h be answered now (released lines, or the end)? */
static gboolean
events_readable (FsMount *m, EventsHandle *h)
{
  events_refill (m, h, EVENTS_REFILL_BYTES);
  if (h->buffered_off < h->buffered->len)
    return events_released (m, h);
  return m->closed || m->events_ending || m->engine == NULL;
}

/* Under m->lock: answers @h's blocked read if released events (or the end) are there. */
static gboolean
events_try_answer (FsMount *m, EventsHandle *h, fuse_req_t req, size_t size)
{
  events_refill (m, h, size);
  if (h->buffered_off >= h->buffered->len)
    {
      if (m->engine != NULL && !m->closed && !m->events_ending)
        return FALSE;
      fuse_reply_buf (req, NULL, 0);   /* shutting down: end of stream */
      h->ended = TRUE;
      g_cond_broadcast (&m->events_cond);
      return TRUE;
    }
  if (!events_released (m, h))
    return FALSE;   /* held back: the invalidation thread answers once it has caught up */
  gsize n = MIN (size, h->buffered->len - h->buffered_off);
  gsize off = h->buffered_off;
  h->buffered_off += n;
  reply_copy (req, h->buffered->str + off, n);
  return TRUE;
}

/* Under m->lock: answers @h's blocked read if it can be answered now, and says whether a
 * poller would find @h readable. Every path that may release held lines (a handled note, a
 * poll, the time bound) comes through here, so lines released by a poll (events_released
 * flips h->released) never leave a read blocked on the same open file. */
static gboolean
events_serve (FsMount *m, EventsHandle *h)
{
  if (h->pending != NULL && events_try_answer (m, h, h->pending, h->pending_size))
    h->pending = NULL;
  gboolean readable = events_readable (m, h);
  /* The check may itself have released the lines (the bound) or taken new ones. */
  if (readable && h->pending != NULL && events_try_answer (m, h, h->pending, h->pending_size))
    {
      h->pending = NULL;
      readable = events_readable (m, h);
    }
  return readable;
}

static void
read_events (fuse_req_t req, FsMount *m, EventsHandle *h, size_t size)
{
  g_mutex_lock (&m->lock);
  if (h->pending != NULL)
    {
      g_mutex_unlock (&m->lock);
      fuse_reply_err (req, EBUSY);   /* one blocked reader per open file */
      return;
    }
  gboolean answered = events_try_answer (m, h, req, size);
  g_mutex_unlock (&m->lock);
  if (answered)
    return;

  /* Block like tail -f: the invalidation thread answers when an event arrives (or when the
   * lines held back are released). The interrupt
   * callback is registered before the request becomes visible to that thread, so a reply
   * can never race with the registration. */
  fuse_req_interrupt_func (req, events_read_interrupted, m);
  g_mutex_lock (&m->lock);
  if (fuse_req_interrupted (req))
    fuse_reply_err (req, EINTR);
  else if (!events_try_answer (m, h, req, size))   /* an event may have come meanwhile */
    {
      h->pending = req;
      h->pending_size = size;
      g_cond_signal (&m->serve_cond);   /* the events thread keeps the bound for its lines */
    }
  g_mutex_unlock (&m->lock);
}

static void
read_control (fuse_req_t req, FsMount *m, int id, size_t size, off_t off, struct fuse_file_info *fi)
{
  switch (id)
    {
    case CTL_STATUS:
      {
        StatusHandle *h = (StatusHandle *) (uintptr_t) fi->fh;
        if ((gsize) off >= h->len)
          {
            fuse_reply_buf (req, NULL, 0);
            return;
          }
        reply_copy (req, h->json + off, MIN (size, h->len - (gsize) off));
        return;
      }
    case CTL_EVENTS:
      read_events (req, m, (EventsHandle *) (uintptr_t) fi->fh, size);
      return;
    case CTL_CHANGES:
      reply_from_fd (req, fi->fh != 0 ? (int) fi->fh - 1 : -1, size, off);
      return;
    default:
      fuse_reply_err (req, EBADF);
    }
}

/* One command written to .sync/start or .sync/cancel: 0 or an errno. */
static int
run_command (FsMount *m, int id, const char *buf, size_t size)
{
  g_autoptr (GError) error = NULL;

  if (id == CTL_CANCEL)
    {
      /* Returns once the cancel is recorded; with no run active it changes nothing. */
      if (sync_engine_cancel (m->engine))
        g_info ("cancel recorded");
      return 0;
    }
  /* Each write(2) is one command, as in sysfs: `echo full > start` is one write. */
  SyncStartFlags flags = 0;
  if (!sync_engine_parse_start_words (m->engine, buf, size, &flags, &error)
      || !sync_engine_start (m->engine, flags, &error))
    {
      int err = errno_from_error (error);
      if (err == EIO)
        g_warning ("start: %s", error->message);
      else
        g_info ("start refused: %s", error->message);
      return err;
    }
  return 0;
}

static void
fs_write (fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
          struct fuse_file_info *fi)
{
  FsMount *m = fuse_req_userdata (req);

  if (!is_control (ino))
    {
      fuse_reply_err (req, EROFS);
      return;
    }
  if (fuse_req_ctx (req)->uid != m->uid && fuse_req_ctx (req)->uid != 0)
    {
      fuse_reply_err (req, EACCES);
      return;
    }
  if (m->engine == NULL)
    {
      fuse_reply_err (req, EAGAIN);
      return;
    }

  int id = control_id (ino);
  if (id != CTL_START && id != CTL_CANCEL)
    {
      fuse_reply_err (req, EBADF);
      return;
    }
  ((CommandHandle *) (uintptr_t) fi->fh)->wrote = TRUE;
  int err = run_command (m, id, buf, size);
  if (err != 0)
    fuse_reply_err (req, err);
  else
    fuse_reply_write (req, size);
}


static void
fs_poll (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
  FsMount *m = fuse_req_userdata (req);
  unsigned revents = 0;
  struct fuse_pollhandle *old = NULL;

  if (!is_control (ino) || (control_id (ino) != CTL_STATUS && control_id (ino) != CTL_EVENTS))
    {
      if (ph != NULL)
        fuse_pollhandle_destroy (ph);
      fuse_reply_poll (req, POLLIN | POLLOUT);
      return;
    }

  g_mutex_lock (&m->lock);
  if (control_id (ino) == CTL_STATUS)
    {
      /* Readable news: the status changed since this file was opened (reopen to read it). */
      StatusHandle *h = (StatusHandle *) (uintptr_t) fi->fh;
      if (h->serial != (guint) g_atomic_int_get (&m->status_serial) || m->closed)
        revents = POLLIN | POLLPRI;
      else if (ph != NULL)
        {
          old = h->ph;
          h->ph = g_steal_pointer (&ph);
        }
    }
  else
    {
      /* Lines held back are not readable yet: a read would block. */
      EventsHandle *h = (EventsHandle *) (uintptr_t) fi->fh;
      if (events_serve (m, h))
        revents = POLLIN;
      else if (ph != NULL)
        {
          old = h->ph;
          h->ph = g_steal_pointer (&ph);
          g_cond_signal (&m->serve_cond);   /* the events thread keeps the bound */
        }
    }
  g_mutex_unlock (&m->lock);
  if (old != NULL)
    fuse_pollhandle_destroy (old);
  if (ph != NULL)
    fuse_pollhandle_destroy (ph);
  fuse_reply_poll (req, revents);
}

static const struct fuse_lowlevel_ops fs_ops = {
  .init = fs_init,
  .lookup = fs_lookup,
  .forget = fs_forget,
  .forget_multi = fs_forget_multi,
  .getattr = fs_getattr,
  .setattr = fs_setattr,
  .readlink = fs_readlink,
  .mknod = fs_refuse_mknod,
  .mkdir = fs_refuse_mkdir,
  .unlink = fs_unlink,
  .rmdir = fs_rmdir,
  .symlink = fs_refuse_symlink,
  .rename = fs_refuse_rename,
  .link = fs_refuse_link,
  .open = fs_open,
  .read = fs_read,
  .write = fs_write,
  .release = fs_release,
  .opendir = fs_opendir,
  .readdir = fs_readdir,
  .readdirplus = fs_readdirplus,
  .releasedir = fs_releasedir,
  .statfs = fs_statfs,
  .setxattr = fs_refuse_setxattr,
  .removexattr = fs_refuse_removexattr,
  .create = fs_refuse_create,
  .poll = fs_poll,
  .fallocate = fs_refuse_fallocate,
};

/* ---- the invalidation thread --------------------------------------------------------- */

/* Once the loop has ended nobody answers the kernel, and a notification that needs a
 * directory lock held by a request waiting for an answer would block for ever: drop them.
 * (The mount is going away; its caches go with it.) */
static gboolean
notifications_off (FsMount *m)
{
  return g_atomic_int_get (&m->loop_ended) != 0;
}

static void
check_notify (int rc, const char *what)
{
  /* ENOENT: the kernel did not know it (nothing to drop). EBADF/ENODEV: unmounting. */
  if (rc != 0 && rc != -ENOENT && rc != -EBADF && rc != -ENODEV && rc != -ENOTCONN)
    g_debug ("%s: %s", what, g_strerror (-rc));
}

static void
invalidate_published (FsMount *m, const Note *note)
{
  if (notifications_off (m))
    return;
  if (note->name != NULL && *note->name != '\0')
    {
      fuse_ino_t parent = note->parent_ino;
      const char *name = note->name;
      if (parent == FUSE_ROOT_ID && g_str_equal (name, ".sync"))
        {
          parent = CTL_INO (CTL_DIR);
          name = REMOTE_SHADOW_NAME;
        }
      check_notify (fuse_lowlevel_notify_inval_entry (m->se, parent, name, strlen (name)),
                    "inval_entry");
      /* The parent's cached listing (cache_readdir) and attributes. The control directory
       * is never cached, but its attributes are. */
      check_notify (fuse_lowlevel_notify_inval_inode (m->se, parent, 0, 0), "inval_inode parent");
    }
  if (note->ino != 0)
    {
      g_auto (StoreEntry) entry = { 0 };
      fuse_ino_t ino = note->ino;
      if (store_getattr (m->store, note->ino, &entry, NULL))
        ino = fuse_ino_of (&entry);
      /* Attributes only: pages of a generation never go stale (see the top of this file). */
      check_notify (fuse_lowlevel_notify_inval_inode (m->se, ino, -1, 0), "inval_inode");
    }
}

/* Wakes the pollers collected under the lock, outside it (a notification must never be sent
 * while holding a lock a request handler needs), and frees their handles. */
static void
notify_pollers (FsMount *m, GPtrArray *phs)
{
  for (guint i = 0; i < phs->len; i++)
    {
      if (!notifications_off (m))
        check_notify (fuse_lowlevel_notify_poll (phs->pdata[i]), "notify_poll");
      fuse_pollhandle_destroy (phs->pdata[i]);
    }
}

static void
wake_status_pollers (FsMount *m)
{
  g_autoptr (GPtrArray) phs = g_ptr_array_new ();
  g_atomic_int_set (&m->status_note_queued, 0);
  if (!notifications_off (m))
    check_notify (fuse_lowlevel_notify_inval_inode (m->se, FUSE_ROOT_ID, 0, 0), "inval_inode root");
  g_mutex_lock (&m->lock);
  for (guint i = 0; i < m->status_handles->len; i++)
    {
      StatusHandle *h = m->status_handles->pdata[i];
      if (h->ph != NULL)
        g_ptr_array_add (phs, g_steal_pointer (&h->ph));
    }
  g_mutex_unlock (&m->lock);
  notify_pollers (m, phs);
}

/* After an event or a handled publish note: answers the blocked reads that can be answered
 * and wakes the pollers of readable handles (see the top). */
static void
serve_event_readers (FsMount *m)
{
  g_autoptr (GPtrArray) phs = g_ptr_array_new ();
  g_mutex_lock (&m->lock);
  for (guint i = 0; i < m->events_handles->len; i++)
    {
      EventsHandle *h = m->events_handles->pdata[i];
      /* Nobody waits on it: its lines stay in the engine's ring (a slow reader is told what
       * the ring dropped, not handed a buffer filled behind its back). */
      if (h->pending == NULL && h->ph == NULL)
        continue;
      /* Replying is not a notification: fine under the lock (see the lock order above). */
      if (events_serve (m, h) && h->ph != NULL)
        g_ptr_array_add (phs, g_steal_pointer (&h->ph));
    }
  g_mutex_unlock (&m->lock);
  notify_pollers (m, phs);
}

/* Under m->lock: when the oldest lines held for a waiting reader or poller reach the bound
 * (G_MAXINT64: none is held). */
static gint64
oldest_hold_due (FsMount *m)
{
  gint64 due = G_MAXINT64;
  for (guint i = 0; i < m->events_handles->len; i++)
    {
      EventsHandle *h = m->events_handles->pdata[i];
      if (h->buffered_off < h->buffered->len && !h->released && (h->pending != NULL || h->ph != NULL))
        due = MIN (due, h->filled_at + EVENTS_BARRIER_US);
    }
  return due;
}

/* Under m->lock: news for event readers (a new event, a read or poll that waits, the end). */
static void
events_thread_wake (FsMount *m)
{
  m->serve_due = TRUE;
  g_cond_signal (&m->serve_cond);
}

/* Serves event readers at each event and when the oldest held lines reach EVENTS_BARRIER_US,
 * so that the bound holds with no other activity and while the invalidation thread is busy
 * (see the top). */
static gpointer
events_thread (gpointer data)
{
  FsMount *m = data;
  g_mutex_lock (&m->lock);
  while (!m->serve_quit)
    {
      gint64 due = oldest_hold_due (m);
      if (!m->serve_due && g_get_monotonic_time () < due)
        {
          if (due == G_MAXINT64)
            g_cond_wait (&m->serve_cond, &m->lock);
          else
            g_cond_wait_until (&m->serve_cond, &m->lock, due);
          continue;   /* woken or due: look again (a spurious wake-up costs one pass) */
        }
      m->serve_due = FALSE;
      g_mutex_unlock (&m->lock);
      serve_event_readers (m);
      g_mutex_lock (&m->lock);
    }
  g_mutex_unlock (&m->lock);
  return NULL;
}

static gpointer
invalidation_thread (gpointer data)
{
  FsMount *m = data;
  for (;;)
    {
      Note *note = g_async_queue_pop (m->notes);
      NoteKind kind = note->kind;
      switch (kind)
        {
        case NOTE_PUBLISHED:
          if (m->test_delay_us != 0)
            g_usleep (m->test_delay_us);
          invalidate_published (m, note);
          g_mutex_lock (&m->barrier_lock);
          m->published_done++;
          g_cond_broadcast (&m->barrier_cond);
          g_mutex_unlock (&m->barrier_lock);
          g_mutex_lock (&m->lock);
          events_thread_wake (m);   /* for the lines that waited for this note */
          g_mutex_unlock (&m->lock);
          break;
        case NOTE_STATUS:    wake_status_pollers (m); break;
        case NOTE_QUIT:      break;
        }
      note_free (note);
      if (kind == NOTE_QUIT)
        {
          /* Nobody handles notes any more: status opens must not wait for them. */
          g_mutex_lock (&m->barrier_lock);
          m->barrier_off = TRUE;
          g_cond_broadcast (&m->barrier_cond);
          g_mutex_unlock (&m->barrier_lock);
          return NULL;
        }
    }
}

static void
push_note (FsMount *m, NoteKind kind, guint64 ino, guint64 parent, const char *name)
{
  if (kind == NOTE_PUBLISHED)
    {
      g_mutex_lock (&m->barrier_lock);
      m->published_queued++;
      g_mutex_unlock (&m->barrier_lock);
    }
  Note *note = g_new0 (Note, 1);
  note->kind = kind;
  note->ino = ino;
  note->parent_ino = parent;
  note->name = g_strdup (name);
  g_async_queue_push (m->notes, note);
}

void
fs_mount_notify (SyncNotifyKind kind, guint64 ino, guint64 parent_ino, const char *name,
                 gpointer user_data)
{
  FsMount *m = user_data;
  switch (kind)
    {
    case SYNC_NOTIFY_STATUS:
      g_atomic_int_inc (&m->status_serial);
      /* Many status changes per second collapse into one wake-up. */
      if (g_atomic_int_compare_and_exchange (&m->status_note_queued, 0, 1))
        push_note (m, NOTE_STATUS, 0, 0, NULL);
      break;
    case SYNC_NOTIFY_EVENT:
      /* Not a note: a line must reach a blocked reader even while the invalidation thread is
       * busy with the notes before it (the bound, see the top). */
      g_mutex_lock (&m->lock);
      events_thread_wake (m);
      g_mutex_unlock (&m->lock);
      break;
    case SYNC_NOTIFY_PUBLISHED:
      push_note (m, NOTE_PUBLISHED, ino, parent_ino, name);
      break;
    }
}

/* ---- mount life cycle ---------------------------------------------------------------- */

static void
fuse_log_to_glib (enum fuse_log_level level, const char *fmt, va_list ap)
{
  g_autofree char *msg = g_strdup_vprintf (fmt, ap);
  g_strchomp (msg);
  GLogLevelFlags g = level <= FUSE_LOG_WARNING ? G_LOG_LEVEL_WARNING
                     : level <= FUSE_LOG_INFO  ? G_LOG_LEVEL_INFO
                                               : G_LOG_LEVEL_DEBUG;
  g_log ("odsf-fuse", g, "%s", msg);
}

void
fs_route_fuse_log (void)
{
  fuse_set_log_func (fuse_log_to_glib);
}

/* /proc/self/mountinfo escapes space, tab, newline and backslash as octal. */
static char *
unescape_mountinfo (const char *s)
{
  GString *out = g_string_new (NULL);
  for (; *s; s++)
    {
      if (s[0] == '\\' && g_ascii_isdigit (s[1]) && g_ascii_isdigit (s[2]) && g_ascii_isdigit (s[3]))
        {
          g_string_append_c (out, (char) ((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0')));
          s += 3;
        }
      else
        g_string_append_c (out, *s);
    }
  return g_string_free (out, FALSE);
}

static gboolean
is_mount_point (const char *path)
{
  g_autofree char *contents = NULL;
  if (!g_file_get_contents ("/proc/self/mountinfo", &contents, NULL, NULL))
    return FALSE;
  g_auto (GStrv) lines = g_strsplit (contents, "\n", -1);
  for (char **l = lines; *l != NULL; l++)
    {
      g_auto (GStrv) fields = g_strsplit (*l, " ", 6);
      if (g_strv_length (fields) < 5)
        continue;
      g_autofree char *mp = unescape_mountinfo (fields[4]);
      if (g_str_equal (mp, path))
        return TRUE;
    }
  return FALSE;
}

static gboolean
check_mountpoint (const char *mountpoint, GError **error)
{
  struct stat st;
  if (stat (mountpoint, &st) != 0)
    {
      int saved = errno;
      if (saved == ENOTCONN)
        g_set_error (error, FS_ERROR, FS_ERROR_MOUNTPOINT,
                     "mount point %s is a disconnected FUSE mount (its daemon died); "
                     "unmount it with: fusermount3 -u %s", mountpoint, mountpoint);
      else
        g_set_error (error, FS_ERROR, FS_ERROR_MOUNTPOINT, "mount point %s: %s",
                     mountpoint, g_strerror (saved));
      return FALSE;
    }
  if (!S_ISDIR (st.st_mode))
    {
      g_set_error (error, FS_ERROR, FS_ERROR_MOUNTPOINT, "mount point %s is not a directory", mountpoint);
      return FALSE;
    }
  if (is_mount_point (mountpoint))
    {
      g_set_error (error, FS_ERROR, FS_ERROR_MOUNTPOINT,
                   "mount point %s is busy: something is already mounted there", mountpoint);
      return FALSE;
    }
  return TRUE;
}

FsMount *
fs_mount_new (const FsConfig *config, char **fuse_argv, const char *mountpoint, GError **error)
{
  if (!check_mountpoint (mountpoint, error))
    return NULL;

  FsMount *m = g_new0 (FsMount, 1);
  m->store = config->store;
  m->cache_dir = g_strdup (config->cache_dir);
  m->objects_dir = g_build_filename (config->cache_dir, "objects", NULL);
  m->changes_file = g_strdup (config->changes_file);
  m->mountpoint = g_strdup (mountpoint);
  m->uid = config->owner_uid;
  m->gid = config->owner_gid;
  m->allow_other = config->allow_other;
  m->started = g_get_real_time () / G_USEC_PER_SEC;
  g_mutex_init (&m->lock);
  g_mutex_init (&m->open_lock);
  g_mutex_init (&m->barrier_lock);
  g_cond_init (&m->events_cond);
  g_cond_init (&m->serve_cond);
  g_cond_init (&m->barrier_cond);
  m->status_handles = g_ptr_array_new ();
  m->events_handles = g_ptr_array_new ();
  m->open_generations = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
  m->live_handles = g_hash_table_new (g_direct_hash, g_direct_equal);
  m->notes = g_async_queue_new ();
  /* The test seam (see the top): never set outside the tests. */
  const char *delay = g_getenv ("ODSF_TEST_INVALIDATION_DELAY_MS");
  if (delay != NULL && *delay != '\0')
    {
      guint64 ms = MIN (g_ascii_strtoull (delay, NULL, 10), TEST_DELAY_MAX_MS);
      m->test_delay_us = (gulong) (ms * 1000);
      g_info ("test seam: every publish note is delayed by %" G_GUINT64_FORMAT " ms", ms);
    }

  int argc = (int) g_strv_length (fuse_argv);
  struct fuse_args args = FUSE_ARGS_INIT (argc, fuse_argv);
  m->se = fuse_session_new (&args, &fs_ops, sizeof fs_ops, m);
  fuse_opt_free_args (&args);   /* libfuse may have copied argv while parsing */
  if (m->se == NULL)
    {
      g_set_error (error, FS_ERROR, FS_ERROR_OPTIONS, "libfuse refused the mount options (see above)");
      fs_mount_free (m);
      return NULL;
    }
  if (fuse_session_mount (m->se, mountpoint) != 0)
    {
      g_set_error (error, FS_ERROR, FS_ERROR_SESSION, "cannot mount at %s (see above)", mountpoint);
      fs_mount_free (m);
      return NULL;
    }
  m->mounted = TRUE;
  return m;
}

void
fs_mount_set_store (FsMount *m, Store *store)
{
  m->store = store;
}

void
fs_mount_attach (FsMount *m, SyncEngine *engine)
{
  g_return_if_fail (m->thread == NULL);
  m->engine = engine;
  m->thread = g_thread_new ("odsf-invalidate", invalidation_thread, m);
  m->events_thread = g_thread_new ("odsf-events", events_thread, m);
}

int
fs_mount_run (FsMount *m, gboolean singlethread)
{
  if (singlethread)
    {
      int rc = fuse_session_loop (m->se);
      g_atomic_int_set (&m->loop_ended, 1);
      return rc;
    }
  struct fuse_loop_config *cfg = fuse_loop_cfg_create ();
  fuse_loop_cfg_set_clone_fd (cfg, 0);
  fuse_loop_cfg_set_max_threads (cfg, 16);
  int rc = fuse_session_loop_mt (m->se, cfg);
  fuse_loop_cfg_destroy (cfg);
  g_atomic_int_set (&m->loop_ended, 1);
  return rc;
}

void
fs_mount_end_event_streams (FsMount *m, gint64 timeout_us)
{
  gint64 deadline = g_get_monotonic_time () + timeout_us;
  g_mutex_lock (&m->lock);
  m->events_ending = TRUE;
  /* Pollers learn of the end from the events thread (never notify from a request path). */
  events_thread_wake (m);
  for (guint i = 0; i < m->events_handles->len; i++)
    {
      EventsHandle *h = m->events_handles->pdata[i];
      if (h->pending != NULL && events_try_answer (m, h, h->pending, h->pending_size))
        h->pending = NULL;
    }
  for (;;)
    {
      guint open = 0;
      for (guint i = 0; i < m->events_handles->len; i++)
        open += !((EventsHandle *) m->events_handles->pdata[i])->ended;
      if (open == 0)
        break;
      if (!g_cond_wait_until (&m->events_cond, &m->lock, deadline))
        {
          g_debug ("%u events readers did not read to the end; unmounting anyway", open);
          break;
        }
    }
  g_mutex_unlock (&m->lock);
}

void
fs_mount_exit (FsMount *m)
{
  fuse_session_exit (m->se);
}

void
fs_mount_detach (FsMount *m)
{
  if (m->thread != NULL)
    {
      push_note (m, NOTE_QUIT, 0, 0, NULL);
      g_thread_join (g_steal_pointer (&m->thread));
    }
  if (m->events_thread != NULL)
    {
      g_mutex_lock (&m->lock);
      m->serve_quit = TRUE;
      g_cond_signal (&m->serve_cond);
      g_mutex_unlock (&m->lock);
      g_thread_join (g_steal_pointer (&m->events_thread));
    }
  g_mutex_lock (&m->lock);
  m->closed = TRUE;
  /* Blocked readers get the lines still held back (the thread is gone: nothing holds them
   * any more), else end-of-stream; no engine callback reaches the session any more. */
  for (guint i = 0; i < m->events_handles->len; i++)
    {
      EventsHandle *h = m->events_handles->pdata[i];
      if (h->pending != NULL && events_try_answer (m, h, h->pending, h->pending_size))
        h->pending = NULL;
    }
  m->engine = NULL;
  g_mutex_unlock (&m->lock);
}

void
fs_mount_free (FsMount *m)
{
  if (m == NULL)
    return;
  fs_mount_detach (m);
  /* Notes pushed after the thread stopped (engine callbacks during its shutdown). */
  Note *note;
  while ((note = g_async_queue_try_pop (m->notes)) != NULL)
    note_free (note);
  if (m->se != NULL)
    {
      if (m->mounted)
        fuse_session_unmount (m->se);
      fuse_session_destroy (m->se);
    }
  /* No request can come any more: free what the kernel never released. */
  GHashTableIter iter;
  gpointer h, destroy;
  g_hash_table_iter_init (&iter, m->live_handles);
  while (g_hash_table_iter_next (&iter, &h, &destroy))
    ((GDestroyNotify) destroy) (h);
  g_hash_table_unref (m->live_handles);
  g_async_queue_unref (m->notes);
  g_ptr_array_unref (m->status_handles);
  g_ptr_array_unref (m->events_handles);
  g_hash_table_unref (m->open_generations);
  g_mutex_clear (&m->lock);
  g_mutex_clear (&m->open_lock);
  g_mutex_clear (&m->barrier_lock);
  g_cond_clear (&m->events_cond);
  g_cond_clear (&m->serve_cond);
  g_cond_clear (&m->barrier_cond);
  g_free (m->cache_dir);
  g_free (m->objects_dir);
  g_free (m->changes_file);
  g_free (m->mountpoint);
  g_free (m);
}
