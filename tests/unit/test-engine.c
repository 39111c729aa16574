/* The sync engine against the fake Graph server, with the real store and Graph client.
 *
 * Every failure of the seed system (../shared/seed/README.md) has a case here that would fail on
 * the buggy behaviour: lost work after a cancel (1), failures never retried (2), cancel
 * overwritten by completion (3), two starts both winning (4), "syncing" forever after a
 * restart (5), deletions missed (6), duplicates processed twice (7), renames not applied (8),
 * silent skips and counters that disagree with lists (9), unchanged files downloaded again.
 *
 * Determinism: timing-sensitive cases hold transfers open with the fake's bandwidth control
 * and wait for observable conditions (status, events, fake stats), or act at an exact moment
 * through the engine's test hooks — never a sleep that hopes.
 */
#include "config.h"

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/qxhash.h>
#include <onedrive-syncfs/store.h>
#include <onedrive-syncfs/sync-engine.h>

#include "../../src/sync/engine-private.h"
#include "engine-env.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- small checks ----------------------------------------------------------------------- */

static void
assert_mirror_equals_remote (Env *env)
{
  g_autofree char *why = NULL;
  if (!env_mirror_equals_remote (env, "/Docs", &why))
    g_error ("mirror differs from remote: %s", why);
}

/* No live file under /Docs was downloaded twice. Without interruptions (@slack 0): exactly one
 * full download each, no resume. After a cancel or a kill (@slack > 0): an interrupted transfer
 * resumes with Range, or starts over when nothing of it had reached the disk, but no file is
 * served more than its size plus @slack bytes (what was in flight when it was aborted). */
static void
assert_no_download_twice (Env *env, double slack)
{
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_autoptr (cJSON) tree = env_admin (env, "GET", "tree", NULL);
  const cJSON *downloads = cJSON_GetObjectItem (stats, "downloads");
  const cJSON *it;
  cJSON_ArrayForEach (it, cJSON_GetObjectItem (tree, "items"))
    {
      if (cJSON_IsTrue (cJSON_GetObjectItem (it, "folder")))
        continue;
      const char *path = cJSON_GetObjectItem (it, "path")->valuestring;
      if (!g_str_has_prefix (path, "/Docs/"))
        continue;
      double size = cJSON_GetObjectItem (it, "size")->valuedouble;
      const cJSON *d = cJSON_GetObjectItem (downloads, cJSON_GetObjectItem (it, "id")->valuestring);
      double full = d ? cJSON_GetObjectItem (d, "full")->valuedouble : 0;
      double ranged = d ? cJSON_GetObjectItem (d, "ranged")->valuedouble : 0;
      double bytes = d ? cJSON_GetObjectItem (d, "bytes")->valuedouble : 0;
      if (size == 0)
        {
          g_assert_cmpfloat (full + ranged, ==, 0);   /* empty files need no request */
          continue;
        }
      if (slack == 0 && (full != 1 || ranged != 0 || bytes != size))
        g_error ("%s: %g full, %g ranged downloads, %g of %g bytes (want exactly one full download)", path, full,
                 ranged, bytes, size);
      if (slack > 0 && (full < 1 || full + ranged > 2 || bytes > size + slack))
        g_error ("%s: %g full, %g ranged downloads, %g bytes served for %g (slack %g): downloaded twice", path, full,
                 ranged, bytes, size, slack);
    }
}

static void
assert_each_downloaded_once (Env *env)
{
  assert_no_download_twice (env, 0);
}

static guint
status_uint (Env *env, const char *key)
{
  g_autoptr (cJSON) st = env_status (env);
  const cJSON *v = cJSON_GetObjectItem (st, key);
  g_assert_true (cJSON_IsNumber (v));
  return (guint) v->valuedouble;
}

static char *
status_state (Env *env)
{
  g_autoptr (cJSON) st = env_status (env);
  return g_strdup (cJSON_GetObjectItem (st, "state")->valuestring);
}

/* Whether the store holds due work for @path. */
static gboolean
pending_has (Env *env, const char *path)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) work = store_work_next (env->store, 0, 100000, &error);
  g_assert_no_error (error);
  for (guint i = 0; i < work->len; i++)
    if (g_strcmp0 (((StoreWork *) work->pdata[i])->path, path) == 0)
      return TRUE;
  return FALSE;
}

static void
assert_counters_agree (Env *env)
{
  g_autoptr (cJSON) st = env_status (env);
  g_assert_cmpint (cJSON_GetObjectItem (st, "files_failed")->valueint, ==,
                   cJSON_GetArraySize (cJSON_GetObjectItem (st, "failed_files")));
  g_assert_cmpint (cJSON_GetObjectItem (st, "files_filtered")->valueint, ==,
                   cJSON_GetArraySize (cJSON_GetObjectItem (st, "filtered_files")));
}

/* ---- cases --------------------------------------------------------------------------- */

static void
test_full_then_incremental (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/a.txt", "hello");
  env_add_file (env, "/Docs/sub/b.txt", "hello world");
  env_add_file (env, "/Docs/sub/deeper/c.txt", "The quick brown fox jumps over the lazy dog");
  env_add_file (env, "/Docs/empty.txt", "");
  env_add_file (env, "/Other/not-synced.txt", "outside the source");
  env_engine (env, NULL);

  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_each_downloaded_once (env);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 4);
  g_assert_cmpuint (status_uint (env, "files_failed"), ==, 0);
  {
    g_autoptr (cJSON) st = env_status (env);
    const cJSON *src = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 0);
    g_assert_cmpstr (cJSON_GetObjectItem (src, "path")->valuestring, ==, "/Docs");
    g_assert_true (cJSON_IsTrue (cJSON_GetObjectItem (src, "has_cursor")));
    g_assert_cmpstr (cJSON_GetObjectItem (src, "state")->valuestring, ==, "completed");
  }

  /* Nothing changed: nothing downloaded again, no re-listing (one delta call from the cursor). */
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
  g_assert_cmpfloat (cJSON_GetObjectItem (cJSON_GetObjectItem (stats, "requests"), "delta")->valuedouble, ==, 1);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 0);

  /* A change: only that file. */
  env_do (env, "POST", "stats/reset", "{}");
  env_itemop (env, "modify", "{\"path\":\"/Docs/sub/b.txt\",\"content\":\"changed\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_autoptr (cJSON) stats2 = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats2, "full_downloads")->valuedouble, ==, 1);
  assert_mirror_equals_remote (env);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 1);
}

static void
test_rename_move_metadata_only (Env *env, gconstpointer data)
{
  /* Seed item 8: a rename (same hash) must change the name, and never download. */
  env_add_file (env, "/Docs/a.txt", "alpha");
  env_add_file (env, "/Docs/f1/b.txt", "beta");
  env_add_file (env, "/Docs/f2/c.txt", "gamma");
  env_add_folder (env, "/Docs/f3");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");

  env_do (env, "POST", "stats/reset", "{}");
  env_itemop (env, "rename", "{\"path\":\"/Docs/a.txt\",\"name\":\"renamed.txt\"}");
  env_itemop (env, "move", "{\"path\":\"/Docs/f1/b.txt\",\"parent_path\":\"/Docs/f3\"}");
  env_itemop (env, "rename", "{\"path\":\"/Docs/f2\",\"name\":\"f2-renamed\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "ranged_downloads")->valuedouble, ==, 0);
  assert_mirror_equals_remote (env);
  g_assert_cmpuint (status_uint (env, "renamed_count"), >=, 3);
  g_assert_false (env_mount_has (env, "/Docs/a.txt"));
  g_assert_true (env_mount_has (env, "/Docs/renamed.txt"));
  g_assert_true (env_mount_has (env, "/Docs/f3/b.txt"));
  g_assert_true (env_mount_has (env, "/Docs/f2-renamed/c.txt"));
}

static void
run_delete_case (Env *env, gboolean child_tombstones)
{
  /* Seed item 6: deletions carry a `deleted` facet; a deleted folder takes the descendants it
   * knows, except one moved out of it in the same set. */
  env_add_file (env, "/Docs/keep.txt", "keep");
  env_add_file (env, "/Docs/gone.txt", "gone");
  env_add_file (env, "/Docs/dir/x.txt", "x");
  env_add_file (env, "/Docs/dir/sub/y.txt", "y");
  env_add_file (env, "/Docs/dir/rescued.txt", "rescued");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");

  env_itemop (env, "delete", "{\"path\":\"/Docs/gone.txt\"}");
  env_itemop (env, "move", "{\"path\":\"/Docs/dir/rescued.txt\",\"parent_path\":\"/Docs\"}");
  g_autofree char *del = g_strdup_printf ("{\"path\":\"/Docs/dir\",\"child_tombstones\":%s}",
                                          child_tombstones ? "true" : "false");
  env_itemop (env, "delete", del);
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_assert_false (env_mount_has (env, "/Docs/gone.txt"));
  g_assert_false (env_mount_has (env, "/Docs/dir"));
  g_assert_true (env_mount_has (env, "/Docs/rescued.txt"));
  g_assert_true (env_mount_has (env, "/Docs/keep.txt"));
  g_assert_cmpuint (status_uint (env, "deleted_count"), >=, 2);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
  /* Nothing of the deleted files is left in the cache. */
  g_assert_cmpuint (env_cache_objects (env), ==, 2);   /* keep.txt and rescued.txt */
}

static void
test_delete_with_child_tombstones (Env *env, gconstpointer data)
{
  run_delete_case (env, TRUE);
}

static void
test_delete_folder_only (Env *env, gconstpointer data)
{
  run_delete_case (env, FALSE);
}

static void
test_duplicates_shuffled (Env *env, gconstpointer data)
{
  /* Seed item 7: an item listed twice in one set is processed once; a child before its parent
   * is fine; overlapping sources do not double the work. */
  env_faults (env, "{\"delta_duplicates\":true,\"delta_shuffle\":true,\"delta_short_pages\":true}");
  for (guint i = 0; i < 30; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/d%u/f%u.txt", i % 4, i);
      g_autofree char *c = g_strdup_printf ("content %u", i);
      env_add_file (env, p, c);
    }
  const char *sources[] = { "/Docs", "/Docs/d1", NULL };
  EnvOptions opts = { .sources = sources };
  env_engine (env, &opts);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_each_downloaded_once (env);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 30);
  g_autoptr (cJSON) st = env_status (env);
  const cJSON *inner = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 1);
  g_assert_cmpstr (cJSON_GetObjectItem (inner, "state")->valuestring, ==, "covered");
}

