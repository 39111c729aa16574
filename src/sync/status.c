/* Live run status and its JSON snapshot (see status.h, docs/status.md).
 *
 * Lock order: status->lock is a leaf; nothing is called out while it is held.
 */
#define G_LOG_DOMAIN "odsf-sync"

#include "config.h"

#include <onedrive-syncfs/status.h>

#include <cjson/cJSON.h>
#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

typedef struct {
  char  *path;
  char  *error_type;
  char  *message;
  guint  attempts;
} FailedFile;

typedef struct {
  char  *path;
  char  *reason;
} FilteredFile;

typedef struct {
  char    *path;
  char    *state;
  gint64   last_completed;
  gboolean has_cursor;
  char    *error;
  guint    resyncs;
  char    *last_resync_reason;
  guint    reconciled_deletes;
} SourceStatus;

struct _SyncStatus {
  GMutex        lock;
  gint64        run_id;            /* protected by lock */
  SyncCounters  c;                 /* protected by lock */
  guint         total, current;    /* protected by lock */
  GHashTable   *current_files;     /* protected by lock; path → start time (unix us) */
  GPtrArray    *failed;            /* protected by lock; FailedFile* */
  GPtrArray    *filtered;          /* protected by lock; FilteredFile* */
  GPtrArray    *unverified;        /* protected by lock; char* */
  GPtrArray    *sources;           /* protected by lock; SourceStatus*, in configuration order */
  char         *last_error;        /* protected by lock */
};

static void
failed_file_free (gpointer p)
{
  FailedFile *f = p;
  g_free (f->path);
  g_free (f->error_type);
  g_free (f->message);
  g_free (f);
}

static void
filtered_file_free (gpointer p)
{
  FilteredFile *f = p;
  g_free (f->path);
  g_free (f->reason);
  g_free (f);
}

static void
source_status_free (gpointer p)
{
  SourceStatus *s = p;
  g_free (s->path);
  g_free (s->state);
  g_free (s->error);
  g_free (s->last_resync_reason);
  g_free (s);
}

SyncStatus *
sync_status_new (void)
{
  SyncStatus *s = g_new0 (SyncStatus, 1);
  g_mutex_init (&s->lock);
  s->current_files = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  s->failed = g_ptr_array_new_with_free_func (failed_file_free);
  s->filtered = g_ptr_array_new_with_free_func (filtered_file_free);
  s->unverified = g_ptr_array_new_with_free_func (g_free);
  s->sources = g_ptr_array_new_with_free_func (source_status_free);
  return s;
}

void
sync_status_free (SyncStatus *s)
{
  if (!s)
    return;
  g_hash_table_unref (s->current_files);
  g_ptr_array_unref (s->failed);
  g_ptr_array_unref (s->filtered);
  g_ptr_array_unref (s->unverified);
  g_ptr_array_unref (s->sources);
  g_free (s->last_error);
  g_mutex_clear (&s->lock);
  g_free (s);
}

static void
reset_locked (SyncStatus *s, gint64 run_id)
{
  s->run_id = run_id;
  memset (&s->c, 0, sizeof s->c);
  s->total = s->current = 0;
  g_hash_table_remove_all (s->current_files);
  g_ptr_array_set_size (s->failed, 0);
  g_ptr_array_set_size (s->filtered, 0);
  g_ptr_array_set_size (s->unverified, 0);
  g_clear_pointer (&s->last_error, g_free);
}

void
sync_status_begin_run (SyncStatus *s, gint64 run_id)
{
  g_mutex_lock (&s->lock);
  reset_locked (s, run_id);
  g_mutex_unlock (&s->lock);
}

void
sync_status_restore (SyncStatus *s, gint64 run_id, const SyncCounters *counters, const char *last_error)
{
  g_mutex_lock (&s->lock);
  reset_locked (s, run_id);
  /* The lists of a past run are in the store, not here: counters that have a list are
   * restored as zero so that the document never shows a count without its list. */
  if (counters)
    {
      s->c = *counters;
      s->c.files_failed = s->c.files_filtered = s->c.files_unverified = 0;
    }
  s->last_error = g_strdup (last_error);
  g_mutex_unlock (&s->lock);
}

