/* The work queue: handing out work, publishing it, failing it.
 *
 * A work row leaves the queue only in the transaction that publishes its item's new state:
 * publish copies the target columns (what the service reported, recorded at commit) into the
 * published columns, sets the cache object, and deletes the row, all at once. A publish names
 * its work by id; when a later commit replaced the work (new target: new id) or dropped it
 * (the mount already matches), the publish changes nothing and hands the caller's cache object
 * back as stale — bytes for a superseded target must never be shown.
 *
 * Publishing is per item and called from many worker threads, so it is a group commit: the
 * callers that arrive while a transaction is being committed join the next one. One thread at
 * a time (the leader) takes every waiting request, applies each inside its own SAVEPOINT (one
 * bad request does not sink the others) and commits once. A lone caller pays one short
 * transaction; under load the cost of a commit is shared.
 */
#include "config.h"

#include "store-private.h"

#include <string.h>

#define BACKOFF_FIRST_S 60
#define BACKOFF_MAX_S   3600

void
store_work_free (StoreWork *work)
{
  if (work == NULL)
    return;
  graph_item_free (work->item);
  g_free (work->path);
  g_free (work->old_path);
  g_free (work->last_error_type);
  g_free (work);
}

GPtrArray *
store_work_next (Store *store, gint64 after, guint limit, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return NULL;
  /* Read the rows and their paths in one read transaction: one consistent snapshot. */
  if (!store_conn_exec (r, "BEGIN", error))
    return NULL;
  g_autoptr (GPtrArray) out = g_ptr_array_new_with_free_func ((GDestroyNotify) store_work_free);
  g_autoptr (GHashTable) tcache = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
  gboolean ok = TRUE;
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (r,
        "SELECT w.id, w.source_id, w.action, w.ino, w.attempts, w.error_type,"
        " i.drive_id, i.item_id, i.parent_id, i.t_name, i.kind, i.r_size, i.r_mtime, i.r_etag,"
        " i.r_ctag, i.r_qxh, i.r_name_problem, i.state, i.t_parent_ino"
        " FROM work w JOIN items i ON i.ino = w.ino"
        " WHERE w.id > ?1 AND w.next_attempt <= ?2 ORDER BY w.id LIMIT ?3", error);
    if (st == NULL)
      ok = FALSE;
    else
      {
        sqlite3_bind_int64 (st, 1, after);
        sqlite3_bind_int64 (st, 2, store_now ());
        sqlite3_bind_int64 (st, 3, limit);
        int rc;
        while (ok && (rc = sqlite3_step (st)) == SQLITE_ROW)
          {
            StoreWork *w = g_new0 (StoreWork, 1);
            g_ptr_array_add (out, w);
            w->work_id = sqlite3_column_int64 (st, 0);
            w->source_id = sqlite3_column_int64 (st, 1);
            w->action = sqlite3_column_int (st, 2);
            w->ino = sqlite3_column_int64 (st, 3);
            w->attempts = sqlite3_column_int (st, 4);
            w->last_error_type = store_col_dup (st, 5);
            GraphItem *it = w->item = g_new0 (GraphItem, 1);
            it->drive_id = store_col_dup (st, 6);
            it->id = store_col_dup (st, 7);
            it->parent_id = store_col_dup (st, 8);
            it->name = store_col_dup (st, 9);
            it->kind = sqlite3_column_int (st, 10) == STORE_KIND_DIR ? GRAPH_ITEM_FOLDER : GRAPH_ITEM_FILE;
            it->size = sqlite3_column_int64 (st, 11);
            it->mtime = sqlite3_column_int64 (st, 12);
            it->etag = store_col_dup (st, 13);
            it->ctag = store_col_dup (st, 14);
            it->quickxor_hash = store_col_dup (st, 15);
            it->name_problem = store_col_dup (st, 16);
            it->deleted = w->action == STORE_ACTION_DELETE;
            gboolean published = sqlite3_column_int (st, 17) == ITEM_PUBLISHED;

            /* Where it will be (target tree), and where it is now (published tree). */
            gint64 tparent = sqlite3_column_int64 (st, 18);
            if (w->action != STORE_ACTION_DELETE)
              {
                g_autofree char *dir = NULL;
                if (sqlite3_column_type (st, 18) != SQLITE_NULL)
                  {
                    char *cached = g_hash_table_lookup (tcache, &tparent);
                    if (cached == NULL)
                      {
                        cached = store_path_on (r, tparent, FALSE, NULL);
                        if (cached != NULL)
                          g_hash_table_insert (tcache, g_memdup2 (&tparent, sizeof tparent), cached);
                      }
                    dir = g_strdup (cached);
                  }
                if (dir != NULL)
                  w->path = g_build_path ("/", dir, it->name, NULL);
                else
                  w->path = g_strconcat ("/", it->name, NULL); /* parent unknown: an orphan */
              }
            if (published)
              w->old_path = store_path_on (r, w->ino, TRUE, NULL);
            if (w->path == NULL)
              w->path = g_strdup (w->old_path ? w->old_path : "/");
          }
        if (ok && rc != SQLITE_DONE)
          {
            store_set_sqlite_error (error, r, rc, "work");
            ok = FALSE;
          }
      }
  }
  sqlite3_exec (r->db, "COMMIT", NULL, NULL, NULL);
  if (!ok)
    return NULL;
  return g_steal_pointer (&out);
}