/* Waits until the status shows @n files held by workers. */
static void
wait_current_files (Env *env, guint n)
{
  for (;;)
    {
      g_autoptr (cJSON) st = env_status (env);
      if ((guint) cJSON_GetArraySize (cJSON_GetObjectItem (st, "current_files")) >= n)
        return;
      env_wait_notify (env);
    }
}

/* Waits until the fake has sent at least @bytes of each of @n files (transfers truly open). */
static void
wait_bytes_served (Env *env, guint n, double bytes)
{
  for (;;)
    {
      g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
      guint open = 0;
      const cJSON *d;
      cJSON_ArrayForEach (d, cJSON_GetObjectItem (stats, "downloads"))
        open += cJSON_GetObjectItem (d, "bytes")->valuedouble >= bytes;
      if (open >= n)
        return;
      env_wait_a_little (env);
    }
}

static void
test_cancel_in_flight (Env *env, gconstpointer data)
{
  /* W files in flight (held open by the bandwidth limit) and many queued. After cancel returns:
   * no file starts, the transfers abort, the state is cancelled and stays so. */
  for (guint i = 0; i < 24; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/big-%02u.bin", i);
      env_add_generated (env, p, 512 * 1024, i + 1);
    }
  env_faults (env, "{\"bandwidth_bps\":65536}");
  EnvOptions opts = { .workers = 4 };
  env_engine (env, &opts);

  g_assert_true (sync_engine_start (env->engine, 0, NULL));
  wait_current_files (env, 4);
  wait_bytes_served (env, 4, 32 * 1024);
  guint64 head_before = sync_engine_events_head (env->engine);
  gint64 t0 = g_get_monotonic_time ();
  g_assert_true (sync_engine_cancel (env->engine));
  guint64 head_after_cancel = sync_engine_events_head (env->engine);
  g_assert_true (sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC));
  gint64 t1 = g_get_monotonic_time ();
  g_test_message ("cancel → idle: %.1f ms", (double) (t1 - t0) / 1000.0);
  /* 512 KiB at 64 KiB/s is 8 s per file: idle this soon means the transfers were aborted. */
  g_assert_cmpint (t1 - t0, <, 3 * G_USEC_PER_SEC);

  g_autofree char *state = status_state (env);
  g_assert_cmpstr (state, ==, "cancelled");
  /* No file_started after the cancel returned. */
  guint64 cursor = head_after_cancel;
  g_autoptr (GString) out = g_string_new (NULL);
  sync_engine_events_read (env->engine, &cursor, out, 1 << 20);
  g_assert_null (strstr (out->str, "\"file_started\""));
  g_assert_null (strstr (out->str, "\"file_published\""));
  g_assert_nonnull (strstr (out->str, "\"run_finished\""));
  g_assert_nonnull (strstr (out->str, "\"state\":\"cancelled\""));
  (void) head_before;

  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, <=, 4);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 0);
  /* Still cancelled after everything settled; the store recorded it too. */
  g_autoptr (StoreRun) run = store_last_run (env->store, NULL);
  g_assert_cmpstr (run->state, ==, "cancelled");

  /* Cancel, then start again: nothing lost, nothing repeated (seed item 1). */
  env_faults (env, "{\"bandwidth_bps\":0}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_no_download_twice (env, 256 * 1024);
}

static void
cancel_in_hook (SyncEngine *engine, const char *path, gpointer user_data)
{
  const char *want = user_data;
  if (want == NULL || g_strcmp0 (path, want) == 0)
    g_assert_true (sync_engine_cancel (engine));
}

static void
test_cancel_races_last_file (Env *env, gconstpointer data)
{
  /* Seed item 3: the cancel arrives after the last task took its worker. */
  env_add_file (env, "/Docs/one.txt", "1");
  env_add_file (env, "/Docs/two.txt", "22");
  EnvOptions opts = { .workers = 1 };
  env_engine (env, &opts);
  /* The queue order is the store's; cancel when the second file (the last) is acquired. */
  sync_engine_set_hook (env->engine, SYNC_HOOK_TASK_ACQUIRED, cancel_in_hook, (gpointer) "/Docs/two.txt");
  g_autofree char *s1 = g_strdup (env_sync (env, 0));
  g_assert_cmpstr (s1, ==, "cancelled");
  sync_engine_set_hook (env->engine, SYNC_HOOK_TASK_ACQUIRED, NULL, NULL);

  /* And after every file is done, just before the terminal decision: still cancelled. */
  env_add_file (env, "/Docs/three.txt", "333");
  sync_engine_set_hook (env->engine, SYNC_HOOK_BEFORE_DECIDE, cancel_in_hook, NULL);
  g_autofree char *s2 = g_strdup (env_sync (env, 0));
  g_assert_cmpstr (s2, ==, "cancelled");
  g_autoptr (StoreRun) run = store_last_run (env->store, NULL);
  g_assert_cmpstr (run->state, ==, "cancelled");
  sync_engine_set_hook (env->engine, SYNC_HOOK_BEFORE_DECIDE, NULL, NULL);

  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_each_downloaded_once (env);
}

typedef struct {
  SyncEngine *engine;
  GMutex      lock;
  GCond       cond;
  guint       ready;
  gboolean    go;
  gboolean    won;
  gint        code;
} Starter;

static gpointer
starter (gpointer data)
{
  Starter *s = data;
  g_mutex_lock (&s->lock);
  s->ready++;
  g_cond_broadcast (&s->cond);
  while (!s->go)
    g_cond_wait (&s->cond, &s->lock);
  g_mutex_unlock (&s->lock);
  g_autoptr (GError) error = NULL;
  s->won = sync_engine_start (s->engine, 0, &error);
  s->code = error ? error->code : -1;
  return NULL;
}

static void
test_two_starts (Env *env, gconstpointer data)
{
  /* Seed item 4: the guard was check-then-act. */
  env_add_generated (env, "/Docs/slow.bin", 256 * 1024, 7);
  env_faults (env, "{\"bandwidth_bps\":131072}");
  env_engine (env, NULL);
  for (guint round = 0; round < 20; round++)
    {
      Starter a = { .engine = env->engine }, b = { .engine = env->engine };
      Starter *both[2] = { &a, &b };
      GMutex lock;
      GCond cond;
      g_mutex_init (&lock);
      g_cond_init (&cond);
      GThread *t[2];
      for (guint i = 0; i < 2; i++)
        {
          g_mutex_init (&both[i]->lock);
          g_cond_init (&both[i]->cond);
          t[i] = g_thread_new ("start", starter, both[i]);
        }
      for (guint i = 0; i < 2; i++)
        {
          g_mutex_lock (&both[i]->lock);
          while (!both[i]->ready)
            g_cond_wait (&both[i]->cond, &both[i]->lock);
          g_mutex_unlock (&both[i]->lock);
        }
      for (guint i = 0; i < 2; i++)
        {
          g_mutex_lock (&both[i]->lock);
          both[i]->go = TRUE;
          g_cond_broadcast (&both[i]->cond);
          g_mutex_unlock (&both[i]->lock);
        }
      for (guint i = 0; i < 2; i++)
        g_thread_join (t[i]);
      g_assert_cmpint (a.won + b.won, ==, 1);
      g_assert_cmpint (a.won ? b.code : a.code, ==, SYNC_ERROR_BUSY);

      /* A start during the run is refused too, and recorded. */
      g_autoptr (GError) error = NULL;
      if (round == 0)
        {
          g_assert_false (sync_engine_start (env->engine, 0, &error));
          g_assert_error (error, SYNC_ERROR, SYNC_ERROR_BUSY);
          g_assert_cmpstr (error->message, ==,
                           "A sync is already in progress. Cancel it first or wait for it to complete.");
          g_autoptr (cJSON) st = env_status (env);
          const cJSON *rej = cJSON_GetObjectItem (st, "last_rejected_start");
          g_assert_true (cJSON_IsObject (rej));
          g_assert_cmpstr (cJSON_GetObjectItem (rej, "reason")->valuestring, ==, error->message);
          /* A periodic start that finds the run skips quietly: not recorded as news. */
        }
      sync_engine_cancel (env->engine);
      g_assert_true (sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC));
      for (guint i = 0; i < 2; i++)
        {
          g_mutex_clear (&both[i]->lock);
          g_cond_clear (&both[i]->cond);
        }
      g_mutex_clear (&lock);
      g_cond_clear (&cond);
    }
  /* Cancel, then start at once: the cancelled run only winds down, so the start waits for
   * that instead of answering busy. */
  g_assert_true (sync_engine_start (env->engine, 0, NULL));
  wait_current_files (env, 1);
  g_assert_true (sync_engine_cancel (env->engine));
  g_autoptr (GError) error = NULL;
  g_assert_true (sync_engine_start (env->engine, 0, &error));
  g_assert_no_error (error);
  sync_engine_cancel (env->engine);
  g_assert_true (sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC));

  env_faults (env, "{\"bandwidth_bps\":0}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
}

static void
test_failed_download_retried (Env *env, gconstpointer data)
{
  /* Seed item 2: a failure must be retried by the next run although the cursor moved on. */
  env_add_file (env, "/Docs/ok.txt", "fine");
  g_autofree char *bad_id = env_add_file_id (env, "/Docs/bad.txt", "this one fails");
  g_autofree char *rule = g_strdup_printf (
      "{\"errors\":[{\"status\":404,\"route\":\"content\",\"item_id\":\"%s\",\"count\":1}]}", bad_id);
  env_faults (env, rule);
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed_with_errors");
  assert_counters_agree (env);
  {
    g_autoptr (cJSON) st = env_status (env);
    g_assert_cmpint (cJSON_GetObjectItem (st, "files_failed")->valueint, ==, 1);
    const cJSON *f = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "failed_files"), 0);
    g_assert_cmpstr (cJSON_GetObjectItem (f, "path")->valuestring, ==, "/Docs/bad.txt");
    g_assert_cmpint (cJSON_GetObjectItem (f, "attempts")->valueint, ==, 1);
    g_assert_true (cJSON_IsString (cJSON_GetObjectItem (f, "error_type")));
    const cJSON *src = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 0);
    g_assert_true (cJSON_IsTrue (cJSON_GetObjectItem (src, "has_cursor")));
  }
  g_assert_false (env_mount_has (env, "/Docs/bad.txt"));

  /* No remote change at all: the delta from the new cursor is empty, the queue still has it. */
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/bad.txt"));
  assert_mirror_equals_remote (env);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 1);
}

