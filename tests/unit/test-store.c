/* The store's transitions: staging and the one commit, the actions it computes, the queue's
 * publish / fail / supersede rules, overlapping sources, synthetic directories, exclusions,
 * stable inodes, and concurrent readers and publishers. */
#include "config.h"

#include "test-store-util.h"

/* ---- helpers --------------------------------------------------------------------------- */




static StoreWork *
find_work (GPtrArray *work, const char *item_id)
{
  for (guint i = 0; i < work->len; i++)
    {
      StoreWork *w = work->pdata[i];
      if (g_strcmp0 (w->item->id, item_id) == 0)
        return w;
    }
  return NULL;
}

static guint
work_index (GPtrArray *work, const char *item_id)
{
  for (guint i = 0; i < work->len; i++)
    if (g_strcmp0 (((StoreWork *) work->pdata[i])->item->id, item_id) == 0)
      return i;
  g_assert_not_reached ();
}




static char *
readdir_names (Fixture *f, guint64 ino)
{
  GError *error = NULL;
  g_autoptr (GPtrArray) list = store_readdir (f->store, ino, &error);
  g_assert_no_error (error);
  GString *s = g_string_new (NULL);
  for (guint i = 0; i < list->len; i++)
    g_string_append_printf (s, "%s%s", i ? " " : "", ((StoreEntry *) list->pdata[i])->name);
  return g_string_free (s, FALSE);
}

static char *
cursor_of (Fixture *f, gint64 sid)
{
  g_autoptr (GPtrArray) sources = store_sources (f->store, NULL);
  for (guint i = 0; i < sources->len; i++)
    if (((StoreSource *) sources->pdata[i])->id == sid)
      return g_strdup (((StoreSource *) sources->pdata[i])->cursor);
  return NULL;
}

/* The standard tree: /Docs/Reports (source R) holding F/, F/a.txt, b.txt — staged child first. */
static gint64
standard_tree (Fixture *f)
{
  gint64 sid = add_source (f, "/Docs/Reports", "R");
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha1"));
  g_ptr_array_add (set, mk_file ("b", "R", "b.txt", "hb1"));
  g_ptr_array_add (set, mk_dir ("F", "R", "F"));
  g_ptr_array_add (set, mk_dir ("R", "P", "Reports"));   /* the source folder itself */
  StoreCommitStats st = commit_set (f, sid, set, "link-1", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 2);
  g_assert_cmpuint (st.queued_mkdirs, ==, 1);
  g_assert_cmpuint (st.unchanged, ==, 1);
  return sid;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void
test_new_set (Fixture *f, gconstpointer data)
{
  gint64 sid = standard_tree (f);
  g_autofree char *cursor = cursor_of (f, sid);
  g_assert_cmpstr (cursor, ==, "link-1");

  /* Committed is not published: only the configured path shows. */
  guint64 reports = resolve (f, "/Docs/Reports");
  g_assert_cmpuint (reports, !=, 0);
  g_autofree char *empty = readdir_names (f, reports);
  g_assert_cmpstr (empty, ==, "");

  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 3);
  /* Folders before their contents. */
  StoreWork *mk = work->pdata[0];
  g_assert_cmpint (mk->action, ==, STORE_ACTION_MKDIR);
  g_assert_cmpstr (mk->path, ==, "/Docs/Reports/F");
  StoreWork *a = find_work (work, "a");
  g_assert_cmpint (a->action, ==, STORE_ACTION_DOWNLOAD);
  g_assert_cmpstr (a->path, ==, "/Docs/Reports/F/a.txt");
  g_assert_null (a->old_path);
  g_assert_cmpstr (a->item->quickxor_hash, ==, "ha1");
  g_assert_cmpstr (find_work (work, "b")->path, ==, "/Docs/Reports/b.txt");

  /* A child published before its folder stays unreachable until the folder is published. */
  publish (f, a, NULL);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), ==, 0);
  publish (f, mk, NULL);
  guint64 ino_a = resolve (f, "/Docs/Reports/F/a.txt");
  g_assert_cmpuint (ino_a, ==, a->ino);
  publish (f, find_work (work, "b"), NULL);

  g_auto (StoreEntry) e = { 0 };
  g_assert_true (store_getattr (f->store, ino_a, &e, NULL));
  g_assert_cmpstr (e.cache_object, ==, "obj-a-ha1");
  g_assert_cmpint (e.size, ==, 3);
  g_assert_cmpuint (e.generation, ==, 1);
  g_autofree char *names = readdir_names (f, reports);
  g_assert_cmpstr (names, ==, "F b.txt");
  g_autofree char *path = store_path (f->store, ino_a, NULL);
  g_assert_cmpstr (path, ==, "/Docs/Reports/F/a.txt");

  guint64 bytes = 0, files = 0;
  g_assert_true (store_usage (f->store, &bytes, &files, NULL));
  g_assert_cmpuint (bytes, ==, 6);
  g_assert_cmpuint (files, >=, 4);
}

static void
test_duplicates (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/S", "S");
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("x", "S", "first.txt", "h1"));
  g_ptr_array_add (set, mk_file ("y", "S", "y.txt", "hy"));
  g_ptr_array_add (set, mk_file ("x", "S", "second.txt", "h2"));
  g_ptr_array_add (set, mk_file ("x", "S", "last.txt", "h3"));
  StoreCommitStats st = commit_set (f, sid, set, "l", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 2);
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 2);
  StoreWork *x = find_work (work, "x");
  g_assert_cmpstr (x->item->name, ==, "last.txt");
  g_assert_cmpstr (x->item->quickxor_hash, ==, "h3");
  /* Downloads come in directory order ("last.txt" before "y.txt"), whatever the set's. */
  g_assert_cmpuint (work_index (work, "x"), <, work_index (work, "y"));
  g_clear_pointer (&work, g_ptr_array_unref);
  publish_all (f);

  /* Updates too come by inode (x's is the lower), and the last occurrence still wins. */
  set = items_new ();
  g_ptr_array_add (set, mk_file ("y", "S", "y.txt", "hy2"));
  g_ptr_array_add (set, mk_file ("x", "S", "last.txt", "h4"));
  g_ptr_array_add (set, mk_file ("x", "S", "last.txt", "h5"));
  st = commit_set (f, sid, set, "l2", FALSE);
  g_assert_cmpuint (st.queued_updates, ==, 2);
  work = take_work (f);
  g_assert_cmpuint (work->len, ==, 2);
  g_assert_cmpstr (find_work (work, "x")->item->quickxor_hash, ==, "h5");
  g_assert_cmpuint (work_index (work, "x"), <, work_index (work, "y"));
}