gboolean
store_work_count (Store *store, guint *count, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return FALSE;
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT count(*) FROM work WHERE next_attempt <= ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, store_now ());
  int rc = sqlite3_step (st);
  if (rc != SQLITE_ROW)
    {
      store_set_sqlite_error (error, r, rc, "count work");
      return FALSE;
    }
  *count = sqlite3_column_int (st, 0);
  return TRUE;
}

/* The delay before attempt n + 1 after n failures (store_work_fail): the first retry is due at
 * once (the next run), then 1 min, 2 min, 4 min … capped at an hour. Never abandoned. */

/* ---- publish --------------------------------------------------------------------------- */

typedef struct {
  const StoreWork *work;
  const char      *cache_object;
  GPtrArray       *stale;       /* char*, owned */
  GError          *error;
  gboolean         done;
} PubReq;

/* An object names the bytes of one item only (see store.h): once that item lets go of it,
 * nobody holds it. No lookup, so no index on cache_object to keep up at every publish. */
static void
add_stale (GPtrArray *stale, const char *object)
{
  if (object != NULL)
    g_ptr_array_add (stale, g_strdup (object));
}

static gboolean
apply_publish (StoreConn *w, PubReq *req, GError **error)
{
  const StoreWork *work = req->work;
  int action;
  StoreKind kind;
  gboolean same_place; /* the entry need not move: leave the directory index alone */
  g_autofree char *old_object = NULL;
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w,
        "SELECT w.action, i.kind, i.cache_object,"
        " i.parent_ino IS i.t_parent_ino AND i.name IS i.t_name"
        " FROM work w JOIN items i ON i.ino = w.ino"
        " WHERE w.id = ?1 AND w.ino = ?2", error);
    if (st == NULL)
      return FALSE;
    sqlite3_bind_int64 (st, 1, work->work_id);
    sqlite3_bind_int64 (st, 2, work->ino);
    int rc = sqlite3_step (st);
    if (rc == SQLITE_DONE)
      {
        /* Superseded or obsolete: the bytes are for a target nobody wants any more. */
        g_debug ("work %" G_GINT64_FORMAT " was superseded; publish ignored", work->work_id);
        sqlite3_reset (st);
        add_stale (req->stale, req->cache_object);
        return TRUE;
      }
    if (rc != SQLITE_ROW)
      {
        store_set_sqlite_error (error, w, rc, "publish");
        return FALSE;
      }
    action = sqlite3_column_int (st, 0);
    kind = sqlite3_column_int (st, 1);
    old_object = store_col_dup (st, 2);
    same_place = sqlite3_column_int (st, 3);
  }

  switch (action)
    {
    case STORE_ACTION_DOWNLOAD:
    case STORE_ACTION_UPDATE:
      {
        if (kind == STORE_KIND_FILE && req->cache_object == NULL)
          {
            g_set_error (error, STORE_ERROR, STORE_ERROR_FAILED,
                         "publishing work %" G_GINT64_FORMAT " needs the cache object holding its bytes",
                         work->work_id);
            return FALSE;
          }
        g_autoptr (StoreStmt) st = same_place
          ? store_conn_stmt (w,
            "UPDATE items SET state = 1, size = r_size,"
            " mtime = r_mtime, etag = r_etag, ctag = r_ctag, qxh = r_qxh, cache_object = ?2,"
            " generation = generation + 1 WHERE ino = ?1", error)
          : store_conn_stmt (w,
            "UPDATE items SET state = 1, parent_ino = t_parent_ino, name = t_name, size = r_size,"
            " mtime = r_mtime, etag = r_etag, ctag = r_ctag, qxh = r_qxh, cache_object = ?2,"
            " generation = generation + 1 WHERE ino = ?1", error);
        if (st == NULL)
          return FALSE;
        sqlite3_bind_int64 (st, 1, work->ino);
        sqlite3_bind_text (st, 2, req->cache_object, -1, SQLITE_STATIC);
        if (!store_stmt_run (w, st, "publish content", error))
          return FALSE;
        if (old_object && g_strcmp0 (old_object, req->cache_object) != 0)
          add_stale (req->stale, old_object);
        break;
      }
    case STORE_ACTION_MOVE:
    case STORE_ACTION_MKDIR:
      {
        g_autoptr (StoreStmt) st = same_place
          ? store_conn_stmt (w,
            "UPDATE items SET generation = generation + (state <> 1), state = 1,"
            " mtime = r_mtime, etag = r_etag, ctag = r_ctag WHERE ino = ?1", error)
          : store_conn_stmt (w,
            "UPDATE items SET generation = generation + (state <> 1), state = 1,"
            " parent_ino = t_parent_ino, name = t_name, mtime = r_mtime, etag = r_etag,"
            " ctag = r_ctag WHERE ino = ?1", error);
        if (st == NULL)
          return FALSE;
        sqlite3_bind_int64 (st, 1, work->ino);
        if (!store_stmt_run (w, st, "publish metadata", error))
          return FALSE;
        /* A cache object handed to a metadata-only publish is not ours to keep. */
        if (req->cache_object && g_strcmp0 (req->cache_object, old_object) != 0)
          add_stale (req->stale, req->cache_object);
        break;
      }
    case STORE_ACTION_DELETE:
      {
        /* The row goes; its work row goes with it (ON DELETE CASCADE). */
        g_autoptr (StoreStmt) st = store_conn_stmt (w, "DELETE FROM items WHERE ino = ?1", error);
        if (st == NULL)
          return FALSE;
        sqlite3_bind_int64 (st, 1, work->ino);
        if (!store_stmt_run (w, st, "publish delete", error))
          return FALSE;
        add_stale (req->stale, old_object);
        if (req->cache_object && g_strcmp0 (req->cache_object, old_object) != 0)
          add_stale (req->stale, req->cache_object);
        return TRUE;
      }
    default:
      g_set_error (error, STORE_ERROR, STORE_ERROR_CORRUPT, "work %" G_GINT64_FORMAT " has unknown action %d",
                   work->work_id, action);
      return FALSE;
    }

  g_autoptr (StoreStmt) del = store_conn_stmt (w, "DELETE FROM work WHERE id = ?1", error);
  if (del == NULL)
    return FALSE;
  sqlite3_bind_int64 (del, 1, work->work_id);
  return store_stmt_run (w, del, "dequeue", error);
}

