/* Staging a delta set and committing it: the heart of the invariant.
 *
 * Staging
 * -------
 * A set is staged page by page IN MEMORY (one StageSet per source, under write_lock). It needs
 * no durability: a set interrupted by a crash or a cancel is re-read from the old cursor
 * anyway, which is the invariant. Duplicates collapse there, on the key (item id, drive id —
 * the drive id compared without case, like the items table does): the newer occurrence
 * replaces the older one and takes its place at the end, so the last occurrence wins and the
 * set keeps page order.
 *
 * The commit
 * ----------
 * store_stage_commit is ONE transaction. It walks the set in C, looking each item up once by
 * its remote key with a prepared statement, and decides everything about it there:
 *   1. its inode: items already known keep theirs (a folder a synthetic directory stood for —
 *      a source "/A/B" configured before "/" showed the real "A" — takes that directory over,
 *      so the mount does not show two "A"s); new ones get theirs above every number ever
 *      handed out, folders first, so a child can name a parent that comes later in the set
 *      (delta promises no order);
 *   2. its mount parent, from the parentReference.id chain: a folder of the set, else a known
 *      item — never from paths, which delta reports stale or not at all;
 *   3. its action, against what the mount shows (the published columns):
 *        never published            → DOWNLOAD (file) / MKDIR (folder)
 *        quickXorHash (else cTag, else size/mtime/eTag) differs → UPDATE
 *        same content, new name or parent → MOVE (file) / MKDIR (folder): metadata only
 *        deleted facet              → DELETE, cascading to the descendants it knows (the
 *                                     target tree already holds this set's moves, so an item
 *                                     re-parented in the same set is not a descendant)
 *        nothing differs            → no work, and any older work for it is obsolete
 *      Tombstones for ids never seen match nothing and do nothing. Items under an exclusion
 *      are recorded but not queued. A reconcile also deletes this source's items the set did
 *      not contain (server wins);
 *   4. its row: the latest remote state becomes the target, written only when a column
 *      differs (a full resync re-reports every item, mostly unchanged), content and position
 *      in separate statements (naming an indexed column in SET rewrites its index entry);
 *   5. its work (one row per item: UNIQUE(ino), so overlapping sources cannot queue an item
 *      twice) in an order that is safe to apply by ascending work id: deletes deepest first,
 *      then folders parents first, then moves, updates and downloads, each by inode
 *      (directory order for files created together).
 * Then the new cursor is stored, and the staged set is dropped once the transaction commits.
 * Work that still applies keeps its id, attempts and backoff; work whose target changed gets a
 * new id, which also tells an in-flight publish of the old target that it was superseded.
 *
 * Why C and not SQL: the set-wise SQL version of these steps rewrote the whole set once per
 * fact (inode, parent, action, keep ...) and joined it back to the items each time; the
 * decision itself is a handful of comparisons. Rows are inserted and queued in batches of
 * several rows per statement, which spreads a statement's fixed cost (AUTOINCREMENT
 * bookkeeping, foreign-key set-up) over the batch. docs/benchmarks.md has the figures.
 */
#include "config.h"

#include "store-private.h"

#include <stdlib.h>
#include <string.h>

G_STATIC_ASSERT (STORE_ACTION_DOWNLOAD == 0 && STORE_ACTION_UPDATE == 1 && STORE_ACTION_MOVE == 2 &&
                 STORE_ACTION_DELETE == 3 && STORE_ACTION_MKDIR == 4);
G_STATIC_ASSERT (STORE_KIND_FILE == 0 && STORE_KIND_DIR == 1);

#define MAX_DEPTH 256
#define NO_ACTION (-1)
#define BATCH_ROWS 32

/* ---- the staged set -------------------------------------------------------------------- */

typedef struct {
  /* As reported; strings live in the set's chunk. */
  const char *item_id, *drive_id, *parent_id, *name, *etag, *ctag, *qxh, *name_problem;
  gint64      size, mtime;
  int         kind;          /* StoreKind */
  gboolean    deleted;
  gboolean    live;          /* FALSE once a later occurrence replaced it */

  /* Decided by the commit, afresh at every attempt. Inode 0 is never handed out, so 0
   * stands for "none" (SQL NULL). */
  gint64      ino;
  gint64      t_parent_ino;  /* the mount parent the set reports */
  gint64      cur_t_parent;  /* the row's target parent once the commit wrote it */
  gint64      work_action;   /* the queued work's action, when has_work */
  int         state;         /* the row's state once the commit wrote it */
  int         action;        /* StoreAction or NO_ACTION */
  gboolean    anchored, is_new, has_work, keep, doomed;
  gboolean    matched;       /* its row was found */
  gboolean    write_target, write_move, touch;  /* what of its row differs (judge_known) */
} Staged;

typedef struct {
  gint64        source_id;
  GStringChunk *strings;
  GPtrArray    *order;   /* Staged*, owned, in set order (replaced ones stay, not live) */
  GHashTable   *by_key;  /* the live Staged* of each key (a set) */
} StageSet;

static guint
staged_hash (gconstpointer p)
{
  /* The item id alone: a set is nearly always of one drive, and the drive id is compared
   * without case. */
  return g_str_hash (((const Staged *) p)->item_id);
}

static gboolean
staged_equal (gconstpointer a, gconstpointer b)
{
  const Staged *x = a, *y = b;
  /* Exact first: drive ids nearly always come spelled the same, and strcmp is far cheaper. */
  return strcmp (x->item_id, y->item_id) == 0 &&
         (strcmp (x->drive_id, y->drive_id) == 0 || g_ascii_strcasecmp (x->drive_id, y->drive_id) == 0);
}

static void
stage_set_free (gpointer p)
{
  StageSet *set = p;
  g_hash_table_destroy (set->by_key);
  g_ptr_array_free (set->order, TRUE);
  g_string_chunk_free (set->strings);
  g_free (set);
}

void
store_staging_free (Store *store)
{
  g_clear_pointer (&store->staging, g_hash_table_destroy);
}

static StageSet *
stage_set_lookup (Store *store, gint64 source_id)
{
  return store->staging ? g_hash_table_lookup (store->staging, &source_id) : NULL;
}

