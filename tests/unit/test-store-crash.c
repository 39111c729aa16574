/* Crash test: a child process applies delta sets and publishes items in a loop, and is killed
 * with SIGKILL at random points, dozens of times. After every kill the store must open, pass
 * PRAGMA integrity_check, and hold the invariant:
 *
 *   - the cursor names set k, and the store reflects exactly sets 1..k: every item's target is
 *     what set k left it as (nothing of set k + 1, which may have been half staged);
 *   - every item that set k left present is either published as that state or still queued;
 *     every item it left deleted is gone or queued for deletion (old cursor + nothing applied,
 *     or new cursor + the full queue);
 *   - every published file has its bytes: the cache object exists and holds its hash;
 *   - the dead child's run reads "interrupted".
 *
 * The sets are a pure function of their number, so the parent recomputes what sets 1..k imply.
 * Each child life commits at least one set before the kill may land (it reports every commit
 * on a pipe), so the cursor advances in every round and the kills fall at random points of
 * staging, committing and publishing.
 */
#include "config.h"

#include "test-store-util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIVERSE 400
#define FOLDERS  8
#define SET_SIZE 150
#define PAGE     40
#define ROUNDS   30

typedef struct {
  gboolean present;
  char     name[32];
  char     qxh[32];
} Expect;

/* Set @k (1-based) as GraphItems, and its effect on @exp (UNIVERSE entries). */
static GPtrArray *
make_set (guint k, Expect *exp)
{
  GPtrArray *items = items_new ();
  if (k == 1)
    for (guint d = 0; d < FOLDERS; d++)
      {
        char id[16], name[16];
        g_snprintf (id, sizeof id, "d%u", d);
        g_snprintf (name, sizeof name, "dir%u", d);
        g_ptr_array_add (items, mk_dir (id, "S", name));
      }
  GRand *r = g_rand_new_with_seed (k * 7919u);
  for (guint j = 0; j < SET_SIZE; j++)
    {
      guint i = g_rand_int_range (r, 0, UNIVERSE);
      guint roll = g_rand_int_range (r, 0, 100);
      char id[16], parent[16];
      g_snprintf (id, sizeof id, "f%u", i);
      g_snprintf (parent, sizeof parent, "d%u", i % FOLDERS);
      if (roll < 12)
        {
          g_ptr_array_add (items, mk_tombstone (id, NULL));
          exp[i].present = FALSE;
          continue;
        }
      Expect e = exp[i];
      if (!e.present || roll < 60)
        g_snprintf (e.qxh, sizeof e.qxh, "q%u-%u", i, k);            /* new content */
      if (!e.present || roll >= 85)
        g_snprintf (e.name, sizeof e.name, "n%u-%u.txt", i, k % 5); /* renamed */
      e.present = TRUE;
      exp[i] = e;
      g_ptr_array_add (items, mk_file (id, parent, e.name, e.qxh));
    }
  g_rand_free (r);
  return items;
}

static void
expected_after (guint k, Expect *exp)
{
  memset (exp, 0, sizeof (Expect) * UNIVERSE);
  for (guint s = 1; s <= k; s++)
    g_ptr_array_unref (make_set (s, exp));
}

/* ---- the child ------------------------------------------------------------------------- */

G_GNUC_NORETURN static void
child_fail (const char *what, GError *error)
{
  fprintf (stderr, "crash child: %s: %s\n", what, error ? error->message : "?");
  _exit (3);
}

static void
unlink_objects (const char *objects, GPtrArray *stale)
{
  for (guint i = 0; stale && i < stale->len; i++)
    {
      g_autofree char *p = g_build_filename (objects, stale->pdata[i], NULL);
      g_unlink (p);
    }
}