/* Applies @batch in one transaction (write_lock held).
 *
 * Optimistic first: the whole batch without savepoints. A savepoint per request made SQLite
 * keep a statement journal of every page it touched — most of a publish's cost. Failures are
 * rare (a full disk, a request the store refuses), so when any request fails the transaction
 * is rolled back and the batch applied again, each request in its own savepoint, so one bad
 * request still does not sink the others. */
static gboolean
publish_batch_fast (Store *store, GPtrArray *batch)
{
  StoreConn *w = store->writer;
  g_autoptr (GError) error = NULL;
  if (!store_begin (store, &error))
    return FALSE;
  for (guint i = 0; i < batch->len; i++)
    {
      PubReq *req = batch->pdata[i];
      if (!apply_publish (w, req, &error))
        {
          g_debug ("publish batch: %s; retrying with savepoints", error->message);
          store_rollback (store);
          return FALSE;
        }
    }
  return store_commit (store, NULL);
}

static void
publish_batch (Store *store, GPtrArray *batch)
{
  StoreConn *w = store->writer;
  g_autoptr (GError) error = NULL;
  if (publish_batch_fast (store, batch))
    return;
  for (guint i = 0; i < batch->len; i++)
    g_ptr_array_set_size (((PubReq *) batch->pdata[i])->stale, 0);
  if (batch->len == 1)
    {
      /* Alone: its own transaction is its savepoint. */
      PubReq *req = batch->pdata[0];
      if (!store_begin (store, &error))
        goto fail_all;
      if (!apply_publish (w, req, &req->error))
        {
          g_ptr_array_set_size (req->stale, 0);
          store_rollback (store);
          return;
        }
      if (store_commit (store, &error))
        return;
      goto fail_all;
    }
  if (!store_begin (store, &error))
    goto fail_all;
  for (guint i = 0; i < batch->len; i++)
    {
      PubReq *req = batch->pdata[i];
      if (!store_conn_run_cached (w, "SAVEPOINT pub", &error))
        goto fail_all;
      if (!apply_publish (w, req, &req->error))
        {
          g_ptr_array_set_size (req->stale, 0);
          if (!store_conn_run_cached (w, "ROLLBACK TO pub", &error) ||
              !store_conn_run_cached (w, "RELEASE pub", &error))
            goto fail_all;
        }
      else if (!store_conn_run_cached (w, "RELEASE pub", &error))
        goto fail_all;
    }
  if (store_commit (store, &error))
    return;

fail_all:
  store_rollback (store);
  for (guint i = 0; i < batch->len; i++)
    {
      PubReq *req = batch->pdata[i];
      g_ptr_array_set_size (req->stale, 0);
      if (req->error == NULL)
        req->error = g_error_copy (error);
    }
}

