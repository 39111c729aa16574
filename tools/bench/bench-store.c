/* bench-store: what the store costs at 100,000 items.
 *
 *   bench-store [ITEMS] [DIR]
 *
 * Phases (each timed, wall clock and CPU seconds of this process, user + system):
 *   1. apply a first delta set of ITEMS items (1% folders): stage in pages of 500 + commit;
 *   2. hand out the work (store_work_next, 1000 at a time) and publish it with
 *      store_work_publish_batch in batches of 1024 (what group commit reaches under load);
 *   3. apply a second set changing every file's content (all UPDATE), publish it from
 *      4 threads, one call per item (as the engine's workers do: group commit);
 *   4. a third such set, published from ONE thread, one call per item: the worst case, a
 *      transaction per item with no other publisher to share a commit with;
 *   5. the third set applied again as a reconcile (a `full` start, a 410 resync): nothing
 *      changed, every item re-reported.
 * The issue asks for stage + commit and for publishing to stay well under 1 s of CPU each.
 */
#include "config.h"

#include <onedrive-syncfs/store.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

typedef struct {
  gint64 wall;
  double cpu;
  double sys;
} Mark;

static Mark
mark_now (void)
{
  struct rusage ru;
  getrusage (RUSAGE_SELF, &ru);
  double sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  Mark m = { g_get_monotonic_time (), ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + sys, sys };
  return m;
}

static double floor_cpu_s; /* the calibration's CPU seconds, once known */

static void
report (const char *what, guint n, Mark a, Mark b)
{
  double wall = (b.wall - a.wall) / 1e6, cpu = b.cpu - a.cpu;
  printf ("%-44s %7u items  wall %6.3f s  cpu %6.3f s (sys %5.3f)  %8.0f items/s (cpu)  %4.1fx floor\n",
          what, n, wall, cpu, b.sys - a.sys, cpu > 0 ? n / cpu : 0.0,
          floor_cpu_s > 0 ? cpu / floor_cpu_s : 1.0);
}

static void
die (const char *what, GError *error)
{
  fprintf (stderr, "bench-store: %s: %s\n", what, error ? error->message : "failed");
  exit (1);
}

static GPtrArray *
make_set (guint n, guint version)
{
  GPtrArray *items = g_ptr_array_new_with_free_func ((GDestroyNotify) graph_item_free);
  guint folders = MAX (n / 100, 1);
  for (guint i = 0; i < n; i++)
    {
      GraphItem *it = g_new0 (GraphItem, 1);
      it->drive_id = g_strdup ("b!benchDriveId0123456789");
      if (i < folders)
        {
          it->id = g_strdup_printf ("DIR%08u", i);
          it->parent_id = g_strdup ("ROOT");
          it->name = g_strdup_printf ("folder %u", i);
          it->kind = GRAPH_ITEM_FOLDER;
          it->etag = g_strdup_printf ("\"{D%u},%u\"", i, version);
        }
      else
        {
          it->id = g_strdup_printf ("FILE%08u", i);
          it->parent_id = g_strdup_printf ("DIR%08u", i % folders);
          it->name = g_strdup_printf ("document number %u.txt", i);
          it->kind = GRAPH_ITEM_FILE;
          it->size = 1000 + i;
          it->etag = g_strdup_printf ("\"{F%u},%u\"", i, version);
          it->ctag = g_strdup_printf ("\"c:{F%u},%u\"", i, version);
          it->quickxor_hash = g_strdup_printf ("%08u%04uAAAAAAAAAAAAAAAA=", i, version);
        }
      it->mtime = 1700000000 + version;
      g_ptr_array_add (items, it);
    }
  /* Delta promises no order: children before parents. */
  GRand *r = g_rand_new_with_seed (42 + version);
  for (guint i = items->len - 1; i > 0; i--)
    {
      guint j = g_rand_int_range (r, 0, i + 1);
      gpointer t = items->pdata[i];
      items->pdata[i] = items->pdata[j];
      items->pdata[j] = t;
    }
  g_rand_free (r);
  return items;
}

static void
apply_set_full (Store *store, gint64 sid, GPtrArray *items, const char *link, gboolean reconcile,
                const char *label)
{
  GError *error = NULL;
  StoreCommitStats stats;
  Mark a = mark_now ();
  if (!store_stage_begin (store, sid, &error))
    die ("stage_begin", error);
  for (guint i = 0; i < items->len; i += 500)
    {
      GPtrArray page = { .pdata = items->pdata + i, .len = MIN (500, items->len - i) };
      if (!store_stage_add (store, sid, &page, &error))
        die ("stage_add", error);
    }
  Mark s = mark_now ();
  if (!store_stage_commit (store, sid, link, reconcile, &stats, &error))
    die ("stage_commit", error);
  Mark b = mark_now ();
  char line[128];
  g_snprintf (line, sizeof line, "%s: stage", label);
  report (line, items->len, a, s);
  g_snprintf (line, sizeof line, "%s: commit", label);
  report (line, items->len, s, b);
  g_snprintf (line, sizeof line, "%s: stage + commit", label);
  report (line, items->len, a, b);
  printf ("%44s downloads %u, mkdirs %u, updates %u, unchanged %u\n", "", stats.queued_downloads,
          stats.queued_mkdirs, stats.queued_updates, stats.unchanged);
}