static void
stage_set_drop (Store *store, gint64 source_id)
{
  if (store->staging)
    g_hash_table_remove (store->staging, &source_id);
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

gboolean
store_stage_begin (Store *store, gint64 source_id, GError **error)
{
  (void) error;
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  stage_set_drop (store, source_id);
  return TRUE;
}

static const char *
chunk_dup (GStringChunk *chunk, const char *s)
{
  return s ? g_string_chunk_insert (chunk, s) : NULL;
}

gboolean
store_stage_add (Store *store, gint64 source_id, GPtrArray *graph_items, GError **error)
{
  g_return_val_if_fail (graph_items != NULL, FALSE);
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  g_autofree char *drive = source_drive (store->writer, source_id, error);
  if (drive == NULL)
    return FALSE;
  StageSet *set = stage_set_lookup (store, source_id);
  if (set == NULL)
    {
      if (store->staging == NULL)
        store->staging = g_hash_table_new_full (g_int64_hash, g_int64_equal, NULL, stage_set_free);
      set = g_new0 (StageSet, 1);
      set->source_id = source_id;
      set->strings = g_string_chunk_new (64 * 1024);
      set->order = g_ptr_array_new_with_free_func (g_free);
      set->by_key = g_hash_table_new (staged_hash, staged_equal);
      g_hash_table_insert (store->staging, &set->source_id, set);
    }
  const char *source_drive_id = g_string_chunk_insert_const (set->strings, drive);
  for (guint i = 0; i < graph_items->len; i++)
    {
      const GraphItem *it = graph_items->pdata[i];
      if (it == NULL || it->id == NULL)
        continue;
      /* Packages (OneNote) and shortcuts to other drives are not mirrored; their tombstones
       * are staged like any other (harmless when the id was never seen). */
      if (!it->deleted && (it->kind == GRAPH_ITEM_PACKAGE || it->kind == GRAPH_ITEM_REMOTE))
        continue;
      Staged *s = g_new0 (Staged, 1);
      s->item_id = chunk_dup (set->strings, it->id);
      s->drive_id = it->drive_id ? g_string_chunk_insert_const (set->strings, it->drive_id)
                                 : source_drive_id;
      s->parent_id = chunk_dup (set->strings, it->parent_id);
      s->name = chunk_dup (set->strings, it->name);
      s->etag = chunk_dup (set->strings, it->etag);
      s->ctag = chunk_dup (set->strings, it->ctag);
      s->qxh = chunk_dup (set->strings, it->quickxor_hash);
      s->name_problem = chunk_dup (set->strings, it->name_problem);
      s->size = it->size;
      s->mtime = it->mtime;
      s->kind = it->kind == GRAPH_ITEM_FOLDER || it->is_root ? STORE_KIND_DIR : STORE_KIND_FILE;
      s->deleted = it->deleted;
      s->live = TRUE;
      Staged *older = g_hash_table_lookup (set->by_key, s);
      if (older != NULL)
        older->live = FALSE;
      g_hash_table_replace (set->by_key, s, s);
      g_ptr_array_add (set->order, s);
    }
  return TRUE;
}

/* ---- commit helpers -------------------------------------------------------------------- */

static gboolean
streq0 (const char *a, const char *b)
{
  return a == b || (a != NULL && b != NULL && strcmp (a, b) == 0);
}

static void
bind_ino (sqlite3_stmt *st, int col, gint64 ino)
{
  if (ino != 0)
    sqlite3_bind_int64 (st, col, ino);
  else
    sqlite3_bind_null (st, col);
}

static const char *
col_text (sqlite3_stmt *st, int col)
{
  return (const char *) sqlite3_column_text (st, col);
}

/* A statement of the commit that is not in the connection's cache (its text is built). */
typedef sqlite3_stmt OwnStmt;
G_DEFINE_AUTOPTR_CLEANUP_FUNC (OwnStmt, sqlite3_finalize)

static OwnStmt *
prepare_own (StoreConn *w, const char *sql, GError **error)
{
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v3 (w->db, sql, -1, 0, &st, NULL);
  if (rc != SQLITE_OK)
    {
      store_set_sqlite_error (error, w, rc, "prepare");
      return NULL;
    }
  return st;
}

/* "PREFIX (row),(row),..." with @rows copies of @row. */
static char *
multi_row_sql (const char *prefix, const char *row, guint rows)
{
  GString *sql = g_string_new (prefix);
  for (guint i = 0; i < rows; i++)
    g_string_append_printf (sql, "%s(%s)", i ? "," : "", row);
  return g_string_free (sql, FALSE);
}

typedef struct {
  gint64 ino;
  int    action;
} WorkRow;

/* Binds row @index of the caller's data to the @row_params parameters from @first on. */
typedef void (*BindRow) (sqlite3_stmt *st, int first, guint index, gconstpointer data, gint64 source_id);

/* "PREFIX (?,…),(?,…)…": @count rows in their order, BATCH_ROWS per statement. */
static gboolean
insert_rows (StoreConn *w, const char *prefix, int row_params, guint count, BindRow bind,
             gconstpointer data, gint64 source_id, const char *what, GError **error)
{
  g_autoptr (GString) row = g_string_new ("?");
  for (int i = 1; i < row_params; i++)
    g_string_append (row, ",?");
  for (guint done = 0; done < count;)
    {
      guint n = MIN (BATCH_ROWS, count - done);
      g_autofree char *sql = multi_row_sql (prefix, row->str, n);
      g_autoptr (OwnStmt) st = prepare_own (w, sql, error);
      if (st == NULL)
        return FALSE;
      while (count - done >= n)  /* the full batches, then once for the rest */
        {
          for (guint k = 0; k < n; k++)
            bind (st, row_params * (int) k + 1, done + k, data, source_id);
          if (!store_stmt_run (w, st, what, error))
            return FALSE;
          done += n;
        }
    }
  return TRUE;
}

static void
bind_work (sqlite3_stmt *st, int c, guint index, gconstpointer data, gint64 source_id)
{
  const WorkRow *r = &g_array_index ((GArray *) data, WorkRow, index);
  sqlite3_bind_int64 (st, c, r->ino);
  sqlite3_bind_int64 (st, c + 1, source_id);
  sqlite3_bind_int (st, c + 2, r->action);
}

/* Queues @rows in their order (work ids ascending). */
static gboolean
insert_work (StoreConn *w, gint64 source_id, GArray *rows, GError **error)
{
  return insert_rows (w, "INSERT OR REPLACE INTO work (ino, source_id, action) VALUES ", 3, rows->len,
                      bind_work, rows, source_id, "queue work", error);
}

static void
bind_new_item (sqlite3_stmt *st, int c, guint index, gconstpointer data, gint64 source_id)
{
  const Staged *s = ((GPtrArray *) data)->pdata[index];
  const char *name = s->name ? s->name : "";
  sqlite3_bind_int64 (st, c, s->ino);
  sqlite3_bind_text (st, c + 1, s->drive_id, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, c + 2, s->item_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, c + 3, source_id);
  sqlite3_bind_int (st, c + 4, s->kind);
  sqlite3_bind_int (st, c + 5, s->state);
  sqlite3_bind_text (st, c + 6, s->parent_id, -1, SQLITE_STATIC);
  bind_ino (st, c + 7, s->t_parent_ino);
  sqlite3_bind_text (st, c + 8, name, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, c + 9, MAX (s->size, 0));
  sqlite3_bind_int64 (st, c + 10, s->mtime);
  sqlite3_bind_text (st, c + 11, s->etag, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, c + 12, s->ctag, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, c + 13, s->qxh, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, c + 14, s->name_problem, -1, SQLITE_STATIC);
  bind_ino (st, c + 15, s->t_parent_ino);
  sqlite3_bind_text (st, c + 16, name, -1, SQLITE_STATIC);
}

/* New items, fully formed; until published they sit where they will show (invisible:
 * state 0), so publishing a download does not have to move their directory entry.
 * OR FAIL: a constraint failure stops the statement without undoing its earlier rows, which
 * spares SQLite a statement journal for every batch (a fifth of the insert's cost); the
 * caller rolls the whole transaction back on any error anyway. */
static gboolean
insert_new_items (StoreConn *w, gint64 source_id, GPtrArray *fresh, GError **error)
{
  return insert_rows (w,
      "INSERT OR FAIL INTO items (ino, drive_id, item_id, source_id, kind, state, parent_id,"
      " t_parent_ino, t_name, r_size, r_mtime, r_etag, r_ctag, r_qxh, r_name_problem, parent_ino,"
      " name) VALUES ", 17, fresh->len, bind_new_item, fresh, source_id, "new items", error);
}

/* A one-row, one-column query; ?1, when the query has it, is @arg. */
static gboolean
query_int (StoreConn *w, const char *sql, gint64 arg, const char *what, gint64 *out, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w, sql, error);
  if (st == NULL)
    return FALSE;
  if (sqlite3_bind_parameter_count (st) >= 1)
    sqlite3_bind_int64 (st, 1, arg);
  int rc = sqlite3_step (st);
  if (rc != SQLITE_ROW)
    {
      /* Read as 0, a failed query would skip work and still move the cursor. */
      store_set_sqlite_error (error, w, rc, what);
      return FALSE;
    }
  *out = sqlite3_column_int64 (st, 0);
  return TRUE;
}