static void
test_outcomes_never_silent (Env *env, gconstpointer data)
{
  /* Seed item 9: every file not mirrored is listed with its reason; counters agree. */
  env_add_file (env, "/Docs/small.txt", "small");
  env_add_generated (env, "/Docs/huge.bin", 200 * 1024, 3);
  env_add_file (env, "/Docs/skip.tmp", "temporary");
  g_autofree char *long_name = g_strnfill (300, 'n');
  g_autofree char *long_path = g_strdup_printf ("/Docs/%s.txt", long_name);
  gboolean have_long = env_try_add_file (env, long_path, "long name");
  env_add_file (env, "/Docs/empty.txt", "");
  const char *exclude[] = { "*.tmp", NULL };
  EnvOptions opts = { .max_file_size = 100 * 1024, .exclude_globs = exclude };
  env_engine (env, &opts);
  g_autofree char *state = g_strdup (env_sync (env, 0));
  assert_counters_agree (env);
  g_autoptr (cJSON) st = env_status (env);
  g_autofree char *text = cJSON_PrintUnformatted (st);
  g_assert_nonnull (strstr (text, "\"path\":\"/Docs/huge.bin\",\"reason\":\"too_large\""));
  g_assert_nonnull (strstr (text, "\"path\":\"/Docs/skip.tmp\",\"reason\":\"excluded\""));
  g_assert_cmpint (cJSON_GetObjectItem (st, "files_filtered")->valueint, ==, 2);
  if (have_long)
    {
      g_assert_cmpstr (state, ==, "completed_with_errors");
      g_assert_nonnull (strstr (text, "\"error_type\":\"name_invalid\""));
    }
  else
    g_assert_cmpstr (state, ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/small.txt"));
  g_assert_true (env_mount_has (env, "/Docs/empty.txt"));
  g_assert_false (env_mount_has (env, "/Docs/huge.bin"));
  g_assert_false (env_mount_has (env, "/Docs/skip.tmp"));

  /* Filtered is not failed: nothing of it stays pending (no backoff to come due), and a plain
   * start with nothing changed does not look at it again. */
  g_assert_false (pending_has (env, "/Docs/huge.bin"));
  g_assert_false (pending_has (env, "/Docs/skip.tmp"));
  g_assert_false (pending_has (env, "/Docs/small.txt"));
  if (have_long)
    g_assert_true (pending_has (env, long_path));   /* an invalid name is a failure: kept */
  env_sync (env, 0);
  g_assert_cmpint (status_uint (env, "files_filtered"), ==, 0);

  /* A full start reconsiders filtered items: same filters, filtered again (and listed)... */
  env_sync (env, SYNC_START_FULL);
  assert_counters_agree (env);
  g_assert_cmpint (status_uint (env, "files_filtered"), ==, 2);
  g_assert_false (pending_has (env, "/Docs/huge.bin"));
  g_assert_false (pending_has (env, "/Docs/skip.tmp"));
  g_assert_false (env_mount_has (env, "/Docs/huge.bin"));

  /* ... and with the filters gone, a full start brings them in. */
  env_engine (env, NULL);
  env_sync (env, SYNC_START_FULL);
  assert_counters_agree (env);
  g_assert_cmpint (status_uint (env, "files_filtered"), ==, 0);
  g_assert_true (env_mount_has (env, "/Docs/huge.bin"));
  g_assert_true (env_mount_has (env, "/Docs/skip.tmp"));
}

static void
test_resync_410 (Env *env, gconstpointer data)
{
  /* 410 between runs and in the middle of a set: full enumeration, reconciliation (the
   * server wins: what it no longer has goes), reported in the status; nothing re-downloaded. */
  for (guint i = 0; i < 12; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/f%02u.txt", i);
      g_autofree char *c = g_strdup_printf ("file %u", i);
      env_add_file (env, p, c);
    }
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");

  /* Changes the client will only learn about through reconciliation. */
  env_itemop (env, "delete", "{\"path\":\"/Docs/f00.txt\"}");
  env_add_file (env, "/Docs/new.txt", "new");
  env_do (env, "POST", "epoch", "{}");
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 1);   /* new.txt only */
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "resyncs")->valuedouble, >=, 1);
  {
    g_autoptr (cJSON) st = env_status (env);
    const cJSON *src = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 0);
    g_assert_cmpint (cJSON_GetObjectItem (src, "resyncs")->valueint, >=, 1);
    g_assert_cmpstr (cJSON_GetObjectItem (src, "last_resync_reason")->valuestring, ==, "resync_required");
  }

  /* Mid-set: short pages, and the epoch bumps while the set is being read. */
  env_faults (env, "{\"delta_short_pages\":true,\"errors\":[{\"status\":410,\"route\":\"delta\",\"count\":1,\"every\":2}]}");
  env_itemop (env, "delete", "{\"path\":\"/Docs/f01.txt\"}");
  env_add_file (env, "/Docs/newer.txt", "newer");
  g_assert_cmpstr (env_sync (env, SYNC_START_FULL), ==, "completed");
  assert_mirror_equals_remote (env);
}

static void
test_throttled (Env *env, gconstpointer data)
{
  /* 429 with Retry-After: the client's gate holds every worker; nobody calls inside the window. */
  for (guint i = 0; i < 16; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/t%02u.txt", i);
      env_add_file (env, p, p);
    }
  env_faults (env, "{\"errors\":[{\"status\":429,\"route\":\"content\",\"count\":2,\"every\":5,\"retry_after\":1}]}");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "throttled")->valuedouble, >=, 1);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "throttle_violations")->valuedouble, ==, 0);
}

static void
test_clear_exclusions (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/x/a.txt", "a");
  env_add_file (env, "/Docs/b.txt", "b");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_exclude (env, "/Docs/x"));
  g_assert_false (env_mount_has (env, "/Docs/x/a.txt"));
  env_itemop (env, "modify", "{\"path\":\"/Docs/x/a.txt\",\"content\":\"a2\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_false (env_mount_has (env, "/Docs/x/a.txt"));   /* excluded stays out */

  SyncStartFlags flags = 0;
  g_autoptr (GError) error = NULL;
  g_assert_false (sync_engine_parse_start_words (env->engine, "bogus", 5, &flags, &error));
  g_assert_error (error, SYNC_ERROR, SYNC_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "bogus"));
  g_clear_error (&error);
  g_assert_true (sync_engine_parse_start_words (env->engine, "clear-exclusions\n", 17, &flags, &error));
  g_assert_cmpint (flags, ==, SYNC_START_CLEAR_EXCLUSIONS);
  g_assert_cmpstr (env_sync (env, flags), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/x/a.txt"));
  assert_mirror_equals_remote (env);
}

static GPtrArray *
read_feed (Env *env)
{
  g_autofree char *path = g_build_filename (env->cache_dir, "changes.jsonl", NULL);
  g_autofree char *text = NULL;
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  GPtrArray *lines = g_ptr_array_new_with_free_func ((GDestroyNotify) cJSON_Delete);
  g_auto (GStrv) parts = g_strsplit (text, "\n", -1);
  for (guint i = 0; parts[i] && *parts[i]; i++)
    {
      cJSON *o = cJSON_Parse (parts[i]);
      g_assert_nonnull (o);
      g_ptr_array_add (lines, o);
    }
  return lines;
}

static void
test_change_feed (Env *env, gconstpointer data)
{
  /* What an indexer reads: one line per published change, in order, with consecutive seqs,
   * kept across a restart; folders only when their paths change. */
  env_add_file (env, "/Docs/a.txt", "a");
  env_add_file (env, "/Docs/d/b.txt", "b");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  env_itemop (env, "rename", "{\"path\":\"/Docs/a.txt\",\"name\":\"a2.txt\"}");
  env_itemop (env, "rename", "{\"path\":\"/Docs/d\",\"name\":\"e\"}");
  env_engine (env, NULL);   /* a restart in between */
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  env_itemop (env, "delete", "{\"path\":\"/Docs/e/b.txt\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");

  g_autoptr (GPtrArray) lines = read_feed (env);
  g_assert_cmpuint (lines->len, ==, 1 + 5);
  g_assert_cmpstr (cJSON_GetObjectItem (lines->pdata[0], "format")->valuestring, ==, "odsf-changes");
  for (guint i = 1; i < lines->len; i++)
    g_assert_cmpint (cJSON_GetObjectItem (lines->pdata[i], "seq")->valueint, ==, i - 1);
  g_autoptr (GString) seen = g_string_new (NULL);
  for (guint i = 1; i < lines->len; i++)
    {
      const cJSON *l = lines->pdata[i];
      g_string_append_printf (seen, "%s %s%s;", cJSON_GetObjectItem (l, "action")->valuestring,
                              cJSON_GetObjectItem (l, "path")->valuestring,
                              cJSON_IsTrue (cJSON_GetObjectItem (l, "folder")) ? " (folder)" : "");
    }
  /* The two first adds may come in either order (two workers); the rest is ordered. */
  g_assert_true (g_str_has_prefix (seen->str, "added /Docs/a.txt;added /Docs/d/b.txt;")
                 || g_str_has_prefix (seen->str, "added /Docs/d/b.txt;added /Docs/a.txt;"));
  g_assert_nonnull (strstr (seen->str, "renamed /Docs/a2.txt;"));
  g_assert_nonnull (strstr (seen->str, "renamed /Docs/e (folder);"));
  g_assert_true (g_str_has_suffix (seen->str, "deleted /Docs/e/b.txt;"));
  const cJSON *added = lines->pdata[1];
  g_assert_true (cJSON_IsString (cJSON_GetObjectItem (added, "hash")));
  g_assert_true (cJSON_IsString (cJSON_GetObjectItem (added, "id")));
  g_assert_cmpint (cJSON_GetObjectItem (added, "size")->valueint, ==, 1);
}

