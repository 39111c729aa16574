/* The sync engine: one run at a time, a GThreadPool of W workers, cancel in milliseconds.
 *
 * A run, on its own thread:
 *   1. For each source: read the delta set from the saved cursor (or enumerate fully the first
 *      time, on a "full" start, or after a 410) into the store's staging area, page by page;
 *      when the deltaLink arrives, store_stage_commit() turns the set into pending work and
 *      stores the cursor in ONE transaction. A cancel or error before that leaves the old
 *      cursor; the next run re-reads the set. Nothing is lost, nothing applied twice.
 *   2. Drain the queue (store_work_next): folder and metadata work (mkdir, rename, move, delete)
 *      is applied in the store's order on the run thread — it is one short transaction each and
 *      must precede the contents it makes room for; downloads go to the pool.
 *   3. Decide the terminal state once (run-state.c), record the counters (store_run_finish),
 *      and only then release the run so a new start can win.
 *
 * Cancel (sync_engine_cancel) decides `cancelled` by compare-and-set and fires the run's
 * GCancellable before it returns; it touches no database. Every pool task checks the
 * cancellable after it got its worker and before any work, under the reader side of
 * `start_gate`; cancel passes through the writer side once after firing, so when cancel
 * returns no task is between its check and its "file started": no file starts afterwards.
 * The same cancellable goes to graph_client_download(), which aborts in-flight transfers.
 * Work a cancelled task never did simply stays queued.
 *
 * A download goes to tmp/<id>-<hash>.part (kept on cancel, so the next attempt resumes with
 * Range), is verified against quickXorHash by the Graph client, renamed into objects/ under a
 * fresh name, and published by store_work_publish_batch() — only then is it visible. Publishes
 * are grouped into one transaction per batch, and the batch's change-feed lines are appended
 * by the same thread right after its commit, so the feed is in commit order (see below).
 *
 * Lock order: engine->lock (run thread handle, notify, hooks) and publish_lock are never held
 * together with each other or across a call into the Graph client; the run-state, status,
 * events and changes locks are leaves below them.
 */
#define G_LOG_DOMAIN "odsf-sync"

#include "config.h"

#include <onedrive-syncfs/changes.h>
#include <onedrive-syncfs/events.h>
#include <onedrive-syncfs/qxhash.h>
#include <onedrive-syncfs/run-state.h>
#include <onedrive-syncfs/status.h>
#include <onedrive-syncfs/sync-engine.h>

#include "engine-private.h"
#include "root-delta.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

G_DEFINE_QUARK (sync-error-quark, sync_error)

#define DISPATCH_BATCH 256
#define MODES_DIR "sources"   /* under cache_dir: root-delta mode files (root-delta.c) */
#define PROGRESS_EVENT_INTERVAL_US (250 * 1000)

typedef struct {
  char    *path;              /* as configured */
  gboolean overlapped;        /* inside another configured source: not synced on its own */
  char    *covered_by;
} EngineSource;

struct _SyncEngine {
  /* Configuration, copied; immutable after new(). */
  guint          workers;
  char          *cache_dir, *objects_dir, *tmp_dir;
  gint64         max_file_size;
  GPtrArray     *include_globs;   /* GPatternSpec* */
  GPtrArray     *exclude_globs;   /* GPatternSpec* */
  GPtrArray     *sources;         /* EngineSource* */
  guint          sync_interval;

  Store         *store;           /* borrowed */
  GraphClient   *client;          /* borrowed */
  SyncRunState  *rs;
  SyncStatus    *status;
  SyncEvents    *events;
  SyncChanges   *changes;

  GRWLock        start_gate;      /* readers: tasks between check and start; writer: cancel */
  GMutex         publish_lock;    /* the group commit: protects pub_pending, pub_leader */
  GCond          pub_cond;
  GPtrArray     *pub_pending;     /* PubReq*, waiting for a leader */
  gboolean       pub_leader;      /* a thread is publishing a batch */

  GMutex         lock;
  GThread       *run_thread;      /* protected by lock */
  SyncNotifyFunc notify;          /* protected by lock */
  gpointer       notify_data;     /* protected by lock */
  SyncHookFunc   hooks[SYNC_HOOK_N];      /* protected by lock */
  gpointer       hook_data[SYNC_HOOK_N];  /* protected by lock */

  GThread       *timer_thread;
  GMutex         timer_lock;
  GCond          timer_cond;
  gboolean       stopping;        /* protected by timer_lock */

  gint64         last_progress_event;   /* atomic-ish: only a hint for throttling */
};

typedef struct {
  SyncEngine   *engine;
  guint64       run_seq;
  gint64        run_id;
  SyncStartFlags flags;
  GCancellable *cancel;

  GMutex        lock;
  GCond         cond;
  guint         inflight;         /* protected by lock: tasks pushed and not yet finished */
  guint         source_errors;    /* protected by lock */
  guint         sources_ok;       /* protected by lock */
  GHashTable   *failed_sources;   /* protected by lock: paths */
  GHashTable   *unmirrored;       /* protected by lock: ids of packages / shortcuts reported */
  char         *fatal;            /* protected by lock: why the run failed */
  guint64       cache_fs_bytes;   /* total size of the cache file system, 0 unknown */
  gboolean      announced;        /* run thread only: run_started was emitted */
} Run;

typedef struct {
  Run       *run;
  StoreWork *work;
  guint64    progress_seen;
  gboolean   handed_off;   /* its publish is queued: the publisher finishes it (and inflight) */
} Task;

/* ---- small helpers ---------------------------------------------------------------------- */

static void
engine_notify (SyncEngine *e, SyncNotifyKind kind, guint64 ino, guint64 parent, const char *name)
{
  SyncNotifyFunc fn;
  gpointer data;
  g_mutex_lock (&e->lock);
  fn = e->notify;
  data = e->notify_data;
  g_mutex_unlock (&e->lock);
  if (fn)
    fn (kind, ino, parent, name, data);
}

static void
engine_hook (SyncEngine *e, SyncHookPoint point, const char *path)
{
  SyncHookFunc fn;
  gpointer data;
  g_mutex_lock (&e->lock);
  fn = e->hooks[point];
  data = e->hook_data[point];
  g_mutex_unlock (&e->lock);
  if (fn)
    fn (e, path, data);
}

static void
emit (SyncEngine *e, const char *event, cJSON *fields)
{
  sync_events_append (e->events, event, fields);
  engine_notify (e, SYNC_NOTIFY_EVENT, 0, 0, NULL);
}

static cJSON *
fields_path (const char *path)
{
  cJSON *f = cJSON_CreateObject ();
  cJSON_AddStringToObject (f, "path", path ? path : "");
  return f;
}

static void
emit_progress (SyncEngine *e, gboolean force)
{
  gint64 now = g_get_monotonic_time ();
  if (!force && now - e->last_progress_event < PROGRESS_EVENT_INTERVAL_US)
    return;
  e->last_progress_event = now;
  g_auto (SyncRunSnapshot) snap = { 0 };
  sync_run_state_snapshot (e->rs, &snap);
  SyncCounters c;
  sync_status_counters (e->status, &c);
  cJSON *f = cJSON_CreateObject ();
  cJSON_AddNumberToObject (f, "files_processed", c.files_processed);
  cJSON_AddNumberToObject (f, "files_failed", c.files_failed);
  cJSON_AddNumberToObject (f, "bytes_downloaded", (double) c.bytes_downloaded);
  emit (e, "progress", f);
  engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);
}

static char *
sanitize_id (const char *id)
{
  char *s = g_strdup (id ? id : "noid");
  for (char *p = s; *p; p++)
    if (!g_ascii_isalnum (*p) && *p != '-' && *p != '.')
      *p = '_';
  return s;
}

static gboolean
glob_match_any (GPtrArray *globs, const char *path)
{
  const char *base = strrchr (path, '/');
  base = base ? base + 1 : path;
  for (guint i = 0; i < globs->len; i++)
    if (g_pattern_spec_match_string (globs->pdata[i], path) || g_pattern_spec_match_string (globs->pdata[i], base))
      return TRUE;
  return FALSE;
}

static const char *
error_type_for (const GError *error)
{
  if (error->domain == GRAPH_ERROR)
    switch ((GraphErrorCode) error->code)
      {
      case GRAPH_ERROR_TIMEOUT:
        return "timeout";
      case GRAPH_ERROR_HASH_MISMATCH:
        return "hash_mismatch";
      case GRAPH_ERROR_CANCELLED:
        return "cancelled";
      case GRAPH_ERROR_THROTTLED:
        return "throttled";
      case GRAPH_ERROR_NOT_FOUND:
        return "not_found";
      case GRAPH_ERROR_LOCAL_IO:
        {
          /* The client keeps the errno of the failed write: no guessing from free space (which
           * another writer may have changed since, or which a quota never shows). */
          int errsv = graph_error_errno (error);
          return errsv == ENOSPC || errsv == EDQUOT ? "disk_full" : "download_error";
        }
      default:
        return "download_error";
      }
  if (error->domain == STORE_ERROR)
    return error->code == STORE_ERROR_FULL ? "disk_full" : "store_error";
  if (error->domain == G_IO_ERROR && error->code == G_IO_ERROR_NO_SPACE)
    return "disk_full";
  if (error->domain == G_IO_ERROR && error->code == G_IO_ERROR_CANCELLED)
    return "cancelled";
  return "download_error";
}

static const char *
action_word (const StoreWork *work)
{
  switch (work->action)
    {
    case STORE_ACTION_DOWNLOAD:
      return "added";
    case STORE_ACTION_UPDATE:
      return "updated";
    case STORE_ACTION_DELETE:
      return "deleted";
    case STORE_ACTION_MKDIR:
      if (!work->old_path)
        return "folder";
      /* a folder renamed or moved */
      G_GNUC_FALLTHROUGH;
    case STORE_ACTION_MOVE:
      {
        if (!work->old_path || !work->path)
          return "moved";
        g_autofree char *a = g_path_get_dirname (work->old_path);
        g_autofree char *b = g_path_get_dirname (work->path);
        return strcmp (a, b) == 0 ? "renamed" : "moved";
      }
    }
  return "updated";
}