static void
apply_set (Store *store, gint64 sid, GPtrArray *items, const char *link, const char *label)
{
  apply_set_full (store, sid, items, link, FALSE, label);
}

static GPtrArray *
all_work (Store *store, guint expect)
{
  GError *error = NULL;
  GPtrArray *all = g_ptr_array_new_with_free_func ((GDestroyNotify) store_work_free);
  gint64 after = 0;
  Mark a = mark_now ();
  for (;;)
    {
      GPtrArray *batch = store_work_next (store, after, 1000, &error);
      if (batch == NULL)
        die ("work_next", error);
      if (batch->len == 0)
        {
          g_ptr_array_unref (batch);
          break;
        }
      after = ((StoreWork *) batch->pdata[batch->len - 1])->work_id;
      for (guint i = 0; i < batch->len; i++)
        g_ptr_array_add (all, g_steal_pointer (&batch->pdata[i]));
      g_ptr_array_set_free_func (batch, NULL);
      g_ptr_array_unref (batch);
    }
  Mark b = mark_now ();
  report ("work_next (1000 per call)", all->len, a, b);
  if (all->len != expect)
    {
      fprintf (stderr, "bench-store: expected %u work items, got %u\n", expect, all->len);
      exit (1);
    }
  return all;
}

typedef struct {
  Store     *store;
  GPtrArray *work;
  gint       next;
  gint       failed;
} Pub;

static gpointer
publisher (gpointer data)
{
  Pub *p = data;
  char object[64];
  for (;;)
    {
      gint i = g_atomic_int_add (&p->next, 1);
      if (i >= (gint) p->work->len)
        return NULL;
      StoreWork *w = p->work->pdata[i];
      GError *error = NULL;
      GPtrArray *stale = NULL;
      g_snprintf (object, sizeof object, "obj-%" G_GINT64_FORMAT, w->work_id);
      if (!store_work_publish (p->store, w, w->item->kind == GRAPH_ITEM_FILE ? object : NULL,
                               &stale, &error))
        {
          fprintf (stderr, "publish: %s\n", error->message);
          g_atomic_int_inc (&p->failed);
          g_clear_error (&error);
        }
      g_clear_pointer (&stale, g_ptr_array_unref);
    }
}

static void
publish_threads (Store *store, GPtrArray *work, guint threads, const char *label)
{
  Pub p = { store, work, 0, 0 };
  Mark a = mark_now ();
  GThread **t = g_new (GThread *, threads);
  for (guint i = 0; i < threads; i++)
    t[i] = g_thread_new ("publisher", publisher, &p);
  for (guint i = 0; i < threads; i++)
    g_thread_join (t[i]);
  g_free (t);
  Mark b = mark_now ();
  report (label, work->len, a, b);
  if (p.failed)
    exit (1);
}

static void
publish_batches (Store *store, GPtrArray *work, guint size)
{
  GError *error = NULL;
  Mark a = mark_now ();
  char *names = g_malloc (32 * size);
  const char **objects = g_new (const char *, size);
  for (guint i = 0; i < work->len; i += size)
    {
      guint n = MIN (size, work->len - i);
      for (guint k = 0; k < n; k++)
        {
          StoreWork *w = work->pdata[i + k];
          g_snprintf (names + 32 * k, 32, "obj-%" G_GINT64_FORMAT, w->work_id);
          objects[k] = w->item->kind == GRAPH_ITEM_FILE ? names + 32 * k : NULL;
        }
      GPtrArray *stale = NULL;
      if (!store_work_publish_batch (store, (StoreWork *const *) work->pdata + i, objects, n,
                                     &stale, NULL, &error))
        die ("publish_batch", error);
      g_clear_pointer (&stale, g_ptr_array_unref);
    }
  g_free (names);
  g_free (objects);
  Mark b = mark_now ();
  char label[64];
  g_snprintf (label, sizeof label, "publish, batches of %u", size);
  report (label, work->len, a, b);
}

/* The floor on this machine: raw SQLite inserting @n rows of the same width into a WAL table
 * with one text index, in one transaction. The store's figures are best read as ratios to it. */