static gboolean
publish_many (Store *store, PubReq *reqs, guint n)
{
  g_mutex_lock (&store->pub_lock);
  for (guint i = 0; i < n; i++)
    g_ptr_array_add (store->pub_pending, &reqs[i]);
  for (guint i = 0; i < n; i++)
    while (!reqs[i].done)
      {
        if (store->pub_leader)
          {
            g_cond_wait (&store->pub_cond, &store->pub_lock);
            continue;
          }
        store->pub_leader = TRUE;
        GPtrArray *batch = store->pub_pending;
        store->pub_pending = g_ptr_array_new ();
        g_mutex_unlock (&store->pub_lock);

        g_mutex_lock (&store->write_lock);
        publish_batch (store, batch);
        g_mutex_unlock (&store->write_lock);

        g_mutex_lock (&store->pub_lock);
        for (guint k = 0; k < batch->len; k++)
          ((PubReq *) batch->pdata[k])->done = TRUE;
        g_ptr_array_free (batch, TRUE);
        store->pub_leader = FALSE;
        g_cond_broadcast (&store->pub_cond);
      }
  g_mutex_unlock (&store->pub_lock);
  return TRUE;
}

static void
hand_over_stale (PubReq *req, GPtrArray **stale_cache_objects)
{
  if (stale_cache_objects == NULL)
    return;
  if (*stale_cache_objects == NULL)
    *stale_cache_objects = g_ptr_array_new_with_free_func (g_free);
  for (guint i = 0; i < req->stale->len; i++)
    g_ptr_array_add (*stale_cache_objects, g_steal_pointer (&req->stale->pdata[i]));
}

gboolean
store_work_publish (Store *store, const StoreWork *work, const char *cache_object,
                    GPtrArray **stale_cache_objects, GError **error)
{
  g_return_val_if_fail (work != NULL, FALSE);
  PubReq req = { work, cache_object, g_ptr_array_new_with_free_func (g_free), NULL, FALSE };
  publish_many (store, &req, 1);
  gboolean ok = req.error == NULL;
  if (ok)
    hand_over_stale (&req, stale_cache_objects);
  else
    g_propagate_error (error, req.error);
  g_ptr_array_unref (req.stale);
  return ok;
}