/* Steps a lookup that returns at most one row: TRUE with *@found, or FALSE with @error. */
static gboolean
step_lookup (StoreConn *w, sqlite3_stmt *st, const char *what, gboolean *found, GError **error)
{
  int rc = sqlite3_step (st);
  if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    {
      *found = rc == SQLITE_ROW;
      return TRUE;
    }
  store_set_sqlite_error (error, w, rc, what);
  sqlite3_reset (st);
  return FALSE;
}

/* Steps a bound query for one inode: *@ino is it, or 0 when there is no row. Resets @st. */
static gboolean
lookup_ino (StoreConn *w, sqlite3_stmt *st, const char *what, gint64 *ino, GError **error)
{
  gboolean found = FALSE;
  if (!step_lookup (w, st, what, &found, error))
    return FALSE;
  *ino = found ? sqlite3_column_int64 (st, 0) : 0;
  sqlite3_reset (st);
  return TRUE;
}

/* ---- the commit ------------------------------------------------------------------------ */

typedef struct {
  Store      *store;
  StoreConn  *w;
  gint64      source_id;
  StageSet   *set;
  gboolean    queue_nonempty;   /* work existed before this commit */
  gint64      next_ino;
  GHashTable *parents;          /* "item id\ndrive id" → known ino (0: unknown), gint64* */
  GPtrArray  *fresh;            /* Staged*, new items: folders, then files in directory order */
} Commit;

/* One statement in the writer's cache (it is keyed by the text's address): each user steps
 * it to its end or resets it before another may use it. */
static const char INO_BY_KEY_SQL[] = "SELECT ino FROM items WHERE item_id = ?1 AND drive_id = ?2";

/* The live staged item with this key, if any. */
static Staged *
set_find (StageSet *set, const char *item_id, const char *drive_id)
{
  if (set == NULL || item_id == NULL || drive_id == NULL)
    return NULL;
  Staged probe = { .item_id = item_id, .drive_id = drive_id };
  return g_hash_table_lookup (set->by_key, &probe);
}

static gboolean
in_set_alive (StageSet *set, const char *item_id, const char *drive_id)
{
  Staged *s = set_find (set, item_id, drive_id);
  return s != NULL && !s->deleted;
}

