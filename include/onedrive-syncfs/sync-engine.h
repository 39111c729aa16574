/* The sync engine: one run at a time, processed by a GThreadPool, cancellable in milliseconds.
 *
 * Run states: idle → syncing → one of completed, completed_with_errors, cancelled, failed;
 * interrupted is what the store reports for a run whose process died. The terminal state is
 * decided once, by compare-and-set under one mutex; progress never changes the state, and a
 * cancel that arrives before the terminal state is decided wins.
 *
 * This header is the contract between the engine and the filesystem (src/fs). Its owner may
 * refine it; consumers adapt.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/store.h>

G_BEGIN_DECLS

#define SYNC_ERROR (sync_error_quark ())
GQuark sync_error_quark (void);

typedef enum {
  SYNC_ERROR_FAILED,
  SYNC_ERROR_BUSY,          /* "A sync is already in progress. Cancel it first or wait for it to complete." */
  SYNC_ERROR_INVALID,       /* bad start options */
} SyncErrorCode;

typedef enum {
  SYNC_START_FULL              = 1 << 0,   /* ignore cursors, enumerate, reconcile (server wins) */
  SYNC_START_CLEAR_EXCLUSIONS  = 1 << 1,
  SYNC_START_PERIODIC          = 1 << 2,   /* a timer's start: finding a run active is not news */
} SyncStartFlags;

typedef struct {
  guint        workers;           /* 0: 4 */
  const char  *cache_dir;         /* objects/ and tmp/ live here */
  gint64       max_file_size;     /* 0: no limit */
  const char * const *include_globs;  /* NULL: everything */
  const char * const *exclude_globs;
  const char * const *sources;    /* remote paths: "/Documents/Reports" */
  guint        sync_interval;     /* seconds; 0: no periodic sync */
} SyncConfig;

typedef struct _SyncEngine SyncEngine;

/* Borrows @store and @client; they must outlive the engine. */
SyncEngine *sync_engine_new (const SyncConfig *config, Store *store, GraphClient *client, GError **error);
/* Cancels an active run, waits for its workers, saves state. */
void sync_engine_free (SyncEngine *engine);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (SyncEngine, sync_engine_free)

/* Starts a run in the background. SYNC_ERROR_BUSY when one is active (atomic: of two
 * simultaneous starts exactly one wins); the refusal is recorded as last_rejected_start,
 * except for SYNC_START_PERIODIC, which skips quietly. A run whose end is already decided
 * (cancelled) but whose workers are still winding down is waited for (at most 5 s, in
 * practice milliseconds) rather than refused, so "cancel, then start" just works. */
gboolean sync_engine_start (SyncEngine *engine, SyncStartFlags flags, GError **error);
/* Parses the words written to .sync/start ("", "full", "clear-exclusions"); SYNC_ERROR_INVALID
 * names the unknown word, and the reason is recorded for the status. */
gboolean sync_engine_parse_start_words (SyncEngine *engine, const char *text, gsize len,
                                        SyncStartFlags *flags, GError **error);
/* Decides `cancelled` for the active run and returns at once (workers stop on their own, in
 * milliseconds: in-flight transfers abort). When it returns, no further file starts.
 * Returns FALSE when no run was syncing (nothing changes then). */
gboolean sync_engine_cancel (SyncEngine *engine);
/* Waits until no run is active or @timeout_us passes (-1: forever). TRUE when idle. */
gboolean sync_engine_wait_idle (SyncEngine *engine, gint64 timeout_us);

/* The status document (docs/status.md): newly allocated JSON. The event stream is described
 * in docs/events.md, the durable change feed (<cache_dir>/changes.jsonl) in docs/changes.md. */
char *sync_engine_status_json (SyncEngine *engine);

/* ---- notifications to the filesystem ---------------------------------------------------- */

typedef enum {
  SYNC_NOTIFY_STATUS,        /* the status document changed */
  SYNC_NOTIFY_EVENT,         /* a new event is readable */
  SYNC_NOTIFY_PUBLISHED,     /* an entry changed: @ino / @parent_ino / @name say which */
} SyncNotifyKind;

typedef void (*SyncNotifyFunc) (SyncNotifyKind kind, guint64 ino, guint64 parent_ino,
                                const char *name, gpointer user_data);
/* Called from engine threads, never while an engine lock is held; keep it short. Order: every
 * SYNC_NOTIFY_PUBLISHED of a change comes before its file_published event is appended to the
 * ring (and that of a published file withdrawn by a filter before its file_filtered event),
 * so the filesystem can hold a line back until the change's invalidations are sent. */
void sync_engine_set_notify (SyncEngine *engine, SyncNotifyFunc func, gpointer user_data);

/* ---- the event stream ------------------------------------------------------------------ */

/* Sequence number the next event will get: a reader that opens now starts here. */
guint64 sync_engine_events_head (SyncEngine *engine);
/* Appends to @out the JSON Lines of events with seq >= *@cursor (at most @max_bytes, whole
 * lines) and advances *@cursor. If the ring has dropped events the reader never saw, an
 * {"event":"events_lost","count":N} line comes first. Returns bytes appended. */
gsize sync_engine_events_read (SyncEngine *engine, guint64 *cursor, GString *out, gsize max_bytes);

G_END_DECLS