static void
test_update_move_unchanged (Fixture *f, gconstpointer data)
{
  gint64 sid = standard_tree (f);
  publish_all (f);
  guint64 ino_a = resolve (f, "/Docs/Reports/F/a.txt");
  guint64 ino_b = resolve (f, "/Docs/Reports/b.txt");

  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha2"));            /* content */
  g_ptr_array_add (set, mk_file ("b", "F", "renamed.txt", "hb1"));      /* move + rename */
  g_ptr_array_add (set, mk_dir ("F", "R", "F"));                        /* ancestor, unchanged */
  StoreCommitStats st = commit_set (f, sid, set, "link-2", FALSE);
  g_assert_cmpuint (st.queued_updates, ==, 1);
  g_assert_cmpuint (st.queued_moves, ==, 1);
  g_assert_cmpuint (st.unchanged, ==, 1);

  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 2);
  StoreWork *up = find_work (work, "a"), *mv = find_work (work, "b");
  g_assert_cmpint (up->action, ==, STORE_ACTION_UPDATE);
  g_assert_cmpstr (up->old_path, ==, "/Docs/Reports/F/a.txt");
  g_assert_cmpint (mv->action, ==, STORE_ACTION_MOVE);
  g_assert_cmpstr (mv->old_path, ==, "/Docs/Reports/b.txt");
  g_assert_cmpstr (mv->path, ==, "/Docs/Reports/F/renamed.txt");

  /* Until published, the mount shows the old state. */
  g_auto (StoreEntry) before = { 0 };
  g_assert_true (store_getattr (f->store, ino_a, &before, NULL));
  g_assert_cmpstr (before.quickxor_hash, ==, "ha1");
  g_assert_cmpuint (resolve (f, "/Docs/Reports/b.txt"), ==, ino_b);

  g_autoptr (GPtrArray) stale = NULL;
  publish (f, up, &stale);
  g_assert_nonnull (stale);
  g_assert_cmpuint (stale->len, ==, 1);
  g_assert_cmpstr (stale->pdata[0], ==, "obj-a-ha1");
  g_auto (StoreEntry) after = { 0 };
  g_assert_true (store_getattr (f->store, ino_a, &after, NULL));
  g_assert_cmpstr (after.quickxor_hash, ==, "ha2");
  g_assert_cmpstr (after.cache_object, ==, "obj-a-ha2");
  g_assert_cmpuint (after.generation, ==, before.generation + 1);
  g_assert_cmpuint (after.ino, ==, ino_a);   /* stable inode across updates */

  g_autoptr (GPtrArray) stale2 = NULL;
  publish (f, mv, &stale2);
  g_assert_true (stale2 == NULL || stale2->len == 0);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/b.txt"), ==, 0);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/renamed.txt"), ==, ino_b);  /* same inode */
  g_auto (StoreEntry) moved = { 0 };
  g_assert_true (store_getattr (f->store, ino_b, &moved, NULL));
  g_assert_cmpstr (moved.cache_object, ==, "obj-b-hb1");   /* metadata only: same bytes */
  g_assert_cmpuint (moved.generation, ==, 1);

  /* Re-reporting the published state queues nothing. */
  GPtrArray *again = items_new ();
  g_ptr_array_add (again, mk_file ("a", "F", "a.txt", "ha2"));
  g_ptr_array_add (again, mk_file ("b", "F", "renamed.txt", "hb1"));
  StoreCommitStats st2 = commit_set (f, sid, again, "link-3", FALSE);
  g_assert_cmpuint (st2.unchanged, ==, 2);
  guint count = 9;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);

  /* Same bytes with a new mtime (a touch): shown at once, no work; the other item is left as
   * it was. */
  GPtrArray *touched = items_new ();
  GraphItem *tb = mk_file ("b", "F", "renamed.txt", "hb1");
  tb->mtime = moved.mtime + 3600;
  g_ptr_array_add (touched, tb);
  g_ptr_array_add (touched, mk_file ("a", "F", "a.txt", "ha2"));
  StoreCommitStats st3 = commit_set (f, sid, touched, "link-4", FALSE);
  g_assert_cmpuint (st3.unchanged, ==, 2);
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);
  g_auto (StoreEntry) touched_b = { 0 }, same_a = { 0 };
  g_assert_true (store_getattr (f->store, ino_b, &touched_b, NULL));
  g_assert_cmpint (touched_b.mtime, ==, moved.mtime + 3600);
  g_assert_cmpstr (touched_b.cache_object, ==, "obj-b-hb1");
  g_assert_true (store_getattr (f->store, ino_a, &same_a, NULL));
  g_assert_cmpint (same_a.mtime, ==, after.mtime);
}

static void
test_ctag_without_hash (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/S", "S");
  GPtrArray *set = items_new ();
  GraphItem *z = mk_file ("z", "S", "empty", NULL);
  g_ptr_array_add (set, z);
  commit_set (f, sid, set, "l1", FALSE);
  publish_all (f);
  /* No hash on either side: the cTag decides. */
  GPtrArray *set2 = items_new ();
  GraphItem *z2 = mk_file ("z", "S", "empty", NULL);
  g_free (z2->ctag);
  z2->ctag = g_strdup ("c-changed");
  g_ptr_array_add (set2, z2);
  StoreCommitStats st = commit_set (f, sid, set2, "l2", FALSE);
  g_assert_cmpuint (st.queued_updates, ==, 1);
}

