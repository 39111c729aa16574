/* Removing a source that left the configuration.
 *
 * What the mount showed only because of that source goes, through the queue: its items get
 * DELETE work (deepest first), which the engine applies like any remote deletion — out of the
 * mount, out of the cache, an event and a change-feed line each — at its next run. Three
 * kinds of item stay:
 *   - what another source still shows: the walk down from the removed source's root never
 *     enters another source's root (anchored), and the folders on the way to one (a kept
 *     "/A/B/C" below a removed "/A") stay so that path still leads there;
 *   - everything, when another source covers the removed one ("/" or "/A" configured, "/A/B"
 *     removed), or has the same root (the same folder configured under a new spelling): then
 *     only the source row goes, and a covered root becomes an ordinary folder of the source
 *     that covers it;
 *   - synthetic directories other sources still need ("/Docs" above a kept "/Docs/Other").
 * Synthetic directories that only led to the removed source are deleted with it.
 * Everything happens in one transaction, with the source row's removal.
 */
#include "config.h"

#include "store-private.h"

#define MAX_DEPTH 256

/* depth: below the removed root; the synthetic parents above it count negative. */
typedef StoreDoomed Gone;

/* @ino's target parent (0 at the top) and whether it is synthetic; FALSE with @error. */
static gboolean
parent_of (StoreConn *w, gint64 ino, gint64 *parent, gboolean *synthetic, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "SELECT coalesce(t_parent_ino, 0), item_id IS NULL FROM items WHERE ino = ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, ino);
  int rc = sqlite3_step (st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, w, rc, "parent");
      return FALSE;
    }
  *parent = rc == SQLITE_ROW ? sqlite3_column_int64 (st, 0) : 0;
  if (synthetic)
    *synthetic = rc == SQLITE_ROW && sqlite3_column_int (st, 1);
  return TRUE;
}

/* A real folder nobody reports any more: a removal left it on the way to another source.
 * An error reads as "owned": the walk then stops, which keeps more, never less. */
static gboolean
unowned (StoreConn *w, gint64 ino)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "SELECT 1 FROM items WHERE ino = ?1 AND item_id IS NOT NULL AND source_id IS NULL AND ino <> 1",
      NULL);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, ino);
  return sqlite3_step (st) == SQLITE_ROW;
}

/* Every other source's root and the folders above it (the mount root included). */
static gboolean
still_needed (StoreConn *w, gint64 source_id, GHashTable *roots, GHashTable *keep, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT root_ino FROM sources WHERE id <> ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, source_id);
  g_autoptr (GArray) others = g_array_new (FALSE, FALSE, sizeof (gint64));
  int rc;
  while ((rc = sqlite3_step (st)) == SQLITE_ROW)
    {
      gint64 ino = sqlite3_column_int64 (st, 0);
      g_array_append_val (others, ino);
    }
  if (rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, w, rc, "sources");
      return FALSE;
    }
  sqlite3_reset (st);
  for (guint i = 0; i < others->len; i++)
    {
      gint64 ino = g_array_index (others, gint64, i);
      g_hash_table_add (roots, g_memdup2 (&ino, sizeof ino));
      for (int up = 0; ino != 0 && up < MAX_DEPTH && !g_hash_table_contains (keep, &ino); up++)
        {
          g_hash_table_add (keep, g_memdup2 (&ino, sizeof ino));
          if (!parent_of (w, ino, &ino, NULL, error))
            return FALSE;
        }
    }
  gint64 top = STORE_ROOT_INO;
  g_hash_table_add (keep, g_memdup2 (&top, sizeof top));
  return TRUE;
}

/* What only the removed source shows, below @root (BFS, not into anchored items); the other
 * sources' roots met on the way go to @inner. */