/* The inode of a known item by remote key (0 if unknown), for parents outside the set. */
static gboolean
known_parent (Commit *c, const char *item_id, const char *drive_id, gint64 *ino, GError **error)
{
  g_autofree char *key = g_strconcat (item_id, "\n", drive_id, NULL);
  for (char *p = key + strlen (item_id) + 1; *p; p++)
    *p = g_ascii_tolower (*p);
  gint64 *cached = g_hash_table_lookup (c->parents, key);
  if (cached != NULL)
    {
      *ino = *cached;
      return TRUE;
    }
  g_autoptr (StoreStmt) st = store_conn_stmt (c->w,
      INO_BY_KEY_SQL, error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_text (st, 1, item_id, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 2, drive_id, -1, SQLITE_STATIC);
  if (!lookup_ino (c->w, st, "parent", ino, error))
    return FALSE;
  g_hash_table_insert (c->parents, g_steal_pointer (&key), g_memdup2 (ino, sizeof *ino));
  return TRUE;
}

static gboolean
resolve_parent (Commit *c, Staged *s, GError **error)
{
  s->t_parent_ino = 0;
  if (s->parent_id == NULL)
    return TRUE;
  Staged *p = set_find (c->set, s->parent_id, s->drive_id);
  if (p != NULL && p->kind == STORE_KIND_DIR && p->ino != 0)
    {
      s->t_parent_ino = p->ino;
      return TRUE;
    }
  return known_parent (c, s->parent_id, s->drive_id, &s->t_parent_ino, error);
}

/* The set's folders get their inodes first, so their children find them whatever the order. */
static gboolean
place_folders (Commit *c, GError **error)
{
  StoreConn *w = c->w;
  g_autoptr (StoreStmt) find = store_conn_stmt (w,
      INO_BY_KEY_SQL, error);
  if (find == NULL)
    return FALSE;
  guint unknown = 0;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (!s->live || s->kind != STORE_KIND_DIR)
        continue;
      sqlite3_bind_text (find, 1, s->item_id, -1, SQLITE_STATIC);
      sqlite3_bind_text (find, 2, s->drive_id, -1, SQLITE_STATIC);
      if (!lookup_ino (w, find, "folder", &s->ino, error))
        return FALSE;
      unknown += s->ino == 0 && !s->deleted;
    }

  /* Synthetic directories the set's new folders stand for, parents before children: a round
   * binds what the previous one made reachable. */
  gint64 synthetic = 0;
  if (unknown > 0 &&
      !query_int (w, "SELECT EXISTS (SELECT 1 FROM items WHERE item_id IS NULL AND ino <> 1)", 0,
                  "synthetic folders", &synthetic, error))
    return FALSE;
  g_autoptr (StoreStmt) child = !synthetic ? NULL : store_conn_stmt (w,
      "SELECT ino FROM items WHERE item_id IS NULL AND ino <> 1 AND t_parent_ino = ?1"
      " AND t_name = ?2", error);
  g_autoptr (StoreStmt) bind = !synthetic ? NULL : store_conn_stmt (w,
      "UPDATE items SET drive_id = ?2, item_id = ?3, source_id = ?4, anchored = 0, parent_id = ?5"
      " WHERE ino = ?1", error);
  g_autoptr (StoreStmt) parent = !synthetic ? NULL : store_conn_stmt (w,
      INO_BY_KEY_SQL, error);
  if (synthetic && (child == NULL || bind == NULL || parent == NULL))
    return FALSE;
  for (int round = 0; synthetic && round < MAX_DEPTH; round++)
    {
      guint bound = 0;
      for (guint i = 0; i < c->set->order->len; i++)
        {
          Staged *s = c->set->order->pdata[i];
          if (!s->live || s->kind != STORE_KIND_DIR || s->deleted || s->ino != 0 ||
              s->parent_id == NULL || s->name == NULL)
            continue;
          /* Not through the parent cache: a parent bound in this round is known only now. */
          gint64 pino = 0, ino = 0;
          sqlite3_bind_text (parent, 1, s->parent_id, -1, SQLITE_STATIC);
          sqlite3_bind_text (parent, 2, s->drive_id, -1, SQLITE_STATIC);
          if (!lookup_ino (w, parent, "synthetic parent", &pino, error))
            return FALSE;
          if (pino == 0)
            continue;
          sqlite3_bind_int64 (child, 1, pino);
          sqlite3_bind_text (child, 2, s->name, -1, SQLITE_STATIC);
          if (!lookup_ino (w, child, "synthetic folder", &ino, error))
            return FALSE;
          if (ino == 0)
            continue;
          sqlite3_bind_int64 (bind, 1, ino);
          sqlite3_bind_text (bind, 2, s->drive_id, -1, SQLITE_STATIC);
          sqlite3_bind_text (bind, 3, s->item_id, -1, SQLITE_STATIC);
          sqlite3_bind_int64 (bind, 4, c->source_id);
          sqlite3_bind_text (bind, 5, s->parent_id, -1, SQLITE_STATIC);
          if (!store_stmt_run (w, bind, "bind synthetic", error))
            return FALSE;
          s->ino = ino;
          bound++;
        }
      if (bound == 0)
        break;
    }

  /* New inodes start above every number ever handed out (AUTOINCREMENT's high-water mark). */
  gint64 base = 0;
  if (!query_int (w, "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0),"
                     "  coalesce((SELECT max(ino) FROM items), 0))",
                  0, "inode high-water mark", &base, error))
    return FALSE;
  c->next_ino = base + 1;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (s->live && s->kind == STORE_KIND_DIR && s->ino == 0 && !s->deleted)
        {
          s->ino = c->next_ino++;
          s->is_new = TRUE;
        }
    }
  return TRUE;
}

/* The columns of an item row the decision reads, valid while the lookup is on its row. */
enum {
  R_INO, R_ANCHORED, R_KIND, R_STATE, R_T_PARENT, R_T_NAME, R_PARENT_ID, R_SOURCE, R_R_SIZE,
  R_R_MTIME, R_R_ETAG, R_R_CTAG, R_R_QXH, R_R_NAME_PROBLEM, R_PARENT, R_NAME, R_SIZE, R_MTIME,
  R_ETAG, R_CTAG, R_QXH
};

static gboolean
content_differs (const Staged *s, sqlite3_stmt *r)
{
  gboolean size_differs = s->size >= 0 && s->size != sqlite3_column_int64 (r, R_SIZE);
  const char *qxh = col_text (r, R_QXH);
  if (s->qxh != NULL && qxh != NULL)
    return strcmp (s->qxh, qxh) != 0 || size_differs;
  const char *ctag = col_text (r, R_CTAG);
  if (s->ctag != NULL && ctag != NULL)
    return strcmp (s->ctag, ctag) != 0 || size_differs;
  return size_differs || s->mtime != sqlite3_column_int64 (r, R_MTIME) ||
         !streq0 (s->etag, col_text (r, R_ETAG));
}

static int
decide_action (const Staged *s, sqlite3_stmt *r)
{
  int state = sqlite3_column_int (r, R_STATE), kind = sqlite3_column_int (r, R_KIND);
  gboolean anchored = sqlite3_column_int (r, R_ANCHORED);
  if (state == ITEM_EXCLUDED)
    return NO_ACTION;
  if (s->deleted)
    return anchored ? NO_ACTION : STORE_ACTION_DELETE;
  if (anchored)
    return state == ITEM_PUBLISHED ? NO_ACTION : STORE_ACTION_MKDIR;
  if (state != ITEM_PUBLISHED)
    return kind == STORE_KIND_DIR ? STORE_ACTION_MKDIR : STORE_ACTION_DOWNLOAD;
  if (kind == STORE_KIND_FILE && content_differs (s, r))
    return STORE_ACTION_UPDATE;
  gint64 parent = sqlite3_column_int64 (r, R_PARENT);
  if (!streq0 (col_text (r, R_NAME), s->name ? s->name : "") || parent != s->t_parent_ino)
    return kind == STORE_KIND_DIR ? STORE_ACTION_MKDIR : STORE_ACTION_MOVE;
  return NO_ACTION;
}

/* One known item, while @r is on its row: its action, whether its queued work still applies,
 * and which of its row's columns differ from the set's (write_known writes those). */