static void
error_free_maybe (gpointer e)
{
  if (e != NULL)
    g_error_free (e);
}

gboolean
store_work_publish_batch (Store *store, StoreWork *const *works, const char *const *cache_objects,
                          guint n, GPtrArray **stale_cache_objects, GPtrArray **errors,
                          GError **error)
{
  g_return_val_if_fail (n == 0 || works != NULL, FALSE);
  PubReq *reqs = g_new0 (PubReq, n);
  for (guint i = 0; i < n; i++)
    {
      reqs[i].work = works[i];
      reqs[i].cache_object = cache_objects ? cache_objects[i] : NULL;
      reqs[i].stale = g_ptr_array_new_with_free_func (g_free);
    }
  publish_many (store, reqs, n);
  gboolean ok = TRUE;
  if (errors)
    *errors = g_ptr_array_new_full (n, error_free_maybe);
  for (guint i = 0; i < n; i++)
    {
      if (reqs[i].error == NULL)
        hand_over_stale (&reqs[i], stale_cache_objects);
      else if (ok)
        {
          ok = FALSE;
          if (error)
            *error = g_error_copy (reqs[i].error);
        }
      if (errors)
        g_ptr_array_add (*errors, g_steal_pointer (&reqs[i].error));
      g_clear_error (&reqs[i].error);
      g_ptr_array_unref (reqs[i].stale);
    }
  g_free (reqs);
  return ok;
}

gboolean
store_work_fail (Store *store, const StoreWork *work, const char *error_type, const char *message,
                 GError **error)
{
  g_return_val_if_fail (work != NULL && error_type != NULL, FALSE);
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  StoreConn *w = store->writer;
  if (!store_begin (store, error))
    return FALSE;
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "UPDATE work SET attempts = attempts + 1, error_type = ?2, error_message = ?3,"
      " next_attempt = ?4 + CASE WHEN attempts + 1 <= 1 THEN 0"
      "   ELSE min(?5, ?6 << min(attempts - 1, 20)) END"
      " WHERE id = ?1", error);
  if (st == NULL)
    goto fail;
  sqlite3_bind_int64 (st, 1, work->work_id);
  sqlite3_bind_text (st, 2, error_type, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 3, message, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, 4, store_now ());
  sqlite3_bind_int64 (st, 5, BACKOFF_MAX_S);
  sqlite3_bind_int64 (st, 6, BACKOFF_FIRST_S);
  if (!store_stmt_run (w, st, "fail work", error))
    goto fail;
  if (sqlite3_changes (w->db) > 0)
    {
      g_autoptr (StoreStmt) mark = store_conn_stmt (w,
          "UPDATE items SET state = 3 WHERE ino = ?1 AND state IN (0, 4)", error);
      if (mark == NULL)
        goto fail;
      sqlite3_bind_int64 (mark, 1, work->ino);
      if (!store_stmt_run (w, mark, "fail item", error))
        goto fail;
    }
  /* No row: the work was superseded meanwhile; the newer work carries on. */
  return store_commit (store, error);
fail:
  store_rollback (store);
  return FALSE;
}