static void
test_periodic (Env *env, gconstpointer data)
{
  /* A periodic start runs on its own; one that finds a run active skips quietly (no
   * rejection recorded). */
  env_add_generated (env, "/Docs/p.bin", 64 * 1024, 9);
  env_faults (env, "{\"bandwidth_bps\":32768}");
  env_engine (env, NULL);
  g_assert_true (sync_engine_start (env->engine, 0, NULL));
  g_autoptr (GError) error = NULL;
  g_assert_false (sync_engine_start (env->engine, SYNC_START_PERIODIC, &error));
  g_assert_error (error, SYNC_ERROR, SYNC_ERROR_BUSY);
  {
    g_autoptr (cJSON) st = env_status (env);
    g_assert_true (cJSON_IsNull (cJSON_GetObjectItem (st, "last_rejected_start")));
  }
  sync_engine_cancel (env->engine);
  g_assert_true (sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC));
  env_faults (env, "{\"bandwidth_bps\":0}");

  /* With an interval of 1 s the timer starts a run by itself: wait for its run_finished. */
  EnvOptions opts = { .sync_interval = 1 };
  env_engine (env, &opts);
  guint64 cursor = sync_engine_events_head (env->engine);
  g_autoptr (GString) out = g_string_new (NULL);
  while (!strstr (out->str, "\"run_finished\""))
    {
      env_wait_notify (env);
      sync_engine_events_read (env->engine, &cursor, out, 1 << 20);
    }
  g_assert_nonnull (strstr (out->str, "\"state\":\"completed\""));
  sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC);
  assert_mirror_equals_remote (env);
}

static void
modify_in_hook (SyncEngine *engine, const char *path, gpointer user_data)
{
  Env *env = user_data;
  if (g_strcmp0 (path, "/Docs/moving.txt") == 0 && !env->hook_fired)
    {
      env->hook_fired = TRUE;
      env_itemop (env, "modify", "{\"path\":\"/Docs/moving.txt\",\"content\":\"changed under our feet\"}");
    }
}

static void
test_hash_mismatch (Env *env, gconstpointer data)
{
  /* The content changes between the delta and the download: the bytes do not match the hash
   * the delta promised, so nothing is published (never unverified bytes under a verified
   * name); the failure is reported, and the next run brings the new version. */
  env_add_file (env, "/Docs/moving.txt", "the original");
  env_add_file (env, "/Docs/still.txt", "still");
  env_engine (env, NULL);
  sync_engine_set_hook (env->engine, SYNC_HOOK_TASK_ACQUIRED, modify_in_hook, env);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed_with_errors");
  sync_engine_set_hook (env->engine, SYNC_HOOK_TASK_ACQUIRED, NULL, NULL);
  g_assert_true (env->hook_fired);
  {
    g_autoptr (cJSON) st = env_status (env);
    const cJSON *f = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "failed_files"), 0);
    g_assert_nonnull (f);
    g_assert_cmpstr (cJSON_GetObjectItem (f, "path")->valuestring, ==, "/Docs/moving.txt");
    g_assert_cmpstr (cJSON_GetObjectItem (f, "error_type")->valuestring, ==, "hash_mismatch");
  }
  g_assert_false (env_mount_has (env, "/Docs/moving.txt"));
  g_assert_true (env_mount_has (env, "/Docs/still.txt"));
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
}

static void
test_shutdown_mid_run (Env *env, gconstpointer data)
{
  /* Daemon shutdown: the engine is freed while files are in flight. It cancels, waits for its
   * workers and records the run; the next process finishes the job, nothing twice. */
  for (guint i = 0; i < 10; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/s%02u.bin", i);
      env_add_generated (env, p, 256 * 1024, 200 + i);
    }
  env_faults (env, "{\"bandwidth_bps\":131072}");
  EnvOptions opts = { .workers = 3 };
  env_engine (env, &opts);
  g_assert_true (sync_engine_start (env->engine, 0, NULL));
  wait_current_files (env, 3);
  wait_bytes_served (env, 3, 16 * 1024);
  env_faults (env, "{\"bandwidth_bps\":0}");
  env_engine (env, NULL);   /* frees the old engine mid-run: the shutdown path */
  g_autoptr (StoreRun) run = store_last_run (env->store, NULL);
  g_assert_cmpstr (run->state, ==, "cancelled");
  g_autofree char *state = status_state (env);
  g_assert_cmpstr (state, ==, "cancelled");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_no_download_twice (env, 128 * 1024);
}

/* ---- SIGKILL in the middle of a run ----------------------------------------------------- */

static void
test_sigkill_restart (Env *env, gconstpointer data)
{
  /* Seed items 1 and 5: a process killed mid-run leaves cursor and queue consistent; the
   * restart reports the run interrupted (not "syncing" forever) and finishes the job without
   * downloading anything twice. */
  for (guint i = 0; i < 12; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/k%02u.bin", i);
      env_add_generated (env, p, 128 * 1024, 100 + i);
    }
  env_faults (env, "{\"bandwidth_bps\":262144}");

  pid_t pid = fork ();
  g_assert_cmpint (pid, >=, 0);
  if (pid == 0)
    {
      /* The child syncs until it is killed. */
      EnvOptions opts = { .workers = 2 };
      env_engine (env, &opts);
      sync_engine_start (env->engine, 0, NULL);
      sync_engine_wait_idle (env->engine, -1);
      _exit (3);
    }
  /* Kill once a few files are published and some are in flight. */
  for (;;)
    {
      g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
      if (cJSON_GetObjectItem (stats, "bytes_served")->valuedouble >= 5 * 128 * 1024)
        break;
      int status;
      g_assert_cmpint (waitpid (pid, &status, WNOHANG), ==, 0);   /* the child must still run */
      env_wait_a_little (env);
    }
  g_assert_cmpint (kill (pid, SIGKILL), ==, 0);
  int status;
  g_assert_cmpint (waitpid (pid, &status, 0), ==, pid);
  g_assert_true (WIFSIGNALED (status));

  env_faults (env, "{\"bandwidth_bps\":0}");
  env_engine (env, NULL);
  g_autofree char *before = status_state (env);
  g_assert_cmpstr (before, ==, "interrupted");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_no_download_twice (env, 96 * 1024);
}


static void
test_folder_delta_not_supported (Env *env, gconstpointer data)
{
  /* Business: folder-scoped delta answers notSupported. The source reads the root delta and
   * keeps what lies under it; an item moved out is a deletion for it; the mode persists. */
  env_faults (env, "{\"folder_delta_not_supported\":true,\"delta_shuffle\":true,\"delta_short_pages\":true}");
  env_add_file (env, "/Docs/a.txt", "alpha");
  env_add_file (env, "/Docs/sub/b.txt", "beta");
  env_add_file (env, "/Docs/sub/deep/c.txt", "gamma");
  env_add_file (env, "/Docs/leaves.txt", "moved out later");
  env_add_file (env, "/Other/x.txt", "outside");
  env_add_file (env, "/Other/y/z.txt", "outside too");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  assert_each_downloaded_once (env);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 4);
  g_assert_false (env_mount_has (env, "/Other/x.txt"));
  g_autofree char *mode_file = g_build_filename (env->cache_dir, "sources", "source-1.json", NULL);
  g_autofree char *mode = NULL;
  g_assert_true (g_file_get_contents (mode_file, &mode, NULL, NULL));
  g_assert_nonnull (strstr (mode, "\"mode\":\"root\""));

  /* Incremental, after a restart (the mode must come from disk): moves out, in and inside,
   * a new file, changes outside. */
  env_itemop (env, "move", "{\"path\":\"/Docs/leaves.txt\",\"parent_path\":\"/Other\"}");
  env_itemop (env, "modify", "{\"path\":\"/Other/x.txt\",\"content\":\"changed outside\"}");
  env_add_file (env, "/Docs/sub/deep/new.txt", "new");
  env_add_file (env, "/Other/more.txt", "more outside");
  env_engine (env, NULL);
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_assert_false (env_mount_has (env, "/Docs/leaves.txt"));
  g_assert_true (env_mount_has (env, "/Docs/sub/deep/new.txt"));
  g_assert_false (env_mount_has (env, "/Other/x.txt"));
  g_assert_false (env_mount_has (env, "/Other/more.txt"));
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  /* One delta call from the saved root cursor: no folder-scoped attempt, no re-listing. */
  g_assert_cmpfloat (cJSON_GetObjectItem (cJSON_GetObjectItem (stats, "requests"), "delta")->valuedouble, ==, 1);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 1);   /* new.txt */
  g_assert_cmpuint (status_uint (env, "deleted_count"), >=, 1);
  g_autoptr (cJSON) st = env_status (env);
  const cJSON *src = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 0);
  g_assert_cmpstr (cJSON_GetObjectItem (src, "state")->valuestring, ==, "completed");

  /* A populated folder moved in: the root delta lists only the folder, so the source is
   * enumerated afresh; its contents arrive, nothing else is downloaded again. */
  env_itemop (env, "move", "{\"path\":\"/Other/y\",\"parent_path\":\"/Docs/sub\"}");
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_assert_true (env_mount_has (env, "/Docs/sub/y/z.txt"));
  g_autoptr (cJSON) stats3 = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats3, "full_downloads")->valuedouble, ==, 1);   /* z.txt */
}

/* The reason filtered_files gives for @path, or NULL when the run did not list it. */
static char *
filtered_reason (Env *env, const char *path)
{
  g_autoptr (cJSON) st = env_status (env);
  const cJSON *it;
  cJSON_ArrayForEach (it, cJSON_GetObjectItem (st, "filtered_files"))
    if (g_strcmp0 (cJSON_GetObjectItem (it, "path")->valuestring, path) == 0)
      return g_strdup (cJSON_GetObjectItem (it, "reason")->valuestring);
  return NULL;
}

static char *
add_item_id (Env *env, const char *json)
{
  g_autoptr (cJSON) r = env_admin (env, "POST", "items/add", json);
  return g_strdup (cJSON_GetObjectItem (r, "id")->valuestring);
}

/* How many entries the mount shows in @path. */
static guint
mount_count (Env *env, const char *path)
{
  g_auto (StoreEntry) dir = { 0 };
  g_auto (GStrv) parts = g_strsplit (path, "/", -1);
  guint64 ino = STORE_ROOT_INO;
  for (guint i = 0; parts[i]; i++)
    if (*parts[i])
      {
        store_entry_clear (&dir);
        g_assert_true (store_lookup (env->store, ino, parts[i], &dir, NULL));
        ino = dir.ino;
      }
  g_autoptr (GPtrArray) kids = store_readdir (env->store, ino, NULL);
  g_assert_nonnull (kids);
  g_ptr_array_set_free_func (kids, (GDestroyNotify) store_entry_free);
  return kids->len;
}

/* Downloads the fake served for @id (full + ranged). */
static double
downloads_of (Env *env, const char *id)
{
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  const cJSON *d = cJSON_GetObjectItem (cJSON_GetObjectItem (stats, "downloads"), id);
  return d ? cJSON_GetObjectItem (d, "full")->valuedouble + cJSON_GetObjectItem (d, "ranged")->valuedouble : 0;
}