G_GNUC_NORETURN static void
child_main (const char *db, const char *objects, int progress_fd)
{
  GError *error = NULL;
  Store *store = store_open (db, &error);
  if (store == NULL)
    child_fail ("open", error);
  gint64 sid = 0, run = 0;
  if (!store_source_ensure (store, "/S", "drive1", "S", &sid, &error))
    child_fail ("source", error);
  if (!store_run_begin (store, &run, &error))
    child_fail ("run", error);
  g_autoptr (GPtrArray) sources = store_sources (store, &error);
  const char *cursor = ((StoreSource *) sources->pdata[0])->cursor;
  guint k = cursor ? (guint) atoi (cursor + strlen ("link-")) : 0;
  Expect *scratch = g_new0 (Expect, UNIVERSE);
  expected_after (k, scratch);

  for (;;)
    {
      /* Drain part of the queue, as workers would: bytes first, then publish. */
      g_autoptr (GPtrArray) work = store_work_next (store, 0, SET_SIZE / 2, &error);
      if (work == NULL)
        child_fail ("work_next", error);
      for (guint i = 0; i < work->len; i++)
        {
          StoreWork *w = work->pdata[i];
          g_autofree char *object = NULL;
          if ((w->action == STORE_ACTION_DOWNLOAD || w->action == STORE_ACTION_UPDATE) &&
              w->item->kind == GRAPH_ITEM_FILE)
            {
              object = g_strdup_printf ("o-%" G_GINT64_FORMAT "-%s", w->work_id, w->item->quickxor_hash);
              /* No fsync: SIGKILL does not lose the page cache, and the test is about the
               * store's ordering (bytes written before the publish names them). */
              g_autofree char *p = g_build_filename (objects, object, NULL);
              int fd = open (p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
              size_t len = strlen (w->item->quickxor_hash);
              if (fd < 0 || write (fd, w->item->quickxor_hash, len) != (ssize_t) len)
                child_fail ("write object", NULL);
              close (fd);
            }
          if (i % 17 == 3 && w->attempts == 0)
            {
              if (!store_work_fail (store, w, "download_error", "injected", &error))
                child_fail ("fail", error);
              continue;
            }
          g_autoptr (GPtrArray) stale = NULL;
          if (!store_work_publish (store, w, object, &stale, &error))
            child_fail ("publish", error);
          unlink_objects (objects, stale);
        }

      /* The next set, paged, then the one commit. */
      k++;
      GPtrArray *set = make_set (k, scratch);
      if (!store_stage_begin (store, sid, &error))
        child_fail ("stage_begin", error);
      for (guint i = 0; i < set->len; i += PAGE)
        {
          GPtrArray page = { .pdata = set->pdata + i, .len = MIN (PAGE, set->len - i) };
          if (!store_stage_add (store, sid, &page, &error))
            child_fail ("stage_add", error);
        }
      g_autofree char *link = g_strdup_printf ("link-%u", k);
      if (!store_stage_commit (store, sid, link, FALSE, NULL, &error))
        child_fail ("commit", error);
      g_ptr_array_unref (set);
      if (write (progress_fd, "c", 1) != 1 && errno != EAGAIN)
        child_fail ("progress", NULL);
    }
}

/* ---- the checks ------------------------------------------------------------------------ */

static void
check_integrity (const char *db)
{
  sqlite3 *h = NULL;
  g_assert_cmpint (sqlite3_open_v2 (db, &h, SQLITE_OPEN_READWRITE, NULL), ==, SQLITE_OK);
  sqlite3_stmt *st = NULL;
  g_assert_cmpint (sqlite3_prepare_v2 (h, "PRAGMA integrity_check", -1, &st, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (st), ==, SQLITE_ROW);
  g_assert_cmpstr ((const char *) sqlite3_column_text (st, 0), ==, "ok");
  sqlite3_finalize (st);
  /* Foreign keys hold too (work rows point at items). */
  g_assert_cmpint (sqlite3_prepare_v2 (h, "PRAGMA foreign_key_check", -1, &st, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (st), ==, SQLITE_DONE);
  sqlite3_finalize (st);
  sqlite3_close (h);
}

/* Returns k, the set the cursor names, after checking everything against sets 1..k. */
static guint
check_invariant (Fixture *f, const char *objects)
{
  GError *error = NULL;
  g_autoptr (GPtrArray) sources = store_sources (f->store, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (sources->len, ==, 1);
  const char *cursor = ((StoreSource *) sources->pdata[0])->cursor;
  guint k = cursor ? (guint) atoi (cursor + strlen ("link-")) : 0;
  g_autofree Expect *exp = g_new0 (Expect, UNIVERSE);
  expected_after (k, exp);

  sqlite3 *h = NULL;
  g_assert_cmpint (sqlite3_open_v2 (f->db, &h, SQLITE_OPEN_READONLY, NULL), ==, SQLITE_OK);
  sqlite3_stmt *st = NULL;
  g_assert_cmpint (sqlite3_prepare_v2 (h,
      "SELECT i.state, i.t_name, i.r_qxh, i.name, i.qxh, i.cache_object, w.action"
      " FROM items i LEFT JOIN work w ON w.ino = i.ino WHERE i.item_id = ?1", -1, &st, NULL), ==, SQLITE_OK);
  guint published = 0, queued = 0;
  for (guint i = 0; i < UNIVERSE; i++)
    {
      char id[16];
      g_snprintf (id, sizeof id, "f%u", i);
      sqlite3_reset (st);
      sqlite3_bind_text (st, 1, id, -1, SQLITE_TRANSIENT);
      int rc = sqlite3_step (st);
      if (!exp[i].present)
        {
          /* Gone, never seen, or still queued for deletion. */
          if (rc == SQLITE_ROW)
            {
              if (sqlite3_column_type (st, 6) == SQLITE_NULL || sqlite3_column_int (st, 6) != STORE_ACTION_DELETE)
                g_error ("after set %u, %s should be deleted but has no DELETE queued", k, id);
              queued++;
            }
          continue;
        }
      if (rc != SQLITE_ROW)
        g_error ("after set %u, %s is missing", k, id);
      g_assert_cmpstr ((const char *) sqlite3_column_text (st, 1), ==, exp[i].name);
      g_assert_cmpstr ((const char *) sqlite3_column_text (st, 2), ==, exp[i].qxh);
      gboolean has_work = sqlite3_column_type (st, 6) != SQLITE_NULL;
      if (has_work)
        {
          g_assert_cmpint (sqlite3_column_int (st, 6), !=, STORE_ACTION_DELETE);
          queued++;
        }
      else
        {
          /* Not queued: it must be published exactly as set k says. */
          g_assert_cmpint (sqlite3_column_int (st, 0), ==, 1);
          g_assert_cmpstr ((const char *) sqlite3_column_text (st, 3), ==, exp[i].name);
          g_assert_cmpstr ((const char *) sqlite3_column_text (st, 4), ==, exp[i].qxh);
        }
      if (sqlite3_column_int (st, 0) == 1)
        {
          /* Published: its bytes are there and are what it claims. */
          published++;
          const char *object = (const char *) sqlite3_column_text (st, 5);
          g_assert_nonnull (object);
          g_autofree char *p = g_build_filename (objects, object, NULL);
          g_autofree char *bytes = NULL;
          if (!g_file_get_contents (p, &bytes, NULL, NULL))
            g_error ("after set %u, published %s has no bytes (%s)", k, id, object);
          g_assert_cmpstr (bytes, ==, (const char *) sqlite3_column_text (st, 4));
        }
    }
  sqlite3_finalize (st);
  sqlite3_close (h);
  g_test_message ("cursor at set %u: %u published, %u queued", k, published, queued);
  return k;
}

static void
test_crash (Fixture *f, gconstpointer data)
{
  g_autofree char *objects = g_build_filename (f->dir, "objects", NULL);
  g_assert_cmpint (g_mkdir (objects, 0700), ==, 0);
  GRand *rand = g_rand_new_with_seed (g_test_rand_int ());
  guint last_k = 0;
  gint64 span = 0;   /* how long one life's loop takes: the kill lands anywhere within 2x */
  for (guint round = 0; round < ROUNDS; round++)
    {
      int fds[2];
      g_assert_cmpint (pipe (fds), ==, 0);
      pid_t pid = fork ();
      g_assert_cmpint (pid, >=, 0);
      if (pid == 0)
        {
          /* If the test itself is killed (a timeout), the looping child must not outlive it. */
          prctl (PR_SET_PDEATHSIG, SIGKILL);
          if (getppid () == 1)
            _exit (4);
          close (fds[0]);
          child_main (f->db, objects, fds[1]);
        }
      close (fds[1]);
      /* One commit per life at least, then a kill at a random point. */
      char c;
      ssize_t n = read (fds[0], &c, 1);
      if (n != 1)
        {
          int status = 0;
          waitpid (pid, &status, 0);
          g_error ("round %u: the child died before its first commit (status %d)", round, status);
        }
      if (round == 0)
        {
          gint64 t0 = g_get_monotonic_time ();
          g_assert_cmpint (read (fds[0], &c, 1), ==, 1);
          span = MAX (g_get_monotonic_time () - t0, 1000);
          g_test_message ("one loop (publish + stage + commit) takes %" G_GINT64_FORMAT " us", span);
        }
      g_usleep (g_rand_int_range (rand, 0, (gint32) MIN (2 * span, 2000000)));
      kill (pid, SIGKILL);
      int status = 0;
      g_assert_cmpint (waitpid (pid, &status, 0), ==, pid);
      close (fds[0]);
      g_assert_true (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);

      check_integrity (f->db);
      GError *error = NULL;
      f->store = store_open (f->db, &error);
      g_assert_no_error (error);
      g_autoptr (StoreRun) run = store_last_run (f->store, &error);
      g_assert_no_error (error);
      g_assert_nonnull (run);
      g_assert_cmpstr (run->state, ==, "interrupted");
      guint k = check_invariant (f, objects);
      g_assert_cmpuint (k, >, last_k);   /* each life committed at least one set */
      last_k = k;
      g_clear_pointer (&f->store, store_free);
    }
  g_rand_free (rand);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/store/crash/sigkill-loop", Fixture, GINT_TO_POINTER (1), fixture_set_up, test_crash,
              fixture_tear_down);
  return g_test_run ();
}
