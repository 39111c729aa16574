/* What the filesystem reads, and the exclusions it records.
 *
 * Visibility is one rule: an entry shows when its row is published (state 1). Synthetic
 * directories (the path above a source) and the sources' own folders are rows that are born
 * published; everything else becomes visible in the transaction that publishes it. The mount
 * tree is the published (parent_ino, name) columns; a child published before its folder is
 * unreachable until the folder is published, so the order workers finish in never shows a
 * half-built tree. Reads use the reader pool (store.c) and never wait for the writer.
 *
 * Inode numbers are the items' rowids: AUTOINCREMENT, assigned when an item is first seen,
 * kept across renames, moves and updates, never reused after a delete.
 */
#include "config.h"

#include "store-private.h"

#include <string.h>

#define MAX_DEPTH 256

void
store_entry_clear (StoreEntry *entry)
{
  if (entry == NULL)
    return;
  g_clear_pointer (&entry->name, g_free);
  g_clear_pointer (&entry->cache_object, g_free);
  g_clear_pointer (&entry->quickxor_hash, g_free);
}

void
store_entry_free (StoreEntry *entry)
{
  if (entry == NULL)
    return;
  store_entry_clear (entry);
  g_free (entry);
}

#define ENTRY_COLUMNS "ino, parent_ino, name, kind, size, mtime, cache_object, qxh, generation"

static void
fill_entry (sqlite3_stmt *st, StoreEntry *e)
{
  memset (e, 0, sizeof *e);
  e->ino = sqlite3_column_int64 (st, 0);
  e->parent_ino = sqlite3_column_int64 (st, 1);
  if (e->ino == STORE_ROOT_INO)
    e->parent_ino = STORE_ROOT_INO;
  e->name = store_col_dup (st, 2);
  e->kind = sqlite3_column_int (st, 3) == STORE_KIND_DIR ? STORE_KIND_DIR : STORE_KIND_FILE;
  e->size = e->kind == STORE_KIND_FILE ? sqlite3_column_int64 (st, 4) : 0;
  e->mtime = sqlite3_column_int64 (st, 5);
  e->cache_object = e->kind == STORE_KIND_FILE ? store_col_dup (st, 6) : NULL;
  e->quickxor_hash = store_col_dup (st, 7);
  e->generation = (guint64) sqlite3_column_int64 (st, 8);
}

gboolean
store_lookup (Store *store, guint64 parent_ino, const char *name, StoreEntry *out, GError **error)
{
  g_return_val_if_fail (name != NULL && out != NULL, FALSE);
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return FALSE;
  /* While two published entries briefly share a name (a swap of names applied one publish at
   * a time), the newest item wins. */
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT " ENTRY_COLUMNS " FROM items WHERE parent_ino = ?1 AND name = ?2 AND state = 1"
      " ORDER BY ino DESC LIMIT 1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, (gint64) parent_ino);
  sqlite3_bind_text (st, 2, name, -1, SQLITE_STATIC);
  int rc = sqlite3_step (st);
  if (rc == SQLITE_ROW)
    {
      fill_entry (st, out);
      return TRUE;
    }
  if (rc == SQLITE_DONE)
    g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no entry \"%s\" in directory %" G_GUINT64_FORMAT,
                 name, parent_ino);
  else
    store_set_sqlite_error (error, r, rc, "lookup");
  return FALSE;
}

static gboolean
getattr_on (StoreConn *r, guint64 ino, StoreEntry *out, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT " ENTRY_COLUMNS " FROM items WHERE ino = ?1 AND state = 1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, (gint64) ino);
  int rc = sqlite3_step (st);
  if (rc == SQLITE_ROW)
    {
      fill_entry (st, out);
      return TRUE;
    }
  if (rc == SQLITE_DONE)
    g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no inode %" G_GUINT64_FORMAT, ino);
  else
    store_set_sqlite_error (error, r, rc, "getattr");
  return FALSE;
}

gboolean
store_getattr (Store *store, guint64 ino, StoreEntry *out, GError **error)
{
  g_return_val_if_fail (out != NULL, FALSE);
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return FALSE;
  return getattr_on (r, ino, out, error);
}

GHashTable *
store_cache_objects (Store *store, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return NULL;
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT cache_object FROM items WHERE cache_object IS NOT NULL", error);
  if (st == NULL)
    return NULL;
  g_autoptr (GHashTable) objects = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  int rc;
  while ((rc = sqlite3_step (st)) == SQLITE_ROW)
    g_hash_table_add (objects, store_col_dup (st, 0));
  if (rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, r, rc, "cache objects");
      return NULL;
    }
  return g_steal_pointer (&objects);
}