static void
package_and_shortcut (Env *env, gboolean root_delta)
{
  /* Issue #5: OneNote packages and shortcuts to other drives get a defined outcome — not
   * mirrored, listed in filtered_files (reasons package / remote_item), counted, never a failure
   * and never a silent skip. Like every filtered file they are reported by the run whose delta
   * set lists them (docs/status.md): the first sync, a full start, a change of the item. */
  if (root_delta)
    env_faults (env, "{\"folder_delta_not_supported\":true}");
  g_autofree char *file_id = env_add_file_id (env, "/Docs/a.txt", "alpha");
  g_autofree char *pkg_id
      = add_item_id (env, "{\"path\":\"/Docs/Notebook\",\"package\":\"oneNote\",\"content\":\"onenote section bytes\"}");
  g_autofree char *remote_id = add_item_id (env, "{\"path\":\"/Docs/Shared\",\"remote\":true}");
  g_autofree char *inside_id = env_add_file_id (env, "/Docs/Shared/inside.txt", "on the other drive");
  env_engine (env, NULL);

  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_counters_agree (env);
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 2);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 1);
  g_assert_cmpuint (status_uint (env, "files_failed"), ==, 0);
  {
    g_autofree char *pkg = filtered_reason (env, "/Docs/Notebook");
    g_autofree char *remote = filtered_reason (env, "/Docs/Shared");
    g_assert_cmpstr (pkg, ==, "package");
    g_assert_cmpstr (remote, ==, "remote_item");
  }
  g_assert_true (env_mount_has (env, "/Docs/a.txt"));
  g_assert_false (env_mount_has (env, "/Docs/Notebook"));
  g_assert_false (env_mount_has (env, "/Docs/Shared"));
  g_assert_cmpuint (mount_count (env, "/Docs"), ==, 1);
  g_assert_cmpuint (env_cache_objects (env), ==, 1);
  g_assert_false (pending_has (env, "/Docs/Notebook"));
  g_assert_false (pending_has (env, "/Docs/Shared"));
  g_assert_cmpfloat (downloads_of (env, file_id), ==, 1);
  g_assert_cmpfloat (downloads_of (env, pkg_id), ==, 0);
  g_assert_cmpfloat (downloads_of (env, remote_id), ==, 0);
  g_assert_cmpfloat (downloads_of (env, inside_id), ==, 0);
  {
    /* The event stream says it too, for an indexer that follows it. */
    guint64 cursor = 0;
    g_autoptr (GString) lines = g_string_new ("");
    sync_engine_events_read (env->engine, &cursor, lines, 1 << 20);
    g_assert_nonnull (strstr (lines->str, "\"event\":\"file_filtered\""));
    g_assert_nonnull (strstr (lines->str, "\"path\":\"/Docs/Notebook\",\"reason\":\"package\""));
    g_assert_nonnull (strstr (lines->str, "\"path\":\"/Docs/Shared\",\"reason\":\"remote_item\""));
  }

  /* Incremental, nothing changed: the set is empty, so is the list (counters and lists are
   * the run's); nothing is fetched and the mount is as it was. */
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_counters_agree (env);
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 0);
  g_assert_cmpuint (mount_count (env, "/Docs"), ==, 1);

  /* The package changes: the set lists it again, so the run reports it again — and only it. */
  env_itemop (env, "touch", "{\"path\":\"/Docs/Notebook\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_counters_agree (env);
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 1);
  {
    g_autofree char *pkg = filtered_reason (env, "/Docs/Notebook");
    g_assert_cmpstr (pkg, ==, "package");
  }

  /* Deleted remotely: its tombstone breaks nothing (no failure, nothing to remove from the
   * mount), and from now on no run lists it; a full start lists the shortcut alone. */
  env_itemop (env, "delete", "{\"path\":\"/Docs/Notebook\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_counters_agree (env);
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 0);
  g_assert_cmpuint (status_uint (env, "files_failed"), ==, 0);
  g_assert_true (env_mount_has (env, "/Docs/a.txt"));
  g_assert_cmpuint (mount_count (env, "/Docs"), ==, 1);

  g_assert_cmpstr (env_sync (env, SYNC_START_FULL), ==, "completed");
  assert_counters_agree (env);
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 1);
  {
    g_autofree char *pkg = filtered_reason (env, "/Docs/Notebook");
    g_autofree char *remote = filtered_reason (env, "/Docs/Shared");
    g_assert_null (pkg);
    g_assert_cmpstr (remote, ==, "remote_item");
  }
  g_assert_cmpuint (status_uint (env, "files_unchanged"), ==, 1);   /* a.txt */
  g_assert_cmpuint (mount_count (env, "/Docs"), ==, 1);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
}

static void
test_package_and_shortcut (Env *env, gconstpointer data)
{
  package_and_shortcut (env, FALSE);
}

/* The same through root-delta mode, which reports them from its filtered set. */
static void
test_package_and_shortcut_root_delta (Env *env, gconstpointer data)
{
  package_and_shortcut (env, TRUE);
}

typedef struct {
  Env        *env;
  GMutex      lock;
  GHashTable *flushed;          /* protected by lock: path → times seen at the seam */
  guint       visible_early;    /* protected by lock: files already in the mount at the seam */
} FlushSeen;

static void
note_flush (SyncEngine *engine, const char *path, gpointer user_data)
{
  FlushSeen *f = user_data;
  /* The leader calls this after syncfs() and before the store commit of the batch. */
  gboolean visible = env_mount_has (f->env, path);
  g_mutex_lock (&f->lock);
  guint n = GPOINTER_TO_UINT (g_hash_table_lookup (f->flushed, path));
  g_hash_table_insert (f->flushed, g_strdup (path), GUINT_TO_POINTER (n + 1));
  f->visible_early += visible;
  g_mutex_unlock (&f->lock);
}

static void
test_syncfs_before_publish (Env *env, gconstpointer data)
{
  /* Durability: the cache file system is flushed (syncfs) before the store commit that makes
   * a batch's files visible, or a power cut could leave published files without their bytes.
   * The engine's seam fires behind a syncfs() that returned 0; every file must pass it once,
   * while still invisible, and be visible after the run. */
  enum { N = 12 };
  char *paths[N];
  for (guint i = 0; i < N; i++)
    {
      paths[i] = g_strdup_printf ("/Docs/%s/f%02u.bin", i % 2 ? "odd" : "even", i);
      if (i == 5)
        env_add_file (env, paths[i], "");   /* an empty file has an object too */
      else
        env_add_generated (env, paths[i], 1000 + 4096 * i, i);
    }
  EnvOptions opts = { .workers = 3 };
  env_engine (env, &opts);
  FlushSeen f = { .env = env, .flushed = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL) };
  g_mutex_init (&f.lock);
  sync_engine_set_hook (env->engine, SYNC_HOOK_OBJECTS_DURABLE, note_flush, &f);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  sync_engine_set_hook (env->engine, SYNC_HOOK_OBJECTS_DURABLE, NULL, NULL);
  assert_mirror_equals_remote (env);

  g_assert_cmpuint (f.visible_early, ==, 0);
  g_assert_cmpuint (g_hash_table_size (f.flushed), ==, N);
  for (guint i = 0; i < N; i++)
    {
      g_assert_cmpuint (GPOINTER_TO_UINT (g_hash_table_lookup (f.flushed, paths[i])), ==, 1);
      g_assert_true (env_mount_has (env, paths[i]));
      g_free (paths[i]);
    }
  g_hash_table_unref (f.flushed);
  g_mutex_clear (&f.lock);
}

static gint64
store_source_id (Env *env, const char *path, gboolean *has_cursor)
{
  g_autoptr (GPtrArray) sources = store_sources (env->store, NULL);
  g_assert_nonnull (sources);
  for (guint i = 0; i < sources->len; i++)
    {
      StoreSource *s = sources->pdata[i];
      if (g_strcmp0 (s->remote_path, path) == 0)
        {
          if (has_cursor)
            *has_cursor = s->cursor != NULL;
          return s->id;
        }
    }
  g_error ("the store has no source %s", path);
}

static char *
mode_file (Env *env, const char *name)
{
  return g_build_filename (env->cache_dir, "sources", name, NULL);
}

static gboolean
mode_file_exists (Env *env, gint64 id)
{
  g_autofree char *name = g_strdup_printf ("source-%" G_GINT64_FORMAT ".json", id);
  g_autofree char *p = mode_file (env, name);
  return g_file_test (p, G_FILE_TEST_EXISTS);
}

static void
put_file (Env *env, const char *name)
{
  g_autofree char *p = mode_file (env, name);
  g_assert_true (g_file_set_contents (p, "{}", -1, NULL));
}

/* One source swapped for its sibling: "/Docs/A" out, "/Docs/B" in. The removal queues the
 * synthetic "/Docs" for deletion at construction; the run configures "/Docs/B" below it before
 * the queue drains, so "/Docs" must stay (it once went, and took /Docs/B out of the mount). */
static void
test_source_swapped_for_sibling (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/A/a.txt", "alpha");
  env_add_file (env, "/Docs/B/b.txt", "beta");
  static const char *const a[] = { "/Docs/A", NULL };
  static const char *const b[] = { "/Docs/B", NULL };
  EnvOptions oa = { .sources = a };
  env_engine (env, &oa);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/A/a.txt"));
  EnvOptions ob = { .sources = b };
  env_engine (env, &ob);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/B/b.txt"));
  g_assert_false (env_mount_has (env, "/Docs/A"));
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/B/b.txt"));
}

/* A file that never reached the mount (its download failed) leaves with its source: its
 * deletion is no news, and nothing in the feed or the events says "deleted /". */