static void
test_delete_cascade (Fixture *f, gconstpointer data)
{
  gint64 sid = standard_tree (f);
  GPtrArray *more = items_new ();
  g_ptr_array_add (more, mk_dir ("G", "F", "G"));
  g_ptr_array_add (more, mk_file ("g1", "G", "g1.txt", "hg"));
  g_ptr_array_add (more, mk_file ("keep", "F", "keep.txt", "hk"));
  commit_set (f, sid, more, "link-2", FALSE);
  publish_all (f);
  guint64 ino_keep = resolve (f, "/Docs/Reports/F/keep.txt");
  g_assert_cmpuint (ino_keep, !=, 0);

  /* F is deleted with no tombstones for its children; keep.txt moves out in the same set. A
   * new b2.txt takes a name in the parent. A tombstone names an id never seen. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("new", "R", "b2.txt", "hn"));
  g_ptr_array_add (set, mk_tombstone ("F", NULL));
  g_ptr_array_add (set, mk_file ("keep", "R", "keep.txt", "hk"));
  g_ptr_array_add (set, mk_tombstone ("never-seen", NULL));
  StoreCommitStats st = commit_set (f, sid, set, "link-3", FALSE);
  g_assert_cmpuint (st.queued_deletes, ==, 4);   /* F, a, G, g1 */
  g_assert_cmpuint (st.queued_moves, ==, 1);
  g_assert_cmpuint (st.queued_downloads, ==, 1);

  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 6);
  /* Deletes first, deepest first; then the move and the download. */
  for (guint i = 0; i < 4; i++)
    g_assert_cmpint (((StoreWork *) work->pdata[i])->action, ==, STORE_ACTION_DELETE);
  g_assert_cmpuint (work_index (work, "g1"), <, work_index (work, "G"));
  g_assert_cmpuint (work_index (work, "G"), <, work_index (work, "F"));
  g_assert_cmpuint (work_index (work, "a"), <, work_index (work, "F"));
  g_assert_cmpint (find_work (work, "keep")->action, ==, STORE_ACTION_MOVE);
  StoreWork *del_a = find_work (work, "a");
  g_assert_true (del_a->item->deleted);
  g_assert_cmpstr (del_a->old_path, ==, "/Docs/Reports/F/a.txt");

  g_autoptr (GPtrArray) stale = NULL;
  for (guint i = 0; i < work->len; i++)
    publish (f, work->pdata[i], &stale);
  g_assert_cmpuint (stale->len, ==, 2);   /* a's and g1's bytes */
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F"), ==, 0);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/keep.txt"), ==, ino_keep);
  g_autofree char *names = readdir_names (f, resolve (f, "/Docs/Reports"));
  g_assert_cmpstr (names, ==, "b.txt b2.txt keep.txt");
  GError *error = NULL;
  g_auto (StoreEntry) gone = { 0 };
  g_assert_false (store_getattr (f->store, del_a->ino, &gone, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
}

static void
test_reconcile (Fixture *f, gconstpointer data)
{
  gint64 sid = standard_tree (f);
  publish_all (f);
  /* A full enumeration without b.txt: the server wins. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_dir ("R", "P", "Reports"));
  g_ptr_array_add (set, mk_dir ("F", "R", "F"));
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha1"));
  StoreCommitStats st = commit_set (f, sid, set, "link-full", TRUE);
  g_assert_cmpuint (st.queued_deletes, ==, 1);
  g_assert_cmpuint (st.unchanged, ==, 3);
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 1);
  g_assert_cmpstr (((StoreWork *) work->pdata[0])->item->id, ==, "b");
  g_assert_cmpint (((StoreWork *) work->pdata[0])->action, ==, STORE_ACTION_DELETE);
  /* The configured folders are never reconciled away. */
  g_assert_cmpuint (resolve (f, "/Docs/Reports"), !=, 0);
}

static void
test_interrupted_set (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sid = standard_tree (f);
  publish_all (f);
  /* Pages staged, then the process stops before the deltaLink: nothing applied. */
  g_autoptr (GPtrArray) page = items_new ();
  g_ptr_array_add (page, mk_file ("a", "F", "a.txt", "ha-new"));
  g_ptr_array_add (page, mk_file ("c", "R", "c.txt", "hc"));
  g_assert_true (store_stage_begin (f->store, sid, &error));
  g_assert_true (store_stage_add (f->store, sid, page, &error));
  g_clear_pointer (&f->store, store_free);
  f->store = store_open (f->db, &error);
  g_assert_no_error (error);
  g_autofree char *cursor = cursor_of (f, sid);
  g_assert_cmpstr (cursor, ==, "link-1");
  guint count = 9;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);

  /* The next run re-reads from the old cursor: begin forgets the half set. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("c", "R", "c.txt", "hc"));
  StoreCommitStats st = commit_set (f, sid, set, "link-2", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 1);
  g_assert_cmpuint (st.queued_updates, ==, 0);
}

/* Two sources paged side by side (the engine syncs sources one after another today, but the
 * store keeps one staged set per source): each commit applies its own set only, and a begin
 * forgets only its own source's set, also within one process. */
static void
test_sets_per_source (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sa = add_source (f, "/A", "A");
  gint64 sb = add_source (f, "/B", "B");
  g_assert_true (store_stage_begin (f->store, sa, &error));
  g_assert_true (store_stage_begin (f->store, sb, &error));
  g_autoptr (GPtrArray) pa = items_new ();
  g_ptr_array_add (pa, mk_file ("a1", "A", "a1.txt", "h"));
  g_autoptr (GPtrArray) pb = items_new ();
  g_ptr_array_add (pb, mk_file ("b1", "B", "b1.txt", "h"));
  g_autoptr (GPtrArray) pa2 = items_new ();
  g_ptr_array_add (pa2, mk_file ("a-dropped", "A", "dropped.txt", "h"));
  g_assert_true (store_stage_add (f->store, sa, pa2, &error));
  /* A begin forgets A's first pages (a restarted listing), not B's. */
  g_assert_true (store_stage_begin (f->store, sa, &error));
  g_assert_true (store_stage_add (f->store, sb, pb, &error));
  g_assert_true (store_stage_add (f->store, sa, pa, &error));
  g_assert_no_error (error);

  StoreCommitStats st;
  g_assert_true (store_stage_commit (f->store, sa, "link-a", FALSE, &st, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (st.queued_downloads, ==, 1);
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 1);
  g_assert_nonnull (find_work (work, "a1"));
  g_clear_pointer (&work, g_ptr_array_unref);

  g_assert_true (store_stage_commit (f->store, sb, "link-b", FALSE, &st, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (st.queued_downloads, ==, 1);
  work = take_work (f);
  g_assert_cmpuint (work->len, ==, 2);
  g_assert_nonnull (find_work (work, "b1"));
  g_assert_null (find_work (work, "a-dropped"));
  g_clear_pointer (&work, g_ptr_array_unref);

  /* Each commit dropped its set: committing again applies an empty set. */
  g_assert_true (store_stage_commit (f->store, sa, "link-a2", FALSE, &st, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (st.queued_downloads + st.unchanged, ==, 0);
  /* An unknown source is refused, at staging as at commit. */
  g_assert_false (store_stage_add (f->store, 999, pa, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
}

/* After a big commit the writer's page cache is full; a trim gives it back, and the store
 * reads and writes on as before (the caches refill). */
static void
test_trim_memory (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/S", "S");
  GPtrArray *set = items_new ();
  for (guint i = 0; i < 3000; i++)
    {
      g_autofree char *id = g_strdup_printf ("f%u", i);
      g_autofree char *name = g_strdup_printf ("file %u.txt", i);
      g_ptr_array_add (set, mk_file (id, "S", name, "h"));
    }
  StoreCommitStats st = commit_set (f, sid, set, "l", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 3000);
  g_assert_cmpuint (store_trim_memory (f->store), >, 64 * 1024);
  /* Nothing left to give back right after. */
  g_assert_cmpuint (store_trim_memory (f->store), <, 16 * 1024);
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 3000);
  for (guint i = 0; i < 10; i++)
    publish (f, work->pdata[i], NULL);
  g_autofree char *path = g_strconcat ("/S/", ((StoreWork *) work->pdata[9])->item->name, NULL);
  g_assert_cmpuint (resolve (f, path), !=, 0);
}

/* A chain of new folders deeper than any bound, below an excluded folder, listed parents first
 * and children first: all of it is recorded as excluded and nothing is queued. (A depth cap
 * once left the bottom of such a chain queued, depending on the set's order.) */
static void
test_exclusion_deep_chain (Fixture *f, gconstpointer data)
{
  for (int children_first = 0; children_first < 2; children_first++)
    {
      GError *error = NULL;
      g_autofree char *path = g_strdup_printf ("/S%d", children_first);
      g_autofree char *root = g_strdup_printf ("S%d", children_first);
      g_autofree char *x = g_strdup_printf ("X%d", children_first);
      gint64 sid = add_source (f, path, root);
      GPtrArray *set = items_new ();
      g_ptr_array_add (set, mk_dir (x, root, "X"));
      commit_set (f, sid, set, "l1", FALSE);
      publish_all (f);
      g_autofree char *xpath = g_strconcat (path, "/X", NULL);
      g_assert_true (store_exclude (f->store, resolve (f, xpath), NULL, &error));
      g_assert_no_error (error);

      enum { DEPTH = 300 };
      set = items_new ();
      for (int d = 1; d <= DEPTH; d++)
        {
          g_autofree char *id = g_strdup_printf ("%s-c%d", x, d);
          g_autofree char *parent = d == 1 ? g_strdup (x) : g_strdup_printf ("%s-c%d", x, d - 1);
          g_autofree char *name = g_strdup_printf ("c%d", d);
          g_ptr_array_add (set, mk_dir (id, parent, name));
        }
      g_autofree char *bottom = g_strdup_printf ("%s-c%d", x, DEPTH);
      g_autofree char *file_id = g_strdup_printf ("%s-file", x);
      g_ptr_array_add (set, mk_file (file_id, bottom, "deep.txt", "h"));
      for (guint i = 0; children_first && i < set->len / 2; i++)
        {
          gpointer t = set->pdata[i];
          set->pdata[i] = set->pdata[set->len - 1 - i];
          set->pdata[set->len - 1 - i] = t;
        }
      StoreCommitStats st = commit_set (f, sid, set, "l2", FALSE);
      g_assert_cmpuint (st.queued_downloads + st.queued_mkdirs, ==, 0);
      g_assert_cmpuint (st.unchanged, ==, DEPTH + 1);
      guint count = 9;
      g_assert_true (store_work_count (f->store, &count, NULL));
      g_assert_cmpuint (count, ==, 0);
    }
}

static void
test_reset_cursor (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sid = standard_tree (f);
  g_assert_true (store_source_reset_cursor (f->store, sid, &error));
  g_assert_no_error (error);
  g_autofree char *cursor = cursor_of (f, sid);
  g_assert_null (cursor);
  /* The queue is kept: the cursor is dropped, never the work it implied. */
  guint count = 0;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 3);
  g_assert_false (store_source_reset_cursor (f->store, 999, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
}

/* A published file a changed filter now refuses, withdrawn with no work to skip. */
static void
test_withdraw_file (Fixture *f, gconstpointer data)
{
  gint64 sid = standard_tree (f);
  publish_all (f);
  guint64 ino_a = resolve (f, "/Docs/Reports/F/a.txt"), ino_f = resolve (f, "/Docs/Reports/F");
  g_assert_cmpuint (ino_a, !=, 0);

  /* A folder, or the source folder, is left alone. */
  GError *error = NULL;
  gboolean withdrawn = TRUE;
  g_autoptr (GPtrArray) none = NULL;
  g_assert_true (store_withdraw_file (f->store, ino_f, "excluded", &withdrawn, &none, &error));
  g_assert_no_error (error);
  g_assert_false (withdrawn);
  g_assert_null (none);

  /* A queued update for it goes too: the filter would refuse it. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha2"));
  commit_set (f, sid, set, "link-2", FALSE);
  g_autoptr (GPtrArray) stale = NULL;
  g_assert_true (store_withdraw_file (f->store, ino_a, "too_large", &withdrawn, &stale, &error));
  g_assert_no_error (error);
  g_assert_true (withdrawn);
  g_assert_nonnull (stale);
  g_assert_cmpuint (stale->len, ==, 1);
  g_assert_cmpstr (stale->pdata[0], ==, "obj-a-ha1");
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), ==, 0);
  guint count = 9;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);

  /* Not published any more: a second withdraw changes nothing. */
  g_assert_true (store_withdraw_file (f->store, ino_a, "too_large", &withdrawn, NULL, &error));
  g_assert_false (withdrawn);

  /* Reported again (the filter lifted, a full start): queued and published in place. */
  GPtrArray *again = items_new ();
  g_ptr_array_add (again, mk_file ("a", "F", "a.txt", "ha2"));
  StoreCommitStats st = commit_set (f, sid, again, "link-3", FALSE);
  g_assert_cmpuint (st.queued_downloads + st.queued_updates, ==, 1);
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), ==, ino_a);
}

static void
test_fail_retry (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sid = standard_tree (f);
  g_autoptr (GPtrArray) work = take_work (f);
  StoreWork *a = find_work (work, "a");
  g_assert_true (store_work_fail (f->store, a, "download_error", "connection reset", &error));
  g_assert_no_error (error);

  /* First failure: still due (the next run retries it), with the attempt counted. */
  g_autoptr (GPtrArray) again = take_work (f);
  StoreWork *a2 = find_work (again, "a");
  g_assert_nonnull (a2);
  g_assert_cmpint (a2->work_id, ==, a->work_id);
  g_assert_cmpuint (a2->attempts, ==, 1);
  g_assert_cmpstr (a2->last_error_type, ==, "download_error");

  /* Second failure: backoff, not due now, but still queued. */
  g_assert_true (store_work_fail (f->store, a2, "timeout", "stalled", &error));
  guint count = 0;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 2);
  g_autoptr (GPtrArray) due = take_work (f);
  g_assert_null (find_work (due, "a"));

  /* A new set with the same content keeps the work, its attempts and its backoff; the
   * cursor moving does not forget it. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha1"));
  commit_set (f, sid, set, "link-2", FALSE);
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 2);

  /* New content is new work: due now, attempts reset. */
  GPtrArray *set2 = items_new ();
  g_ptr_array_add (set2, mk_file ("a", "F", "a.txt", "ha9"));
  commit_set (f, sid, set2, "link-3", FALSE);
  g_autoptr (GPtrArray) fresh = take_work (f);
  StoreWork *a3 = find_work (fresh, "a");
  g_assert_nonnull (a3);
  g_assert_cmpint (a3->work_id, >, a->work_id);
  g_assert_cmpuint (a3->attempts, ==, 0);
  g_assert_cmpint (a3->action, ==, STORE_ACTION_DOWNLOAD);
}

/* Filtered work leaves the queue at once (no backoff, no failure), the item is invisible,
 * and it comes back whenever a set reports it again (a change, or a full enumeration). */
static void
test_skip_filtered (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sid = standard_tree (f);
  g_autoptr (GPtrArray) work = take_work (f);
  StoreWork *a = find_work (work, "a");
  g_autoptr (GPtrArray) stale = NULL;
  g_assert_true (store_work_skip (f->store, a, "too_large", &stale, &error));
  g_assert_no_error (error);
  g_assert_true (stale == NULL || stale->len == 0);   /* never published: no bytes */
  for (guint i = 0; i < work->len; i++)
    if (work->pdata[i] != a)
      publish (f, work->pdata[i], NULL);

  guint count = 99;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);                    /* not pending, not in backoff */
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), ==, 0);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/b.txt"), !=, 0);
  g_autofree char *names = readdir_names (f, resolve (f, "/Docs/Reports/F"));
  g_assert_cmpstr (names, ==, "");

  /* Skipping superseded work changes nothing. */
  g_assert_true (store_work_skip (f->store, a, "too_large", NULL, &error));
  g_assert_no_error (error);

  /* A set that reports it again (changed, or a full enumeration) queues it again. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha1"));
  g_ptr_array_add (set, mk_file ("b", "R", "b.txt", "hb1"));
  g_ptr_array_add (set, mk_dir ("F", "R", "F"));
  StoreCommitStats st = commit_set (f, sid, set, "link-2", TRUE);
  g_assert_cmpuint (st.queued_downloads, ==, 1);
  g_assert_cmpuint (st.queued_deletes, ==, 0);
  g_autoptr (GPtrArray) again = take_work (f);
  g_assert_cmpuint (again->len, ==, 1);
  StoreWork *a2 = find_work (again, "a");
  g_assert_nonnull (a2);
  g_assert_cmpint (a2->action, ==, STORE_ACTION_DOWNLOAD);
  g_assert_cmpuint (a2->attempts, ==, 0);
  g_assert_null (a2->old_path);
  publish (f, a2, NULL);
  guint64 ino_a = resolve (f, "/Docs/Reports/F/a.txt");
  g_assert_cmpuint (ino_a, ==, a2->ino);

  /* A published file whose new content is filtered is withdrawn; its bytes are stale. */
  GPtrArray *set3 = items_new ();
  g_ptr_array_add (set3, mk_file ("a", "F", "a.txt", "ha2"));
  commit_set (f, sid, set3, "link-3", FALSE);
  g_autoptr (GPtrArray) up = take_work (f);
  g_assert_cmpuint (up->len, ==, 1);
  g_assert_cmpint (((StoreWork *) up->pdata[0])->action, ==, STORE_ACTION_UPDATE);
  g_autoptr (GPtrArray) stale3 = NULL;
  g_assert_true (store_work_skip (f->store, up->pdata[0], "excluded", &stale3, &error));
  g_assert_no_error (error);
  g_assert_nonnull (stale3);
  g_assert_cmpuint (stale3->len, ==, 1);
  g_assert_cmpstr (stale3->pdata[0], ==, "obj-a-ha1");
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), ==, 0);
  g_auto (StoreEntry) gone = { 0 };
  g_assert_false (store_getattr (f->store, ino_a, &gone, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);

  /* Deleted remotely while filtered: forgotten, nothing to delete in the mount. */
  GPtrArray *set4 = items_new ();
  GraphItem *tomb = mk_file ("a", "F", "a.txt", "ha2");
  tomb->deleted = TRUE;
  g_ptr_array_add (set4, tomb);
  StoreCommitStats st4 = commit_set (f, sid, set4, "link-4", FALSE);
  g_assert_cmpuint (st4.queued_deletes, ==, 0);
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);
  g_autofree char *path = store_path (f->store, ino_a, &error);
  g_assert_null (path);
  g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);
}