GPtrArray *
store_readdir (Store *store, guint64 ino, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return NULL;
  if (!store_conn_exec (r, "BEGIN", error))
    return NULL;
  g_autoptr (GPtrArray) out = NULL;
  {
    g_auto (StoreEntry) dir = { 0 };
    if (!getattr_on (r, ino, &dir, error))
      goto done;
    if (dir.kind != STORE_KIND_DIR)
      {
        g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "inode %" G_GUINT64_FORMAT " is not a directory", ino);
        goto done;
      }
    g_autoptr (StoreStmt) st = store_conn_stmt (r,
        "SELECT " ENTRY_COLUMNS " FROM items WHERE parent_ino = ?1 AND state = 1 AND ino <> 1"
        " ORDER BY name, ino DESC", error);
    if (st == NULL)
      goto done;
    sqlite3_bind_int64 (st, 1, (gint64) ino);
    g_autoptr (GPtrArray) list = g_ptr_array_new_with_free_func ((GDestroyNotify) store_entry_free);
    int rc;
    while ((rc = sqlite3_step (st)) == SQLITE_ROW)
      {
        const char *name = (const char *) sqlite3_column_text (st, 2);
        /* Same rule as lookup: of two entries sharing a name, the newest shows. */
        if (list->len > 0 && g_strcmp0 (((StoreEntry *) list->pdata[list->len - 1])->name, name) == 0)
          continue;
        StoreEntry *e = g_new0 (StoreEntry, 1);
        fill_entry (st, e);
        g_ptr_array_add (list, e);
      }
    if (rc != SQLITE_DONE)
      {
        store_set_sqlite_error (error, r, rc, "readdir");
        goto done;
      }
    out = g_steal_pointer (&list);
  }
done:
  sqlite3_exec (r->db, "COMMIT", NULL, NULL, NULL);
  return g_steal_pointer (&out);
}

char *
store_path_on (StoreConn *conn, guint64 ino, gboolean published, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (conn, published
      ? "SELECT parent_ino, name FROM items WHERE ino = ?1"
      : "SELECT t_parent_ino, t_name FROM items WHERE ino = ?1", error);
  if (st == NULL)
    return NULL;
  g_autoptr (GPtrArray) parts = g_ptr_array_new_with_free_func (g_free);
  guint64 at = ino;
  for (int depth = 0; at != STORE_ROOT_INO; depth++)
    {
      sqlite3_reset (st);
      sqlite3_bind_int64 (st, 1, (gint64) at);
      int rc = sqlite3_step (st);
      if (rc != SQLITE_ROW || sqlite3_column_type (st, 0) == SQLITE_NULL || depth >= MAX_DEPTH)
        {
          if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            store_set_sqlite_error (error, conn, rc, "path");
          else
            g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND,
                         "inode %" G_GUINT64_FORMAT " is not attached to the mount root", ino);
          return NULL;
        }
      g_ptr_array_add (parts, store_col_dup (st, 1));
      at = (guint64) sqlite3_column_int64 (st, 0);
    }
  if (parts->len == 0)
    return g_strdup ("/");
  GString *path = g_string_new (NULL);
  for (guint i = parts->len; i > 0; i--)
    {
      g_string_append_c (path, '/');
      g_string_append (path, parts->pdata[i - 1] ? parts->pdata[i - 1] : "");
    }
  return g_string_free (path, FALSE);
}

char *
store_path (Store *store, guint64 ino, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return NULL;
  /* Published items by where the mount shows them; others by where they will be. */
  gboolean published = TRUE;
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (r, "SELECT state FROM items WHERE ino = ?1", error);
    if (st == NULL)
      return NULL;
    sqlite3_bind_int64 (st, 1, (gint64) ino);
    int rc = sqlite3_step (st);
    if (rc != SQLITE_ROW)
      {
        g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no inode %" G_GUINT64_FORMAT, ino);
        return NULL;
      }
    published = sqlite3_column_int (st, 0) == ITEM_PUBLISHED;
  }
  return store_path_on (r, ino, published, error);
}

gboolean
store_usage (Store *store, guint64 *bytes, guint64 *files, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return FALSE;
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT coalesce(sum(CASE WHEN kind = 0 THEN size ELSE 0 END), 0), count(*)"
      " FROM items WHERE state = 1", error);
  if (st == NULL)
    return FALSE;
  int rc = sqlite3_step (st);
  if (rc != SQLITE_ROW)
    {
      store_set_sqlite_error (error, r, rc, "usage");
      return FALSE;
    }
  if (bytes)
    *bytes = (guint64) sqlite3_column_int64 (st, 0);
  if (files)
    *files = (guint64) sqlite3_column_int64 (st, 1);
  return TRUE;
}

