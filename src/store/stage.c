/* Staging a delta set and committing it: the heart of the invariant.
 *
 * A set is staged page by page into `staged` (one short transaction per page). Duplicates
 * collapse there: the row key is (source, drive, item) and INSERT OR REPLACE gives the newer
 * occurrence a new seq, so the last occurrence wins and keeps its place in page order.
 *
 * store_stage_commit is ONE transaction that, set-wise in SQL (no per-item round trips):
 *   1. gives an inode to every item never seen (so children can name parents that come
 *      later in the set: delta promises no order);
 *   2. resolves each item's mount parent from its parentReference.id — never from paths,
 *      which delta reports stale or not at all;
 *   3. decides the action against what the mount shows (the published columns):
 *        never published            → DOWNLOAD (file) / MKDIR (folder)
 *        quickXorHash (else cTag, else size/mtime/eTag) differs → UPDATE
 *        same content, new name or parent → MOVE (file) / MKDIR (folder): metadata only
 *        deleted facet              → DELETE, cascading to the descendants it knows (the
 *                                     target tree already holds this set's moves, so an item
 *                                     re-parented in the same set is not a descendant)
 *        nothing differs            → no work, and any older work for it is obsolete
 *      Tombstones for ids never seen match no row and do nothing. Items under an exclusion
 *      are recorded but not queued. A reconcile also deletes this source's items the set did
 *      not contain (server wins);
 *   4. queues the work (one row per item: UNIQUE(ino), so overlapping sources cannot queue an
 *      item twice) in an order that is safe to apply by ascending work id: deletes deepest
 *      first, then folders parents first, then moves, updates, downloads;
 *   5. stores the new cursor and clears the staged rows.
 * Work that still applies keeps its id, attempts and backoff; work whose target changed gets a
 * new id, which also tells an in-flight publish of the old target that it was superseded.
 */
#include "config.h"

#include "store-private.h"

#include <string.h>

/* staged.action uses StoreAction values; NULL means nothing to do. */
G_STATIC_ASSERT (STORE_ACTION_DOWNLOAD == 0 && STORE_ACTION_UPDATE == 1 && STORE_ACTION_MOVE == 2 &&
                 STORE_ACTION_DELETE == 3 && STORE_ACTION_MKDIR == 4);
G_STATIC_ASSERT (STORE_KIND_FILE == 0 && STORE_KIND_DIR == 1);

#define MAX_DEPTH 256

gboolean
store_stage_begin (Store *store, gint64 source_id, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  g_autoptr (StoreStmt) st = store_conn_stmt (store->writer,
      "DELETE FROM staged WHERE source_id = ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, source_id);
  return store_stmt_run (store->writer, st, "stage begin", error);
}

static char *
source_drive (StoreConn *w, gint64 source_id, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT drive_id FROM sources WHERE id = ?1", error);
  if (st == NULL)
    return NULL;
  sqlite3_bind_int64 (st, 1, source_id);
  if (sqlite3_step (st) != SQLITE_ROW)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no source %" G_GINT64_FORMAT, source_id);
      return NULL;
    }
  return store_col_dup (st, 0);
}

static gboolean
stage_add_locked (Store *store, gint64 source_id, GPtrArray *items, GError **error)
{
  StoreConn *w = store->writer;
  g_autofree char *drive = source_drive (w, source_id, error);
  if (drive == NULL)
    return FALSE;
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "INSERT OR REPLACE INTO staged (source_id, drive_id, item_id, parent_id, name, kind, deleted,"
      " is_root, size, mtime, etag, ctag, qxh, name_problem)"
      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)", error);
  if (st == NULL)
    return FALSE;
  for (guint i = 0; i < items->len; i++)
    {
      const GraphItem *it = items->pdata[i];
      if (it == NULL || it->id == NULL)
        continue;
      /* Packages (OneNote) and shortcuts to other drives are not mirrored; their tombstones
       * are staged like any other (harmless when the id was never seen). */
      if (!it->deleted && (it->kind == GRAPH_ITEM_PACKAGE || it->kind == GRAPH_ITEM_REMOTE))
        continue;
      sqlite3_bind_int64 (st, 1, source_id);
      sqlite3_bind_text (st, 2, it->drive_id ? it->drive_id : drive, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 3, it->id, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 4, it->parent_id, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 5, it->name, -1, SQLITE_STATIC);
      sqlite3_bind_int (st, 6, it->kind == GRAPH_ITEM_FOLDER || it->is_root ? STORE_KIND_DIR : STORE_KIND_FILE);
      sqlite3_bind_int (st, 7, it->deleted ? 1 : 0);
      sqlite3_bind_int (st, 8, it->is_root ? 1 : 0);
      sqlite3_bind_int64 (st, 9, it->size);
      sqlite3_bind_int64 (st, 10, it->mtime);
      sqlite3_bind_text (st, 11, it->etag, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 12, it->ctag, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 13, it->quickxor_hash, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 14, it->name_problem, -1, SQLITE_STATIC);
      if (!store_stmt_run (w, st, "stage item", error))
        return FALSE;
    }
  return TRUE;
}