static SyncOutcome
outcome_for (const StoreWork *work)
{
  switch (work->action)
    {
    case STORE_ACTION_DOWNLOAD:
      return SYNC_OUTCOME_ADDED;
    case STORE_ACTION_UPDATE:
      return SYNC_OUTCOME_UPDATED;
    case STORE_ACTION_MOVE:
      return SYNC_OUTCOME_RENAMED;
    case STORE_ACTION_DELETE:
      return SYNC_OUTCOME_DELETED;
    case STORE_ACTION_MKDIR:
      return work->old_path ? SYNC_OUTCOME_RENAMED : SYNC_OUTCOME_FOLDER;
    }
  return SYNC_OUTCOME_UPDATED;
}

/* ---- recording outcomes ----------------------------------------------------------------- */

static void
record_failure (Run *run, const StoreWork *work, const char *type, const char *message)
{
  SyncEngine *e = run->engine;
  g_autoptr (GError) local = NULL;
  const char *path = work->path ? work->path : "";

  if (!store_work_fail (e->store, work, type, message, &local))
    g_warning ("cannot record the failure of %s: %s", path, local->message);
  g_clear_error (&local);
  if (!store_run_add_failure (e->store, run->run_id, path, type, message, &local))
    g_debug ("cannot add failure of %s to run %" G_GINT64_FORMAT ": %s", path, run->run_id, local->message);
  sync_status_file_failed (e->status, path, type, message, work->attempts + 1);

  cJSON *f = fields_path (path);
  cJSON_AddStringToObject (f, "error_type", type);
  cJSON_AddStringToObject (f, "message", message ? message : "");
  cJSON_AddNumberToObject (f, "attempts", work->attempts + 1);
  emit (e, "file_failed", f);
  g_info ("%s failed (%s): %s", path, type, message ? message : "");
}

/* A filtered item leaves the queue and is recorded as filtered (store_work_skip): no backoff,
 * not a failure. The store queues it again when a delta reports it again, and a "full" start
 * re-reports everything, so a changed filter takes effect there; this run reports it as
 * filtered. */
/* The end of filtering @path: its stale objects unlinked, the status and the event. */
static void
report_filtered (SyncEngine *e, const char *path, const char *reason, GPtrArray *stale)
{
  for (guint i = 0; stale && i < stale->len; i++)
    {
      g_autofree char *p = g_build_filename (e->objects_dir, (const char *) stale->pdata[i], NULL);
      if (g_unlink (p) != 0 && errno != ENOENT)
        g_warning ("unlink(%s): %s", p, g_strerror (errno));
    }
  sync_status_file_filtered (e->status, path, reason);
  cJSON *f = fields_path (path);
  cJSON_AddStringToObject (f, "reason", reason);
  emit (e, "file_filtered", f);
}

static void
record_filtered (Run *run, const StoreWork *work, const char *reason)
{
  SyncEngine *e = run->engine;
  g_autoptr (GError) local = NULL;
  g_autoptr (GPtrArray) stale = NULL;
  const char *path = work->path ? work->path : "";
  /* A published file that becomes filtered leaves the mount like a deleted one: where it was,
   * for the filesystem to forget, noted before the event (sync-engine.h), else the kernel
   * shows the cached entry for up to its timeout and the line overtakes the withdrawal. */
  g_mutex_lock (&e->lock);
  gboolean notify = e->notify != NULL;
  g_mutex_unlock (&e->lock);
  g_auto (StoreEntry) before = { 0 };
  gboolean had_before = notify && work->ino != 0 && store_getattr (e->store, work->ino, &before, NULL);
  if (!store_work_skip (e->store, work, reason, &stale, &local))
    g_warning ("cannot record filtered %s: %s", path, local->message);
  g_auto (StoreEntry) after = { 0 };
  if (had_before && !store_getattr (e->store, work->ino, &after, NULL))   /* withdrawn */
    engine_notify (e, SYNC_NOTIFY_PUBLISHED, before.ino, before.parent_ino, before.name);
  report_filtered (e, path, reason, stale);
}

/* ---- publishing: group commit in commit order ------------------------------------------
 *
 * Workers publish concurrently, and the change feed must list changes in the order the store
 * committed them. A lock around "publish + append" would give the order but make every file
 * its own transaction, one after another. Instead the publishes are grouped: a worker queues
 * its request; whoever finds no leader becomes it, takes every queued request, publishes them
 * in ONE store transaction (store_work_publish_batch), appends their lines in that order, and
 * hands the results back. Only the leader touches the store's publish path and the feed, so
 * batch k's lines precede batch k+1's: commit order, with one commit per batch.
 */

typedef struct {
  const StoreWork *work;
  const char      *object;
  gboolean         ok;
  gboolean         superseded;
  GError          *error;
  gboolean         done;
  /* An asynchronous request (a worker's download): the worker does not wait; whoever commits
   * the batch finishes it (publish_after or the failure path), frees it and ends the task's
   * share of run->inflight. Without this a batch could never hold more than W files, and the
   * durability flush before each commit would be paid every W files. */
  gboolean         async;
  Run             *run;
  StoreWork       *owned_work;
  char            *owned_object;
  gboolean         unverified;
  gboolean         notify;
  gboolean         had_before;
  StoreEntry       before;
} PubReq;

static void finish_async (SyncEngine *e, PubReq *r);

static gboolean
is_folder_work (const StoreWork *work)
{
  return work->item && work->item->kind == GRAPH_ITEM_FOLDER;
}

/* A folder that appears is no news for an indexer (its files are); one renamed, moved or
 * deleted is, since every path below it changed. */
static gboolean
is_news (const StoreWork *work)
{
  /* The deletion of an item the mount never showed (a failed download whose source left the
   * configuration, a tombstone for a pending file) changes nothing anyone saw; announced, it
   * read "deleted /", which a script replaying the feed could take for the whole mount. */
  if (work->action == STORE_ACTION_DELETE && !work->old_path)
    return FALSE;
  return !(is_folder_work (work) && work->action == STORE_ACTION_MKDIR && !work->old_path);
}

/* Durability before publish: the objects' bytes and their renames into objects/ must be on
 * disk before the store says the items exist, or a power cut leaves published files that are
 * empty or missing. One syncfs() of the cache file system covers a whole batch — the data of
 * every object and the directory — where an fsync per file and one of the directory cost a
 * journal commit each (it made 10,000 small files 2.5 times slower). Since Linux 5.8 syncfs
 * reports writeback errors, so a late ENOSPC fails the batch (disk_full) instead of vanishing. */
static gboolean
sync_objects_fs (SyncEngine *e, StoreWork *const *works, const char *const *objects, guint n, GError **error)
{
  const char *dir = e->objects_dir;
  int fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || syncfs (fd) != 0)
    {
      int errsv = errno;
      if (fd >= 0)
        close (fd);
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errsv), "syncfs(%s): %s", dir, g_strerror (errsv));
      return FALSE;
    }
  close (fd);
  /* The test seam sits here, behind the flush that succeeded, so a test that sees it knows
   * this batch's bytes were flushed before their commit. */
  for (guint i = 0; i < n; i++)
    if (objects[i])
      engine_hook (e, SYNC_HOOK_OBJECTS_DURABLE, works[i]->path);
  return TRUE;
}

/* Leader only: one transaction for @batch, then the feed lines and stale objects. */
static void
publish_batch_as_leader (SyncEngine *e, GPtrArray *batch)
{
  guint n = batch->len;
  g_autofree StoreWork **works = g_new (StoreWork *, n);
  g_autofree const char **objects = g_new (const char *, n);
  for (guint i = 0; i < n; i++)
    {
      PubReq *r = batch->pdata[i];
      works[i] = (StoreWork *) r->work;
      objects[i] = r->object;
    }
  g_autoptr (GPtrArray) stale = NULL;
  g_autoptr (GPtrArray) errors = NULL;
  g_autoptr (GError) first = NULL;
  gboolean any_object = FALSE;
  for (guint i = 0; i < n; i++)
    any_object |= objects[i] != NULL;
  if (!any_object || sync_objects_fs (e, works, objects, n, &first))
    store_work_publish_batch (e->store, works, objects, n, &stale, &errors, &first);

  for (guint i = 0; i < n; i++)
    {
      PubReq *r = batch->pdata[i];
      GError *err = errors && i < errors->len ? errors->pdata[i] : NULL;
      if (err)
        {
          r->error = g_steal_pointer (&errors->pdata[i]);
          continue;
        }
      if (!errors && first)
        {
          r->error = g_error_copy (first);
          continue;
        }
      r->ok = TRUE;
      /* The store hands our own object back when a later commit superseded this work:
       * nothing was published (the newer work will be), so there is no change to record. */
      for (guint k = 0; r->object && stale && k < stale->len; k++)
        r->superseded |= strcmp (r->object, stale->pdata[k]) == 0;
      if (r->superseded || !is_news (r->work))
        continue;
      const StoreWork *work = r->work;
      const GraphItem *it = work->item;
      gboolean folder = is_folder_work (work);
      gboolean with_old = work->action == STORE_ACTION_MOVE || work->action == STORE_ACTION_DELETE
                          || (work->action == STORE_ACTION_MKDIR && work->old_path);
      g_autoptr (GError) local = NULL;
      if (!sync_changes_append (e->changes, action_word (work), work->path, with_old ? work->old_path : NULL,
                                it ? it->id : NULL, folder ? -1 : it ? it->size : -1,
                                folder ? NULL : it ? it->quickxor_hash : NULL, folder, NULL, &local))
        g_warning ("change feed: %s", local->message);
    }

  for (guint i = 0; stale && i < stale->len; i++)
    {
      g_autofree char *p = g_build_filename (e->objects_dir, (const char *) stale->pdata[i], NULL);
      if (g_unlink (p) != 0 && errno != ENOENT)
        g_warning ("unlink(%s): %s", p, g_strerror (errno));
    }
}

/* Queues @req; a synchronous one returns when it is committed. Whoever finds no leader leads,
 * and a leader keeps committing batches until nothing is pending, so an asynchronous request
 * (never touched by its submitter after queueing) is never stranded. */