gboolean
store_withdraw_file (Store *store, guint64 ino, const char *reason, gboolean *withdrawn,
                     GPtrArray **stale_cache_objects, GError **error)
{
  g_return_val_if_fail (reason != NULL, FALSE);
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  StoreConn *w = store->writer;
  g_autoptr (StoreStmt) find = store_conn_stmt (w,
      "SELECT cache_object FROM items WHERE ino = ?1 AND state = 1 AND kind = 0 AND anchored = 0", error);
  g_autoptr (StoreStmt) mark = find == NULL ? NULL : store_conn_stmt (w,
      "UPDATE items SET state = 4, filter_reason = ?2, cache_object = NULL,"
      " parent_ino = t_parent_ino, name = t_name, generation = generation + 1 WHERE ino = ?1", error);
  g_autoptr (StoreStmt) drop = mark == NULL ? NULL : store_conn_stmt (w, "DELETE FROM work WHERE ino = ?1", error);
  if (drop == NULL || !store_begin (store, error))
    return FALSE;
  sqlite3_bind_int64 (find, 1, (gint64) ino);
  int rc = sqlite3_step (find);
  gboolean found = rc == SQLITE_ROW;
  g_autofree char *old_object = found ? store_col_dup (find, 0) : NULL;
  sqlite3_reset (find);   /* done reading before the row is written */
  if (!found && rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, w, rc, "withdraw");
      store_rollback (store);
      return FALSE;
    }
  if (found)
    {
      sqlite3_bind_int64 (mark, 1, (gint64) ino);
      sqlite3_bind_text (mark, 2, reason, -1, SQLITE_STATIC);
      sqlite3_bind_int64 (drop, 1, (gint64) ino);
      if (!store_stmt_run (w, mark, "withdraw file", error) || !store_stmt_run (w, drop, "withdraw work", error))
        {
          store_rollback (store);
          return FALSE;
        }
    }
  if (!store_commit (store, error))
    return FALSE;
  if (withdrawn)
    *withdrawn = found;
  if (old_object && stale_cache_objects)
    {
      if (*stale_cache_objects == NULL)
        *stale_cache_objects = g_ptr_array_new_with_free_func (g_free);
      g_ptr_array_add (*stale_cache_objects, g_steal_pointer (&old_object));
    }
  return TRUE;
}

gboolean
store_work_skip (Store *store, const StoreWork *work, const char *reason,
                 GPtrArray **stale_cache_objects, GError **error)
{
  g_return_val_if_fail (work != NULL && reason != NULL, FALSE);
  g_autoptr (GPtrArray) stale = g_ptr_array_new_with_free_func (g_free);
  {
    g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
    StoreConn *w = store->writer;
    if (!store_begin (store, error))
      return FALSE;
    g_autofree char *old_object = NULL;
    gboolean current = FALSE;
    {
      g_autoptr (StoreStmt) st = store_conn_stmt (w,
          "SELECT i.cache_object FROM work w JOIN items i ON i.ino = w.ino"
          " WHERE w.id = ?1 AND w.ino = ?2", error);
      if (st == NULL)
        goto fail;
      sqlite3_bind_int64 (st, 1, work->work_id);
      sqlite3_bind_int64 (st, 2, work->ino);
      int rc = sqlite3_step (st);
      if (rc == SQLITE_ROW)
        {
          current = TRUE;
          old_object = store_col_dup (st, 0);
        }
      else if (rc != SQLITE_DONE)
        {
          store_set_sqlite_error (error, w, rc, "skip");
          goto fail;
        }
    }
    /* No row: a later commit superseded the work; the newer work decides. */
    if (current)
      {
        /* Invisible wherever it is, and placed where it would show: a later publish of the
         * same item (after a change of filter or of the file) need not move its entry. */
        g_autoptr (StoreStmt) mark = store_conn_stmt (w,
            "UPDATE items SET state = 4, filter_reason = ?2, cache_object = NULL,"
            " parent_ino = t_parent_ino, name = t_name, generation = generation + (state = 1)"
            " WHERE ino = ?1", error);
        if (mark == NULL)
          goto fail;
        sqlite3_bind_int64 (mark, 1, work->ino);
        sqlite3_bind_text (mark, 2, reason, -1, SQLITE_STATIC);
        if (!store_stmt_run (w, mark, "filter item", error))
          goto fail;
        g_autoptr (StoreStmt) del = store_conn_stmt (w, "DELETE FROM work WHERE id = ?1", error);
        if (del == NULL)
          goto fail;
        sqlite3_bind_int64 (del, 1, work->work_id);
        if (!store_stmt_run (w, del, "dequeue filtered", error))
          goto fail;
        add_stale (stale, old_object);
      }
    if (!store_commit (store, error))
      return FALSE;
    goto done;
  fail:
    store_rollback (store);
    return FALSE;
  }
done:
  if (stale_cache_objects)
    {
      if (*stale_cache_objects == NULL)
        *stale_cache_objects = g_ptr_array_new_with_free_func (g_free);
      for (guint i = 0; i < stale->len; i++)
        g_ptr_array_add (*stale_cache_objects, g_steal_pointer (&stale->pdata[i]));
    }
  return TRUE;
}