gboolean
store_stage_add (Store *store, gint64 source_id, GPtrArray *graph_items, GError **error)
{
  g_return_val_if_fail (graph_items != NULL, FALSE);
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  if (!store_begin (store, error))
    return FALSE;
  if (!stage_add_locked (store, source_id, graph_items, error))
    {
      store_rollback (store);
      return FALSE;
    }
  return store_commit (store, error);
}

/* ---- commit ---------------------------------------------------------------------------- */

/* A commit statement, its ?1 (when it has one) bound to the source. */
static StoreStmt *
source_stmt (StoreConn *w, const char *sql, gint64 source_id, GError **error)
{
  StoreStmt *st = store_conn_stmt (w, sql, error);
  if (st != NULL && sqlite3_bind_parameter_count (st) >= 1)
    sqlite3_bind_int64 (st, 1, source_id);
  return st;
}

static gboolean
run_sql (StoreConn *w, const char *sql, gint64 source_id, const char *what, int *changes,
         GError **error)
{
  g_autoptr (StoreStmt) st = source_stmt (w, sql, source_id, error);
  if (st == NULL)
    return FALSE;
  gint64 t0 = g_get_monotonic_time ();
  if (!store_stmt_run (w, st, what, error))
    return FALSE;
  g_debug ("commit step %s: %.3f ms", what, (g_get_monotonic_time () - t0) / 1000.0);
  if (changes)
    *changes = sqlite3_changes (w->db);
  return TRUE;
}

#define STEP(sql, what) \
  G_STMT_START { if (!run_sql (w, sql, source_id, what, NULL, error)) return FALSE; } G_STMT_END

/* A one-row, one-column query; ?1, when the query has it, is @source_id. */
static gboolean
query_int (StoreConn *w, const char *sql, gint64 source_id, const char *what, gint64 *out,
           GError **error)
{
  g_autoptr (StoreStmt) st = source_stmt (w, sql, source_id, error);
  if (st == NULL)
    return FALSE;
  int rc = sqlite3_step (st);
  if (rc != SQLITE_ROW)
    {
      store_set_sqlite_error (error, w, rc, what);
      return FALSE;
    }
  *out = sqlite3_column_int64 (st, 0);
  return TRUE;
}

typedef struct {
  gint64 ino;
  gint64 parent;
  int    depth;
} Dir;

static int
dir_cmp (gconstpointer a, gconstpointer b)
{
  const Dir *x = a, *y = b;
  if (x->depth != y->depth)
    return x->depth < y->depth ? -1 : 1;
  return x->ino < y->ino ? -1 : x->ino > y->ino;
}