static gboolean
collect_below (StoreConn *w, gint64 root, GHashTable *keep, GHashTable *roots, GArray *gone,
               GArray *inner, GError **error)
{
  g_autoptr (StoreStmt) children = store_conn_stmt (w,
      "SELECT ino, state, anchored FROM items WHERE t_parent_ino = ?1", error);
  if (children == NULL)
    return FALSE;
  g_autoptr (GArray) level = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_array_append_val (level, root);
  for (int depth = 1; level->len > 0 && depth <= MAX_DEPTH; depth++)
    {
      g_autoptr (GArray) next = g_array_new (FALSE, FALSE, sizeof (gint64));
      for (guint i = 0; i < level->len; i++)
        {
          sqlite3_bind_int64 (children, 1, g_array_index (level, gint64, i));
          int rc;
          while ((rc = sqlite3_step (children)) == SQLITE_ROW)
            {
              gint64 ino = sqlite3_column_int64 (children, 0);
              if (sqlite3_column_int (children, 2))
                {
                  if (g_hash_table_contains (roots, &ino))
                    g_array_append_val (inner, ino);
                  continue;
                }
              g_array_append_val (next, ino);
              /* A folder on the way to a kept source stays; what else it holds goes. */
              if (!g_hash_table_contains (keep, &ino))
                g_array_append_val (gone, ((Gone) { ino, depth, sqlite3_column_int (children, 1), FALSE }));
            }
          sqlite3_reset (children);
          if (rc != SQLITE_DONE)
            {
              store_set_sqlite_error (error, w, rc, "source items");
              return FALSE;
            }
        }
      g_array_free (level, TRUE);
      level = g_steal_pointer (&next);
    }
  return TRUE;
}

/* The items the removed source reported last that stay (below @root, another source's root)
 * now belong to that source, so its reconciles see them (a reconcile only deletes its own
 * source's leftovers). */
static gboolean
hand_over (StoreConn *w, gint64 source_id, gint64 root, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "WITH RECURSIVE sub (ino, depth) AS (SELECT ?2, 0 UNION ALL"
      "  SELECT c.ino, sub.depth + 1 FROM items c JOIN sub ON c.t_parent_ino = sub.ino"
      "  WHERE sub.depth < " G_STRINGIFY (MAX_DEPTH) ")"
      " UPDATE items SET source_id = (SELECT id FROM sources WHERE root_ino = ?2 AND id <> ?1"
      "  ORDER BY id LIMIT 1)"
      " WHERE source_id = ?1 AND ino IN (SELECT ino FROM sub)", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, source_id);
  sqlite3_bind_int64 (st, 2, root);
  return store_stmt_run (w, st, "hand over", error);
}