static void
test_superseded_publish (Fixture *f, gconstpointer data)
{
  gint64 sid = standard_tree (f);
  g_autoptr (GPtrArray) work = take_work (f);
  StoreWork *a = find_work (work, "a");
  /* While a worker downloads ha1, a new set says the content is ha2. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha2"));
  commit_set (f, sid, set, "link-2", FALSE);

  g_autoptr (GPtrArray) stale = NULL;
  publish (f, find_work (work, "F"), NULL);
  publish (f, a, &stale);
  /* The old bytes are refused and handed back; the new work is still queued. */
  g_assert_cmpuint (stale->len, ==, 1);
  g_assert_cmpstr (stale->pdata[0], ==, "obj-a-ha1");
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), ==, 0);
  g_autoptr (GPtrArray) now = take_work (f);
  StoreWork *a2 = find_work (now, "a");
  g_assert_nonnull (a2);
  g_assert_cmpstr (a2->item->quickxor_hash, ==, "ha2");
  publish (f, a2, NULL);
  g_auto (StoreEntry) e = { 0 };
  g_assert_true (store_getattr (f->store, a2->ino, &e, NULL));
  g_assert_cmpstr (e.quickxor_hash, ==, "ha2");

  /* A failure reported for superseded work changes nothing. */
  GError *error = NULL;
  g_assert_true (store_work_fail (f->store, a, "timeout", "late", &error));
  g_assert_no_error (error);
}