void
sync_status_add_total (SyncStatus *s, guint more)
{
  g_mutex_lock (&s->lock);
  s->total += more;
  g_mutex_unlock (&s->lock);
}

void
sync_status_add_unchanged (SyncStatus *s, guint count)
{
  g_mutex_lock (&s->lock);
  s->c.files_unchanged += count;
  g_mutex_unlock (&s->lock);
}

void
sync_status_file_started (SyncStatus *s, const char *path)
{
  g_mutex_lock (&s->lock);
  g_hash_table_insert (s->current_files, g_strdup (path ? path : ""),
                       GINT_TO_POINTER (0));
  g_mutex_unlock (&s->lock);
}

void
sync_status_file_done (SyncStatus *s, const char *path, SyncOutcome outcome, guint64 bytes,
                       gboolean unverified)
{
  g_mutex_lock (&s->lock);
  g_hash_table_remove (s->current_files, path ? path : "");
  s->current++;
  switch (outcome)
    {
    case SYNC_OUTCOME_ADDED:
    case SYNC_OUTCOME_UPDATED:
      s->c.files_processed++;
      break;
    case SYNC_OUTCOME_UNCHANGED:
      s->c.files_unchanged++;
      break;
    case SYNC_OUTCOME_RENAMED:
      s->c.renamed_count++;
      break;
    case SYNC_OUTCOME_DELETED:
      s->c.deleted_count++;
      break;
    case SYNC_OUTCOME_FOLDER:
      s->c.folders_processed++;
      break;
    }
  if (unverified)
    {
      s->c.files_unverified++;
      g_ptr_array_add (s->unverified, g_strdup (path ? path : ""));
    }
  (void) bytes;   /* bytes are counted as they arrive (sync_status_add_bytes) */
  g_mutex_unlock (&s->lock);
}

void
sync_status_folder_done (SyncStatus *s, SyncOutcome outcome)
{
  g_mutex_lock (&s->lock);
  switch (outcome)
    {
    case SYNC_OUTCOME_RENAMED:
      s->c.renamed_count++;
      break;
    case SYNC_OUTCOME_DELETED:
      s->c.deleted_count++;
      break;
    default:
      s->c.folders_processed++;
      break;
    }
  g_mutex_unlock (&s->lock);
}

void
sync_status_file_failed (SyncStatus *s, const char *path, const char *error_type,
                         const char *message, guint attempts)
{
  FailedFile *f = g_new0 (FailedFile, 1);
  f->path = g_strdup (path ? path : "");
  f->error_type = g_strdup (error_type ? error_type : "download_error");
  f->message = g_strdup (message ? message : "");
  f->attempts = attempts;

  g_mutex_lock (&s->lock);
  g_hash_table_remove (s->current_files, f->path);
  s->current++;
  s->c.files_failed++;
  g_ptr_array_add (s->failed, f);
  g_mutex_unlock (&s->lock);
}

void
sync_status_file_abandoned (SyncStatus *s, const char *path)
{
  g_mutex_lock (&s->lock);
  g_hash_table_remove (s->current_files, path ? path : "");
  g_mutex_unlock (&s->lock);
}

void
sync_status_file_filtered (SyncStatus *s, const char *path, const char *reason)
{
  FilteredFile *f = g_new0 (FilteredFile, 1);
  f->path = g_strdup (path ? path : "");
  f->reason = g_strdup (reason ? reason : "filtered");

  g_mutex_lock (&s->lock);
  g_hash_table_remove (s->current_files, f->path);
  s->current++;
  s->c.files_filtered++;
  g_ptr_array_add (s->filtered, f);
  g_mutex_unlock (&s->lock);
}

