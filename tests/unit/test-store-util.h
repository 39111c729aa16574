/* Helpers shared by the store's unit tests: a private temp dir per test, GraphItem makers. */
#pragma once

#include <onedrive-syncfs/store.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>

typedef struct {
  char  *dir;
  char  *db;
  Store *store;
} Fixture;

static inline void
fixture_set_up (Fixture *f, gconstpointer data)
{
  GError *error = NULL;
  f->dir = g_dir_make_tmp ("odsf-store-XXXXXX", &error);
  g_assert_no_error (error);
  f->db = g_build_filename (f->dir, "state.db", NULL);
  if (data == NULL)
    {
      f->store = store_open (f->db, &error);
      g_assert_no_error (error);
      g_assert_nonnull (f->store);
    }
}

static inline void
rm_rf (const char *path)
{
  GDir *d = g_dir_open (path, 0, NULL);
  if (d != NULL)
    {
      const char *name;
      while ((name = g_dir_read_name (d)) != NULL)
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          if (g_file_test (child, G_FILE_TEST_IS_DIR) && !g_file_test (child, G_FILE_TEST_IS_SYMLINK))
            rm_rf (child);
          else
            g_unlink (child);
        }
      g_dir_close (d);
    }
  g_rmdir (path);
}

static inline void
fixture_tear_down (Fixture *f, gconstpointer data)
{
  g_clear_pointer (&f->store, store_free);
  rm_rf (f->dir);
  g_free (f->dir);
  g_free (f->db);
}

static inline GraphItem *
mk_item (const char *id, const char *parent, const char *name, GraphItemKind kind, const char *qxh)
{
  GraphItem *it = g_new0 (GraphItem, 1);
  it->drive_id = g_strdup ("drive1");
  it->id = g_strdup (id);
  it->parent_id = g_strdup (parent);
  it->name = g_strdup (name);
  it->kind = kind;
  it->size = qxh ? (gint64) strlen (qxh) : 0;
  it->mtime = 1700000000;
  it->etag = g_strdup_printf ("e-%s-%s", id, qxh ? qxh : "");
  it->ctag = g_strdup_printf ("c-%s-%s", id, qxh ? qxh : "");
  it->quickxor_hash = g_strdup (qxh);
  return it;
}

static inline GraphItem *
mk_file (const char *id, const char *parent, const char *name, const char *qxh)
{
  return mk_item (id, parent, name, GRAPH_ITEM_FILE, qxh);
}

static inline GraphItem *
mk_dir (const char *id, const char *parent, const char *name)
{
  return mk_item (id, parent, name, GRAPH_ITEM_FOLDER, NULL);
}

static inline GraphItem *
mk_tombstone (const char *id, const char *parent)
{
  GraphItem *it = g_new0 (GraphItem, 1);
  it->drive_id = g_strdup ("drive1");
  it->id = g_strdup (id);
  it->parent_id = g_strdup (parent);
  it->deleted = TRUE;
  it->size = -1;
  return it;
}

static inline GPtrArray *
items_new (void)
{
  return g_ptr_array_new_with_free_func ((GDestroyNotify) graph_item_free);
}

/* Every queued work, in order. */
static inline GPtrArray *
take_work (Fixture *f)
{
  GError *error = NULL;
  GPtrArray *work = store_work_next (f->store, 0, 100000, &error);
  g_assert_no_error (error);
  g_assert_nonnull (work);
  return work;
}

/* Publishes one work item the way the engine would: a fresh cache object per content. */
static inline void
publish (Fixture *f, StoreWork *w, GPtrArray **stale)
{
  GError *error = NULL;
  g_autofree char *object = NULL;
  if ((w->action == STORE_ACTION_DOWNLOAD || w->action == STORE_ACTION_UPDATE) &&
      w->item->kind == GRAPH_ITEM_FILE)
    object = g_strdup_printf ("obj-%s-%s", w->item->id, w->item->quickxor_hash);
  g_assert_true (store_work_publish (f->store, w, object, stale, &error));
  g_assert_no_error (error);
}

static inline gint64
add_source (Fixture *f, const char *path, const char *item_id)
{
  GError *error = NULL;
  gint64 sid = 0;
  g_assert_true (store_source_ensure (f->store, path, "drive1", item_id, &sid, &error));
  g_assert_no_error (error);
  g_assert_cmpint (sid, >, 0);
  return sid;
}

/* Resolves "/a/b/c" through lookups from the root; 0 when some component is not visible. */
static inline guint64
resolve (Fixture *f, const char *path)
{
  g_auto (GStrv) parts = g_strsplit (path, "/", -1);
  guint64 ino = STORE_ROOT_INO;
  for (char **p = parts; *p; p++)
    {
      if (**p == '\0')
        continue;
      g_auto (StoreEntry) e = { 0 };
      GError *error = NULL;
      if (!store_lookup (f->store, ino, *p, &e, &error))
        {
          g_assert_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND);
          g_clear_error (&error);
          return 0;
        }
      ino = e.ino;
    }
  return ino;
}

/* Publishes every due work in id order, as the engine's drain does. */
static inline void
publish_due (Fixture *f)
{
  g_autoptr (GPtrArray) work = take_work (f);
  for (guint i = 0; i < work->len; i++)
    {
      g_autoptr (GPtrArray) stale = NULL;
      publish (f, work->pdata[i], &stale);
    }
}

/* ... and checks nothing is left queued. */
static inline void
publish_all (Fixture *f)
{
  publish_due (f);
  guint count = 99;
  g_assert_true (store_work_count (f->store, &count, NULL));
  g_assert_cmpuint (count, ==, 0);
}

/* Stages @items (taking them) in pages of two and commits with @link. */
static inline StoreCommitStats
commit_set (Fixture *f, gint64 sid, GPtrArray *items, const char *link, gboolean reconcile)
{
  GError *error = NULL;
  StoreCommitStats stats;
  g_assert_true (store_stage_begin (f->store, sid, &error));
  for (guint i = 0; i < items->len; i += 2)
    {
      g_autoptr (GPtrArray) page = g_ptr_array_new ();
      for (guint k = i; k < MIN (i + 2, items->len); k++)
        g_ptr_array_add (page, items->pdata[k]);
      g_assert_true (store_stage_add (f->store, sid, page, &error));
      g_assert_no_error (error);
    }
  g_assert_true (store_stage_commit (f->store, sid, link, reconcile, &stats, &error));
  g_assert_no_error (error);
  g_ptr_array_unref (items);
  return stats;
}