static void
test_overlap (Fixture *f, gconstpointer data)
{
  gint64 outer = add_source (f, "/A", "A");
  gint64 inner = add_source (f, "/A/B", "B");
  GPtrArray *s1 = items_new ();
  g_ptr_array_add (s1, mk_dir ("B", "A", "B"));
  g_ptr_array_add (s1, mk_file ("x", "B", "x.txt", "hx"));
  commit_set (f, outer, s1, "o1", FALSE);
  GPtrArray *s2 = items_new ();
  g_ptr_array_add (s2, mk_dir ("B", "A", "B"));
  g_ptr_array_add (s2, mk_file ("x", "B", "x.txt", "hx"));
  StoreCommitStats st = commit_set (f, inner, s2, "i1", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 1);   /* the same work, not a second one */
  guint count = 0;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 1);
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/A/B/x.txt"), !=, 0);
  g_autofree char *root = readdir_names (f, STORE_ROOT_INO);
  g_assert_cmpstr (root, ==, "A");
}

static void
remove_source (Fixture *f, gint64 sid, guint expect_deletes)
{
  GError *error = NULL;
  guint queued = 99;
  g_assert_true (store_source_remove (f->store, sid, &queued, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (queued, ==, expect_deletes);
}

/* A removed source takes what only it showed, through DELETE work (deepest first), and the
 * synthetic directory that only led to it; another source keeps its own. */
static void
test_source_removed (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 reports = standard_tree (f);
  gint64 other = add_source (f, "/Docs/Other", "O");
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("o1", "O", "o1.txt", "ho"));
  commit_set (f, other, set, "lo", FALSE);
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/a.txt"), !=, 0);

  remove_source (f, reports, 4);   /* a.txt, F, b.txt, Reports; /Docs still leads to Other */
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 4);
  for (guint i = 0; i < work->len; i++)
    g_assert_cmpint (((StoreWork *) work->pdata[i])->action, ==, STORE_ACTION_DELETE);
  g_assert_cmpuint (work_index (work, "a"), <, work_index (work, "F"));
  g_assert_cmpuint (work_index (work, "F"), <, work_index (work, "R"));
  g_assert_cmpuint (work_index (work, "b"), <, work_index (work, "R"));
  g_clear_pointer (&work, g_ptr_array_unref);
  publish_all (f);
  g_autofree char *docs = readdir_names (f, resolve (f, "/Docs"));
  g_assert_cmpstr (docs, ==, "Other");
  g_assert_cmpuint (resolve (f, "/Docs/Other/o1.txt"), !=, 0);
  g_autoptr (GPtrArray) sources = store_sources (f->store, &error);
  g_assert_cmpuint (sources->len, ==, 1);
  g_assert_false (store_source_remove (f->store, reports, NULL, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
  g_clear_error (&error);

  /* The last one takes the synthetic /Docs with it: the mount is empty. */
  remove_source (f, other, 3);   /* o1.txt, Other, Docs */
  publish_all (f);
  g_autofree char *top = readdir_names (f, STORE_ROOT_INO);
  g_assert_cmpstr (top, ==, "");
}

/* Overlaps: a source another covers loses only its row (its folder becomes an ordinary one
 * of the covering source); removing the covering one keeps the path to the inner one and
 * what the inner one shows. */
static void
test_source_removed_overlap (Fixture *f, gconstpointer data)
{
  gint64 outer = add_source (f, "/A", "A");
  gint64 inner = add_source (f, "/A/B", "B");
  GPtrArray *s1 = items_new ();
  g_ptr_array_add (s1, mk_dir ("B", "A", "B"));
  g_ptr_array_add (s1, mk_file ("x", "B", "x.txt", "hx"));
  g_ptr_array_add (s1, mk_file ("y", "A", "y.txt", "hy"));
  g_ptr_array_add (s1, mk_dir ("C", "A", "C"));
  g_ptr_array_add (s1, mk_file ("z", "C", "z.txt", "hz"));
  commit_set (f, outer, s1, "o1", FALSE);
  GPtrArray *s2 = items_new ();
  g_ptr_array_add (s2, mk_file ("x", "B", "x.txt", "hx"));
  commit_set (f, inner, s2, "i1", FALSE);
  publish_all (f);

  /* The inner one goes: nothing leaves the mount, B may now move with /A's changes, and what
   * the inner one reported last (x.txt) is /A's now: /A's reconcile deletes it when it is
   * gone remotely. */
  remove_source (f, inner, 0);
  GPtrArray *s3 = items_new ();
  g_ptr_array_add (s3, mk_dir ("B", "C", "B moved"));
  commit_set (f, outer, s3, "o2", FALSE);
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/A/C/B moved/x.txt"), !=, 0);
  GPtrArray *full = items_new ();
  g_ptr_array_add (full, mk_dir ("A", "P", "A"));
  g_ptr_array_add (full, mk_file ("y", "A", "y.txt", "hy"));
  g_ptr_array_add (full, mk_dir ("C", "A", "C"));
  g_ptr_array_add (full, mk_file ("z", "C", "z.txt", "hz"));
  g_ptr_array_add (full, mk_dir ("B", "C", "B moved"));
  StoreCommitStats st = commit_set (f, outer, full, "o3", TRUE);
  g_assert_cmpuint (st.queued_deletes, ==, 1);
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/A/C/B moved/x.txt"), ==, 0);
  GPtrArray *back = items_new ();
  g_ptr_array_add (back, mk_file ("x", "B", "x.txt", "hx"));
  commit_set (f, outer, back, "o4", FALSE);
  publish_all (f);

  /* Configured again below its new place, then the outer one goes: what only /A showed
   * leaves; the way to the inner one and what it holds stay, and x.txt (reported last by /A)
   * is the inner one's now. */
  inner = add_source (f, "/A/C/B moved", "B");
  remove_source (f, outer, 2);   /* y.txt, z.txt */
  publish_all (f);
  g_autofree char *a = readdir_names (f, resolve (f, "/A"));
  g_assert_cmpstr (a, ==, "C");
  g_autofree char *c = readdir_names (f, resolve (f, "/A/C"));
  g_assert_cmpstr (c, ==, "B moved");
  g_assert_cmpuint (resolve (f, "/A/C/B moved/x.txt"), !=, 0);
  g_assert_cmpuint (resolve (f, "/A/y.txt"), ==, 0);
  GPtrArray *empty = items_new ();
  g_ptr_array_add (empty, mk_dir ("B", "C", "B moved"));
  st = commit_set (f, inner, empty, "i2", TRUE);
  g_assert_cmpuint (st.queued_deletes, ==, 1);
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/A/C/B moved/x.txt"), ==, 0);
}

static void
test_synthetic_dirs (Fixture *f, gconstpointer data)
{
  gint64 r = add_source (f, "/Documents/Reports", "R");
  gint64 i = add_source (f, "/Documents//Invoices/", "I");
  g_assert_cmpint (r, !=, i);
  /* ensure is idempotent */
  g_assert_cmpint (add_source (f, "/Documents/Reports", "R"), ==, r);
  guint64 docs = resolve (f, "/Documents");
  g_assert_cmpuint (docs, !=, 0);
  g_autofree char *root = readdir_names (f, STORE_ROOT_INO);
  g_assert_cmpstr (root, ==, "Documents");
  g_autofree char *names = readdir_names (f, docs);
  g_assert_cmpstr (names, ==, "Invoices Reports");
  g_auto (StoreEntry) e = { 0 };
  g_assert_true (store_getattr (f->store, docs, &e, NULL));
  g_assert_cmpint (e.kind, ==, STORE_KIND_DIR);
  g_assert_cmpuint (e.parent_ino, ==, STORE_ROOT_INO);
  g_autofree char *p = store_path (f->store, resolve (f, "/Documents/Invoices"), NULL);
  g_assert_cmpstr (p, ==, "/Documents/Invoices");
  g_autoptr (GPtrArray) sources = store_sources (f->store, NULL);
  g_assert_cmpuint (sources->len, ==, 2);
  g_assert_cmpstr (((StoreSource *) sources->pdata[1])->remote_path, ==, "/Documents/Invoices");

  GError *error = NULL;
  g_assert_false (store_source_ensure (f->store, "relative/path", "drive1", "Z", NULL, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_FAILED);
  g_clear_error (&error);
}

static void
test_drive_root_source (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/", "ROOT");
  GPtrArray *set = items_new ();
  GraphItem *root = mk_dir ("ROOT", NULL, "root");
  root->is_root = TRUE;
  g_ptr_array_add (set, root);
  g_ptr_array_add (set, mk_file ("t", "ROOT", "top.txt", "ht"));
  GraphItem *mixed = mk_file ("m", "ROOT", "mixed.txt", "hm");
  g_free (mixed->drive_id);
  mixed->drive_id = g_strdup ("DRIVE1");   /* drive ids compare case-insensitively */
  g_ptr_array_add (set, mixed);
  StoreCommitStats st = commit_set (f, sid, set, "l", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 2);
  publish_all (f);
  g_autofree char *names = readdir_names (f, STORE_ROOT_INO);
  g_assert_cmpstr (names, ==, "mixed.txt top.txt");
  g_autofree char *p = store_path (f->store, resolve (f, "/top.txt"), NULL);
  g_assert_cmpstr (p, ==, "/top.txt");
}

static void
test_synthetic_taken_over (Fixture *f, gconstpointer data)
{
  /* "/A/B" configured first: "A" is synthetic. Then "/" shows the real "A". */
  add_source (f, "/A/B", "B");
  guint64 synthetic_a = resolve (f, "/A");
  guint64 anchored_b = resolve (f, "/A/B");
  gint64 root = add_source (f, "/", "ROOT");
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("x", "B", "x.txt", "hx"));
  g_ptr_array_add (set, mk_dir ("B", "A", "B"));
  g_ptr_array_add (set, mk_dir ("A", "ROOT", "A"));
  g_ptr_array_add (set, mk_dir ("C", "ROOT", "C"));
  commit_set (f, root, set, "l", FALSE);
  publish_all (f);
  g_autofree char *names = readdir_names (f, STORE_ROOT_INO);
  g_assert_cmpstr (names, ==, "A C");
  g_assert_cmpuint (resolve (f, "/A"), ==, synthetic_a);
  g_assert_cmpuint (resolve (f, "/A/B"), ==, anchored_b);
  g_assert_cmpuint (resolve (f, "/A/B/x.txt"), !=, 0);
}

static void
test_exclusions (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  gint64 sid = standard_tree (f);
  publish_all (f);
  guint64 ino_f = resolve (f, "/Docs/Reports/F");
  g_autoptr (GPtrArray) objects = NULL;
  g_assert_true (store_exclude (f->store, ino_f, &objects, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (objects->len, ==, 1);
  g_assert_cmpstr (objects->pdata[0], ==, "obj-a-ha1");
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F"), ==, 0);
  g_autofree char *names = readdir_names (f, resolve (f, "/Docs/Reports"));
  g_assert_cmpstr (names, ==, "b.txt");

  /* Later sets record changes under it but queue nothing. */
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_file ("a", "F", "a.txt", "ha2"));
  g_ptr_array_add (set, mk_dir ("H", "F", "H"));
  g_ptr_array_add (set, mk_file ("h1", "H", "h1.txt", "hh"));
  StoreCommitStats st = commit_set (f, sid, set, "link-2", FALSE);
  g_assert_cmpuint (st.queued_downloads + st.queued_updates + st.queued_mkdirs, ==, 0);
  guint count = 9;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);

  guint back = 0;
  g_assert_true (store_clear_exclusions (f->store, &back, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (back, ==, 4);   /* F, a, H, h1 */
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 4);
  g_assert_cmpstr (find_work (work, "a")->item->quickxor_hash, ==, "ha2");
  publish_all (f);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F/H/h1.txt"), !=, 0);

  g_assert_false (store_exclude (f->store, STORE_ROOT_INO, NULL, &error));
  g_clear_error (&error);
}

static void
test_name_problem (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/S", "S");
  GPtrArray *set = items_new ();
  GraphItem *bad = mk_file ("bad", "S", "con\x01trol", "hb");
  bad->name_problem = g_strdup ("contains a control character");
  g_ptr_array_add (set, bad);
  StoreCommitStats st = commit_set (f, sid, set, "l", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 1);
  g_autoptr (GPtrArray) work = take_work (f);
  g_assert_cmpuint (work->len, ==, 1);
  StoreWork *w = work->pdata[0];
  g_assert_cmpstr (w->item->name_problem, ==, "contains a control character");
  g_assert_true (store_work_fail (f->store, w, "name_invalid", "bad name", NULL));
  g_autoptr (GPtrArray) still = take_work (f);
  g_assert_cmpuint (still->len, ==, 1);
}

static void
test_packages_skipped (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/S", "S");
  GPtrArray *set = items_new ();
  g_ptr_array_add (set, mk_item ("nb", "S", "Notebook", GRAPH_ITEM_PACKAGE, NULL));
  g_ptr_array_add (set, mk_file ("f", "S", "f.txt", "hf"));
  StoreCommitStats st = commit_set (f, sid, set, "l", FALSE);
  g_assert_cmpuint (st.queued_downloads, ==, 1);
}

static void
test_publish_batch (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  standard_tree (f);
  g_autoptr (GPtrArray) work = take_work (f);
  const char *objects[3] = { NULL, NULL, NULL };
  g_autofree char *oa = g_strdup ("obj-a"), *ob = g_strdup ("obj-b");
  for (guint i = 0; i < work->len; i++)
    {
      StoreWork *w = work->pdata[i];
      objects[i] = g_str_equal (w->item->id, "a") ? oa : g_str_equal (w->item->id, "b") ? ob : NULL;
    }
  /* A bad request (a download without bytes) fails alone; the others commit. */
  StoreWork *a = find_work (work, "a");
  objects[work_index (work, "a")] = NULL;
  g_autoptr (GPtrArray) errors = NULL;
  g_assert_false (store_work_publish_batch (f->store, (StoreWork *const *) work->pdata, objects,
                                            work->len, NULL, &errors, &error));
  g_assert_error (error, STORE_ERROR, STORE_ERROR_FAILED);
  g_clear_error (&error);
  g_assert_nonnull (errors->pdata[work_index (work, "a")]);
  g_assert_null (errors->pdata[work_index (work, "b")]);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/b.txt"), !=, 0);
  g_assert_cmpuint (resolve (f, "/Docs/Reports/F"), !=, 0);
  g_autoptr (GPtrArray) left = take_work (f);
  g_assert_cmpuint (left->len, ==, 1);
  g_assert_cmpint (((StoreWork *) left->pdata[0])->work_id, ==, a->work_id);
}

/* ---- concurrency ----------------------------------------------------------------------- */

typedef struct {
  Fixture      *f;
  gint          stop;
  gint          reads;
  gint          errors;
  GPtrArray    *work;
  gint          next;
} Shared;

static gpointer
reader_thread (gpointer data)
{
  Shared *s = data;
  while (!g_atomic_int_get (&s->stop))
    {
      GError *error = NULL;
      g_autoptr (GPtrArray) list = store_readdir (s->f->store, STORE_ROOT_INO, &error);
      g_auto (StoreEntry) e = { 0 };
      if (list == NULL || !store_getattr (s->f->store, STORE_ROOT_INO, &e, &error))
        g_atomic_int_inc (&s->errors);
      else
        {
          for (guint i = 0; i < list->len; i++)
            {
              g_auto (StoreEntry) c = { 0 };
              GError *e2 = NULL;
              if (!store_lookup (s->f->store, STORE_ROOT_INO, ((StoreEntry *) list->pdata[i])->name, &c, &e2))
                {
                  /* An entry may vanish between readdir and lookup only if deleted; none are. */
                  g_atomic_int_inc (&s->errors);
                  g_clear_error (&e2);
                }
            }
          g_atomic_int_inc (&s->reads);
        }
      g_clear_error (&error);
    }
  return NULL;
}

static gpointer
publisher_thread (gpointer data)
{
  Shared *s = data;
  for (;;)
    {
      gint i = g_atomic_int_add (&s->next, 1);
      if (i >= (gint) s->work->len)
        break;
      StoreWork *w = s->work->pdata[i];
      g_autofree char *object = g_strdup_printf ("obj-%" G_GINT64_FORMAT, w->work_id);
      GError *error = NULL;
      g_autoptr (GPtrArray) stale = NULL;
      if (!store_work_publish (s->f->store, w, object, &stale, &error))
        {
          g_printerr ("publish: %s\n", error->message);
          g_atomic_int_inc (&s->errors);
          g_clear_error (&error);
        }
    }
  return NULL;
}

static void
test_concurrent (Fixture *f, gconstpointer data)
{
  gint64 sid = add_source (f, "/", "ROOT");
  const guint n = 3000;
  GPtrArray *set = items_new ();
  for (guint i = 0; i < n; i++)
    {
      g_autofree char *id = g_strdup_printf ("i%u", i), *name = g_strdup_printf ("f%05u", i),
                      *h = g_strdup_printf ("h%u", i);
      g_ptr_array_add (set, mk_file (id, "ROOT", name, h));
    }
  commit_set (f, sid, set, "l", FALSE);
  Shared s = { .f = f, .work = take_work (f) };
  g_assert_cmpuint (s.work->len, ==, n);

  GThread *readers[3], *pubs[4];
  for (guint i = 0; i < G_N_ELEMENTS (readers); i++)
    readers[i] = g_thread_new ("reader", reader_thread, &s);
  for (guint i = 0; i < G_N_ELEMENTS (pubs); i++)
    pubs[i] = g_thread_new ("publisher", publisher_thread, &s);
  for (guint i = 0; i < G_N_ELEMENTS (pubs); i++)
    g_thread_join (pubs[i]);
  /* Readers keep going while a large commit holds the writer: they must not stall. */
  GPtrArray *big = items_new ();
  for (guint i = 0; i < n; i++)
    {
      g_autofree char *id = g_strdup_printf ("i%u", i), *name = g_strdup_printf ("f%05u", i),
                      *h = g_strdup_printf ("h%u-v2", i);
      g_ptr_array_add (big, mk_file (id, "ROOT", name, h));
    }
  gint before = g_atomic_int_get (&s.reads);
  commit_set (f, sid, big, "l2", FALSE);
  g_atomic_int_set (&s.stop, 1);
  for (guint i = 0; i < G_N_ELEMENTS (readers); i++)
    g_thread_join (readers[i]);
  g_test_message ("reads: %d (%d during the commit)", s.reads, s.reads - before);
  g_assert_cmpint (s.errors, ==, 0);
  g_assert_cmpint (s.reads, >, 0);
  guint64 files = 0;
  g_assert_true (store_usage (f->store, NULL, &files, NULL));
  g_assert_cmpuint (files, ==, n + 1);
  guint count = 0;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, n);   /* every item now has an UPDATE */
  g_ptr_array_unref (s.work);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define T(path, fn) g_test_add (path, Fixture, NULL, fixture_set_up, fn, fixture_tear_down)
  T ("/store/commit/new-set", test_new_set);
  T ("/store/commit/duplicates", test_duplicates);
  T ("/store/commit/update-move-unchanged", test_update_move_unchanged);
  T ("/store/commit/ctag-without-hash", test_ctag_without_hash);
  T ("/store/commit/delete-cascade", test_delete_cascade);
  T ("/store/commit/reconcile", test_reconcile);
  T ("/store/commit/interrupted-set", test_interrupted_set);
  T ("/store/commit/packages-skipped", test_packages_skipped);
  T ("/store/commit/name-problem", test_name_problem);
  T ("/store/commit/reset-cursor", test_reset_cursor);
  T ("/store/commit/sets-per-source", test_sets_per_source);
  T ("/store/trim-memory", test_trim_memory);
  T ("/store/queue/fail-retry", test_fail_retry);
  T ("/store/queue/withdraw-file", test_withdraw_file);
  T ("/store/queue/superseded-publish", test_superseded_publish);
  T ("/store/queue/skip-filtered", test_skip_filtered);
  T ("/store/queue/publish-batch", test_publish_batch);
  T ("/store/sources/overlap", test_overlap);
  T ("/store/sources/synthetic-dirs", test_synthetic_dirs);
  T ("/store/sources/removed", test_source_removed);
  T ("/store/sources/removed-overlap", test_source_removed_overlap);
  T ("/store/sources/drive-root", test_drive_root_source);
  T ("/store/sources/synthetic-taken-over", test_synthetic_taken_over);
  T ("/store/fs/exclusions", test_exclusions);
  T ("/store/fs/exclusion-deep-chain", test_exclusion_deep_chain);
  T ("/store/concurrency/readers-and-publishers", test_concurrent);
  return g_test_run ();
}