static void
publish_commit (SyncEngine *e, PubReq *req)
{
  gboolean async = req->async;
  g_mutex_lock (&e->publish_lock);
  g_ptr_array_add (e->pub_pending, req);
  for (;;)
    {
      gboolean mine_done = async || req->done;
      if (e->pub_leader)
        {
          if (mine_done)
            break;   /* the leader will commit (and, if async, finish) it */
          g_cond_wait (&e->pub_cond, &e->publish_lock);
          continue;
        }
      if (e->pub_pending->len == 0)
        break;
      e->pub_leader = TRUE;
      GPtrArray *batch = e->pub_pending;
      e->pub_pending = g_ptr_array_new ();
      g_mutex_unlock (&e->publish_lock);

      publish_batch_as_leader (e, batch);
      for (guint i = 0; i < batch->len; i++)
        {
          PubReq *r = batch->pdata[i];
          if (r->async)
            {
              finish_async (e, r);
              batch->pdata[i] = NULL;
            }
        }

      g_mutex_lock (&e->publish_lock);
      for (guint i = 0; i < batch->len; i++)
        if (batch->pdata[i])
          ((PubReq *) batch->pdata[i])->done = TRUE;
      g_ptr_array_free (batch, TRUE);
      e->pub_leader = FALSE;
      g_cond_broadcast (&e->pub_cond);
    }
  g_mutex_unlock (&e->publish_lock);
}

static gboolean publish_after (Run *run, PubReq *req, gboolean unverified, GError **error);

/* Publishes @work (with @object for content) through the group commit; then counts it,
 * emits its event and notifies the filesystem. */
static gboolean
publish (Run *run, const StoreWork *work, const char *object, gboolean unverified, GError **error)
{
  SyncEngine *e = run->engine;
  gboolean notify;
  g_mutex_lock (&e->lock);
  notify = e->notify != NULL;
  g_mutex_unlock (&e->lock);

  /* Where it was, for the filesystem to forget (only what was published can be somewhere). */
  g_auto (StoreEntry) before = { 0 };
  gboolean had_before = notify && work->ino != 0 && work->action != STORE_ACTION_DOWNLOAD
                        && store_getattr (e->store, work->ino, &before, NULL);

  PubReq req = { .work = work, .object = object };
  publish_commit (e, &req);
  req.notify = notify;
  req.had_before = had_before;
  req.before = before;
  before = (StoreEntry) { 0 };
  gboolean ok = publish_after (run, &req, unverified, error);
  store_entry_clear (&req.before);
  return ok;
}

/* After the commit of @req: counts it, emits its event and notifies the filesystem. */
static gboolean
publish_after (Run *run, PubReq *req, gboolean unverified, GError **error)
{
  SyncEngine *e = run->engine;
  const StoreWork *work = req->work;
  if (!req->ok)
    {
      g_propagate_error (error, req->error ? g_steal_pointer (&req->error)
                                           : g_error_new_literal (SYNC_ERROR, SYNC_ERROR_FAILED, "publish failed"));
      return FALSE;
    }
  if (req->superseded)
    {
      g_debug ("%s: superseded by a newer change; not published", work->path);
      sync_status_file_abandoned (e->status, work->path);
      return TRUE;
    }

  gboolean is_folder = is_folder_work (work);
  guint64 bytes = 0;
  if ((work->action == STORE_ACTION_DOWNLOAD || work->action == STORE_ACTION_UPDATE) && work->item && work->item->size > 0)
    bytes = (guint64) work->item->size;
  if (is_folder)
    sync_status_folder_done (e->status, outcome_for (work));
  else
    sync_status_file_done (e->status, work->path, outcome_for (work), bytes, unverified);

  /* Old place first (a move or delete), then the new one. The notes go before the event: the
   * filesystem hands an event line to a reader only once the notes queued before the line
   * was read are handled (docs/events.md), so this line's own notes must be among them. */
  if (req->had_before)
    engine_notify (e, SYNC_NOTIFY_PUBLISHED, req->before.ino, req->before.parent_ino, req->before.name);
  g_auto (StoreEntry) after = { 0 };
  if (req->notify && work->action != STORE_ACTION_DELETE && work->ino != 0 && store_getattr (e->store, work->ino, &after, NULL))
    engine_notify (e, SYNC_NOTIFY_PUBLISHED, after.ino, after.parent_ino, after.name);

  if (is_news (work))
    {
      cJSON *f = fields_path (work->path);
      cJSON_AddStringToObject (f, "action", action_word (work));
      if (work->old_path && work->action != STORE_ACTION_DOWNLOAD && work->action != STORE_ACTION_UPDATE)
        cJSON_AddStringToObject (f, "old_path", work->old_path);
      if (work->item)
        cJSON_AddStringToObject (f, "id", work->item->id);
      if (is_folder)
        cJSON_AddBoolToObject (f, "folder", 1);
      emit (e, "file_published", f);
    }
  emit_progress (e, FALSE);
  return TRUE;
}

/* ---- one file ------------------------------------------------------------------------- */

static void
on_progress (guint64 done, guint64 total, gpointer user_data)
{
  Task *t = user_data;
  if (done > t->progress_seen)
    {
      sync_status_add_bytes (t->run->engine->status, done - t->progress_seen);
      t->progress_seen = done;
    }
}

/* Returns the reason a file is filtered, or NULL. */
/* The configured filters (size, include and exclude globs) for a file of @size at @path. */
static const char *
filter_reason_for (SyncEngine *e, gint64 size, const char *path)
{
  if (e->max_file_size > 0 && size > e->max_file_size)
    return "too_large";
  if (e->include_globs->len > 0 && !glob_match_any (e->include_globs, path))
    return "not_included";
  if (e->exclude_globs->len > 0 && glob_match_any (e->exclude_globs, path))
    return "excluded";
  return NULL;
}

static const char *
filter_reason (SyncEngine *e, const StoreWork *work)
{
  const GraphItem *it = work->item;
  if (it && it->kind == GRAPH_ITEM_PACKAGE)
    return "package";
  if (it && it->kind == GRAPH_ITEM_REMOTE)
    return "remote_item";
  if (!it)
    return NULL;
  return filter_reason_for (e, it->size, work->path ? work->path : "");
}

/* A "full" start also applies today's filters to what is already published: a file that did
 * not change is not queued by its set, so a filter added or narrowed since it was published
 * would otherwise never see it. Walks the published tree; a refused file is withdrawn like a
 * filtered download (the note before the event, its object unlinked). */
static void
refilter_published (Run *run, guint64 ino, const char *dir_path, guint depth)
{
  SyncEngine *e = run->engine;
  if (depth > 4096 || g_cancellable_is_cancelled (run->cancel))
    return;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) entries = store_readdir (e->store, ino, &error);
  if (entries == NULL)
    {
      g_warning ("filters not applied under %s: %s", *dir_path ? dir_path : "/", error->message);
      return;
    }
  for (guint i = 0; i < entries->len && !g_cancellable_is_cancelled (run->cancel); i++)
    {
      StoreEntry *en = entries->pdata[i];
      if (en->ino == ino)
        continue;
      g_autofree char *path = g_strconcat (dir_path, "/", en->name, NULL);
      if (en->kind == STORE_KIND_DIR)
        {
          refilter_published (run, en->ino, path, depth + 1);
          continue;
        }
      const char *reason = filter_reason_for (e, (gint64) en->size, path);
      if (reason == NULL)
        continue;
      gboolean withdrawn = FALSE;
      g_autoptr (GPtrArray) stale = NULL;
      if (!store_withdraw_file (e->store, en->ino, reason, &withdrawn, &stale, &error))
        {
          g_warning ("cannot withdraw %s: %s", path, error->message);
          g_clear_error (&error);
          continue;
        }
      if (!withdrawn)
        continue;
      engine_notify (e, SYNC_NOTIFY_PUBLISHED, en->ino, en->parent_ino, en->name);
      report_filtered (e, path, reason, stale);
    }
}

/* Writes an empty object (0-byte files need no request). */
static char *
make_empty_object (SyncEngine *e, const StoreWork *work, GError **error)
{
  g_autofree char *sid = sanitize_id (work->item ? work->item->id : NULL);
  char *name = g_strdup_printf ("%s-%08x%08x", sid, g_random_int (), g_random_int ());
  g_autofree char *path = g_build_filename (e->objects_dir, name, NULL);
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    {
      int errsv = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errsv), "open(%s): %s", path, g_strerror (errsv));
      g_free (name);
      return NULL;
    }
  close (fd);
  return name;
}

/* The partial download of @it's current content: one name per (id, hash), so a resumed
 * attempt finds it and a changed file never resumes from the old bytes. */
static char *
part_name_for (const GraphItem *it)
{
  g_autofree char *sid = sanitize_id (it->id);
  g_autofree char *shash = sanitize_id (it->quickxor_hash ? it->quickxor_hash : "nohash");
  return g_strdup_printf ("%s-%s.part", sid, shash);
}