static void
test_removed_source_unpublished_file (Env *env, gconstpointer data)
{
  env_add_file (env, "/Keep/k.txt", "kept");
  env_add_file (env, "/Gone/ok.txt", "fine");
  g_autofree char *bad_id = env_add_file_id (env, "/Gone/bad.txt", "never arrives");
  g_autofree char *rule = g_strdup_printf (
      "{\"errors\":[{\"status\":404,\"route\":\"content\",\"item_id\":\"%s\",\"count\":1000}]}", bad_id);
  env_faults (env, rule);
  static const char *const both[] = { "/Keep", "/Gone", NULL };
  static const char *const keep[] = { "/Keep", NULL };
  EnvOptions ob = { .sources = both };
  env_engine (env, &ob);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed_with_errors");
  g_assert_false (env_mount_has (env, "/Gone/bad.txt"));
  EnvOptions ok = { .sources = keep };
  env_engine (env, &ok);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_false (env_mount_has (env, "/Gone"));
  g_assert_true (env_mount_has (env, "/Keep/k.txt"));
  g_autoptr (GPtrArray) feed = read_feed (env);
  guint deleted = 0;
  for (guint i = 0; i < feed->len; i++)
    {
      const cJSON *line = feed->pdata[i];
      const char *path = cJSON_GetStringValue (cJSON_GetObjectItem (line, "path"));
      g_assert_cmpstr (path, !=, "/");
      if (g_strcmp0 (cJSON_GetStringValue (cJSON_GetObjectItem (line, "action")), "deleted") == 0)
        deleted++;
    }
  g_assert_cmpuint (deleted, ==, 2);   /* /Gone/ok.txt and /Gone, which the mount showed */
}

static void
test_unconfigured_source_forgotten (Env *env, gconstpointer data)
{
  /* Root-delta mode keeps a known-ids file per source. A source that leaves the configuration
   * takes its file with it — and its cursor, which is a root deltaLink that must never be
   * followed as a folder's —, its store row, and at the next run its files in the mount. Configured again, it is enumerated afresh and reconciled, so what
   * changed meanwhile (a deletion too) arrives. Nothing else in the directory is touched. */
  env_faults (env, "{\"folder_delta_not_supported\":true}");
  env_add_file (env, "/Docs/a.txt", "alpha");
  env_add_file (env, "/Other/b.txt", "beta");
  env_add_file (env, "/Other/gone.txt", "deleted while not configured");
  static const char *const both[] = { "/Docs", "/Other", NULL };
  static const char *const docs_only[] = { "/Docs", NULL };
  EnvOptions opts = { .sources = both };
  env_engine (env, &opts);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  gint64 docs = store_source_id (env, "/Docs", NULL);
  gint64 other = store_source_id (env, "/Other", NULL);
  g_assert_true (mode_file_exists (env, docs));
  g_assert_true (mode_file_exists (env, other));
  g_assert_true (env_mount_has (env, "/Other/gone.txt"));
  /* Names that are not the engine's, and one of its names for a source no store row has. */
  put_file (env, "notes.json");
  put_file (env, "source-01.json");
  g_autofree char *tmp_name = g_strdup_printf ("source-%" G_GINT64_FORMAT ".json.K3J9QZ", other);
  put_file (env, tmp_name);
  put_file (env, "source-4242.json");

  /* /Other leaves the configuration: its state and its store row go at once, its files at
   * the next run. */
  EnvOptions opts2 = { .sources = docs_only };
  env_engine (env, &opts2);
  gboolean docs_cursor = FALSE;
  store_source_id (env, "/Docs", &docs_cursor);
  g_autoptr (GPtrArray) left = store_sources (env->store, NULL);
  g_assert_cmpuint (left->len, ==, 1);
  g_assert_true (mode_file_exists (env, docs));
  g_assert_true (docs_cursor);
  g_assert_false (mode_file_exists (env, other));
  g_assert_false (mode_file_exists (env, 4242));
  const char *kept[] = { "notes.json", "source-01.json", tmp_name };
  for (guint i = 0; i < G_N_ELEMENTS (kept); i++)
    {
      g_autofree char *p = mode_file (env, kept[i]);
      g_assert_true (g_file_test (p, G_FILE_TEST_EXISTS));
    }
  g_assert_true (env_mount_has (env, "/Other/b.txt"));
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_false (mode_file_exists (env, other));
  g_assert_false (env_mount_has (env, "/Other/b.txt"));
  g_assert_false (env_mount_has (env, "/Other"));
  g_assert_true (env_mount_has (env, "/Docs/a.txt"));

  /* Meanwhile /Other changes; configured again it comes back whole and current (a new
   * source: it is enumerated afresh). */
  env_itemop (env, "delete", "{\"path\":\"/Other/gone.txt\"}");
  env_add_file (env, "/Other/new.txt", "new");
  env_engine (env, &opts);
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (mode_file_exists (env, other));
  g_assert_true (env_mount_has (env, "/Other/b.txt"));
  g_assert_true (env_mount_has (env, "/Other/new.txt"));
  g_assert_false (env_mount_has (env, "/Other/gone.txt"));
  g_autofree char *why = NULL;
  if (!env_mirror_equals_remote (env, "/Other", &why))
    g_error ("/Other differs from remote: %s", why);
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  /* b.txt left the mount with its source; it comes back by download, like new.txt. */
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 2);
}

static void
test_failed_full_start_reconciles_later (Env *env, gconstpointer data)
{
  /* A full start drops the cursor before it enumerates. When it fails before its commit the
   * source has items but no cursor; the next plain run enumerates everything and must still
   * let the server win, or a file deleted meanwhile stays in the mount for good. */
  env_add_file (env, "/Docs/a.txt", "alpha");
  env_add_file (env, "/Docs/gone.txt", "deleted after the failed full start");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  env_faults (env, "{\"errors\":[{\"status\":500,\"route\":\"delta\",\"count\":-1}]}");
  g_test_expect_message ("odsf-sync", G_LOG_LEVEL_WARNING, "source /Docs: GET delta: HTTP 500*");
  g_assert_cmpstr (env_sync (env, SYNC_START_FULL), ==, "failed");
  g_test_assert_expected_messages ();
  env_faults (env, "{\"clear\":true}");
  env_itemop (env, "delete", "{\"path\":\"/Docs/gone.txt\"}");
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_false (env_mount_has (env, "/Docs/gone.txt"));
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
  g_autoptr (cJSON) st = env_status (env);
  const cJSON *src = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 0);
  g_assert_cmpstr (cJSON_GetObjectItem (src, "last_resync_reason")->valuestring, ==, "no_cursor");
  g_assert_cmpint (cJSON_GetObjectItem (src, "reconciled_deletes")->valueint, ==, 1);
}

/* Why this process has no private mount namespace, or NULL when it has one. */
static char *no_private_mounts;

/* Called first in main(), while the process has one thread: a mount namespace is per thread,
 * and every thread created later inherits this one. Mounts made in it vanish with the
 * process, so nothing stays mounted whatever happens to a test. */
static void
private_mount_namespace (void)
{
  if (unshare (CLONE_NEWNS) != 0)
    no_private_mounts = g_strdup_printf ("unshare(CLONE_NEWNS): %s (needs root)", g_strerror (errno));
  else if (mount ("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
    no_private_mounts = g_strdup_printf ("making mounts private: %s", g_strerror (errno));
}

/* Mounts a tmpfs of @kib KiB on @dir (in the private namespace). FALSE (with @why) when that is
 * not possible here. */
static gboolean
mount_small_fs (const char *dir, guint kib, char **why)
{
  g_mkdir_with_parents (dir, 0700);
  if (no_private_mounts)
    {
      *why = g_strdup (no_private_mounts);
      return FALSE;
    }
  g_autofree char *opts = g_strdup_printf ("size=%uk,mode=0700", kib);
  if (mount ("odsf-test", dir, "tmpfs", 0, opts) != 0)
    {
      *why = g_strdup_printf ("mount tmpfs on %s: %s", dir, g_strerror (errno));
      return FALSE;
    }
  return TRUE;
}

static guint
count_parts (Env *env)
{
  g_autofree char *tmp = g_build_filename (env->cache_dir, "tmp", NULL);
  g_autoptr (GDir) d = g_dir_open (tmp, 0, NULL);
  guint n = 0;
  const char *name;
  while (d && (name = g_dir_read_name (d)))
    n += g_str_has_suffix (name, ".part");
  return n;
}

static void
test_disk_full (Env *env, gconstpointer data)
{
  /* A full cache disk loses nothing: the file stays queued, no partial file is left, the run
   * ends completed_with_errors with error_type disk_full (from the write's errno), and the next
   * run, with room again, gets it. */
  g_autofree char *why = NULL;
  if (!mount_small_fs (env->cache_dir, 256, &why))
    {
      g_test_skip (why);
      return;
    }
  /* small.txt is mirrored before the disk fills: were both in one run, the two workers would
   * race for the last free blocks and either file could be the one that fails. */
  env_add_file (env, "/Docs/small.txt", "small");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");

  g_autofree char *filler = g_build_filename (env->cache_dir, "filler", NULL);
  g_autofree char *zeros = g_malloc0 (200 * 1024);
  g_assert_true (g_file_set_contents (filler, zeros, 200 * 1024, NULL));
  env_add_generated (env, "/Docs/big.bin", 128 * 1024, 11);

  g_assert_cmpstr (env_sync (env, 0), ==, "completed_with_errors");
  assert_counters_agree (env);
  {
    g_autoptr (cJSON) st = env_status (env);
    g_assert_cmpint (cJSON_GetObjectItem (st, "files_failed")->valueint, ==, 1);
    const cJSON *f = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "failed_files"), 0);
    g_assert_cmpstr (cJSON_GetObjectItem (f, "path")->valuestring, ==, "/Docs/big.bin");
    g_assert_cmpstr (cJSON_GetObjectItem (f, "error_type")->valuestring, ==, "disk_full");
  }
  g_assert_true (env_mount_has (env, "/Docs/small.txt"));
  g_assert_false (env_mount_has (env, "/Docs/big.bin"));
  g_assert_cmpuint (count_parts (env), ==, 0);
  g_assert_cmpuint (env_cache_objects (env), ==, 1);   /* small.txt only: nothing half-made */

  g_assert_cmpint (g_unlink (filler), ==, 0);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  /* Detached lazily: the engine's open files keep it alive until teardown closes them. */
  g_assert_cmpint (umount2 (env->cache_dir, MNT_DETACH), ==, 0);
}

static void
test_timeout (Env *env, gconstpointer data)
{
  /* A download host that sends nothing for longer than the stall timeout: error_type timeout,
   * the file stays queued and arrives once the host answers again. */
  env_add_file (env, "/Docs/ok.txt", "fine");
  env_engine (env, &(EnvOptions){ .stall_timeout_s = 1, .workers = 1 });
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  env_add_file (env, "/Docs/slow.txt", "slow to come");
  env_faults (env, "{\"download_latency_ms\":2500}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed_with_errors");
  assert_counters_agree (env);
  {
    g_autoptr (cJSON) st = env_status (env);
    const cJSON *f = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "failed_files"), 0);
    g_assert_nonnull (f);
    g_assert_cmpstr (cJSON_GetObjectItem (f, "path")->valuestring, ==, "/Docs/slow.txt");
    g_assert_cmpstr (cJSON_GetObjectItem (f, "error_type")->valuestring, ==, "timeout");
  }
  g_assert_false (env_mount_has (env, "/Docs/slow.txt"));
  env_faults (env, "{\"download_latency_ms\":0}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
}

