/* The status document: every field the issue lists is present with the right type, the
 * counters agree with their lists (seed item 9), and concurrent updates lose nothing
 * (seed item 4: the old status was read-modify-write without a lock). */
#include "config.h"

#include <onedrive-syncfs/status.h>

#include <cjson/cJSON.h>
#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

static cJSON *
snapshot (SyncStatus *s, SyncRunState *rs)
{
  g_auto (SyncRunSnapshot) run = { 0 };
  sync_run_state_snapshot (rs, &run);
  g_autofree char *text = sync_status_to_json (s, &run);
  cJSON *doc = cJSON_Parse (text);
  g_assert_nonnull (doc);
  return doc;
}

static const cJSON *
field (const cJSON *doc, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (doc, key);
  if (!v)
    g_error ("status lacks %s", key);
  return v;
}

static double
number (const cJSON *doc, const char *key)
{
  const cJSON *v = field (doc, key);
  g_assert_true (cJSON_IsNumber (v));
  return v->valuedouble;
}

static void
test_fields (void)
{
  g_autoptr (SyncStatus) s = sync_status_new ();
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_IDLE);

  g_autoptr (cJSON) idle = snapshot (s, rs);
  g_assert_cmpstr (field (idle, "state")->valuestring, ==, "idle");
  g_assert_true (cJSON_IsNull (field (idle, "run_id")));
  g_assert_true (cJSON_IsNull (field (idle, "started_at")));
  g_assert_true (cJSON_IsNull (field (idle, "last_rejected_start")));
  g_assert_true (cJSON_IsNull (field (idle, "last_error")));

  guint64 seq = sync_run_state_try_start (rs, FALSE, NULL);
  sync_run_state_try_start (rs, FALSE, NULL);   /* refused: recorded */
  sync_status_begin_run (s, 42);
  sync_status_source_set (s, "/Documents", "processing", 0, TRUE, NULL);
  sync_status_source_set (s, "/Pictures", "enumerating", 1700000000, FALSE, NULL);
  sync_status_source_resync (s, "/Pictures", "resync_required", 3);
  sync_status_add_total (s, 10);
  sync_status_file_started (s, "/Documents/b.txt");
  sync_status_file_started (s, "/Documents/a.txt");
  sync_status_file_done (s, "/Documents/c.txt", SYNC_OUTCOME_ADDED, 100, FALSE);
  sync_status_add_bytes (s, 100);
  sync_status_file_done (s, "/Documents/d.txt", SYNC_OUTCOME_UNCHANGED, 0, FALSE);
  sync_status_file_done (s, "/Documents/e.txt", SYNC_OUTCOME_RENAMED, 0, FALSE);
  sync_status_file_done (s, "/Documents/f.txt", SYNC_OUTCOME_DELETED, 0, FALSE);
  sync_status_file_done (s, "/Documents/g.bin", SYNC_OUTCOME_ADDED, 5, TRUE);
  sync_status_file_failed (s, "/Documents/h.txt", "timeout", "stalled for 60 s", 2);
  sync_status_file_filtered (s, "/Documents/big.iso", "too_large");
  sync_status_file_filtered (s, "/Documents/Notes", "package");
  sync_status_set_last_error (s, "one file failed");

  g_autoptr (cJSON) doc = snapshot (s, rs);
  g_assert_cmpstr (field (doc, "state")->valuestring, ==, "syncing");
  g_assert_cmpfloat (number (doc, "run_id"), ==, 42);
  g_assert_true (cJSON_IsString (field (doc, "started_at")));
  g_assert_true (cJSON_IsNull (field (doc, "finished_at")));
  g_assert_cmpfloat (number (doc, "current"), ==, 8);
  g_assert_cmpfloat (number (doc, "total"), ==, 10);
  const cJSON *cur = field (doc, "current_files");
  g_assert_cmpint (cJSON_GetArraySize (cur), ==, 2);
  g_assert_cmpstr (cJSON_GetArrayItem (cur, 0)->valuestring, ==, "/Documents/a.txt");
  g_assert_cmpfloat (number (doc, "files_processed"), ==, 2);
  g_assert_cmpfloat (number (doc, "files_unchanged"), ==, 1);
  g_assert_cmpfloat (number (doc, "renamed_count"), ==, 1);
  g_assert_cmpfloat (number (doc, "deleted_count"), ==, 1);
  g_assert_cmpfloat (number (doc, "bytes_downloaded"), ==, 100);
  g_assert_cmpfloat (number (doc, "files_failed"), ==, 1);
  g_assert_cmpfloat (number (doc, "files_filtered"), ==, 2);
  g_assert_cmpfloat (number (doc, "files_unverified"), ==, 1);
  const cJSON *failed = field (doc, "failed_files");
  g_assert_cmpint (cJSON_GetArraySize (failed), ==, 1);
  const cJSON *f0 = cJSON_GetArrayItem (failed, 0);
  g_assert_cmpstr (field (f0, "path")->valuestring, ==, "/Documents/h.txt");
  g_assert_cmpstr (field (f0, "error_type")->valuestring, ==, "timeout");
  g_assert_cmpstr (field (f0, "message")->valuestring, ==, "stalled for 60 s");
  g_assert_cmpfloat (number (f0, "attempts"), ==, 2);
  const cJSON *filtered = field (doc, "filtered_files");
  g_assert_cmpint (cJSON_GetArraySize (filtered), ==, 2);
  g_assert_cmpstr (field (cJSON_GetArrayItem (filtered, 1), "reason")->valuestring, ==, "package");
  g_assert_cmpint (cJSON_GetArraySize (field (doc, "unverified_files")), ==, 1);
  g_assert_cmpstr (field (doc, "last_error")->valuestring, ==, "one file failed");
  const cJSON *rej = field (doc, "last_rejected_start");
  g_assert_true (cJSON_IsString (field (rej, "time")));
  g_assert_cmpstr (field (rej, "reason")->valuestring, ==, SYNC_BUSY_REASON);
  const cJSON *sources = field (doc, "sources");
  g_assert_cmpint (cJSON_GetArraySize (sources), ==, 2);
  const cJSON *s0 = cJSON_GetArrayItem (sources, 0), *s1 = cJSON_GetArrayItem (sources, 1);
  g_assert_cmpstr (field (s0, "path")->valuestring, ==, "/Documents");
  g_assert_cmpstr (field (s0, "state")->valuestring, ==, "processing");
  g_assert_true (cJSON_IsNull (field (s0, "last_completed")));
  g_assert_true (cJSON_IsTrue (field (s0, "has_cursor")));
  g_assert_cmpstr (field (s1, "last_completed")->valuestring, ==, "2023-11-14T22:13:20Z");
  g_assert_true (cJSON_IsFalse (field (s1, "has_cursor")));
  g_assert_cmpfloat (number (s1, "resyncs"), ==, 1);
  g_assert_cmpfloat (number (s1, "reconciled_deletes"), ==, 3);
  g_assert_cmpstr (field (s1, "last_resync_reason")->valuestring, ==, "resync_required");

  sync_run_state_finish (rs, seq, SYNC_STATE_COMPLETED_WITH_ERRORS);
  g_autoptr (cJSON) done = snapshot (s, rs);
  g_assert_cmpstr (field (done, "state")->valuestring, ==, "completed_with_errors");
  g_assert_true (cJSON_IsString (field (done, "finished_at")));

  /* A new run starts from zero. */
  sync_status_begin_run (s, 43);
  g_autoptr (cJSON) fresh = snapshot (s, rs);
  g_assert_cmpfloat (number (fresh, "files_failed"), ==, 0);
  g_assert_cmpint (cJSON_GetArraySize (field (fresh, "failed_files")), ==, 0);
  g_assert_cmpint (cJSON_GetArraySize (field (fresh, "sources")), ==, 2);   /* sources persist */
}