/* ---- exclusions ------------------------------------------------------------------------ */

static gboolean
exclude_locked (Store *store, guint64 ino, GPtrArray *objects, GError **error)
{
  StoreConn *w = store->writer;
  if (!store_conn_exec (w, "DELETE FROM temp.excl;", error))
    return FALSE;
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT state FROM items WHERE ino = ?1", error);
    if (st == NULL)
      return FALSE;
    sqlite3_bind_int64 (st, 1, (gint64) ino);
    if (sqlite3_step (st) != SQLITE_ROW || sqlite3_column_int (st, 0) == ITEM_EXCLUDED)
      {
        g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no inode %" G_GUINT64_FORMAT, ino);
        return FALSE;
      }
  }
  /* Descendants in the mount and in the target tree (an item moving in counts too). */
  g_autoptr (StoreStmt) mark = store_conn_stmt (w,
      "INSERT INTO temp.excl (ino) WITH RECURSIVE sub (ino, depth) AS ("
      "  SELECT ?1, 0"
      "  UNION SELECT c.ino, sub.depth + 1 FROM items c JOIN sub ON c.parent_ino = sub.ino"
      "   WHERE sub.depth < " G_STRINGIFY (MAX_DEPTH)
      "  UNION SELECT c.ino, sub.depth + 1 FROM items c JOIN sub ON c.t_parent_ino = sub.ino"
      "   WHERE sub.depth < " G_STRINGIFY (MAX_DEPTH) ")"
      " SELECT DISTINCT ino FROM sub WHERE ino <> 1", error);
  if (mark == NULL)
    return FALSE;
  sqlite3_bind_int64 (mark, 1, (gint64) ino);
  if (!store_stmt_run (w, mark, "exclude", error))
    return FALSE;

  g_autoptr (GPtrArray) candidates = g_ptr_array_new_with_free_func (g_free);
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w,
        "SELECT DISTINCT cache_object FROM items WHERE ino IN (SELECT ino FROM temp.excl)"
        " AND cache_object IS NOT NULL", error);
    if (st == NULL)
      return FALSE;
    while (sqlite3_step (st) == SQLITE_ROW)
      g_ptr_array_add (candidates, store_col_dup (st, 0));
  }
  if (!store_conn_exec (w,
        "UPDATE items SET state = 2, cache_object = NULL WHERE ino IN (SELECT ino FROM temp.excl);"
        "DELETE FROM work WHERE ino IN (SELECT ino FROM temp.excl);"
        "DELETE FROM temp.excl;", error))
    return FALSE;
  /* Each object is one item's (store.h): the excluded items held these alone. */
  for (guint i = 0; i < candidates->len; i++)
    g_ptr_array_add (objects, g_steal_pointer (&candidates->pdata[i]));
  return TRUE;
}

gboolean
store_exclude (Store *store, guint64 ino, GPtrArray **cache_objects_to_remove, GError **error)
{
  if (ino == STORE_ROOT_INO)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_FAILED, "the mount root cannot be excluded");
      return FALSE;
    }
  g_autoptr (GPtrArray) objects = g_ptr_array_new_with_free_func (g_free);
  {
    g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
    if (!store_begin (store, error))
      return FALSE;
    if (!exclude_locked (store, ino, objects, error))
      {
        store_rollback (store);
        return FALSE;
      }
    if (!store_commit (store, error))
      return FALSE;
  }
  if (cache_objects_to_remove)
    *cache_objects_to_remove = g_steal_pointer (&objects);
  return TRUE;
}

gboolean
store_clear_exclusions (Store *store, guint *count, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  StoreConn *w = store->writer;
  if (!store_begin (store, error))
    return FALSE;
  int queued = 0, restored = 0;
  /* Configured folders need no bytes: they are back at once. The rest is fetched again,
   * folders first. */
  if (!store_conn_exec (w,
        "INSERT OR REPLACE INTO work (ino, source_id, action)"
        " SELECT ino, source_id, CASE kind WHEN 1 THEN 4 ELSE 0 END FROM items"
        " WHERE state = 2 AND anchored = 0 ORDER BY kind DESC, ino", error))
    goto fail;
  queued = sqlite3_changes (w->db);
  if (!store_conn_exec (w, "UPDATE items SET state = 1 WHERE state = 2 AND anchored = 1", error))
    goto fail;
  restored = sqlite3_changes (w->db);
  if (!store_conn_exec (w, "UPDATE items SET state = 0, cache_object = NULL WHERE state = 2", error))
    goto fail;
  if (!store_commit (store, error))
    return FALSE;
  if (count)
    *count = (guint) (queued + restored);
  return TRUE;
fail:
  store_rollback (store);
  return FALSE;
}