static gboolean
remove_locked (Store *store, gint64 source_id, guint *queued, GError **error)
{
  StoreConn *w = store->writer;
  gint64 root = 0;
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT root_ino FROM sources WHERE id = ?1", error);
    if (st == NULL)
      return FALSE;
    sqlite3_bind_int64 (st, 1, source_id);
    int rc = sqlite3_step (st);
    if (rc == SQLITE_DONE)
      {
        g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no source %" G_GINT64_FORMAT, source_id);
        return FALSE;
      }
    if (rc != SQLITE_ROW)
      {
        store_set_sqlite_error (error, w, rc, "source");
        return FALSE;
      }
    root = sqlite3_column_int64 (st, 0);
  }
  g_autoptr (GHashTable) roots = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, NULL);
  g_autoptr (GHashTable) keep = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, NULL);
  if (!still_needed (w, source_id, roots, keep, error))
    return FALSE;

  /* Covered by another source (or the same folder under another spelling): its items stay. */
  gboolean covered = FALSE;
  gint64 up = root;
  for (int n = 0; up != 0 && n < MAX_DEPTH && !covered; n++)
    {
      covered = g_hash_table_contains (roots, &up);
      if (!covered && !parent_of (w, up, &up, NULL, error))
        return FALSE;
    }
  g_autoptr (GArray) gone = g_array_new (FALSE, FALSE, sizeof (Gone));
  g_autoptr (GArray) inner = g_array_new (FALSE, FALSE, sizeof (gint64));
  if (covered)
    {
      /* Everything the removed source reported lies below the covering root. */
      g_autoptr (StoreStmt) adopt = store_conn_stmt (w,
          "UPDATE items SET source_id = (SELECT id FROM sources WHERE root_ino = ?2 AND id <> ?1"
          "  ORDER BY id LIMIT 1) WHERE source_id = ?1", error);
      if (adopt == NULL)
        return FALSE;
      sqlite3_bind_int64 (adopt, 1, source_id);
      sqlite3_bind_int64 (adopt, 2, up);
      if (!store_stmt_run (w, adopt, "hand over", error))
        return FALSE;
      if (!g_hash_table_contains (roots, &root))
        {
          g_autoptr (StoreStmt) st = store_conn_stmt (w,
              "UPDATE items SET anchored = 0 WHERE ino = ?1 AND item_id IS NOT NULL", error);
          if (st == NULL)
            return FALSE;
          sqlite3_bind_int64 (st, 1, root);
          if (!store_stmt_run (w, st, "unpin root", error))
            return FALSE;
        }
    }
  else
    {
      if (!collect_below (w, root, keep, roots, gone, inner, error))
        return FALSE;
      for (guint i = 0; i < inner->len; i++)
        if (!hand_over (w, source_id, g_array_index (inner, gint64, i), error))
          return FALSE;
      if (!g_hash_table_contains (keep, &root))
        {
          g_array_append_val (gone, ((Gone) { root, 0, ITEM_PUBLISHED, TRUE }));
          /* The synthetic directories that only led here. */
          gint64 p = 0;
          gboolean synthetic = FALSE;
          if (!parent_of (w, root, &p, NULL, error))
            return FALSE;
          for (int depth = -1; p != 0 && depth > -MAX_DEPTH && !g_hash_table_contains (keep, &p); depth--)
            {
              gint64 above = 0;
              if (!parent_of (w, p, &above, &synthetic, error))
                return FALSE;
              /* Synthetic, or a folder an earlier removal left only on the way here. */
              if (!synthetic && !unowned (w, p))
                break;
              g_array_append_val (gone, ((Gone) { p, depth, ITEM_PUBLISHED, TRUE }));
              p = above;
            }
        }
    }
  g_array_sort (gone, store_doomed_deeper_first);

  g_autoptr (StoreStmt) unpin = store_conn_stmt (w, "UPDATE items SET anchored = 0 WHERE ino = ?1", error);
  g_autoptr (StoreStmt) forget = store_conn_stmt (w, "DELETE FROM items WHERE ino = ?1", error);
  g_autoptr (StoreStmt) queue = store_conn_stmt (w,
      "INSERT OR REPLACE INTO work (ino, source_id, action) VALUES (?1, NULL, 3)", error);
  if (unpin == NULL || forget == NULL || queue == NULL)
    return FALSE;
  *queued = 0;
  for (guint i = 0; i < gone->len; i++)
    {
      const Gone *g = &g_array_index (gone, Gone, i);
      /* An excluded or filtered item has nothing on disk and nothing in the mount. */
      StoreStmt *st = g->state == ITEM_EXCLUDED || g->state == ITEM_FILTERED ? forget : queue;
      if (g->anchored)
        {
          sqlite3_bind_int64 (unpin, 1, g->ino);
          if (!store_stmt_run (w, unpin, "unpin", error))
            return FALSE;
        }
      sqlite3_bind_int64 (st, 1, g->ino);
      if (!store_stmt_run (w, st, st == queue ? "queue delete" : "forget", error))
        return FALSE;
      *queued += st == queue;
    }

  /* Nothing may point at the removed source any more: its id can be handed out again, and a
   * reconcile of the next source with that id would take what stays here (the folders on the
   * way to another source) for its own leftovers. */
  g_autoptr (StoreStmt) disown = store_conn_stmt (w,
      "UPDATE items SET source_id = NULL WHERE source_id = ?1", error);
  if (disown == NULL)
    return FALSE;
  sqlite3_bind_int64 (disown, 1, source_id);
  if (!store_stmt_run (w, disown, "disown", error))
    return FALSE;

  g_autoptr (StoreStmt) drop = store_conn_stmt (w, "DELETE FROM sources WHERE id = ?1", error);
  if (drop == NULL)
    return FALSE;
  sqlite3_bind_int64 (drop, 1, source_id);
  return store_stmt_run (w, drop, "remove source", error);
}

gboolean
store_source_remove (Store *store, gint64 source_id, guint *queued_deletes, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  guint queued = 0;
  if (!store_begin (store, error))
    return FALSE;
  if (!remove_locked (store, source_id, &queued, error))
    {
      store_rollback (store);
      return FALSE;
    }
  if (!store_commit (store, error))
    return FALSE;
  if (queued_deletes)
    *queued_deletes = queued;
  return TRUE;
}