static void
test_status_counts_files (Env *env, gconstpointer data)
{
  /* files_unchanged counts files only (not folders or tombstones), so that
   * processed + unchanged + failed + filtered = the files of the run (docs/status.md); and a
   * completed run sets sources[].last_completed. */
  g_autofree char *denied = NULL;
  for (guint i = 0; i < 12; i++)
    {
      g_autofree char *p = g_strdup_printf ("/Docs/d%u/f%u.txt", i % 3, i);
      g_autofree char *c = g_strdup_printf ("content %u", i);
      if (i == 7)
        denied = env_add_file_id (env, p, c);
      else
        env_add_file (env, p, c);
    }
  g_autofree char *rule = g_strdup_printf (
      "{\"errors\":[{\"status\":403,\"route\":\"content\",\"item_id\":\"%s\",\"count\":-1}]}", denied);
  env_faults (env, rule);
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed_with_errors");
  assert_counters_agree (env);
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 11);
  g_assert_cmpuint (status_uint (env, "files_failed"), ==, 1);
  g_assert_cmpuint (status_uint (env, "files_unchanged"), ==, 0);
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 0);
  {
    g_autoptr (cJSON) st = env_status (env);
    const cJSON *src = cJSON_GetArrayItem (cJSON_GetObjectItem (st, "sources"), 0);
    g_assert_true (cJSON_IsString (cJSON_GetObjectItem (src, "last_completed")));
  }

  env_faults (env, "{\"clear\":true}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 1);
  g_assert_cmpuint (status_uint (env, "files_unchanged"), ==, 0);

  /* A full start lists everything: 12 files unchanged, the 4 folders are not files. */
  g_assert_cmpstr (env_sync (env, SYNC_START_FULL), ==, "completed");
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 0);
  g_assert_cmpuint (status_uint (env, "files_unchanged"), ==, 12);
  g_assert_cmpuint (status_uint (env, "files_failed"), ==, 0);

  /* One change, one rename: the set also holds their folders; neither counts as a file. */
  env_itemop (env, "modify", "{\"path\":\"/Docs/d0/f0.txt\",\"content\":\"changed\"}");
  env_itemop (env, "rename", "{\"path\":\"/Docs/d1/f1.txt\",\"name\":\"renamed.txt\"}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_cmpuint (status_uint (env, "files_processed"), ==, 1);
  g_assert_cmpuint (status_uint (env, "renamed_count"), ==, 1);
  g_assert_cmpuint (status_uint (env, "files_unchanged"), ==, 0);
  assert_mirror_equals_remote (env);
}

static void
test_crash_leftovers_collected (Env *env, gconstpointer data)
{
  /* At engine start, an object no published item references (a crash between its rename and
   * the publish) and a partial download no pending work resumes are removed; a partial download
   * that pending work will resume is kept, and resumed with Range. */
  env_add_file (env, "/Docs/a.txt", "alpha");
  env_add_file (env, "/Docs/b.txt", "beta");
  env_engine (env, &(EnvOptions){ .workers = 1 });
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_cmpuint (env_cache_objects (env), ==, 2);

  /* A cancelled transfer leaves a resumable part. */
  env_add_generated (env, "/Docs/big.bin", 256 * 1024, 5);
  env_faults (env, "{\"bandwidth_bps\":32768}");
  g_assert_true (sync_engine_start (env->engine, 0, NULL));
  wait_bytes_served (env, 1, 16 * 1024);
  g_assert_true (sync_engine_cancel (env->engine));
  g_assert_true (sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC));
  g_assert_cmpuint (count_parts (env), ==, 1);

  /* What a crash leaves behind. */
  g_autofree char *orphan = g_build_filename (env->cache_dir, "objects", "ORPHAN-00000000deadbeef", NULL);
  g_autofree char *stray = g_build_filename (env->cache_dir, "tmp", "GONE_1-nohash.part", NULL);
  g_assert_true (g_file_set_contents (orphan, "bytes nobody publishes", -1, NULL));
  g_assert_true (g_file_set_contents (stray, "a part nobody resumes", -1, NULL));
  g_assert_cmpuint (env_cache_objects (env), ==, 3);
  g_assert_cmpuint (count_parts (env), ==, 2);

  env_engine (env, &(EnvOptions){ .workers = 1 });   /* a restart */
  g_assert_false (g_file_test (orphan, G_FILE_TEST_EXISTS));
  g_assert_false (g_file_test (stray, G_FILE_TEST_EXISTS));
  g_assert_cmpuint (env_cache_objects (env), ==, 2);   /* the published ones stay */
  g_assert_cmpuint (count_parts (env), ==, 1);         /* the resumable one stays */

  env_faults (env, "{\"bandwidth_bps\":0}");
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "ranged_downloads")->valuedouble, ==, 1);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
  g_assert_cmpuint (count_parts (env), ==, 0);
  g_assert_cmpuint (env_cache_objects (env), ==, 3);
}

/* Filters configured after files were published: a plain run leaves unchanged files alone
 * (their sets do not queue them), a "full" start applies the filters to what is published —
 * the refused files leave the mount and the cache, listed and counted — and a full start with
 * the filters lifted brings them back. */
static void
test_full_applies_new_filters (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/small.txt", "small");
  env_add_generated (env, "/Docs/sub/big.bin", 4096, 1);
  env_add_file (env, "/Docs/notes.tmp", "scratch");
  env_engine (env, NULL);
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_cmpuint (env_cache_objects (env), ==, 3);

  const char *exclude[] = { "*.tmp", NULL };
  env_engine (env, &(EnvOptions){ .max_file_size = 1000, .exclude_globs = exclude });
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/sub/big.bin"));   /* unchanged: not reconsidered */

  g_assert_cmpstr (env_sync (env, SYNC_START_FULL), ==, "completed");
  g_assert_false (env_mount_has (env, "/Docs/sub/big.bin"));
  g_assert_false (env_mount_has (env, "/Docs/notes.tmp"));
  g_assert_true (env_mount_has (env, "/Docs/small.txt"));
  g_autofree char *why_big = filtered_reason (env, "/Docs/sub/big.bin");
  g_autofree char *why_tmp = filtered_reason (env, "/Docs/notes.tmp");
  g_assert_cmpstr (why_big, ==, "too_large");
  g_assert_cmpstr (why_tmp, ==, "excluded");
  g_assert_cmpuint (status_uint (env, "files_filtered"), ==, 2);
  g_assert_cmpuint (status_uint (env, "files_failed"), ==, 0);
  g_assert_cmpuint (env_cache_objects (env), ==, 1);          /* their bytes are gone too */

  env_engine (env, NULL);
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, SYNC_START_FULL), ==, "completed");
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 2);
  g_assert_cmpuint (env_cache_objects (env), ==, 3);
}

/* A file the service reports without a quickXorHash is downloaded whole every time: a partial
 * download of it cannot be told from one of an older version (its bytes are checked against
 * nothing), so resuming one would splice two versions into a file nobody wrote. */
static void
test_no_hash_never_resumes (Env *env, gconstpointer data)
{
  env_faults (env, "{\"no_hash\":true,\"bandwidth_bps\":32768}");
  env_add_generated (env, "/Docs/unhashed.bin", 256 * 1024, 5);
  env_engine (env, &(EnvOptions){ .workers = 1 });
  g_assert_true (sync_engine_start (env->engine, 0, NULL));
  wait_bytes_served (env, 1, 16 * 1024);
  g_assert_true (sync_engine_cancel (env->engine));
  g_assert_true (sync_engine_wait_idle (env->engine, 30 * G_USEC_PER_SEC));
  g_assert_cmpuint (count_parts (env), ==, 1);   /* kept: a cancel keeps what it has */

  /* The file changes, same size, still no hash; the next run must not resume the old bytes. */
  env_itemop (env, "modify", "{\"path\":\"/Docs/unhashed.bin\",\"size\":262144,\"seed\":9}");
  env_faults (env, "{\"no_hash\":true,\"bandwidth_bps\":0}");
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "ranged_downloads")->valuedouble, ==, 0);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 1);
  g_assert_cmpuint (count_parts (env), ==, 0);
}

/* A cancel (or a crash) can fall between two publishes of one set: a folder's delete applied,
 * the move of a file out of it not yet. That file is still published, under a folder that is
 * gone, so it is out of the visible tree until its move applies; its bytes must survive the
 * start-up hygiene, or the move would publish a file without bytes. */
static void
test_orphan_hygiene_keeps_unreachable (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/keep.txt", "keep");
  env_add_file (env, "/Docs/dir/x.txt", "x");
  env_add_file (env, "/Docs/dir/rescued.txt", "rescued bytes");
  env_engine (env, &(EnvOptions){ .workers = 1 });
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_cmpuint (env_cache_objects (env), ==, 3);

  /* One set: the file moves out, the folder goes. The run is cancelled once the set is
   * committed, so its work is queued and none applied: deletes (deepest first), then the move. */
  env_itemop (env, "move", "{\"path\":\"/Docs/dir/rescued.txt\",\"parent_path\":\"/Docs\"}");
  env_itemop (env, "delete", "{\"path\":\"/Docs/dir\",\"child_tombstones\":false}");
  sync_engine_set_hook (env->engine, SYNC_HOOK_SET_COMMITTED, cancel_in_hook, NULL);
  g_autofree char *s1 = g_strdup (env_sync (env, 0));
  g_assert_cmpstr (s1, ==, "cancelled");
  sync_engine_set_hook (env->engine, SYNC_HOOK_SET_COMMITTED, NULL, NULL);

  /* Apply every queued delete, as the next run would before a second cancel or a crash. */
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) work = store_work_next (env->store, 0, 1000, &error);
  g_assert_no_error (error);
  guint deletes = 0, moves = 0;
  for (guint i = 0; i < work->len; i++)
    {
      StoreWork *w = work->pdata[i];
      if (w->action == STORE_ACTION_DELETE)
        {
          g_autoptr (GPtrArray) stale = NULL;
          g_assert_true (store_work_publish (env->store, w, NULL, &stale, &error));
          g_assert_no_error (error);
          for (guint k = 0; stale && k < stale->len; k++)
            {
              g_autofree char *p = g_build_filename (env->cache_dir, "objects", (char *) stale->pdata[k], NULL);
              g_unlink (p);
            }
          deletes++;
        }
      else if (w->action == STORE_ACTION_MOVE)
        moves++;
    }
  g_assert_cmpuint (deletes, >=, 2);   /* dir and x.txt */
  g_assert_cmpuint (moves, ==, 1);
  g_assert_false (env_mount_has (env, "/Docs/dir"));
  g_assert_false (env_mount_has (env, "/Docs/rescued.txt"));   /* not applied yet */
  g_assert_cmpuint (env_cache_objects (env), ==, 2);           /* keep.txt, rescued.txt */

  env_engine (env, &(EnvOptions){ .workers = 1 });             /* a restart: the hygiene runs */
  g_assert_cmpuint (env_cache_objects (env), ==, 2);
  env_do (env, "POST", "stats/reset", "{}");
  g_assert_cmpstr (env_sync (env, 0), ==, "completed");
  g_assert_true (env_mount_has (env, "/Docs/rescued.txt"));
  assert_mirror_equals_remote (env);
  g_autoptr (cJSON) stats = env_admin (env, "GET", "stats", NULL);
  g_assert_cmpfloat (cJSON_GetObjectItem (stats, "full_downloads")->valuedouble, ==, 0);
}