/* New or moved folders, parents before children: depth within the set's own folders. */
static gboolean
queue_mkdirs (StoreConn *w, gint64 source_id, guint *count, GError **error)
{
  g_autoptr (GArray) dirs = g_array_new (FALSE, FALSE, sizeof (Dir));
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w,
        "SELECT ino, t_parent_ino FROM staged WHERE +source_id = ?1 AND action = 4 AND keep = 0"
        " AND ino NOT IN (SELECT ino FROM temp.doomed)", error);
    if (st == NULL)
      return FALSE;
    sqlite3_bind_int64 (st, 1, source_id);
    int rc;
    while ((rc = sqlite3_step (st)) == SQLITE_ROW)
      {
        Dir d = { sqlite3_column_int64 (st, 0), sqlite3_column_int64 (st, 1), -1 };
        g_array_append_val (dirs, d);
      }
    if (rc != SQLITE_DONE)
      {
        store_set_sqlite_error (error, w, rc, "folders");
        return FALSE;
      }
  }
  g_autoptr (GHashTable) index = g_hash_table_new (g_int64_hash, g_int64_equal);
  for (guint i = 0; i < dirs->len; i++)
    g_hash_table_insert (index, &g_array_index (dirs, Dir, i).ino, &g_array_index (dirs, Dir, i));
  for (guint i = 0; i < dirs->len; i++)
    {
      /* Walk up to the first ancestor whose depth is known or that is not in the set. */
      Dir *chain[MAX_DEPTH];
      int n = 0;
      Dir *d = &g_array_index (dirs, Dir, i);
      while (d != NULL && d->depth < 0 && n < MAX_DEPTH)
        {
          d->depth = MAX_DEPTH; /* marks "on the current path": a cycle ends here */
          chain[n++] = d;
          d = g_hash_table_lookup (index, &d->parent);
        }
      int base = d != NULL && d->depth < MAX_DEPTH ? d->depth + 1 : 0;
      for (int k = n - 1; k >= 0; k--)
        chain[k]->depth = base++;
    }
  g_array_sort (dirs, dir_cmp);

  g_autoptr (StoreStmt) ins = store_conn_stmt (w,
      "INSERT OR REPLACE INTO work (ino, source_id, action) VALUES (?1, ?2, 4)", error);
  if (ins == NULL)
    return FALSE;
  for (guint i = 0; i < dirs->len; i++)
    {
      sqlite3_bind_int64 (ins, 1, g_array_index (dirs, Dir, i).ino);
      sqlite3_bind_int64 (ins, 2, source_id);
      if (!store_stmt_run (w, ins, "queue folder", error))
        return FALSE;
    }
  *count = dirs->len;
  return TRUE;
}