static void
test_restore (void)
{
  g_autoptr (SyncStatus) s = sync_status_new ();
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_INTERRUPTED);
  SyncCounters c = { .files_processed = 7, .files_failed = 2, .bytes_downloaded = 99 };
  sync_status_restore (s, 5, &c, "process died");
  g_autoptr (cJSON) doc = snapshot (s, rs);
  g_assert_cmpstr (field (doc, "state")->valuestring, ==, "interrupted");
  g_assert_cmpfloat (number (doc, "files_processed"), ==, 7);
  /* No list to go with it, so no count either. */
  g_assert_cmpfloat (number (doc, "files_failed"), ==, 0);
  g_assert_cmpint (cJSON_GetArraySize (field (doc, "failed_files")), ==, 0);
}

#define THREADS 4
#define EACH 2000

static gpointer
hammer (gpointer data)
{
  SyncStatus *s = data;
  for (guint i = 0; i < EACH; i++)
    {
      g_autofree char *path = g_strdup_printf ("/f/%p/%u", (void *) g_thread_self (), i);
      sync_status_file_started (s, path);
      if (i % 3 == 0)
        sync_status_file_failed (s, path, "download_error", "x", 1);
      else if (i % 3 == 1)
        sync_status_file_filtered (s, path, "excluded");
      else
        {
          sync_status_add_bytes (s, 10);
          sync_status_file_done (s, path, SYNC_OUTCOME_ADDED, 10, FALSE);
        }
    }
  return NULL;
}

static void
test_concurrent (void)
{
  g_autoptr (SyncStatus) s = sync_status_new ();
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_IDLE);
  sync_status_begin_run (s, 1);
  GThread *t[THREADS];
  for (guint i = 0; i < THREADS; i++)
    t[i] = g_thread_new ("hammer", hammer, s);
  /* Snapshots taken while the writers run must always agree with themselves. */
  for (guint k = 0; k < 50; k++)
    {
      g_autoptr (cJSON) doc = snapshot (s, rs);
      g_assert_cmpfloat (number (doc, "files_failed"), ==, cJSON_GetArraySize (field (doc, "failed_files")));
      g_assert_cmpfloat (number (doc, "files_filtered"), ==, cJSON_GetArraySize (field (doc, "filtered_files")));
      g_assert_cmpfloat (number (doc, "current"), ==,
                         number (doc, "files_failed") + number (doc, "files_filtered") + number (doc, "files_processed"));
    }
  for (guint i = 0; i < THREADS; i++)
    g_thread_join (t[i]);
  SyncCounters c;
  sync_status_counters (s, &c);
  guint fails = (EACH + 2) / 3, filt = (EACH + 1) / 3, done = EACH / 3;
  g_assert_cmpuint (c.files_failed, ==, THREADS * fails);
  g_assert_cmpuint (c.files_filtered, ==, THREADS * filt);
  g_assert_cmpuint (c.files_processed, ==, THREADS * done);
  g_assert_cmpuint (c.bytes_downloaded, ==, THREADS * done * 10);
  g_autoptr (cJSON) doc = snapshot (s, rs);
  g_assert_cmpint (cJSON_GetArraySize (field (doc, "current_files")), ==, 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/status/fields", test_fields);
  g_test_add_func ("/status/restore", test_restore);
  g_test_add_func ("/status/concurrent", test_concurrent);
  return g_test_run ();
}
