/* Opening the store: migrations from an empty file, reopening what this version wrote, refusal
 * of foreign / newer files without touching them, and runs left "syncing" by a dead process. */
#include "config.h"

#include "test-store-util.h"

#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

static gint64
raw_int (const char *db, const char *sql)
{
  sqlite3 *h = NULL;
  g_assert_cmpint (sqlite3_open_v2 (db, &h, SQLITE_OPEN_READONLY, NULL), ==, SQLITE_OK);
  sqlite3_stmt *st = NULL;
  g_assert_cmpint (sqlite3_prepare_v2 (h, sql, -1, &st, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (st), ==, SQLITE_ROW);
  gint64 v = sqlite3_column_int64 (st, 0);
  sqlite3_finalize (st);
  sqlite3_close (h);
  return v;
}

static char *
raw_text (const char *db, const char *sql)
{
  sqlite3 *h = NULL;
  g_assert_cmpint (sqlite3_open_v2 (db, &h, SQLITE_OPEN_READONLY, NULL), ==, SQLITE_OK);
  sqlite3_stmt *st = NULL;
  g_assert_cmpint (sqlite3_prepare_v2 (h, sql, -1, &st, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (st), ==, SQLITE_ROW);
  char *v = g_strdup ((const char *) sqlite3_column_text (st, 0));
  sqlite3_finalize (st);
  sqlite3_close (h);
  return v;
}

static void
raw_exec (const char *db, const char *sql)
{
  sqlite3 *h = NULL;
  g_assert_cmpint (sqlite3_open (db, &h), ==, SQLITE_OK);
  char *msg = NULL;
  int rc = sqlite3_exec (h, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK)
    g_error ("%s: %s", sql, msg);
  sqlite3_close (h);
}

static void
test_empty_file (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  g_assert_true (g_file_set_contents (f->db, "", 0, &error));
  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  g_assert_nonnull (f->store);
  g_clear_pointer (&f->store, store_free);

  g_assert_cmpint (raw_int (f->db, "PRAGMA user_version"), >=, 1);
  g_assert_cmpint (raw_int (f->db, "PRAGMA application_id"), ==, 0x4f445346);
  g_autofree char *mode = raw_text (f->db, "PRAGMA journal_mode");
  g_assert_cmpstr (mode, ==, "wal");
  g_assert_cmpint (raw_int (f->db, "SELECT count(*) FROM items WHERE ino = 1"), ==, 1);
}

static void
test_missing_file (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  g_assert_false (g_file_test (f->db, G_FILE_TEST_EXISTS));
  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  /* The root is there and visible from the start. */
  g_auto (StoreEntry) root = { 0 };
  g_assert_true (store_getattr (f->store, STORE_ROOT_INO, &root, &error));
  g_assert_no_error (error);
  g_assert_cmpint (root.kind, ==, STORE_KIND_DIR);
}

static void
test_reopen (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sid = 0;
  g_assert_true (store_source_ensure (f->store, "/Documents/Reports", "drive1", "R", &sid, &error));
  g_assert_no_error (error);
  g_autoptr (GPtrArray) items = items_new ();
  g_ptr_array_add (items, mk_file ("a", "R", "a.txt", "h1"));
  g_assert_true (store_stage_begin (f->store, sid, &error));
  g_assert_true (store_stage_add (f->store, sid, items, &error));
  g_assert_true (store_stage_commit (f->store, sid, "link-1", FALSE, NULL, &error));
  g_assert_no_error (error);
  gint64 version = raw_int (f->db, "PRAGMA user_version");
  g_clear_pointer (&f->store, store_free);

  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  g_assert_cmpint (raw_int (f->db, "PRAGMA user_version"), ==, version);
  g_autoptr (GPtrArray) sources = store_sources (f->store, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (sources->len, ==, 1);
  StoreSource *s = sources->pdata[0];
  g_assert_cmpstr (s->remote_path, ==, "/Documents/Reports");
  g_assert_cmpstr (s->cursor, ==, "link-1");
  guint count = 0;
  g_assert_true (store_work_count (f->store, &count, &error));
  g_assert_cmpuint (count, ==, 1);
}

static void
assert_refused_untouched (Fixture *f, const char *expect_in_message)
{
  GError *error = NULL;
  g_autofree char *before = NULL;
  gsize before_len = 0;
  g_assert_true (g_file_get_contents (f->db, &before, &before_len, NULL));

  Store *s = store_open (f->db, &error);
  g_assert_null (s);
  g_assert_error (error, STORE_ERROR, STORE_ERROR_FOREIGN);
  g_assert_nonnull (strstr (error->message, f->db));
  if (expect_in_message)
    g_assert_nonnull (strstr (error->message, expect_in_message));
  g_test_message ("refused: %s", error->message);
  g_clear_error (&error);

  g_autofree char *after = NULL;
  gsize after_len = 0;
  g_assert_true (g_file_get_contents (f->db, &after, &after_len, NULL));
  g_assert_cmpmem (before, before_len, after, after_len);
  g_autofree char *wal = g_strconcat (f->db, "-wal", NULL);
  g_assert_false (g_file_test (wal, G_FILE_TEST_EXISTS));
}

static void
test_not_sqlite (Fixture *f, gconstpointer data)
{
  GString *junk = g_string_new ("this is a text file, not a database\n");
  for (int i = 0; i < 200; i++)
    g_string_append_printf (junk, "line %d of something precious\n", i);
  g_assert_true (g_file_set_contents (f->db, junk->str, junk->len, NULL));
  g_string_free (junk, TRUE);
  assert_refused_untouched (f, "not an SQLite database");
}

static void
test_foreign_schema (Fixture *f, gconstpointer data)
{
  raw_exec (f->db, "CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('ada');");
  assert_refused_untouched (f, "not an onedrive-syncfs store");
  g_assert_cmpint (raw_int (f->db, "SELECT count(*) FROM contacts"), ==, 1);
}

static void
test_newer_version (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  g_clear_pointer (&f->store, store_free);
  raw_exec (f->db, "PRAGMA journal_mode = DELETE; PRAGMA user_version = 999;");
  assert_refused_untouched (f, "newer");
  g_assert_cmpint (raw_int (f->db, "PRAGMA user_version"), ==, 999);
}

static void
test_interrupted_run (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  /* A child process begins a run and dies without finishing it. */
  g_clear_pointer (&f->store, store_free);
  pid_t pid = fork ();
  g_assert_cmpint (pid, >=, 0);
  if (pid == 0)
    {
      Store *s = store_open (f->db, NULL);
      gint64 id;
      _exit (s && store_run_begin (s, &id, NULL) ? 0 : 1);
    }
  int status = 0;
  g_assert_cmpint (waitpid (pid, &status, 0), ==, pid);
  g_assert_true (WIFEXITED (status) && WEXITSTATUS (status) == 0);

  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  g_autoptr (StoreRun) run = store_last_run (f->store, &error);
  g_assert_no_error (error);
  g_assert_nonnull (run);
  g_assert_cmpstr (run->state, ==, "interrupted");
  g_assert_cmpint (run->finished, >, 0);

  /* A run of a process that is alive (this one) stays syncing across an open. */
  gint64 mine = 0;
  g_assert_true (store_run_begin (f->store, &mine, &error));
  g_clear_pointer (&f->store, store_free);
  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  g_autoptr (StoreRun) live = store_last_run (f->store, &error);
  g_assert_cmpint (live->id, ==, mine);
  g_assert_cmpstr (live->state, ==, "syncing");

  StoreRunCounters c = { .processed = 5, .failed = 1, .bytes = 1234 };
  g_assert_true (store_run_finish (f->store, mine, "completed_with_errors", &c, NULL, &error));
  g_assert_true (store_run_add_failure (f->store, mine, "/x/y", "download_error", "boom", &error));
  g_assert_no_error (error);
  g_autoptr (StoreRun) done = store_last_run (f->store, &error);
  g_assert_cmpstr (done->state, ==, "completed_with_errors");
  g_assert_cmpuint (done->counters.processed, ==, 5);
  g_assert_cmpuint (done->counters.failed, ==, 1);
  g_assert_cmpuint (done->counters.bytes, ==, 1234);
  g_assert_cmpint (raw_int (f->db, "SELECT count(*) FROM run_failures WHERE error_type = 'download_error'"), ==, 1);
}

static void
test_no_runs (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  StoreRun *run = store_last_run (f->store, &error);
  g_assert_no_error (error);
  g_assert_null (run);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  const gconstpointer closed = GINT_TO_POINTER (1);
#define T(path, fn, data) g_test_add (path, Fixture, data, fixture_set_up, fn, fixture_tear_down)
  T ("/store/open/empty-file", test_empty_file, closed);
  T ("/store/open/missing-file", test_missing_file, closed);
  T ("/store/open/reopen", test_reopen, NULL);
  T ("/store/open/not-sqlite", test_not_sqlite, closed);
  T ("/store/open/foreign-schema", test_foreign_schema, closed);
  T ("/store/open/newer-version", test_newer_version, closed);
  T ("/store/open/interrupted-run", test_interrupted_run, NULL);
  T ("/store/open/no-runs", test_no_runs, NULL);
  return g_test_run ();
}