void
sync_status_add_bytes (SyncStatus *s, guint64 bytes)
{
  g_mutex_lock (&s->lock);
  s->c.bytes_downloaded += bytes;
  g_mutex_unlock (&s->lock);
}

void
sync_status_set_last_error (SyncStatus *s, const char *message)
{
  g_mutex_lock (&s->lock);
  g_free (s->last_error);
  s->last_error = g_strdup (message);
  g_mutex_unlock (&s->lock);
}

static SourceStatus *
source_locked (SyncStatus *s, const char *path)
{
  for (guint i = 0; i < s->sources->len; i++)
    {
      SourceStatus *src = s->sources->pdata[i];
      if (strcmp (src->path, path) == 0)
        return src;
    }
  SourceStatus *src = g_new0 (SourceStatus, 1);
  src->path = g_strdup (path);
  src->state = g_strdup ("idle");
  g_ptr_array_add (s->sources, src);
  return src;
}

void
sync_status_source_set (SyncStatus *s, const char *path, const char *state, gint64 last_completed,
                        gboolean has_cursor, const char *error)
{
  g_mutex_lock (&s->lock);
  SourceStatus *src = source_locked (s, path);
  if (state)
    {
      g_free (src->state);
      src->state = g_strdup (state);
    }
  src->last_completed = last_completed;
  src->has_cursor = has_cursor;
  g_free (src->error);
  src->error = g_strdup (error);
  g_mutex_unlock (&s->lock);
}

void
sync_status_source_resync (SyncStatus *s, const char *path, const char *reason, guint reconciled_deletes)
{
  g_mutex_lock (&s->lock);
  SourceStatus *src = source_locked (s, path);
  src->resyncs++;
  g_free (src->last_resync_reason);
  src->last_resync_reason = g_strdup (reason);
  src->reconciled_deletes = reconciled_deletes;
  g_mutex_unlock (&s->lock);
}

void
sync_status_counters (SyncStatus *s, SyncCounters *out)
{
  g_mutex_lock (&s->lock);
  *out = s->c;
  g_mutex_unlock (&s->lock);
}

char *
sync_status_format_time (gint64 unix_us)
{
  if (unix_us == 0)
    return NULL;
  g_autoptr (GDateTime) dt = g_date_time_new_from_unix_utc (unix_us / G_USEC_PER_SEC);
  return dt ? g_date_time_format (dt, "%Y-%m-%dT%H:%M:%SZ") : NULL;
}

static void
add_time (cJSON *obj, const char *key, gint64 unix_us)
{
  g_autofree char *t = sync_status_format_time (unix_us);
  if (t)
    cJSON_AddStringToObject (obj, key, t);
  else
    cJSON_AddNullToObject (obj, key);
}

static void
add_string_or_null (cJSON *obj, const char *key, const char *value)
{
  if (value)
    cJSON_AddStringToObject (obj, key, value);
  else
    cJSON_AddNullToObject (obj, key);
}