/* Downloads @work's content; returns the object name in objects/ or NULL. */
static char *
download (Task *t, GError **error)
{
  Run *run = t->run;
  SyncEngine *e = run->engine;
  const GraphItem *it = t->work->item;
  g_autofree char *sid = sanitize_id (it->id);
  g_autofree char *part_name = part_name_for (it);
  g_autofree char *part = g_build_filename (e->tmp_dir, part_name, NULL);

  /* Without a quickXorHash nothing would check the result, and the part's name cannot tell an
   * older version's bytes from this one's: such a download always starts over. */
  int fd = open (part, O_RDWR | O_CREAT | O_CLOEXEC | (it->quickxor_hash ? 0 : O_TRUNC), 0600);
  if (fd < 0)
    {
      int errsv = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errsv), "open(%s): %s", part, g_strerror (errsv));
      return NULL;
    }
  /* A partial file from a cancelled attempt resumes with Range; its bytes were counted then. */
  off_t have = lseek (fd, 0, SEEK_END);
  t->progress_seen = have > 0 ? (guint64) have : 0;
  guint64 got = 0;
  gboolean ok = FALSE, complete = FALSE;
  if (have > 0 && have == it->size && it->quickxor_hash)
    {
      /* Already whole (an object a crash left unpublished, adopted at start): verify, reuse. */
      GraphQxHash h;
      guint8 raw[GRAPH_QXHASH_LEN];
      graph_qxhash_init (&h);
      if (lseek (fd, 0, SEEK_SET) == 0 && graph_qxhash_fd (fd, &h))
        {
          graph_qxhash_final (&h, raw);
          complete = graph_qxhash_matches (it->quickxor_hash, raw);
        }
      if (!complete && ftruncate (fd, 0) != 0)
        g_debug ("ftruncate(%s): %s", part, g_strerror (errno));
    }
  if (complete)
    ok = TRUE;
  else
    ok = graph_client_download (e->client, it->drive_id, it->id, it->quickxor_hash, fd, run->cancel,
                                on_progress, t, &got, error);
  /* No fsync here: the publish leader makes the whole batch durable with one syncfs() before
   * the store commit (see sync_objects_fs). A crash before that leaves an unpublished object,
   * which the next start collects. */
  close (fd);
  if (!ok)
    {
      /* Keep what a cancel interrupted (the next run resumes); anything else starts over. */
      if (!g_error_matches (*error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED))
        g_unlink (part);
      return NULL;
    }

  char *name = g_strdup_printf ("%s-%08x%08x", sid, g_random_int (), g_random_int ());
  g_autofree char *object = g_build_filename (e->objects_dir, name, NULL);
  if (rename (part, object) != 0)
    {
      int errsv = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (errsv), "rename(%s): %s", object, g_strerror (errsv));
      g_unlink (part);
      g_free (name);
      return NULL;
    }
  return name;
}

static void
process_file (Task *t)
{
  Run *run = t->run;
  SyncEngine *e = run->engine;
  StoreWork *work = t->work;
  const GraphItem *it = work->item;
  g_autoptr (GError) error = NULL;
  g_autofree char *object = NULL;
  gboolean unverified = FALSE;

  if (!it)
    {
      record_failure (run, work, "download_error", "work item without remote state");
      return;
    }
  if (run->cache_fs_bytes > 0 && it->size > 0 && (guint64) it->size > run->cache_fs_bytes)
    {
      record_failure (run, work, "too_large", "larger than the cache file system");
      return;
    }
  if (it->size == 0)
    object = make_empty_object (e, work, &error);
  else
    {
      unverified = it->quickxor_hash == NULL;
      object = download (t, &error);
    }

  if (!object)
    {
      const char *type = error_type_for (error);
      if (strcmp (type, "cancelled") == 0)
        {
          /* Not a failure: the work stays queued as it was. */
          sync_status_file_abandoned (e->status, work->path);
          emit (e, "file_cancelled", fields_path (work->path));
          return;
        }
      record_failure (run, work, type, error->message);
      return;
    }

  /* Hand the publish to the group commit and take the next file meanwhile. */
  PubReq *req = g_new0 (PubReq, 1);
  req->async = TRUE;
  req->run = run;
  req->owned_work = g_steal_pointer (&t->work);
  req->owned_object = g_steal_pointer (&object);
  req->work = req->owned_work;
  req->object = req->owned_object;
  req->unverified = unverified;
  g_mutex_lock (&e->lock);
  req->notify = e->notify != NULL;
  g_mutex_unlock (&e->lock);
  /* As publish() does: where an update was, for the filesystem to forget. */
  req->had_before = req->notify && work->ino != 0 && work->action != STORE_ACTION_DOWNLOAD
                    && store_getattr (e->store, work->ino, &req->before, NULL);
  t->handed_off = TRUE;
  publish_commit (e, req);
}

/* Finishes an asynchronous publish (publisher thread, no lock held): what process_file would
 * have done after a synchronous publish; then the task is over for drain_queue. */
static void
finish_async (SyncEngine *e, PubReq *r)
{
  Run *run = r->run;
  g_autoptr (GError) error = NULL;
  if (!publish_after (run, r, r->unverified, &error))
    {
      g_autofree char *p = g_build_filename (e->objects_dir, r->owned_object, NULL);
      g_unlink (p);
      record_failure (run, r->owned_work, error_type_for (error), error->message);
    }
  g_clear_error (&r->error);
  store_entry_clear (&r->before);
  store_work_free (r->owned_work);
  g_free (r->owned_object);
  g_free (r);

  g_mutex_lock (&run->lock);
  run->inflight--;
  g_cond_broadcast (&run->cond);
  g_mutex_unlock (&run->lock);
}

/* The pool's function. */
static void
task_run (gpointer data, gpointer user_data)
{
  Task *t = data;
  Run *run = t->run;
  SyncEngine *e = run->engine;

  /* Post-acquire check: this worker has the task now; nothing is done for it after cancel. */
  g_rw_lock_reader_lock (&e->start_gate);
  gboolean go = !g_cancellable_is_cancelled (run->cancel);
  if (go)
    {
      sync_status_file_started (e->status, t->work->path);
      sync_events_append (e->events, "file_started", fields_path (t->work->path));
    }
  g_rw_lock_reader_unlock (&e->start_gate);

  if (go)
    {
      engine_notify (e, SYNC_NOTIFY_EVENT, 0, 0, NULL);   /* outside the gate: no lock held */
      engine_hook (e, SYNC_HOOK_TASK_ACQUIRED, t->work->path);
      process_file (t);
    }

  gboolean handed_off = t->handed_off;
  if (t->work)
    store_work_free (t->work);
  g_free (t);

  if (handed_off)
    return;   /* finish_async ends this task's share of inflight */
  g_mutex_lock (&run->lock);
  run->inflight--;
  g_cond_broadcast (&run->cond);
  g_mutex_unlock (&run->lock);
}

/* Metadata work on the run thread: mkdir, rename, move, delete, and files that need no
 * download (filtered, invalid names). */
static void
process_inline (Run *run, StoreWork *work)
{
  g_autoptr (GError) error = NULL;

  if (work->item && work->item->name_problem && work->action != STORE_ACTION_DELETE)
    {
      g_autofree char *msg = g_strdup_printf ("name cannot be a Linux file name: %s", work->item->name_problem);
      record_failure (run, work, "name_invalid", msg);
      return;
    }
  if (!publish (run, work, NULL, FALSE, &error))
    record_failure (run, work, error_type_for (error), error->message);
}

/* ---- the run --------------------------------------------------------------------------- */

static void
run_note_source_error (Run *run, const char *path, const char *message)
{
  g_mutex_lock (&run->lock);
  run->source_errors++;
  g_hash_table_add (run->failed_sources, g_strdup (path));
  g_mutex_unlock (&run->lock);
  sync_status_source_set (run->engine->status, path, "error", 0, FALSE, message);
  g_autofree char *msg = g_strdup_printf ("%s: %s", path, message);
  sync_status_set_last_error (run->engine->status, msg);
  g_warning ("source %s", msg);
}

static StoreSource *
find_store_source (GPtrArray *sources, const char *path)
{
  for (guint i = 0; sources && i < sources->len; i++)
    {
      StoreSource *s = sources->pdata[i];
      if (g_strcmp0 (s->remote_path, path) == 0)
        return s;
    }
  return NULL;
}

/* Packages (OneNote) and shortcuts to other drives are not mirrored; the store records them
 * without work, so the engine reports them here, where it still sees their kind — never a
 * silent skip (seed item 9). Delta gives no reliable path, so the path is the source plus the
 * name when the item sits directly in the source, else the name alone. */
static void
report_unmirrored (Run *run, const char *source_path, const char *source_item_id, GPtrArray *items)
{
  for (guint i = 0; i < items->len; i++)
    {
      const GraphItem *it = items->pdata[i];
      if (it->deleted || (it->kind != GRAPH_ITEM_PACKAGE && it->kind != GRAPH_ITEM_REMOTE))
        continue;
      g_mutex_lock (&run->lock);
      gboolean fresh = g_hash_table_add (run->unmirrored, g_strdup (it->id));
      g_mutex_unlock (&run->lock);
      if (!fresh)
        continue;   /* duplicates in one set are one item */
      g_autofree char *p = g_strcmp0 (it->parent_id, source_item_id) == 0
                               ? g_build_filename (source_path, it->name ? it->name : it->id, NULL)
                               : g_strdup (it->name ? it->name : it->id);
      const char *reason = it->kind == GRAPH_ITEM_PACKAGE ? "package" : "remote_item";
      sync_status_add_total (run->engine->status, 1);   /* it is a file of this run, too */
      sync_status_file_filtered (run->engine->status, p, reason);
      cJSON *f = fields_path (p);
      cJSON_AddStringToObject (f, "reason", reason);
      emit (run->engine, "file_filtered", f);
    }
}

/* Tracks the distinct live files of a set (the last occurrence of an id wins, as in the store). */
static void
note_set_files (GHashTable *set_files, GPtrArray *items)
{
  for (guint i = 0; i < items->len; i++)
    {
      const GraphItem *it = items->pdata[i];
      if (!it->deleted && it->kind == GRAPH_ITEM_FILE)
        g_hash_table_add (set_files, g_strdup (it->id));
      else
        g_hash_table_remove (set_files, it->id);
    }
}

/* Reads one source's delta set into the store. Returns FALSE when the source failed or the
 * run was cancelled (the old cursor stands then). */