static gboolean
commit_locked (Store *store, gint64 source_id, const char *delta_link, gboolean reconcile,
               StoreCommitStats *stats, GError **error)
{
  StoreConn *w = store->writer;
  g_autofree char *drive = source_drive (w, source_id, error);
  if (drive == NULL)
    return FALSE;

  if (!store_conn_exec (w, "DELETE FROM temp.doomed;", error))
    return FALSE;

  /* 1. Items already known keep their inode; new ones get theirs now, above every number
   *    ever handed out (AUTOINCREMENT's high-water mark), so an inode is never reused and a
   *    child can name a parent that comes later in the set. */
  int matched = 0, bound = 0;
  guint known_tombstones = 0;
  if (!run_sql (w, "UPDATE staged SET ino = i.ino FROM items i WHERE +staged.source_id = ?1"
                   " AND i.drive_id = staged.drive_id AND i.item_id = staged.item_id",
                source_id, "match items", &matched, error))
    return FALSE;
  /* A folder that a synthetic directory stands for (a source "/A/B" configured before "/"
   * showed the real "A") takes that directory over, so the mount does not show two "A"s. */
  {
    gint64 synthetic = 0;
    if (!query_int (w, "SELECT EXISTS (SELECT 1 FROM items WHERE item_id IS NULL AND ino <> 1)",
                    source_id, "synthetic folders", &synthetic, error))
      return FALSE;
    for (int round = 0; synthetic && round < MAX_DEPTH; round++)
      {
        int changes = 0;
        if (!run_sql (w, "UPDATE items SET drive_id = s.drive_id, item_id = s.item_id,"
                         " source_id = ?1, anchored = 0, parent_id = s.parent_id"
                         " FROM staged s WHERE +s.source_id = ?1 AND s.ino IS NULL AND s.deleted = 0"
                         " AND s.kind = 1 AND items.item_id IS NULL AND items.ino <> 1"
                         " AND items.t_name = s.name AND items.t_parent_ino ="
                         "  (SELECT p.ino FROM items p WHERE p.drive_id = s.drive_id"
                         "   AND p.item_id = s.parent_id)",
                      source_id, "bind synthetic", &changes, error))
          return FALSE;
        if (changes == 0)
          break;
        if (!run_sql (w, "UPDATE staged SET ino = i.ino FROM items i WHERE +staged.source_id = ?1"
                         " AND staged.ino IS NULL AND i.drive_id = staged.drive_id"
                         " AND i.item_id = staged.item_id",
                      source_id, "match bound", &bound, error))
          return FALSE;
        matched += bound;
      }
  }
  /* New inodes start above every number ever handed out (AUTOINCREMENT's high-water mark). */
  gint64 base = 0;
  if (!query_int (w, "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0),"
                     "  coalesce((SELECT max(ino) FROM items), 0))",
                  source_id, "inode high-water mark", &base, error))
    return FALSE;

  /* 2. The mount parent, from the parentReference.id chain: a folder of the set (new or
   *    known), else a known item. The set's folders go into a small table first: a set is
   *    mostly files under a few folders, and looking parents up there instead of in the
   *    set's or the store's full index made this step several times cheaper. New inodes,
   *    new actions and parents are then written in ONE pass: every staged row is rewritten
   *    once, not once per fact. */
  if (!store_conn_exec (w, "DELETE FROM temp.dirs", error))
    return FALSE;
  guint fresh = 0;
  {
    g_autoptr (StoreStmt) dirs = source_stmt (w,
        "INSERT OR IGNORE INTO temp.dirs (item_id, drive_id, ino)"
        " SELECT item_id, drive_id, coalesce(ino, seq + ?2) FROM staged"
        " WHERE +source_id = ?1 AND kind = 1 AND (ino IS NOT NULL OR deleted = 0)", source_id, error);
    g_autoptr (StoreStmt) place = dirs == NULL ? NULL : source_stmt (w,
        "UPDATE staged SET"
        "  ino = CASE WHEN ino IS NULL AND deleted = 0 THEN seq + ?2 ELSE ino END,"
        "  is_new = ino IS NULL AND deleted = 0,"
        "  action = CASE WHEN ino IS NULL AND deleted = 0 THEN CASE kind WHEN 1 THEN 4 ELSE 0 END END,"
        "  t_parent_ino = CASE WHEN parent_id IS NOT NULL THEN coalesce("
        "   (SELECT d.ino FROM temp.dirs d WHERE d.item_id = staged.parent_id"
        "    AND d.drive_id = staged.drive_id),"
        "   (SELECT p.ino FROM items p WHERE p.item_id = staged.parent_id"
        "    AND p.drive_id = staged.drive_id)) END"
        " WHERE +source_id = ?1", source_id, error);
    if (place == NULL)
      return FALSE;
    sqlite3_bind_int64 (dirs, 2, base);
    if (!store_stmt_run (w, dirs, "set folders", error))
      return FALSE;
    sqlite3_bind_int64 (place, 2, base);
    if (!store_stmt_run (w, place, "inodes and parents", error))
      return FALSE;
  }
  {
    g_autoptr (StoreStmt) st = source_stmt (w,
        "SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE deleted AND ino IS NOT NULL)"
        " FROM staged WHERE +source_id = ?1", source_id, error);
    if (st == NULL)
      return FALSE;
    int rc = sqlite3_step (st);
    if (rc != SQLITE_ROW)
      {
        /* Read as 0, it would skip the set's deletes and still move the cursor. */
        store_set_sqlite_error (error, w, rc, "set counts");
        return FALSE;
      }
    fresh = sqlite3_column_int (st, 0);
    known_tombstones = sqlite3_column_int (st, 1);
  }

  /* 3. The action, against what the mount shows (new items got theirs with their inode). */
  /* Steps that only concern items already known, new ones or tombstones are skipped when
   * the set has none: each is a full scan of the set. */
  if (matched > 0)
    {
      STEP ("UPDATE staged SET action = CASE"
            "  WHEN i.state = 2 THEN NULL"
            "  WHEN staged.deleted THEN CASE WHEN i.anchored THEN NULL ELSE 3 END"
            "  WHEN i.anchored THEN CASE WHEN i.state = 1 THEN NULL ELSE 4 END"
            "  WHEN i.state <> 1 THEN CASE WHEN i.kind = 1 THEN 4 ELSE 0 END"
            "  WHEN i.kind = 0 AND (CASE"
            "    WHEN staged.qxh IS NOT NULL AND i.qxh IS NOT NULL"
            "      THEN staged.qxh <> i.qxh OR (staged.size >= 0 AND staged.size <> i.size)"
            "    WHEN staged.ctag IS NOT NULL AND i.ctag IS NOT NULL"
            "      THEN staged.ctag <> i.ctag OR (staged.size >= 0 AND staged.size <> i.size)"
            "    ELSE (staged.size >= 0 AND staged.size <> i.size) OR staged.mtime <> i.mtime"
            "      OR staged.etag IS NOT i.etag END) THEN 1"
            "  WHEN i.name IS NOT coalesce(staged.name, '') OR i.parent_ino IS NOT staged.t_parent_ino"
            "    THEN CASE WHEN i.kind = 1 THEN 4 ELSE 2 END"
            "  ELSE NULL END"
            " FROM items i WHERE +staged.source_id = ?1 AND i.ino = staged.ino", "actions");
      /* Queued work that still aims at the same bytes keeps its id, attempts and backoff. */
      STEP ("UPDATE staged SET keep = 1 FROM items i, work w WHERE +staged.source_id = ?1"
            " AND staged.action IS NOT NULL AND i.ino = staged.ino AND w.ino = staged.ino"
            " AND w.action = staged.action AND (staged.action NOT IN (0, 1)"
            "  OR (i.r_qxh IS staged.qxh AND i.r_ctag IS staged.ctag AND i.r_size = max(staged.size, 0)))",
            "keep");
    }

  /* New items, fully formed; until published they sit where they will show (invisible:
   * state 0), so publishing a download does not have to move their directory entry. */
  if (fresh > 0)
    {
      STEP ("INSERT INTO items (ino, drive_id, item_id, source_id, kind, state, parent_id,"
            " t_parent_ino, t_name, r_size, r_mtime, r_etag, r_ctag, r_qxh, r_name_problem,"
            " parent_ino, name)"
            " SELECT ino, drive_id, item_id, ?1, kind, 0, parent_id, t_parent_ino, coalesce(name, ''),"
            "  max(size, 0), mtime, etag, ctag, qxh, name_problem, t_parent_ino, coalesce(name, '')"
            " FROM staged WHERE +source_id = ?1 AND is_new ORDER BY seq", "new items");
    }

  /* The latest remote state becomes the target; configured folders keep their place.
   * Content columns and position columns are written separately: naming an indexed column
   * in SET rewrites its index entry, and most re-reported items do not move. A row that
   * would not change is not written at all: a full resync re-reports every item, mostly
   * unchanged, and rewriting them all was most of its cost. */
  if (matched > 0)
    {
      /* With it, in the same pass: an unchanged item's mtime and tags, when nothing is queued
       * for it (same bytes, same place: no bytes involved, so no work). */
      STEP ("UPDATE items SET source_id = ?1,"
            " r_size = max(s.size, 0), r_mtime = s.mtime, r_etag = s.etag, r_ctag = s.ctag,"
            " r_qxh = s.qxh,"
            " r_name_problem = CASE WHEN items.anchored THEN NULL ELSE s.name_problem END,"
            " mtime = CASE WHEN s.action IS NULL AND items.state = 1 AND items.anchored = 0"
            "  THEN s.mtime ELSE items.mtime END,"
            " etag = CASE WHEN s.action IS NULL AND items.state = 1 AND items.anchored = 0"
            "  THEN s.etag ELSE items.etag END,"
            " ctag = CASE WHEN s.action IS NULL AND items.state = 1 AND items.anchored = 0"
            "  THEN s.ctag ELSE items.ctag END"
            " FROM staged s WHERE +s.source_id = ?1 AND s.deleted = 0 AND NOT s.is_new"
            " AND items.ino = s.ino AND (items.source_id IS NOT ?1 OR items.r_size IS NOT max(s.size, 0)"
            "  OR items.r_mtime IS NOT s.mtime OR items.r_etag IS NOT s.etag OR items.r_ctag IS NOT s.ctag"
            "  OR items.r_qxh IS NOT s.qxh OR items.r_name_problem IS NOT"
            "   CASE WHEN items.anchored THEN NULL ELSE s.name_problem END"
            "  OR (s.action IS NULL AND items.state = 1 AND items.anchored = 0"
            "   AND (items.mtime IS NOT s.mtime OR items.etag IS NOT s.etag OR items.ctag IS NOT s.ctag)))",
            "targets");
      STEP ("UPDATE items SET parent_id = s.parent_id, t_parent_ino = s.t_parent_ino,"
            " t_name = coalesce(s.name, ''),"
            " parent_ino = CASE WHEN items.state = 1 THEN items.parent_ino ELSE s.t_parent_ino END,"
            " name = CASE WHEN items.state = 1 THEN items.name ELSE coalesce(s.name, '') END"
            " FROM staged s WHERE +s.source_id = ?1 AND s.deleted = 0 AND NOT s.is_new"
            " AND items.ino = s.ino AND items.anchored = 0"
            " AND (items.t_parent_ino IS NOT s.t_parent_ino OR items.t_name IS NOT coalesce(s.name, '')"
            "  OR items.parent_id IS NOT s.parent_id"
            "  OR (items.state <> 1 AND (items.parent_ino IS NOT s.t_parent_ino"
            "      OR items.name IS NOT coalesce(s.name, ''))))", "moves");
    }

  /* Exclusions: new items below an excluded folder are recorded as excluded, not queued. */
  {
    gint64 excluded = 0;
    if (!query_int (w, "SELECT EXISTS (SELECT 1 FROM items WHERE state = 2)", source_id, "exclusions",
                    &excluded, error))
      return FALSE;
    for (int round = 0; excluded && round < MAX_DEPTH; round++)
      {
        int changes = 0;
        if (!run_sql (w, "UPDATE items SET state = 2 WHERE state IN (0, 3, 4)"
                         " AND t_parent_ino IN (SELECT ino FROM items WHERE state = 2)"
                         " AND ino IN (SELECT ino FROM staged WHERE +source_id = ?1)",
                      source_id, "exclusions", &changes, error))
          return FALSE;
        if (changes == 0)
          break;
      }
    if (excluded)
      STEP ("UPDATE staged SET action = NULL, keep = 0 WHERE +source_id = ?1 AND deleted = 0"
            " AND action IS NOT NULL AND ino IN (SELECT ino FROM items WHERE state = 2)",
            "excluded actions");
  }

  /* Work that no longer applies (the item is back to what the mount shows). */
  gint64 queued = 0;
  if (matched > 0 && !query_int (w, "SELECT EXISTS (SELECT 1 FROM work)", source_id, "queue", &queued, error))
    return FALSE;
  if (queued)
    {
      STEP ("DELETE FROM work WHERE ino IN (SELECT ino FROM staged WHERE +source_id = ?1"
            " AND ino IS NOT NULL AND action IS NULL)", "obsolete work");
    }

  /* 4a. Deletes: tombstones, a reconcile's leftovers, and what they contain. */
  int doomed = 0;
  if (known_tombstones > 0 &&
      !run_sql (w, "INSERT OR IGNORE INTO temp.doomed (ino, depth) SELECT ino, 0 FROM staged"
                   " WHERE +source_id = ?1 AND deleted = 1 AND ino IS NOT NULL",
                source_id, "tombstones", &doomed, error))
    return FALSE;
  int leftovers = 0;
  if (reconcile &&
      !run_sql (w, "INSERT OR IGNORE INTO temp.doomed (ino, depth) SELECT i.ino, 0 FROM items i"
                   " WHERE +i.source_id = ?1 AND i.anchored = 0 AND NOT EXISTS (SELECT 1 FROM staged s"
                   "  WHERE s.source_id = ?1 AND s.drive_id = i.drive_id AND s.item_id = i.item_id"
                   "  AND s.deleted = 0)",
                source_id, "reconcile", &leftovers, error))
    return FALSE;
  doomed += leftovers;
  gint64 deletes = 0;
  if (doomed > 0)
    {
      STEP ("INSERT OR REPLACE INTO temp.doomed (ino, depth)"
            " WITH RECURSIVE sub (ino, depth) AS ("
            "  SELECT ino, depth FROM temp.doomed"
            "  UNION"
            "  SELECT c.ino, sub.depth + 1 FROM items c JOIN sub ON c.t_parent_ino = sub.ino"
            "   WHERE sub.depth < " G_STRINGIFY (MAX_DEPTH) " AND c.anchored = 0 AND NOT EXISTS"
            "   (SELECT 1 FROM staged s WHERE s.source_id = ?1 AND s.drive_id = c.drive_id"
            "    AND s.item_id = c.item_id AND s.deleted = 0))"
            " SELECT ino, max(depth) FROM sub GROUP BY ino", "cascade");
      STEP ("INSERT OR REPLACE INTO work (ino, source_id, action)"
            " SELECT d.ino, ?1, 3 FROM temp.doomed d JOIN items i ON i.ino = d.ino"
            " WHERE i.anchored = 0 AND i.state NOT IN (2, 4)"
            " AND NOT EXISTS (SELECT 1 FROM work w WHERE w.ino = d.ino AND w.action = 3)"
            " ORDER BY d.depth DESC, d.ino", "queue deletes");
      if (!query_int (w, "SELECT count(*) FROM temp.doomed d JOIN items i ON i.ino = d.ino"
                         " WHERE i.anchored = 0 AND i.state NOT IN (2, 4)",
                      source_id, "deletes", &deletes, error))
        return FALSE;
      /* An excluded or filtered item that is gone remotely has nothing on disk and nothing in
       * the mount: forget it now. */
      STEP ("DELETE FROM items WHERE ino IN (SELECT ino FROM temp.doomed) AND state IN (2, 4)"
            " AND anchored = 0", "excluded deletes");
    }

  /* 4b. Folders, parents first; then moves, updates, downloads in set order. */
  guint mkdirs = 0; /* queue_mkdirs reports it for debugging; stats count from staged */
  if (!queue_mkdirs (w, source_id, &mkdirs, error))
    return FALSE;
  /* One statement per action, each in set order (the staged rowid): no sort of the set. */
  if (matched > 0)
    {
      STEP ("INSERT OR REPLACE INTO work (ino, source_id, action)"
            " SELECT ino, ?1, action FROM staged WHERE +source_id = ?1 AND action = 2"
            " AND keep = 0 AND ino NOT IN (SELECT ino FROM temp.doomed) ORDER BY seq", "queue moves");
      STEP ("INSERT OR REPLACE INTO work (ino, source_id, action)"
            " SELECT ino, ?1, action FROM staged WHERE +source_id = ?1 AND action = 1"
            " AND keep = 0 AND ino NOT IN (SELECT ino FROM temp.doomed) ORDER BY seq", "queue updates");
    }
  STEP ("INSERT OR REPLACE INTO work (ino, source_id, action)"
        " SELECT ino, ?1, action FROM staged WHERE +source_id = ?1 AND action = 0"
        " AND keep = 0 AND ino NOT IN (SELECT ino FROM temp.doomed) ORDER BY seq", "queue downloads");

  if (stats)
    {
      memset (stats, 0, sizeof *stats);
      stats->queued_deletes = (guint) deletes;
      g_autoptr (StoreStmt) st = store_conn_stmt (w,
          "SELECT action, count(*) FROM staged WHERE +source_id = ?1"
          " AND (ino IS NULL OR ino NOT IN (SELECT ino FROM temp.doomed)) GROUP BY action", error);
      if (st == NULL)
        return FALSE;
      sqlite3_bind_int64 (st, 1, source_id);
      while (sqlite3_step (st) == SQLITE_ROW)
        {
          guint n = sqlite3_column_int (st, 1);
          if (sqlite3_column_type (st, 0) == SQLITE_NULL)
            stats->unchanged += n;
          else
            switch (sqlite3_column_int (st, 0))
              {
              case STORE_ACTION_DOWNLOAD: stats->queued_downloads += n; break;
              case STORE_ACTION_UPDATE: stats->queued_updates += n; break;
              case STORE_ACTION_MOVE: stats->queued_moves += n; break;
              case STORE_ACTION_MKDIR: stats->queued_mkdirs += n; break;
              default: break;
              }
        }
      sqlite3_reset (st);
    }

  /* 5. The cursor moves in the same transaction as the work it implies. */
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w, "UPDATE sources SET cursor = ?2 WHERE id = ?1", error);
    if (st == NULL)
      return FALSE;
    sqlite3_bind_int64 (st, 1, source_id);
    sqlite3_bind_text (st, 2, delta_link, -1, SQLITE_STATIC);
    if (!store_stmt_run (w, st, "cursor", error))
      return FALSE;
  }
  /* Usually the only staged set: then an unqualified DELETE truncates the table at once. */
  {
    gint64 others = 0;
    if (!query_int (w, "SELECT EXISTS (SELECT 1 FROM staged WHERE source_id <> ?1)", source_id,
                    "other staged sets", &others, error))
      return FALSE;
    if (others)
      STEP ("DELETE FROM staged WHERE +source_id = ?1", "clear staging");
    else if (!store_conn_exec (w, "DELETE FROM staged", error))
      return FALSE;
  }
  if (!store_conn_exec (w, "DELETE FROM temp.doomed; DELETE FROM temp.dirs", error))
    return FALSE;
  return TRUE;
}

gboolean
store_stage_commit (Store *store, gint64 source_id, const char *delta_link, gboolean reconcile,
                    StoreCommitStats *stats, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  if (!store_begin (store, error))
    return FALSE;
  if (!commit_locked (store, source_id, delta_link, reconcile, stats, error))
    {
      store_rollback (store);
      return FALSE;
    }
  return store_commit (store, error);
}