/* What the filesystem's event barrier relies on (docs/events.md): a change's publish notes
 * come before its file_published line is in the ring, so the notes the filesystem counts
 * after taking a line include that line's own. Each PUBLISHED note records the ring's head. */
typedef struct {
  Env       *env;
  GMutex     lock;
  GPtrArray *names;   /* char*, protected by lock */
  GArray    *heads;   /* guint64: sync_engine_events_head() when the note came */
} NoteLog;

static void
log_notify (SyncNotifyKind kind, guint64 ino, guint64 parent_ino, const char *name, gpointer user_data)
{
  NoteLog *log = user_data;
  if (kind == SYNC_NOTIFY_PUBLISHED && name != NULL)
    {
      guint64 head = sync_engine_events_head (log->env->engine);
      g_mutex_lock (&log->lock);
      g_ptr_array_add (log->names, g_strdup (name));
      g_array_append_val (log->heads, head);
      g_mutex_unlock (&log->lock);
    }
  g_mutex_lock (&log->env->lock);   /* as the environment's own callback */
  log->env->notifications++;
  g_cond_broadcast (&log->env->cond);
  g_mutex_unlock (&log->env->lock);
}

/* Runs a sync and checks every PUBLISHED note of a name that has an @event event in the run
 * came while that event was not yet in the ring. Returns the events checked. */
static guint
sync_checking_note_order (Env *env, NoteLog *log, const char *event, SyncStartFlags flags)
{
  g_mutex_lock (&log->lock);
  g_ptr_array_set_size (log->names, 0);
  g_array_set_size (log->heads, 0);
  g_mutex_unlock (&log->lock);
  guint64 cursor = sync_engine_events_head (env->engine);
  g_assert_cmpstr (env_sync (env, flags), ==, "completed");
  g_autoptr (GString) out = g_string_new (NULL);
  sync_engine_events_read (env->engine, &cursor, out, 1 << 20);
  g_auto (GStrv) lines = g_strsplit (out->str, "\n", -1);
  guint checked = 0;
  for (guint i = 0; lines[i] && *lines[i]; i++)
    {
      g_autoptr (cJSON) ev = cJSON_Parse (lines[i]);
      g_assert_nonnull (ev);
      if (g_strcmp0 (cJSON_GetObjectItem (ev, "event")->valuestring, event) != 0)
        continue;
      guint64 seq = (guint64) cJSON_GetObjectItem (ev, "seq")->valuedouble;
      g_autofree char *base = g_path_get_basename (cJSON_GetObjectItem (ev, "path")->valuestring);
      guint notes = 0;
      g_mutex_lock (&log->lock);
      for (guint n = 0; n < log->names->len; n++)
        if (g_str_equal (log->names->pdata[n], base))
          {
            g_assert_cmpuint (g_array_index (log->heads, guint64, n), <=, seq);
            notes++;
          }
      g_mutex_unlock (&log->lock);
      g_assert_cmpuint (notes, >, 0);
      checked++;
    }
  return checked;
}

static void
test_publish_notes_before_event (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/a.txt", "first");
  env_add_file (env, "/Docs/sub/b.txt", "going");
  env_engine (env, NULL);
  NoteLog log = { .env = env, .names = g_ptr_array_new_with_free_func (g_free),
                  .heads = g_array_new (FALSE, FALSE, sizeof (guint64)) };
  g_mutex_init (&log.lock);
  sync_engine_set_notify (env->engine, log_notify, &log);

  g_assert_cmpuint (sync_checking_note_order (env, &log, "file_published", 0), ==, 2);   /* added, added */
  env_itemop (env, "modify", "{\"path\":\"/Docs/a.txt\",\"content\":\"second, longer\"}");
  env_itemop (env, "delete", "{\"path\":\"/Docs/sub/b.txt\"}");
  g_assert_cmpuint (sync_checking_note_order (env, &log, "file_published", 0), ==, 2);   /* updated, deleted */

  sync_engine_set_notify (env->engine, NULL, NULL);
  g_mutex_clear (&log.lock);
  g_ptr_array_unref (log.names);
  g_array_unref (log.heads);
}

/* A published file that becomes filtered (too large now, or excluded by a glob) is withdrawn
 * from the mount: the filesystem is told where it was before its file_filtered line. */
static void
test_withdrawn_notes_before_event (Env *env, gconstpointer data)
{
  env_add_file (env, "/Docs/grows.txt", "small");
  env_add_file (env, "/Docs/later.tmp", "small");
  const char *exclude[] = { "*.tmp", NULL };
  EnvOptions opts = { .max_file_size = 16 };
  env_engine (env, &opts);
  NoteLog log = { .env = env, .names = g_ptr_array_new_with_free_func (g_free),
                  .heads = g_array_new (FALSE, FALSE, sizeof (guint64)) };
  g_mutex_init (&log.lock);
  sync_engine_set_notify (env->engine, log_notify, &log);
  g_assert_cmpuint (sync_checking_note_order (env, &log, "file_published", 0), ==, 2);
  g_assert_true (env_mount_has (env, "/Docs/grows.txt"));

  env_itemop (env, "modify", "{\"path\":\"/Docs/grows.txt\",\"content\":\"now longer than sixteen bytes\"}");
  g_assert_cmpuint (sync_checking_note_order (env, &log, "file_filtered", 0), ==, 1);
  g_assert_false (env_mount_has (env, "/Docs/grows.txt"));

  /* The same through an exclude glob (a restart with a new filter), at the file's next change. */
  sync_engine_set_notify (env->engine, NULL, NULL);
  opts.exclude_globs = exclude;
  env_engine (env, &opts);
  sync_engine_set_notify (env->engine, log_notify, &log);
  g_assert_true (env_mount_has (env, "/Docs/later.tmp"));
  env_itemop (env, "modify", "{\"path\":\"/Docs/later.tmp\",\"content\":\"small too\"}");
  g_assert_cmpuint (sync_checking_note_order (env, &log, "file_filtered", 0), ==, 1);
  g_assert_false (env_mount_has (env, "/Docs/later.tmp"));

  sync_engine_set_notify (env->engine, NULL, NULL);
  g_mutex_clear (&log.lock);
  g_ptr_array_unref (log.names);
  g_array_unref (log.heads);
}

int
main (int argc, char **argv)
{
  private_mount_namespace ();
  g_test_init (&argc, &argv, NULL);
  if (!env_available ())
    {
      g_test_skip ("the fake Graph server is not built");
      return g_test_run ();
    }
  env_add ("/engine/full-then-incremental", test_full_then_incremental);
  env_add ("/engine/rename-move-metadata-only", test_rename_move_metadata_only);
  env_add ("/engine/delete-with-child-tombstones", test_delete_with_child_tombstones);
  env_add ("/engine/delete-folder-only", test_delete_folder_only);
  env_add ("/engine/duplicates-shuffled-overlap", test_duplicates_shuffled);
  env_add ("/engine/cancel-in-flight", test_cancel_in_flight);
  env_add ("/engine/cancel-races-last-file", test_cancel_races_last_file);
  env_add ("/engine/two-starts", test_two_starts);
  env_add ("/engine/failed-download-retried", test_failed_download_retried);
  env_add ("/engine/outcomes-never-silent", test_outcomes_never_silent);
  env_add ("/engine/resync-410", test_resync_410);
  env_add ("/engine/throttled", test_throttled);
  env_add ("/engine/clear-exclusions", test_clear_exclusions);
  env_add ("/engine/sigkill-restart", test_sigkill_restart);
  env_add ("/engine/change-feed", test_change_feed);
  env_add ("/engine/shutdown-mid-run", test_shutdown_mid_run);
  env_add ("/engine/hash-mismatch", test_hash_mismatch);
  env_add ("/engine/periodic", test_periodic);
  env_add ("/engine/folder-delta-not-supported", test_folder_delta_not_supported);
  env_add ("/engine/disk-full", test_disk_full);
  env_add ("/engine/timeout", test_timeout);
  env_add ("/engine/status-counts-files", test_status_counts_files);
  env_add ("/engine/crash-leftovers-collected", test_crash_leftovers_collected);
  env_add ("/engine/orphan-hygiene-keeps-unreachable", test_orphan_hygiene_keeps_unreachable);
  env_add ("/engine/no-hash-never-resumes", test_no_hash_never_resumes);
  env_add ("/engine/full-applies-new-filters", test_full_applies_new_filters);
  env_add ("/engine/package-and-shortcut", test_package_and_shortcut);
  env_add ("/engine/package-and-shortcut-root-delta", test_package_and_shortcut_root_delta);
  env_add ("/engine/syncfs-before-publish", test_syncfs_before_publish);
  env_add ("/engine/unconfigured-source-forgotten", test_unconfigured_source_forgotten);
  env_add ("/engine/source-swapped-for-sibling", test_source_swapped_for_sibling);
  env_add ("/engine/removed-source-unpublished-file", test_removed_source_unpublished_file);
  env_add ("/engine/failed-full-start-reconciles-later", test_failed_full_start_reconciles_later);
  env_add ("/engine/publish-notes-before-event", test_publish_notes_before_event);
  env_add ("/engine/withdrawn-notes-before-event", test_withdrawn_notes_before_event);
  return g_test_run ();
}