static gboolean
enumerate_source (Run *run, const char *path)
{
  SyncEngine *e = run->engine;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) known = store_sources (e->store, &error);
  if (!known)
    {
      run_note_source_error (run, path, error->message);
      return FALSE;
    }
  StoreSource *src = find_store_source (known, path);
  gint64 source_id;
  g_autofree char *drive_id = NULL, *item_id = NULL, *cursor = NULL;
  gint64 last_completed = 0;

  if (src && src->drive_id && src->item_id)
    {
      source_id = src->id;
      drive_id = g_strdup (src->drive_id);
      item_id = g_strdup (src->item_id);
      cursor = g_strdup (src->cursor);
      last_completed = src->last_completed;
    }
  else
    {
      g_autoptr (GraphItem) item = graph_client_item_by_path (e->client, NULL, path, run->cancel, &error);
      if (!item)
        {
          if (!g_cancellable_is_cancelled (run->cancel))
            run_note_source_error (run, path, error->message);
          return FALSE;
        }
      if (item->kind != GRAPH_ITEM_FOLDER)
        {
          run_note_source_error (run, path, "not a folder");
          return FALSE;
        }
      if (!store_source_ensure (e->store, path, item->drive_id, item->id, &source_id, &error))
        {
          run_note_source_error (run, path, error->message);
          return FALSE;
        }
      drive_id = g_strdup (item->drive_id);
      item_id = g_strdup (item->id);
    }

  gboolean reconcile = FALSE;
  const char *resync_reason = NULL;
  if ((run->flags & SYNC_START_FULL) && cursor)
    {
      if (!store_source_reset_cursor (e->store, source_id, &error))
        {
          run_note_source_error (run, path, error->message);
          return FALSE;
        }
      g_clear_pointer (&cursor, g_free);
      reconcile = TRUE;
      resync_reason = "full_start";
    }
  else if (run->flags & SYNC_START_FULL)
    reconcile = TRUE, resync_reason = "full_start";
  else if (src && !cursor)
    {
      /* A source the store knows, without a cursor: its items from earlier sets may include
       * some that are gone now (a full start or resync that failed or was cancelled before its
       * commit, a source configured again after its cursor was dropped). The enumeration lists
       * everything, so it reconciles: the server wins, nothing deleted meanwhile stays. */
      reconcile = TRUE;
      resync_reason = "no_cursor";
    }

  /* Business drives may refuse folder-scoped delta: such a source reads the root delta and
   * filters it by ancestry (root-delta.c); the mode persists next to the cache. */
  g_autofree char *modes_dir = g_build_filename (e->cache_dir, MODES_DIR, NULL);
  g_autoptr (SyncRootDelta) rd = sync_root_delta_load (modes_dir, source_id);
  if (sync_root_delta_active (rd) && !cursor)
    sync_root_delta_activate (rd);   /* a fresh enumeration rebuilds what is known */

  sync_status_source_set (e->status, path, "enumerating", last_completed, cursor != NULL, NULL);

  gboolean resynced = FALSE;
  for (;;)
    {
      gboolean root_mode = sync_root_delta_active (rd);
      g_autoptr (GPtrArray) set = root_mode ? g_ptr_array_new_with_free_func ((GDestroyNotify) graph_item_free) : NULL;
      g_autoptr (GHashTable) set_files = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
      gboolean switch_to_root = FALSE;
      if (!store_stage_begin (e->store, source_id, &error))
        {
          run_note_source_error (run, path, error->message);
          return FALSE;
        }
      g_autofree char *link = g_strdup (cursor);
      g_autofree char *delta_link = NULL;
      gboolean resync = FALSE;
      guint pages = 0;
      while (!delta_link)
        {
          if (g_cancellable_is_cancelled (run->cancel))
            return FALSE;
          g_autoptr (GraphDeltaPage) page
              = graph_client_delta (e->client, link, drive_id, root_mode ? NULL : item_id, run->cancel, &error);
          if (!page)
            {
              if (g_error_matches (error, GRAPH_ERROR, GRAPH_ERROR_RESYNC_REQUIRED) && !resynced)
                {
                  resync = TRUE;
                  break;
                }
              if (g_error_matches (error, GRAPH_ERROR, GRAPH_ERROR_NOT_SUPPORTED) && !root_mode)
                {
                  switch_to_root = TRUE;
                  break;
                }
              if (!g_cancellable_is_cancelled (run->cancel))
                run_note_source_error (run, path, error->message);
              return FALSE;
            }
          pages++;
          for (guint i = 0; page->item_errors && i < page->item_errors->len; i++)
            g_warning ("%s: item skipped by the parser: %s", path, (const char *) page->item_errors->pdata[i]);
          if (root_mode)
            {
              /* Ancestry needs the whole set (a child may come before its parent). */
              for (guint i = 0; i < page->items->len; i++)
                g_ptr_array_add (set, graph_item_copy (page->items->pdata[i]));
            }
          else
            {
              report_unmirrored (run, path, item_id, page->items);
              note_set_files (set_files, page->items);
            }
          if (!root_mode && page->items->len > 0 && !store_stage_add (e->store, source_id, page->items, &error))
            {
              run_note_source_error (run, path, error->message);
              return FALSE;
            }
          g_free (link);
          link = g_strdup (page->next_link);
          delta_link = g_strdup (page->delta_link);
          if (!delta_link && !link)
            {
              run_note_source_error (run, path, "delta page without a link");
              return FALSE;
            }
        }

      if (switch_to_root)
        {
          /* notSupported: read the root delta from now on. What the folder cursor covered is
           * reconciled against a fresh enumeration. */
          g_info ("%s: folder-scoped delta not supported: root delta filtered by ancestry", path);
          g_clear_error (&error);
          sync_root_delta_activate (rd);
          if (!sync_root_delta_save (rd, &error)
              || (cursor && !store_source_reset_cursor (e->store, source_id, &error)))
            {
              run_note_source_error (run, path, error->message);
              return FALSE;
            }
          if (cursor)
            reconcile = TRUE, resync_reason = "delta_mode_changed";
          g_clear_pointer (&cursor, g_free);
          cJSON *f = fields_path (path);
          cJSON_AddStringToObject (f, "mode", "root");
          emit (e, "source_delta_mode", f);
          continue;
        }

      if (resync)
        {
          /* 410: the cursor is dead (even in the middle of a set). Enumerate everything and let
           * the server win. */
          g_info ("%s: resync required: full enumeration with reconciliation", path);
          g_clear_error (&error);
          if (!store_source_reset_cursor (e->store, source_id, &error))
            {
              run_note_source_error (run, path, error->message);
              return FALSE;
            }
          g_clear_pointer (&cursor, g_free);
          reconcile = TRUE;
          resynced = TRUE;
          resync_reason = "resync_required";
          if (root_mode)
            sync_root_delta_activate (rd);
          cJSON *f = fields_path (path);
          cJSON_AddStringToObject (f, "reason", resync_reason);
          emit (e, "source_resync", f);
          continue;
        }

      if (g_cancellable_is_cancelled (run->cancel))
        return FALSE;   /* decided before the commit: the old cursor stands */

      if (root_mode)
        {
          /* Known ids grow before the commit, shrink after it (see root-delta.c). */
          g_autoptr (GPtrArray) mine = sync_root_delta_filter (rd, item_id, set, cursor != NULL);
          if (sync_root_delta_needs_rescan (rd))
            {
              g_info ("%s: a folder moved in from outside: enumerating the root delta afresh", path);
              sync_root_delta_activate (rd);
              if (!store_source_reset_cursor (e->store, source_id, &error))
                {
                  run_note_source_error (run, path, error->message);
                  return FALSE;
                }
              g_clear_pointer (&cursor, g_free);
              reconcile = TRUE;
              resync_reason = "folder_moved_in";
              cJSON *f = fields_path (path);
              cJSON_AddStringToObject (f, "reason", resync_reason);
              emit (e, "source_resync", f);
              continue;
            }
          report_unmirrored (run, path, item_id, mine);
          note_set_files (set_files, mine);
          if (!sync_root_delta_save (rd, &error)
              || (mine->len > 0 && !store_stage_add (e->store, source_id, mine, &error)))
            {
              run_note_source_error (run, path, error->message);
              return FALSE;
            }
          g_debug ("%s: root delta: %u of %u items are the source's", path, mine->len, set->len);
        }

      StoreCommitStats stats = { 0 };
      if (!store_stage_commit (e->store, source_id, delta_link, reconcile, &stats, &error))
        {
          run_note_source_error (run, path, error->message);
          return FALSE;
        }
      engine_hook (e, SYNC_HOOK_SET_COMMITTED, path);
      if (root_mode)
        {
          sync_root_delta_forget_left (rd);
          if (!sync_root_delta_save (rd, &error))
            {
              /* The commit stands; a superset of known ids is harmless. */
              g_warning ("%s: %s", path, error->message);
              g_clear_error (&error);
            }
        }
      g_debug ("%s: %u pages; queued %u downloads, %u updates, %u moves, %u deletes; %u unchanged", path, pages,
               stats.queued_downloads, stats.queued_updates, stats.queued_moves, stats.queued_deletes, stats.unchanged);
      /* The store's "unchanged" also counts folders and tombstones; the status counts files:
       * the set's live files that got no download, update or move (see docs/status.md). */
      guint queued_files = stats.queued_downloads + stats.queued_updates + stats.queued_moves;
      guint set_file_count = g_hash_table_size (set_files);
      sync_status_add_unchanged (e->status, set_file_count > queued_files ? set_file_count - queued_files : 0);
      if (reconcile)
        sync_status_source_resync (e->status, path, resync_reason, stats.queued_deletes);
      sync_status_source_set (e->status, path, "processing", last_completed, TRUE, NULL);
      g_mutex_lock (&run->lock);
      run->sources_ok++;
      g_mutex_unlock (&run->lock);
      return TRUE;
    }
}

/* run_started goes out once the sources are enumerated, so that it (and every status read it
 * triggers) already knows the run's total; a run that ends earlier announces itself then. */
static void
announce_started (Run *run)
{
  SyncEngine *e = run->engine;
  if (run->announced)
    return;
  run->announced = TRUE;
  cJSON *f = cJSON_CreateObject ();
  cJSON_AddNumberToObject (f, "run_id", (double) run->run_id);
  cJSON_AddBoolToObject (f, "full", (run->flags & SYNC_START_FULL) != 0);
  cJSON_AddBoolToObject (f, "clear_exclusions", (run->flags & SYNC_START_CLEAR_EXCLUSIONS) != 0);
  emit (e, "run_started", f);
  engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);
}

static void
wait_inflight_below (Run *run, guint limit)
{
  g_mutex_lock (&run->lock);
  while (run->inflight > limit)
    g_cond_wait (&run->cond, &run->lock);
  g_mutex_unlock (&run->lock);
}