static gint
compare_strings (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

char *
sync_status_to_json (SyncStatus *s, const SyncRunSnapshot *run)
{
  g_autoptr (cJSON) doc = cJSON_CreateObject ();

  cJSON_AddStringToObject (doc, "state", sync_state_to_string (run->state));

  g_mutex_lock (&s->lock);
  if (s->run_id > 0)
    cJSON_AddNumberToObject (doc, "run_id", (double) s->run_id);
  else
    cJSON_AddNullToObject (doc, "run_id");
  add_time (doc, "started_at", run->started_at);
  add_time (doc, "finished_at", run->finished_at);
  cJSON_AddNumberToObject (doc, "current", s->current);
  cJSON_AddNumberToObject (doc, "total", MAX (s->total, s->current));

  /* Sorted, so two snapshots of the same moment read the same. */
  g_autoptr (GPtrArray) cur = g_ptr_array_new ();
  GHashTableIter it;
  gpointer key;
  g_hash_table_iter_init (&it, s->current_files);
  while (g_hash_table_iter_next (&it, &key, NULL))
    g_ptr_array_add (cur, key);
  g_ptr_array_sort (cur, compare_strings);
  cJSON *cur_json = cJSON_AddArrayToObject (doc, "current_files");
  for (guint i = 0; i < cur->len; i++)
    cJSON_AddItemToArray (cur_json, cJSON_CreateString (cur->pdata[i]));

  cJSON_AddNumberToObject (doc, "files_processed", s->c.files_processed);
  cJSON_AddNumberToObject (doc, "files_unchanged", s->c.files_unchanged);
  cJSON_AddNumberToObject (doc, "files_failed", s->c.files_failed);
  cJSON_AddNumberToObject (doc, "files_filtered", s->c.files_filtered);
  cJSON_AddNumberToObject (doc, "files_unverified", s->c.files_unverified);
  cJSON_AddNumberToObject (doc, "folders_processed", s->c.folders_processed);
  cJSON_AddNumberToObject (doc, "deleted_count", s->c.deleted_count);
  cJSON_AddNumberToObject (doc, "renamed_count", s->c.renamed_count);
  cJSON_AddNumberToObject (doc, "bytes_downloaded", (double) s->c.bytes_downloaded);

  cJSON *failed = cJSON_AddArrayToObject (doc, "failed_files");
  for (guint i = 0; i < s->failed->len; i++)
    {
      FailedFile *f = s->failed->pdata[i];
      cJSON *o = cJSON_CreateObject ();
      cJSON_AddStringToObject (o, "path", f->path);
      cJSON_AddStringToObject (o, "error_type", f->error_type);
      cJSON_AddStringToObject (o, "message", f->message);
      cJSON_AddNumberToObject (o, "attempts", f->attempts);
      cJSON_AddItemToArray (failed, o);
    }
  cJSON *filtered = cJSON_AddArrayToObject (doc, "filtered_files");
  for (guint i = 0; i < s->filtered->len; i++)
    {
      FilteredFile *f = s->filtered->pdata[i];
      cJSON *o = cJSON_CreateObject ();
      cJSON_AddStringToObject (o, "path", f->path);
      cJSON_AddStringToObject (o, "reason", f->reason);
      cJSON_AddItemToArray (filtered, o);
    }
  cJSON *unverified = cJSON_AddArrayToObject (doc, "unverified_files");
  for (guint i = 0; i < s->unverified->len; i++)
    cJSON_AddItemToArray (unverified, cJSON_CreateString (s->unverified->pdata[i]));

  add_string_or_null (doc, "last_error", s->last_error);

  if (run->last_rejected_at)
    {
      cJSON *rej = cJSON_AddObjectToObject (doc, "last_rejected_start");
      add_time (rej, "time", run->last_rejected_at);
      add_string_or_null (rej, "reason", run->last_rejected_reason);
    }
  else
    cJSON_AddNullToObject (doc, "last_rejected_start");

  cJSON *sources = cJSON_AddArrayToObject (doc, "sources");
  for (guint i = 0; i < s->sources->len; i++)
    {
      SourceStatus *src = s->sources->pdata[i];
      cJSON *o = cJSON_CreateObject ();
      cJSON_AddStringToObject (o, "path", src->path);
      cJSON_AddStringToObject (o, "state", src->state);
      add_time (o, "last_completed", src->last_completed * G_USEC_PER_SEC);
      cJSON_AddBoolToObject (o, "has_cursor", src->has_cursor);
      add_string_or_null (o, "error", src->error);
      cJSON_AddNumberToObject (o, "resyncs", src->resyncs);
      add_string_or_null (o, "last_resync_reason", src->last_resync_reason);
      cJSON_AddNumberToObject (o, "reconciled_deletes", src->reconciled_deletes);
      cJSON_AddItemToArray (sources, o);
    }
  g_mutex_unlock (&s->lock);

  char *text = cJSON_Print (doc);
  char *out = g_strconcat (text, "\n", NULL);
  cJSON_free (text);
  return out;
}