static void
judge_known (Commit *c, Staged *s, sqlite3_stmt *r)
{
  s->matched = TRUE;
  s->ino = sqlite3_column_int64 (r, R_INO);
  s->anchored = sqlite3_column_int (r, R_ANCHORED);
  s->state = sqlite3_column_int (r, R_STATE);
  s->cur_t_parent = sqlite3_column_int64 (r, R_T_PARENT);
  s->action = decide_action (s, r);
  gint64 r_size = MAX (s->size, 0);

  if (s->action != NO_ACTION && s->has_work && s->work_action == s->action)
    s->keep = (s->action != STORE_ACTION_DOWNLOAD && s->action != STORE_ACTION_UPDATE) ||
              (streq0 (col_text (r, R_R_QXH), s->qxh) && streq0 (col_text (r, R_R_CTAG), s->ctag) &&
               sqlite3_column_int64 (r, R_R_SIZE) == r_size);
  if (s->deleted)
    return;

  /* The latest remote state becomes the target; an unchanged published item also takes its
   * new mtime and tags (same bytes, same place: no work). */
  const char *name_problem = s->anchored ? NULL : s->name_problem;
  s->touch = s->action == NO_ACTION && s->state == ITEM_PUBLISHED && !s->anchored;
  s->write_target = sqlite3_column_int64 (r, R_SOURCE) != c->source_id ||
      sqlite3_column_int64 (r, R_R_SIZE) != r_size || sqlite3_column_int64 (r, R_R_MTIME) != s->mtime ||
      !streq0 (col_text (r, R_R_ETAG), s->etag) || !streq0 (col_text (r, R_R_CTAG), s->ctag) ||
      !streq0 (col_text (r, R_R_QXH), s->qxh) ||
      !streq0 (col_text (r, R_R_NAME_PROBLEM), name_problem) ||
      (s->touch && (sqlite3_column_int64 (r, R_MTIME) != s->mtime ||
                    !streq0 (col_text (r, R_ETAG), s->etag) || !streq0 (col_text (r, R_CTAG), s->ctag)));
  /* Configured folders keep their place. */
  const char *name = s->name ? s->name : "";
  s->write_move = !s->anchored &&
      (s->cur_t_parent != s->t_parent_ino || !streq0 (col_text (r, R_T_NAME), name) ||
       !streq0 (col_text (r, R_PARENT_ID), s->parent_id) ||
       (s->state != ITEM_PUBLISHED && (sqlite3_column_int64 (r, R_PARENT) != s->t_parent_ino ||
                                       !streq0 (col_text (r, R_NAME), name))));
}

/* Writes what judge_known found different. */
static gboolean
write_known (Commit *c, Staged *s, GError **error)
{
  StoreConn *w = c->w;
  if (s->deleted)
    return TRUE;
  if (s->write_target)
    {
      g_autoptr (StoreStmt) st = store_conn_stmt (w,
          "UPDATE items SET source_id = ?2, r_size = ?3, r_mtime = ?4, r_etag = ?5, r_ctag = ?6,"
          " r_qxh = ?7, r_name_problem = ?8, mtime = CASE WHEN ?9 THEN ?4 ELSE mtime END,"
          " etag = CASE WHEN ?9 THEN ?5 ELSE etag END, ctag = CASE WHEN ?9 THEN ?6 ELSE ctag END"
          " WHERE ino = ?1", error);
      if (st == NULL)
        return FALSE;
      sqlite3_bind_int64 (st, 1, s->ino);
      sqlite3_bind_int64 (st, 2, c->source_id);
      sqlite3_bind_int64 (st, 3, MAX (s->size, 0));
      sqlite3_bind_int64 (st, 4, s->mtime);
      sqlite3_bind_text (st, 5, s->etag, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 6, s->ctag, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 7, s->qxh, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 8, s->anchored ? NULL : s->name_problem, -1, SQLITE_STATIC);
      sqlite3_bind_int (st, 9, s->touch);
      if (!store_stmt_run (w, st, "targets", error))
        return FALSE;
    }
  if (s->write_move)
    {
      /* Until published, an item sits where it will show; a published one keeps showing where
       * it is until its MOVE or MKDIR is applied. */
      g_autoptr (StoreStmt) st = s->state == ITEM_PUBLISHED
        ? store_conn_stmt (w, "UPDATE items SET parent_id = ?2, t_parent_ino = ?3, t_name = ?4"
                              " WHERE ino = ?1", error)
        : store_conn_stmt (w, "UPDATE items SET parent_id = ?2, t_parent_ino = ?3, t_name = ?4,"
                              " parent_ino = ?3, name = ?4 WHERE ino = ?1", error);
      if (st == NULL)
        return FALSE;
      sqlite3_bind_int64 (st, 1, s->ino);
      sqlite3_bind_text (st, 2, s->parent_id, -1, SQLITE_STATIC);
      bind_ino (st, 3, s->t_parent_ino);
      sqlite3_bind_text (st, 4, s->name ? s->name : "", -1, SQLITE_STATIC);
      if (!store_stmt_run (w, st, "moves", error))
        return FALSE;
    }
  if (!s->anchored)
    s->cur_t_parent = s->t_parent_ino;
  return TRUE;
}

/* Whether work is queued for @s, and which: from @queue (ino → action) when the caller read
 * it whole, else asked (only when the queue is not empty). */
static gboolean
look_up_work (Commit *c, GHashTable *queue, Staged *s, GError **error)
{
  if (!c->queue_nonempty)
    return TRUE;
  if (queue != NULL)
    {
      gpointer action = NULL;
      s->has_work = g_hash_table_lookup_extended (queue, &s->ino, NULL, &action);
      s->work_action = GPOINTER_TO_INT (action);
      return TRUE;
    }
  g_autoptr (StoreStmt) queued = store_conn_stmt (c->w, "SELECT action FROM work WHERE ino = ?1", error);
  if (queued == NULL)
    return FALSE;
  sqlite3_bind_int64 (queued, 1, s->ino);
  gboolean has = FALSE;
  if (!step_lookup (c->w, queued, "queued work", &has, error))
    return FALSE;
  s->has_work = has;
  s->work_action = has ? sqlite3_column_int64 (queued, 0) : 0;
  return TRUE;
}

static int
fresh_file_cmp (gconstpointer a, gconstpointer b)
{
  const Staged *x = *(Staged *const *) a, *y = *(Staged *const *) b;
  if (x->t_parent_ino != y->t_parent_ino)
    return x->t_parent_ino < y->t_parent_ino ? -1 : 1;
  return strcmp (x->name ? x->name : "", y->name ? y->name : "");
}

#define ITEM_ROW_COLS \
  "ino, anchored, kind, state, t_parent_ino, t_name, parent_id, source_id, r_size, r_mtime," \
  " r_etag, r_ctag, r_qxh, r_name_problem, parent_ino, name, size, mtime, etag, ctag, qxh"

/* The known items of the set, found by reading the whole table in order: done when the set
 * is a large part of the store (a first sync, a resync), where a lookup per item cost three
 * times as much as reading a row. Rows are judged while the scan is on them and written
 * after it, so the scan never reads a table it is changing. */