static void
drain_queue (Run *run)
{
  SyncEngine *e = run->engine;
  g_autoptr (GError) error = NULL;
  /* `total` counts files (what a person follows), so the due work is counted once up front,
   * folders left out: one read pass over the queue, cheap beside the work itself. */
  guint total = 0;
  for (gint64 after = 0;;)
    {
      g_autoptr (GPtrArray) batch = store_work_next (e->store, after, 1000, &error);
      if (!batch)
        {
          g_warning ("work count: %s", error->message);
          g_clear_error (&error);
          break;
        }
      if (batch->len == 0)
        break;
      for (guint i = 0; i < batch->len; i++)
        {
          StoreWork *w = batch->pdata[i];
          after = MAX (after, w->work_id);
          total += !(w->item && w->item->kind == GRAPH_ITEM_FOLDER);
        }
    }
  sync_status_add_total (e->status, total);
  g_debug ("%u files due", total);
  announce_started (run);

  GThreadPool *pool = g_thread_pool_new (task_run, run, (gint) e->workers, FALSE, &error);
  if (!pool)
    {
      g_mutex_lock (&run->lock);
      run->fatal = g_strdup_printf ("thread pool: %s", error->message);
      g_mutex_unlock (&run->lock);
      return;
    }

  gint64 after = 0;
  while (!g_cancellable_is_cancelled (run->cancel))
    {
      g_autoptr (GPtrArray) batch = store_work_next (e->store, after, DISPATCH_BATCH, &error);
      if (!batch)
        {
          g_mutex_lock (&run->lock);
          run->fatal = g_strdup_printf ("work queue: %s", error->message);
          g_mutex_unlock (&run->lock);
          break;
        }
      if (batch->len == 0)
        break;
      for (guint i = 0; i < batch->len; i++)
        {
          StoreWork *work = batch->pdata[i];
          after = MAX (after, work->work_id);
          if (g_cancellable_is_cancelled (run->cancel))
            break;
          gboolean is_file = work->action == STORE_ACTION_DOWNLOAD || work->action == STORE_ACTION_UPDATE;
          const char *reason = is_file ? filter_reason (e, work) : NULL;
          if (reason)
            record_filtered (run, work, reason);
          else if (is_file && !(work->item && work->item->name_problem))
            {
              Task *t = g_new0 (Task, 1);
              t->run = run;
              t->work = g_steal_pointer (&batch->pdata[i]);
              /* Bounded: a cancel has little queued to skip and memory stays flat. */
              wait_inflight_below (run, 2 * e->workers);
              g_mutex_lock (&run->lock);
              run->inflight++;
              g_mutex_unlock (&run->lock);
              if (!g_thread_pool_push (pool, t, &error))
                {
                  g_warning ("thread pool push: %s", error->message);
                  g_clear_error (&error);
                  store_work_free (t->work);
                  g_free (t);
                  g_mutex_lock (&run->lock);
                  run->inflight--;
                  g_mutex_unlock (&run->lock);
                }
            }
          else
            {
              /* The post-acquire check holds for inline work too. */
              g_rw_lock_reader_lock (&e->start_gate);
              gboolean go = !g_cancellable_is_cancelled (run->cancel);
              g_rw_lock_reader_unlock (&e->start_gate);
              if (!go)
                break;
              process_inline (run, work);
            }
        }
    }

  /* Every pushed task runs; after a cancel each returns at its check. */
  wait_inflight_below (run, 0);
  g_thread_pool_free (pool, FALSE, TRUE);
}

/* Partial downloads are kept across a cancel or a crash so the next attempt resumes with
 * Range; one whose work never comes back (the file was deleted or changed meanwhile: its name
 * carries the hash it was for) would stay forever. A week without a touch is the limit. */
#define PART_MAX_AGE_S (7 * 24 * 3600)

static void
clean_tmp (SyncEngine *e)
{
  g_autoptr (GDir) d = g_dir_open (e->tmp_dir, 0, NULL);
  const char *name;
  gint64 now = g_get_real_time () / G_USEC_PER_SEC;
  while (d && (name = g_dir_read_name (d)))
    {
      g_autofree char *p = g_build_filename (e->tmp_dir, name, NULL);
      GStatBuf st;
      if (g_stat (p, &st) == 0 && S_ISREG (st.st_mode) && now - (gint64) st.st_mtime > PART_MAX_AGE_S)
        {
          g_debug ("removing the stale partial download %s", name);
          g_unlink (p);
        }
    }
}

/* Crash hygiene, at engine start (no run, no worker can be renaming or publishing now):
 *  - an object in objects/ that no item holds (in the visible tree or not) is an orphan of a
 *    crash between its rename and the publish commit (or of an unlink that never happened):
 *    removed;
 *  - a tmp/ file that no pending download would resume (its name is per id and hash, see
 *    part_name_for) is a leftover of work that is gone or changed: removed.
 * When the store cannot be read completely nothing is removed: an object wrongly taken for an
 * orphan would be a published file without bytes. */
static void
collect_orphans (SyncEngine *e)
{
  g_autoptr (GError) error = NULL;
  guint removed_objects = 0, removed_parts = 0, adopted = 0;
  g_autoptr (GHashTable) resumable = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr (GHashTable) by_sid = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  gboolean complete = TRUE;
  for (gint64 after = 0;;)
    {
      g_autoptr (GPtrArray) batch = store_work_next (e->store, after, DISPATCH_BATCH, &error);
      if (!batch)
        {
          g_warning ("partial downloads not checked: %s", error->message);
          complete = FALSE;
          break;
        }
      if (batch->len == 0)
        break;
      for (guint i = 0; i < batch->len; i++)
        {
          const StoreWork *w = batch->pdata[i];
          /* Only a hash makes a partial download or an adopted object safe to reuse: it is
           * what download() verifies the whole against. */
          if (w->item && w->item->quickxor_hash
              && (w->action == STORE_ACTION_DOWNLOAD || w->action == STORE_ACTION_UPDATE))
            {
              g_hash_table_add (resumable, part_name_for (w->item));
              g_hash_table_insert (by_sid, sanitize_id (w->item->id), part_name_for (w->item));
            }
          after = MAX (after, w->work_id);
        }
    }
  /* Referenced means held by any item, not reachable in the mount: an item whose folder was
   * deleted before its own move was applied (a cancel between the two publishes) is out of the
   * tree, and unlinking its object would publish the move without bytes. */
  g_clear_error (&error);
  g_autoptr (GHashTable) refs = store_cache_objects (e->store, &error);
  if (refs != NULL)
    {
      g_autoptr (GDir) d = g_dir_open (e->objects_dir, 0, NULL);
      const char *name;
      while (d && (name = g_dir_read_name (d)))
        {
          if (g_hash_table_contains (refs, name))
            continue;
          g_autofree char *p = g_build_filename (e->objects_dir, name, NULL);
          /* An object is "<sanitized id>-<16 hex>": when pending work wants that item, the
           * bytes become its partial download again (download() verifies and reuses a whole
           * one), so a crash after a download never costs a second one. */
          gsize len = strlen (name);
          g_autofree char *sid = len > 17 ? g_strndup (name, len - 17) : NULL;
          const char *part_name = sid && complete ? g_hash_table_lookup (by_sid, sid) : NULL;
          g_autofree char *part = part_name ? g_build_filename (e->tmp_dir, part_name, NULL) : NULL;
          if (part && !g_file_test (part, G_FILE_TEST_EXISTS) && rename (p, part) == 0)
            adopted++;
          else if (g_unlink (p) == 0)
            removed_objects++;
          else
            g_warning ("unlink(%s): %s", p, g_strerror (errno));
        }
    }
  else
    g_warning ("cache objects not checked for orphans: %s", error->message);
  g_clear_error (&error);

  if (complete)
    {
      g_autoptr (GDir) d = g_dir_open (e->tmp_dir, 0, NULL);
      const char *name;
      while (d && (name = g_dir_read_name (d)))
        {
          if (g_hash_table_contains (resumable, name))
            continue;
          g_autofree char *p = g_build_filename (e->tmp_dir, name, NULL);
          if (g_unlink (p) == 0)
            removed_parts++;
        }
    }
  if (removed_objects || removed_parts || adopted)
    g_info ("cache: removed %u orphaned object(s) and %u partial download(s) nothing will resume; "
            "%u unpublished object(s) kept for their pending work", removed_objects, removed_parts, adopted);
}