static double
calibrate (const char *dir, guint n)
{
  g_autofree char *db = g_build_filename (dir, "calibrate.db", NULL);
  sqlite3 *h = NULL;
  if (sqlite3_open (db, &h) != SQLITE_OK)
    die ("calibrate open", NULL);
  sqlite3_exec (h, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                   "CREATE TABLE t (id INTEGER PRIMARY KEY, d TEXT, i TEXT, n TEXT, e TEXT, q TEXT);"
                   "CREATE UNIQUE INDEX ti ON t (d, i);", NULL, NULL, NULL);
  sqlite3_stmt *st = NULL;
  sqlite3_prepare_v2 (h, "INSERT INTO t (d, i, n, e, q) VALUES (?1, ?2, ?3, ?4, ?5)", -1, &st, NULL);
  Mark a = mark_now ();
  sqlite3_exec (h, "BEGIN", NULL, NULL, NULL);
  char id[32], name[64], etag[32], q[32];
  for (guint k = 0; k < n; k++)
    {
      guint x = (k * 7919u) % 1000003u;
      g_snprintf (id, sizeof id, "FILE%08u", x);
      g_snprintf (name, sizeof name, "document number %u.txt", x);
      g_snprintf (etag, sizeof etag, "\"{F%u},1\"", x);
      g_snprintf (q, sizeof q, "%08u0001AAAAAAAAAAAAAAAA=", x);
      sqlite3_bind_text (st, 1, "b!benchDriveId0123456789", -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 2, id, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 3, name, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 4, etag, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 5, q, -1, SQLITE_STATIC);
      sqlite3_step (st);
      sqlite3_reset (st);
    }
  sqlite3_exec (h, "COMMIT", NULL, NULL, NULL);
  Mark b = mark_now ();
  sqlite3_finalize (st);
  sqlite3_close (h);
  g_autofree char *wal = g_strconcat (db, "-wal", NULL), *shm = g_strconcat (db, "-shm", NULL);
  g_unlink (db);
  g_unlink (wal);
  g_unlink (shm);
  report ("calibration: raw SQLite insert, 1 index", n, a, b);
  return b.cpu - a.cpu;
}

int
main (int argc, char **argv)
{
  guint n = argc > 1 ? (guint) g_ascii_strtoull (argv[1], NULL, 10) : 100000;
  GError *error = NULL;
  g_autofree char *dir = argc > 2 ? g_strdup (argv[2]) : g_dir_make_tmp ("bench-store-XXXXXX", &error);
  if (dir == NULL)
    die ("tmp dir", error);
  g_autofree char *db = g_build_filename (dir, "bench.db", NULL);
  g_autofree char *wal = g_strconcat (db, "-wal", NULL);
  g_autofree char *shm = g_strconcat (db, "-shm", NULL);
  g_unlink (db);
  g_unlink (wal);
  g_unlink (shm);

  printf ("bench-store: %u items, database %s\n", n, db);
  /* The store first: it configures SQLite for the process (store.c), which must happen
   * before the calibration's own use of SQLite initialises it. */
  Store *store = store_open (db, &error);
  if (store == NULL)
    die ("open", error);
  floor_cpu_s = calibrate (dir, n);
  gint64 sid = 0;
  if (!store_source_ensure (store, "/", "b!benchDriveId0123456789", "ROOT", &sid, &error))
    die ("source", error);

  GPtrArray *set1 = make_set (n, 1);
  apply_set (store, sid, set1, "link-1", "set 1 (new)");
  GPtrArray *work = all_work (store, n);
  publish_batches (store, work, 1024);
  g_ptr_array_unref (work);

  GPtrArray *set2 = make_set (n, 2);
  apply_set (store, sid, set2, "link-2", "set 2 (every file changed)");
  guint files = n - MAX (n / 100, 1);
  work = all_work (store, files);
  publish_threads (store, work, 4, "publish, 4 threads, one call per item");
  g_ptr_array_unref (work);

  GPtrArray *set3 = make_set (n, 3);
  apply_set (store, sid, set3, "link-3", "set 3 (every file changed)");
  work = all_work (store, files);
  publish_threads (store, work, 1, "publish, 1 thread, one call per item");
  g_ptr_array_unref (work);

  /* What a `full` start or a 410 resync costs when nothing changed: every item re-reported. */
  apply_set_full (store, sid, set3, "link-4", TRUE, "set 3 again, reconcile (nothing changed)");

  GStatBuf st;
  if (g_stat (db, &st) == 0)
    printf ("database size: %.1f MB\n", st.st_size / 1e6);
  g_ptr_array_unref (set1);
  g_ptr_array_unref (set2);
  g_ptr_array_unref (set3);
  store_free (store);
  g_unlink (db);
  g_unlink (wal);
  g_unlink (shm);
  if (argc <= 2)
    g_rmdir (dir);
  return 0;
}