static gboolean
match_by_scan (Commit *c, GError **error)
{
  StoreConn *w = c->w;
  /* The queue too, in one read, rather than a lookup per item. */
  g_autoptr (GHashTable) queue = NULL;
  if (c->queue_nonempty)
    {
      queue = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, NULL);
      g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT ino, action FROM work", error);
      if (st == NULL)
        return FALSE;
      int rc;
      while ((rc = sqlite3_step (st)) == SQLITE_ROW)
        {
          gint64 ino = sqlite3_column_int64 (st, 0);
          g_hash_table_insert (queue, g_memdup2 (&ino, sizeof ino),
                               GINT_TO_POINTER (sqlite3_column_int (st, 1)));
        }
      if (rc != SQLITE_DONE)
        {
          store_set_sqlite_error (error, w, rc, "queue");
          return FALSE;
        }
    }
  g_autoptr (StoreStmt) scan = store_conn_stmt (w,
      "SELECT " ITEM_ROW_COLS ", item_id, drive_id FROM items WHERE item_id IS NOT NULL", error);
  if (scan == NULL)
    return FALSE;
  int rc;
  while ((rc = sqlite3_step (scan)) == SQLITE_ROW)
    {
      Staged *s = set_find (c->set, col_text (scan, R_QXH + 1), col_text (scan, R_QXH + 2));
      if (s == NULL || s->is_new)
        continue;
      s->ino = sqlite3_column_int64 (scan, R_INO);
      if (!look_up_work (c, queue, s, error))
        return FALSE;
      judge_known (c, s, scan);
    }
  if (rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, w, rc, "match items");
      return FALSE;
    }
  return TRUE;
}

/* ... or by one lookup per item, judged and written at once. */
static gboolean
match_by_lookup (Commit *c, GError **error)
{
  g_autoptr (StoreStmt) find = store_conn_stmt (c->w,
      "SELECT " ITEM_ROW_COLS " FROM items WHERE item_id = ?1 AND drive_id = ?2", error);
  if (find == NULL)
    return FALSE;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (!s->live || s->is_new)
        continue;
      sqlite3_bind_text (find, 1, s->item_id, -1, SQLITE_STATIC);
      sqlite3_bind_text (find, 2, s->drive_id, -1, SQLITE_STATIC);
      gboolean found = FALSE;
      if (!step_lookup (c->w, find, "match items", &found, error))
        return FALSE;
      if (found)
        {
          s->ino = sqlite3_column_int64 (find, R_INO);
          if (!look_up_work (c, NULL, s, error))
            return FALSE;
          judge_known (c, s, find);
        }
      sqlite3_reset (find);  /* the row's text is not used past this point */
      if (found && !write_known (c, s, error))
        return FALSE;
    }
  return TRUE;
}

/* Every live item: parent, row, action; new items are collected for one batched insert. */
static gboolean
decide_items (Commit *c, GError **error)
{
  guint live = 0;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (s->live)
        {
          live++;
          if (!resolve_parent (c, s, error))
            return FALSE;
        }
    }
  /* Counting walks the pages of the smallest index: well under a millisecond per 100,000. */
  gint64 known = 0;
  if (!query_int (c->w, "SELECT count(*) FROM items", 0, "items", &known, error))
    return FALSE;
  gboolean scan = (gint64) live * 4 >= known;
  g_debug ("commit: matching %u items against %" G_GINT64_FORMAT " by %s", live, known,
           scan ? "scan" : "lookup");
  if (scan ? !match_by_scan (c, error) : !match_by_lookup (c, error))
    return FALSE;

  g_autoptr (GPtrArray) files = g_ptr_array_new ();
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (!s->live)
        continue;
      if (s->matched)
        {
          if (scan && !write_known (c, s, error))
            return FALSE;
          continue;
        }
      if (s->is_new)  /* a new folder: its inode is from place_folders */
        {
          s->action = STORE_ACTION_MKDIR;
          s->cur_t_parent = s->t_parent_ino;
          g_ptr_array_add (c->fresh, s);
          continue;
        }
      s->ino = 0;
      if (s->deleted)  /* a tombstone for an id never seen */
        continue;
      s->is_new = TRUE;  /* its inode comes below, in directory order */
      s->action = STORE_ACTION_DOWNLOAD;
      s->cur_t_parent = s->t_parent_ino;
      g_ptr_array_add (files, s);
    }
  /* New files are numbered and inserted in directory order (parent, name): each of the
   * table's b-trees but the remote key's then grows at its end instead of at a random place,
   * which made inserting them a fifth cheaper. Delta's order means nothing (children may
   * come before parents). */
  g_ptr_array_sort (files, fresh_file_cmp);
  for (guint i = 0; i < files->len; i++)
    {
      Staged *s = files->pdata[i];
      s->ino = c->next_ino++;
      g_ptr_array_add (c->fresh, s);
    }
  return TRUE;
}

/* New, failed or filtered items below an excluded folder are recorded as excluded, not
 * queued; an exclusion reaches down through the set's own new folders. */
static gboolean
apply_exclusions (Commit *c, GError **error)
{
  StoreConn *w = c->w;
  gint64 any = 0;
  if (!query_int (w, "SELECT EXISTS (SELECT 1 FROM items WHERE state = 2)", 0, "exclusions", &any, error))
    return FALSE;
  if (!any)
    return TRUE;
  g_autoptr (GHashTable) excluded = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, NULL);
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT ino FROM items WHERE state = 2", error);
    if (st == NULL)
      return FALSE;
    int rc;
    while ((rc = sqlite3_step (st)) == SQLITE_ROW)
      {
        gint64 ino = sqlite3_column_int64 (st, 0);
        g_hash_table_add (excluded, g_memdup2 (&ino, sizeof ino));
      }
    if (rc != SQLITE_DONE)
      {
        store_set_sqlite_error (error, w, rc, "exclusions");
        return FALSE;
      }
  }
  g_autoptr (StoreStmt) mark = store_conn_stmt (w, "UPDATE items SET state = 2 WHERE ino = ?1", error);
  if (mark == NULL)
    return FALSE;
  /* Until nothing changes: each round marks at least one more of the set's items, so this
   * ends, whatever the depth (a cap here once left the bottom of a deep chain queued). */
  for (;;)
    {
      guint changed = 0;
      for (guint i = 0; i < c->set->order->len; i++)
        {
          Staged *s = c->set->order->pdata[i];
          if (!s->live || s->ino == 0 || s->cur_t_parent == 0 ||
              (s->state != ITEM_PENDING && s->state != ITEM_FAILED && s->state != ITEM_FILTERED) ||
              !g_hash_table_contains (excluded, &s->cur_t_parent))
            continue;
          s->state = ITEM_EXCLUDED;
          g_hash_table_add (excluded, g_memdup2 (&s->ino, sizeof s->ino));
          changed++;
          if (!s->is_new)  /* new rows are inserted with their state */
            {
              sqlite3_bind_int64 (mark, 1, s->ino);
              if (!store_stmt_run (w, mark, "exclusions", error))
                return FALSE;
            }
        }
      if (changed == 0)
        break;
    }
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (s->live && !s->deleted && s->action != NO_ACTION && g_hash_table_contains (excluded, &s->ino))
        {
          s->action = NO_ACTION;
          s->keep = FALSE;
        }
    }
  return TRUE;
}