static gpointer
run_main (gpointer data)
{
  Run *run = data;
  SyncEngine *e = run->engine;
  g_autoptr (GError) error = NULL;

  if (!store_run_begin (e->store, &run->run_id, &error))
    {
      run->fatal = g_strdup_printf ("store: %s", error->message);
      g_clear_error (&error);
    }
  sync_status_begin_run (e->status, run->run_id);
  engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);

  if (!run->fatal && (run->flags & SYNC_START_CLEAR_EXCLUSIONS))
    {
      guint back = 0;
      if (!store_clear_exclusions (e->store, &back, &error))
        {
          run->fatal = g_strdup_printf ("clear exclusions: %s", error->message);
          g_clear_error (&error);
        }
      else
        g_info ("%u excluded items come back", back);
    }

  clean_tmp (e);
  struct statvfs sv;
  if (statvfs (e->cache_dir, &sv) == 0)
    run->cache_fs_bytes = (guint64) sv.f_blocks * sv.f_frsize;

  if (!run->fatal)
    {
      for (guint i = 0; i < e->sources->len && !g_cancellable_is_cancelled (run->cancel); i++)
        {
          EngineSource *s = e->sources->pdata[i];
          if (s->overlapped)
            continue;
          enumerate_source (run, s->path);
        }
      if ((run->flags & SYNC_START_FULL) && !g_cancellable_is_cancelled (run->cancel)
          && (e->max_file_size > 0 || e->include_globs->len > 0 || e->exclude_globs->len > 0))
        refilter_published (run, STORE_ROOT_INO, "", 0);
      /* The queue holds this run's sets and whatever earlier runs left (failures, cancels). */
      if (!g_cancellable_is_cancelled (run->cancel))
        drain_queue (run);
    }

  engine_hook (e, SYNC_HOOK_BEFORE_DECIDE, NULL);

  SyncCounters c;
  sync_status_counters (e->status, &c);
  SyncState want;
  g_mutex_lock (&run->lock);
  guint configured = 0;
  for (guint i = 0; i < e->sources->len; i++)
    configured += !((EngineSource *) e->sources->pdata[i])->overlapped;
  if (run->fatal || (configured > 0 && run->sources_ok == 0))
    want = SYNC_STATE_FAILED;
  else if (run->source_errors > 0 || c.files_failed > 0)
    want = SYNC_STATE_COMPLETED_WITH_ERRORS;
  else
    want = SYNC_STATE_COMPLETED;
  g_autofree char *fatal = g_strdup (run->fatal);
  g_mutex_unlock (&run->lock);

  SyncState final = sync_run_state_finish (e->rs, run->run_seq, want);
  if (fatal)
    sync_status_set_last_error (e->status, fatal);
  else if (final == SYNC_STATE_COMPLETED_WITH_ERRORS && c.files_failed > 0)
    {
      g_autofree char *msg = g_strdup_printf ("%u file(s) failed; they stay queued for the next run", c.files_failed);
      sync_status_set_last_error (e->status, msg);
    }


  sync_status_counters (e->status, &c);
  StoreRunCounters rc = {
    .processed = c.files_processed, .unchanged = c.files_unchanged, .failed = c.files_failed,
    .filtered = c.files_filtered, .deleted = c.deleted_count, .renamed = c.renamed_count,
    .bytes = c.bytes_downloaded,
  };
  if (run->run_id > 0)
    {
      g_autoptr (GError) local = NULL;
      if (!store_run_finish (e->store, run->run_id, sync_state_to_string (final), &rc, fatal, &local))
        g_warning ("cannot record run %" G_GINT64_FORMAT ": %s", run->run_id, local->message);
    }
  /* Sources that did their part say how the run left them (an "error" stays as set). Read
   * after store_run_finish(), which records last_completed for a completed run. */
  g_autoptr (GPtrArray) known = store_sources (e->store, NULL);
  for (guint k = 0; k < e->sources->len; k++)
    {
      EngineSource *s = e->sources->pdata[k];
      StoreSource *st = find_store_source (known, s->path);
      if (s->overlapped || g_hash_table_contains (run->failed_sources, s->path))
        continue;
      sync_status_source_set (e->status, s->path, final == SYNC_STATE_CANCELLED ? "idle" : "completed",
                              st ? st->last_completed : 0, st && st->cursor, NULL);
    }
  {
    g_autoptr (GError) local = NULL;
    if (!sync_changes_flush (e->changes, &local))
      g_warning ("change feed: %s", local->message);
  }
  /* A big run leaves the writer's page cache full and the staged set's memory with the C
   * library: a mount that sits idle between syncs should not keep either. */
  store_trim_memory (e->store);

  announce_started (run);
  cJSON *f = cJSON_CreateObject ();
  cJSON_AddNumberToObject (f, "run_id", (double) run->run_id);
  cJSON_AddStringToObject (f, "state", sync_state_to_string (final));
  cJSON_AddNumberToObject (f, "files_processed", c.files_processed);
  cJSON_AddNumberToObject (f, "files_failed", c.files_failed);
  emit (e, "run_finished", f);
  g_info ("run %" G_GINT64_FORMAT " %s: %u processed, %u unchanged, %u failed, %u filtered, %u deleted, %u renamed",
          run->run_id, sync_state_to_string (final), c.files_processed, c.files_unchanged, c.files_failed,
          c.files_filtered, c.deleted_count, c.renamed_count);

  guint64 seq = run->run_seq;
  g_object_unref (run->cancel);
  g_mutex_clear (&run->lock);
  g_cond_clear (&run->cond);
  g_free (run->fatal);
  g_hash_table_unref (run->failed_sources);
  g_hash_table_unref (run->unmirrored);
  g_free (run);

  sync_run_state_release (e->rs, seq);
  engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);
  return NULL;
}

/* ---- periodic sync --------------------------------------------------------------------- */

static gpointer
timer_main (gpointer data)
{
  SyncEngine *e = data;
  g_mutex_lock (&e->timer_lock);
  while (!e->stopping)
    {
      gint64 until = g_get_monotonic_time () + (gint64) e->sync_interval * G_USEC_PER_SEC;
      while (!e->stopping && g_cond_wait_until (&e->timer_cond, &e->timer_lock, until))
        ;
      if (e->stopping)
        break;
      g_mutex_unlock (&e->timer_lock);
      /* A run in progress is not news: the periodic start skips quietly. */
      sync_engine_start (e, SYNC_START_PERIODIC, NULL);
      g_mutex_lock (&e->timer_lock);
    }
  g_mutex_unlock (&e->timer_lock);
  return NULL;
}

/* ---- sources no longer configured -------------------------------------------------------- */

static gboolean
engine_configures (SyncEngine *e, const char *remote_path)
{
  for (guint i = 0; i < e->sources->len; i++)
    if (g_strcmp0 (((EngineSource *) e->sources->pdata[i])->path, remote_path) == 0)
      return TRUE;   /* covered ones too: their mode and cursor still belong together */
  return FALSE;
}

static StoreSource *
find_store_source_id (GPtrArray *sources, gint64 id)
{
  for (guint i = 0; sources && i < sources->len; i++)
    if (((StoreSource *) sources->pdata[i])->id == id)
      return sources->pdata[i];
  return NULL;
}

/* A source in root-delta mode keeps its known ids in MODES_DIR/source-<id>.json. When the
 * source leaves the configuration nothing reads that file again, so it is removed here, at
 * engine start (no run yet) — only names root-delta.c itself writes, only for sources the store
 * does not list or that are not configured. The mode and the cursor belong together: a
 * root-mode cursor is a root deltaLink, and without its file a later configuration of the same
 * path would follow it as the folder's cursor and take in the whole drive. So the cursor is
 * dropped first (the next enumeration of that source is a fresh, reconciling one), then the
 * file; a crash in between leaves a file the next start removes. When the store cannot list
 * its sources nothing is removed. */
static void
forget_unconfigured_modes (SyncEngine *e, GPtrArray *known)
{
  if (!known)
    return;
  g_autofree char *dir = g_build_filename (e->cache_dir, MODES_DIR, NULL);
  g_autoptr (GDir) d = g_dir_open (dir, 0, NULL);
  const char *name;
  while (d && (name = g_dir_read_name (d)))
    {
      gint64 id;
      if (!sync_root_delta_file_id (name, &id))
        continue;
      StoreSource *st = find_store_source_id (known, id);
      if (st && engine_configures (e, st->remote_path))
        continue;
      g_autoptr (GError) error = NULL;
      if (st && st->cursor && !store_source_reset_cursor (e->store, id, &error))
        {
          g_warning ("%s: cannot drop the cursor of the unconfigured source %s: %s (mode file kept)", name,
                     st->remote_path, error->message);
          continue;
        }
      g_autofree char *p = g_build_filename (dir, name, NULL);
      if (g_unlink (p) != 0 && errno != ENOENT)
        g_warning ("unlink(%s): %s", p, g_strerror (errno));
      else
        g_info ("%s: removed the root-delta state of %s, no longer configured", name,
                st ? st->remote_path : "a source the store does not know");
    }
}

/* A source that left the configuration leaves the mount too: the store queues the deletion
 * of what only it showed, and the next run applies it like a remote deletion (events, change
 * feed). Configured again later, it is enumerated afresh. */
static void
remove_unconfigured_sources (SyncEngine *e, GPtrArray *known)
{
  for (guint i = 0; known && i < known->len; i++)
    {
      StoreSource *st = known->pdata[i];
      if (engine_configures (e, st->remote_path))
        continue;
      g_autoptr (GError) error = NULL;
      guint deletes = 0;
      if (!store_source_remove (e->store, st->id, &deletes, &error))
        g_warning ("cannot remove the unconfigured source %s: %s", st->remote_path, error->message);
      else
        g_info ("%s is no longer configured: %u item(s) leave the mount at the next run",
                st->remote_path, deletes);
    }
}

/* ---- public ---------------------------------------------------------------------------- */

static void
engine_source_free (gpointer p)
{
  EngineSource *s = p;
  g_free (s->path);
  g_free (s->covered_by);
  g_free (s);
}

/* "/Documents/" → "/Documents"; "" → "/". */
static char *
normalize_source (const char *path)
{
  g_autofree char *p = g_strstrip (g_strdup (path));
  GString *out = g_string_new ("");
  g_auto (GStrv) parts = g_strsplit (p, "/", -1);
  for (guint i = 0; parts[i]; i++)
    if (*parts[i])
      g_string_append_printf (out, "/%s", parts[i]);
  if (out->len == 0)
    g_string_append_c (out, '/');
  return g_string_free (out, FALSE);
}