/* Work that no longer applies: the item is back to what the mount shows, or excluded. */
static gboolean
drop_obsolete_work (Commit *c, GError **error)
{
  if (!c->queue_nonempty)
    return TRUE;
  g_autoptr (StoreStmt) st = store_conn_stmt (c->w, "DELETE FROM work WHERE ino = ?1", error);
  if (st == NULL)
    return FALSE;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (!s->live || s->ino == 0 || s->action != NO_ACTION || !s->has_work)
        continue;
      sqlite3_bind_int64 (st, 1, s->ino);
      if (!store_stmt_run (c->w, st, "obsolete work", error))
        return FALSE;
    }
  return TRUE;
}

typedef StoreDoomed Doomed;

int
store_doomed_deeper_first (gconstpointer a, gconstpointer b)
{
  const StoreDoomed *x = a, *y = b;
  if (x->depth != y->depth)
    return x->depth > y->depth ? -1 : 1;
  return x->ino < y->ino ? -1 : x->ino > y->ino;
}

static int
doomed_ptr_cmp (gconstpointer a, gconstpointer b)
{
  return store_doomed_deeper_first (*(Doomed *const *) a, *(Doomed *const *) b);
}

static Doomed *
doom (GHashTable *doomed, gint64 ino, int depth, int state, gboolean anchored)
{
  Doomed *d = g_hash_table_lookup (doomed, &ino);
  if (d != NULL)
    return d;
  d = g_new (Doomed, 1);
  *d = (Doomed) { ino, depth, state, anchored };
  g_hash_table_insert (doomed, &d->ino, d);
  return d;
}

/* Tombstones, a reconcile's leftovers, and what they contain, with their depth below the
 * outermost of them (deepest is deleted first). */
static gboolean
collect_doomed (Commit *c, gboolean reconcile, GHashTable *doomed, GError **error)
{
  StoreConn *w = c->w;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (s->live && s->deleted && s->ino != 0)
        doom (doomed, s->ino, 0, s->state, s->anchored);
    }
  if (reconcile)
    {
      g_autoptr (StoreStmt) st = store_conn_stmt (w,
          "SELECT ino, item_id, drive_id, state FROM items WHERE +source_id = ?1 AND anchored = 0", error);
      if (st == NULL)
        return FALSE;
      sqlite3_bind_int64 (st, 1, c->source_id);
      int rc;
      while ((rc = sqlite3_step (st)) == SQLITE_ROW)
        if (!in_set_alive (c->set, col_text (st, 1), col_text (st, 2)))
          doom (doomed, sqlite3_column_int64 (st, 0), 0, sqlite3_column_int (st, 3), FALSE);
      if (rc != SQLITE_DONE)
        {
          store_set_sqlite_error (error, w, rc, "reconcile");
          return FALSE;
        }
    }
  if (g_hash_table_size (doomed) == 0)
    return TRUE;

  /* The cascade, along the target tree (which already holds this set's moves). An item the
   * set reports alive is not a descendant: it was moved out, or is new. A depth grows when a
   * longer path reaches it, and is walked again from there. */
  g_autoptr (StoreStmt) children = store_conn_stmt (w,
      "SELECT ino, item_id, drive_id, state FROM items WHERE t_parent_ino = ?1 AND anchored = 0", error);
  if (children == NULL)
    return FALSE;
  g_autoptr (GQueue) todo = g_queue_new ();
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init (&iter, doomed);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    g_queue_push_tail (todo, value);
  g_autoptr (GArray) found = g_array_new (FALSE, FALSE, sizeof (Doomed));
  Doomed *d;
  while ((d = g_queue_pop_head (todo)) != NULL)
    {
      if (d->depth >= MAX_DEPTH)
        continue;
      int depth = d->depth + 1;
      sqlite3_bind_int64 (children, 1, d->ino);
      g_array_set_size (found, 0);
      int rc;
      while ((rc = sqlite3_step (children)) == SQLITE_ROW)
        if (!in_set_alive (c->set, col_text (children, 1), col_text (children, 2)))
          {
            Doomed child = { sqlite3_column_int64 (children, 0), depth, sqlite3_column_int (children, 3), FALSE };
            g_array_append_val (found, child);
          }
      sqlite3_reset (children);
      if (rc != SQLITE_DONE)
        {
          store_set_sqlite_error (error, w, rc, "cascade");
          return FALSE;
        }
      for (guint k = 0; k < found->len; k++)
        {
          Doomed *child = &g_array_index (found, Doomed, k);
          Doomed *known = g_hash_table_lookup (doomed, &child->ino);
          if (known == NULL)
            g_queue_push_tail (todo, doom (doomed, child->ino, depth, child->state, FALSE));
          else if (known->depth < depth)
            {
              known->depth = depth;
              g_queue_push_tail (todo, known);
            }
        }
    }
  return TRUE;
}

/* Deletes (deepest first) for the doomed items the mount shows or may show; excluded and
 * filtered ones have nothing on disk and nothing in the mount: they are forgotten now. */