static gboolean
path_within (const char *inner, const char *outer)
{
  if (strcmp (outer, "/") == 0)
    return TRUE;
  gsize n = strlen (outer);
  return g_ascii_strncasecmp (inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

static void
spec_free (gpointer p)
{
  g_pattern_spec_free (p);
}

SyncEngine *
sync_engine_new (const SyncConfig *config, Store *store, GraphClient *client, GError **error)
{
  if (!config || !config->cache_dir || !store || !client)
    {
      g_set_error_literal (error, SYNC_ERROR, SYNC_ERROR_INVALID, "engine needs a cache dir, a store and a client");
      return NULL;
    }

  g_autoptr (GError) local = NULL;
  g_autofree char *objects = g_build_filename (config->cache_dir, "objects", NULL);
  g_autofree char *tmp = g_build_filename (config->cache_dir, "tmp", NULL);
  if (g_mkdir_with_parents (objects, 0700) != 0 || g_mkdir_with_parents (tmp, 0700) != 0)
    {
      int errsv = errno;
      g_set_error (error, SYNC_ERROR, SYNC_ERROR_FAILED, "mkdir(%s): %s", config->cache_dir, g_strerror (errsv));
      return NULL;
    }
  SyncChanges *changes = sync_changes_open (config->cache_dir, 0, &local);
  if (!changes)
    {
      g_set_error (error, SYNC_ERROR, SYNC_ERROR_FAILED, "change feed: %s", local->message);
      return NULL;
    }

  SyncEngine *e = g_new0 (SyncEngine, 1);
  e->workers = config->workers ? config->workers : 4;
  e->cache_dir = g_strdup (config->cache_dir);
  e->objects_dir = g_steal_pointer (&objects);
  e->tmp_dir = g_steal_pointer (&tmp);
  e->max_file_size = config->max_file_size;
  e->sync_interval = config->sync_interval;
  e->store = store;
  e->client = client;
  e->changes = changes;
  e->status = sync_status_new ();
  e->events = sync_events_new (0);
  g_rw_lock_init (&e->start_gate);
  g_mutex_init (&e->publish_lock);
  g_cond_init (&e->pub_cond);
  e->pub_pending = g_ptr_array_new ();
  g_mutex_init (&e->lock);
  g_mutex_init (&e->timer_lock);
  g_cond_init (&e->timer_cond);
  collect_orphans (e);

  e->include_globs = g_ptr_array_new_with_free_func (spec_free);
  e->exclude_globs = g_ptr_array_new_with_free_func (spec_free);
  for (guint i = 0; config->include_globs && config->include_globs[i]; i++)
    g_ptr_array_add (e->include_globs, g_pattern_spec_new (config->include_globs[i]));
  for (guint i = 0; config->exclude_globs && config->exclude_globs[i]; i++)
    g_ptr_array_add (e->exclude_globs, g_pattern_spec_new (config->exclude_globs[i]));

  /* Overlapping sources (seed item 7) would process the same items twice: the inner one is
   * kept in the status as covered by the outer one and not synced on its own. */
  e->sources = g_ptr_array_new_with_free_func (engine_source_free);
  for (guint i = 0; config->sources && config->sources[i]; i++)
    {
      EngineSource *s = g_new0 (EngineSource, 1);
      s->path = normalize_source (config->sources[i]);
      g_ptr_array_add (e->sources, s);
    }
  for (guint i = 0; i < e->sources->len; i++)
    for (guint k = 0; k < e->sources->len; k++)
      {
        EngineSource *a = e->sources->pdata[i], *b = e->sources->pdata[k];
        if (i == k || a->overlapped || b->overlapped)
          continue;
        /* Equal paths: the later one goes. */
        if (path_within (a->path, b->path) && (g_ascii_strcasecmp (a->path, b->path) != 0 || i > k))
          {
            a->overlapped = TRUE;
            a->covered_by = g_strdup (b->path);
          }
      }

  /* What the store remembers: an interrupted run is reported as such, never as "syncing". */
  SyncState initial = SYNC_STATE_IDLE;
  g_autoptr (StoreRun) last = store_last_run (store, &local);
  if (last)
    {
      if (!sync_state_from_string (last->state, &initial))
        initial = SYNC_STATE_IDLE;
      SyncCounters c = {
        .files_processed = last->counters.processed, .files_unchanged = last->counters.unchanged,
        .files_failed = last->counters.failed, .files_filtered = last->counters.filtered,
        .deleted_count = last->counters.deleted, .renamed_count = last->counters.renamed,
        .bytes_downloaded = last->counters.bytes,
      };
      sync_status_restore (e->status, last->id, &c, last->error_message);
    }
  g_clear_error (&local);
  e->rs = sync_run_state_new (initial);

  g_autoptr (GPtrArray) known = store_sources (store, NULL);
  forget_unconfigured_modes (e, known);
  remove_unconfigured_sources (e, known);
  for (guint i = 0; i < e->sources->len; i++)
    {
      EngineSource *s = e->sources->pdata[i];
      StoreSource *st = find_store_source (known, s->path);
      if (s->overlapped)
        {
          g_autofree char *msg = g_strdup_printf ("inside the source %s: synced as part of it", s->covered_by);
          sync_status_source_set (e->status, s->path, "covered", 0, FALSE, msg);
        }
      else
        sync_status_source_set (e->status, s->path, "idle", st ? st->last_completed : 0, st && st->cursor, NULL);
    }

  if (e->sync_interval > 0)
    e->timer_thread = g_thread_new ("odsf-sync-timer", timer_main, e);
  return e;
}

void
sync_engine_free (SyncEngine *e)
{
  if (!e)
    return;
  if (e->timer_thread)
    {
      g_mutex_lock (&e->timer_lock);
      e->stopping = TRUE;
      g_cond_broadcast (&e->timer_cond);
      g_mutex_unlock (&e->timer_lock);
      g_thread_join (e->timer_thread);
    }
  sync_engine_cancel (e);
  g_mutex_lock (&e->lock);
  GThread *t = g_steal_pointer (&e->run_thread);
  g_mutex_unlock (&e->lock);
  if (t)
    g_thread_join (t);

  sync_changes_free (e->changes);
  sync_status_free (e->status);
  sync_events_free (e->events);
  sync_run_state_free (e->rs);
  g_ptr_array_unref (e->include_globs);
  g_ptr_array_unref (e->exclude_globs);
  g_ptr_array_unref (e->sources);
  g_free (e->cache_dir);
  g_free (e->objects_dir);
  g_free (e->tmp_dir);
  g_rw_lock_clear (&e->start_gate);
  g_mutex_clear (&e->publish_lock);
  g_cond_clear (&e->pub_cond);
  g_ptr_array_unref (e->pub_pending);
  g_mutex_clear (&e->lock);
  g_mutex_clear (&e->timer_lock);
  g_cond_clear (&e->timer_cond);
  g_free (e);
}

gboolean
sync_engine_start (SyncEngine *e, SyncStartFlags flags, GError **error)
{
  if (flags & ~(SYNC_START_FULL | SYNC_START_CLEAR_EXCLUSIONS | SYNC_START_PERIODIC))
    {
      g_set_error (error, SYNC_ERROR, SYNC_ERROR_INVALID, "unknown start flags 0x%x", (guint) flags);
      return FALSE;
    }
  gboolean periodic = (flags & SYNC_START_PERIODIC) != 0;
  GCancellable *cancel = NULL;
  guint64 seq = sync_run_state_try_start (e->rs, TRUE, &cancel);
  if (seq == 0 && !periodic)
    {
      /* A run whose end is already decided (a cancel) only winds down — milliseconds, since
       * its transfers abort. "Cancel, then start" should not need the user to retry, so
       * wait for that briefly; a run still syncing is refused at once. */
      g_auto (SyncRunSnapshot) snap = { 0 };
      sync_run_state_snapshot (e->rs, &snap);
      if (snap.active && sync_state_is_terminal (snap.state))
        sync_run_state_wait_inactive (e->rs, 5 * G_USEC_PER_SEC);
      seq = sync_run_state_try_start (e->rs, FALSE, &cancel);
    }
  if (seq == 0)
    {
      g_set_error_literal (error, SYNC_ERROR, SYNC_ERROR_BUSY, SYNC_BUSY_REASON);
      if (!periodic)
        engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);
      return FALSE;
    }

  Run *run = g_new0 (Run, 1);
  run->engine = e;
  run->run_seq = seq;
  run->flags = flags;
  run->cancel = cancel;
  run->failed_sources = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  run->unmirrored = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_mutex_init (&run->lock);
  g_cond_init (&run->cond);

  /* Only the winner of try_start gets here, and the previous run thread has released. */
  g_mutex_lock (&e->lock);
  GThread *old = g_steal_pointer (&e->run_thread);
  g_mutex_unlock (&e->lock);
  if (old)
    g_thread_join (old);
  GThread *t = g_thread_new ("odsf-sync-run", run_main, run);
  g_mutex_lock (&e->lock);
  e->run_thread = t;
  g_mutex_unlock (&e->lock);
  return TRUE;
}

gboolean
sync_engine_parse_start_words (SyncEngine *e, const char *text, gsize len, SyncStartFlags *flags, GError **error)
{
  g_autofree char *copy = g_strndup (text ? text : "", len);
  SyncStartFlags out = 0;
  g_auto (GStrv) words = g_strsplit_set (copy, " \t\r\n,", -1);
  for (guint i = 0; words[i]; i++)
    {
      const char *w = words[i];
      if (!*w)
        continue;
      if (strcmp (w, "full") == 0)
        out |= SYNC_START_FULL;
      else if (strcmp (w, "clear-exclusions") == 0)
        out |= SYNC_START_CLEAR_EXCLUSIONS;
      else
        {
          g_autofree char *reason = g_strdup_printf ("unknown start word \"%s\" (known: full, clear-exclusions)", w);
          sync_run_state_record_rejection (e->rs, reason);
          g_set_error_literal (error, SYNC_ERROR, SYNC_ERROR_INVALID, reason);
          engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);
          return FALSE;
        }
    }
  *flags = out;
  return TRUE;
}

gboolean
sync_engine_cancel (SyncEngine *e)
{
  if (!sync_run_state_cancel (e->rs))
    return FALSE;
  /* Wait out any task between its check and its "started" mark: once we return, no file
   * starts. This is microseconds: readers hold the gate only for that step. */
  g_rw_lock_writer_lock (&e->start_gate);
  g_rw_lock_writer_unlock (&e->start_gate);
  emit (e, "cancel_requested", NULL);
  engine_notify (e, SYNC_NOTIFY_STATUS, 0, 0, NULL);
  return TRUE;
}

gboolean
sync_engine_wait_idle (SyncEngine *e, gint64 timeout_us)
{
  return sync_run_state_wait_inactive (e->rs, timeout_us);
}

char *
sync_engine_status_json (SyncEngine *e)
{
  g_auto (SyncRunSnapshot) snap = { 0 };
  sync_run_state_snapshot (e->rs, &snap);
  return sync_status_to_json (e->status, &snap);
}

void
sync_engine_set_notify (SyncEngine *e, SyncNotifyFunc func, gpointer user_data)
{
  g_mutex_lock (&e->lock);
  e->notify = func;
  e->notify_data = user_data;
  g_mutex_unlock (&e->lock);
}

guint64
sync_engine_events_head (SyncEngine *e)
{
  return sync_events_head (e->events);
}

gsize
sync_engine_events_read (SyncEngine *e, guint64 *cursor, GString *out, gsize max_bytes)
{
  return sync_events_read (e->events, cursor, out, max_bytes);
}

void
sync_engine_set_hook (SyncEngine *e, SyncHookPoint point, SyncHookFunc func, gpointer user_data)
{
  g_return_if_fail (point < SYNC_HOOK_N);
  g_mutex_lock (&e->lock);
  e->hooks[point] = func;
  e->hook_data[point] = user_data;
  g_mutex_unlock (&e->lock);
}