static gboolean
queue_deletes (Commit *c, GHashTable *doomed, GArray *work, guint *deletes, GError **error)
{
  StoreConn *w = c->w;
  g_autoptr (GPtrArray) order = g_ptr_array_new ();
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init (&iter, doomed);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    if (!((Doomed *) value)->anchored)
      g_ptr_array_add (order, value);
  g_ptr_array_sort (order, doomed_ptr_cmp);
  g_autoptr (StoreStmt) queued = !c->queue_nonempty ? NULL : store_conn_stmt (w,
      "SELECT 1 FROM work WHERE ino = ?1 AND action = 3", error);
  g_autoptr (StoreStmt) forget = store_conn_stmt (w, "DELETE FROM items WHERE ino = ?1", error);
  if (forget == NULL || (c->queue_nonempty && queued == NULL))
    return FALSE;
  *deletes = 0;
  for (guint i = 0; i < order->len; i++)
    {
      const Doomed *d = order->pdata[i];
      if (d->state == ITEM_EXCLUDED || d->state == ITEM_FILTERED)
        continue;
      (*deletes)++;
      gboolean already = FALSE;
      if (queued != NULL)
        {
          sqlite3_bind_int64 (queued, 1, d->ino);
          if (!step_lookup (w, queued, "queued delete", &already, error))
            return FALSE;
          sqlite3_reset (queued);
        }
      if (!already)
        g_array_append_val (work, ((WorkRow) { d->ino, STORE_ACTION_DELETE }));
    }
  if (!insert_work (w, c->source_id, work, error))
    return FALSE;
  g_array_set_size (work, 0);
  for (guint i = 0; i < order->len; i++)
    {
      const Doomed *d = order->pdata[i];
      if (d->state != ITEM_EXCLUDED && d->state != ITEM_FILTERED)
        continue;
      sqlite3_bind_int64 (forget, 1, d->ino);
      if (!store_stmt_run (w, forget, "excluded deletes", error))
        return FALSE;
    }
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
static void
queue_mkdirs (Commit *c, GArray *work)
{
  g_autoptr (GArray) dirs = g_array_new (FALSE, FALSE, sizeof (Dir));
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (s->live && s->action == STORE_ACTION_MKDIR && !s->keep && !s->doomed)
        g_array_append_val (dirs, ((Dir) { s->ino, s->t_parent_ino, -1 }));
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
  for (guint i = 0; i < dirs->len; i++)
    g_array_append_val (work, ((WorkRow) { g_array_index (dirs, Dir, i).ino, STORE_ACTION_MKDIR }));
}

static int
work_ino_cmp (gconstpointer a, gconstpointer b)
{
  const WorkRow *x = a, *y = b;
  return x->ino < y->ino ? -1 : x->ino > y->ino;
}

/* By inode, which for files created together is directory order: a folder's files arrive
 * together, and the queue's ino index grows at its end (in set order, which is random,
 * inserting the work cost half as much again). */
static void
queue_action (Commit *c, int action, GArray *work)
{
  guint first = work->len;
  for (guint i = 0; i < c->set->order->len; i++)
    {
      Staged *s = c->set->order->pdata[i];
      if (s->live && s->action == action && !s->keep && !s->doomed)
        g_array_append_val (work, ((WorkRow) { s->ino, action }));
    }
  if (work->len > first)
    qsort (&g_array_index (work, WorkRow, first), work->len - first, sizeof (WorkRow), work_ino_cmp);
}

static gboolean
commit_locked (Store *store, gint64 source_id, const char *delta_link, gboolean reconcile,
               StoreCommitStats *stats, GError **error)
{
  StoreConn *w = store->writer;
  g_autofree char *drive = source_drive (w, source_id, error);
  if (drive == NULL)
    return FALSE;
  /* A set with no page staged is an empty set (a reconcile of an empty folder still deletes). */
  g_autoptr (GPtrArray) no_items = g_ptr_array_new ();
  StageSet empty = { .source_id = source_id, .order = no_items };
  StageSet *set = stage_set_lookup (store, source_id);
  g_autoptr (GHashTable) no_keys = set == NULL ? g_hash_table_new (staged_hash, staged_equal) : NULL;
  if (set == NULL)
    {
      empty.by_key = no_keys;
      set = &empty;
    }
  for (guint i = 0; i < set->order->len; i++)
    {
      /* A commit that failed and rolled back left its decisions behind. */
      Staged *s = set->order->pdata[i];
      s->ino = s->t_parent_ino = s->cur_t_parent = s->work_action = 0;
      s->state = ITEM_PENDING;
      s->action = NO_ACTION;
      s->anchored = s->is_new = s->has_work = s->keep = s->doomed = s->matched = FALSE;
      s->write_target = s->write_move = s->touch = FALSE;
    }

  g_autoptr (GHashTable) parents = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (GPtrArray) fresh = g_ptr_array_new ();
  Commit c = { store, w, source_id, set, FALSE, 0, parents, fresh };
  gint64 queued = 0;
  if (!query_int (w, "SELECT EXISTS (SELECT 1 FROM work)", 0, "queue", &queued, error))
    return FALSE;
  c.queue_nonempty = queued != 0;

  if (!place_folders (&c, error) || !decide_items (&c, error) || !apply_exclusions (&c, error) ||
      !insert_new_items (w, source_id, fresh, error) || !drop_obsolete_work (&c, error))
    return FALSE;

  g_autoptr (GHashTable) doomed = g_hash_table_new_full (g_int64_hash, g_int64_equal, NULL, g_free);
  g_autoptr (GArray) work = g_array_new (FALSE, FALSE, sizeof (WorkRow));
  guint deletes = 0;
  if (!collect_doomed (&c, reconcile, doomed, error) || !queue_deletes (&c, doomed, work, &deletes, error))
    return FALSE;
  for (guint i = 0; i < set->order->len; i++)
    {
      Staged *s = set->order->pdata[i];
      s->doomed = s->live && s->ino != 0 && g_hash_table_contains (doomed, &s->ino);
    }

  /* Folders, parents first; then moves, updates, downloads. */
  queue_mkdirs (&c, work);
  queue_action (&c, STORE_ACTION_MOVE, work);
  queue_action (&c, STORE_ACTION_UPDATE, work);
  queue_action (&c, STORE_ACTION_DOWNLOAD, work);
  if (!insert_work (w, source_id, work, error))
    return FALSE;

  if (stats)
    {
      memset (stats, 0, sizeof *stats);
      stats->queued_deletes = deletes;
      for (guint i = 0; i < set->order->len; i++)
        {
          const Staged *s = set->order->pdata[i];
          if (!s->live || s->doomed)
            continue;
          switch (s->action)
            {
            case NO_ACTION: stats->unchanged++; break;
            case STORE_ACTION_DOWNLOAD: stats->queued_downloads++; break;
            case STORE_ACTION_UPDATE: stats->queued_updates++; break;
            case STORE_ACTION_MOVE: stats->queued_moves++; break;
            case STORE_ACTION_MKDIR: stats->queued_mkdirs++; break;
            default: break;
            }
        }
    }

  /* The cursor moves in the same transaction as the work it implies. */
  g_autoptr (StoreStmt) st = store_conn_stmt (w, "UPDATE sources SET cursor = ?2 WHERE id = ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, source_id);
  sqlite3_bind_text (st, 2, delta_link, -1, SQLITE_STATIC);
  return store_stmt_run (w, st, "cursor", error);
}

gboolean
store_stage_commit (Store *store, gint64 source_id, const char *delta_link, gboolean reconcile,
                    StoreCommitStats *stats, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  gint64 t0 = g_get_monotonic_time ();
  if (!store_begin (store, error))
    return FALSE;
  if (!commit_locked (store, source_id, delta_link, reconcile, stats, error))
    {
      store_rollback (store);
      return FALSE;
    }
  if (!store_commit (store, error))
    return FALSE;
  /* Only now: a commit that failed leaves the set staged, as the old cursor expects. */
  stage_set_drop (store, source_id);
  g_debug ("commit of source %" G_GINT64_FORMAT ": %.3f ms", source_id,
           (g_get_monotonic_time () - t0) / 1000.0);
  return TRUE;
}
