/* The state store: opening, schema migrations, connections, sources and runs.
 *
 * Why one writer and a pool of readers
 * ------------------------------------
 * SQLite in WAL mode lets any number of readers run while one writer commits: a reader sees
 * the last snapshot committed before its read transaction began and never waits for the
 * writer. Writers, however, are serialised by SQLite anyway. So the store keeps
 *
 *  - ONE writer connection behind a GMutex (write_lock). Engine worker threads that publish
 *    at the same time queue on the mutex instead of spinning in SQLite's busy handler, every
 *    write transaction is short (one publish, one page of staging) except the commit of a
 *    delta set, and statements stay prepared on that one connection.
 *  - a POOL of reader connections for the filesystem's lookups, getattrs and readdirs. A FUSE
 *    thread takes an idle reader (opening a new one up to max_readers), runs one statement
 *    and gives it back. libfuse creates and retires worker threads as load changes
 *    (max_idle_threads), so connections bound to threads (GPrivate) would be opened, lose
 *    their prepared statements and be closed over and over, and store_free could not reach
 *    the ones owned by threads still alive; a pool keeps the number of connections (each with
 *    its own page cache) bounded and owned by the Store.
 *
 * Readers therefore never block on the writer: the only shared lock they take is pool_lock,
 * held for a pointer push/pop. The one pause WAL can impose — a checkpoint cannot complete past
 * an open reader — delays the checkpoint, not the reader.
 *
 * Durability: synchronous=NORMAL in WAL mode. A SIGKILL loses nothing that was committed; a
 * power cut may lose the last transactions, which is still consistent (each is atomic): a
 * lost publish leaves its work queued and the item is fetched again, never lost.
 *
 * Refusal: before anything writes to the file, open() checks that it is SQLite, carries our
 * application_id and a user_version this build knows. A foreign or newer file is refused with
 * STORE_ERROR_FOREIGN naming it, and left byte-for-byte untouched.
 */
#include "config.h"

#include "store-private.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define STORE_APPLICATION_ID 0x4f445346 /* "ODSF" */
#define STORE_BUSY_TIMEOUT_MS 10000
#define STORE_RUNS_KEPT 200

G_DEFINE_QUARK (store-error-quark, store_error)

/* ---- migrations ------------------------------------------------------------------------ */

/* migrations[i] takes user_version i to i + 1. Never edit a released step: append one. */
static const char *const migrations[] = {
  /* 0 → 1: the first schema. */
  "CREATE TABLE sources ("
  "  id             INTEGER PRIMARY KEY,"
  "  remote_path    TEXT NOT NULL UNIQUE,"      /* as configured, normalised: \"/Documents/Reports\" */
  "  drive_id       TEXT NOT NULL COLLATE NOCASE,"
  "  item_id        TEXT NOT NULL,"
  "  root_ino       INTEGER NOT NULL,"          /* where the source's root folder shows */
  "  cursor         TEXT,"                      /* the saved deltaLink */
  "  last_completed INTEGER NOT NULL DEFAULT 0"
  ");"
  /* One row per remote item and per synthetic directory; ino is the FUSE inode number:
   * AUTOINCREMENT so a number is never reused. r_ / t_ columns hold the latest state the
   * service reported (the target); the unprefixed columns hold what the mount shows. */
  "CREATE TABLE items ("
  "  ino            INTEGER PRIMARY KEY AUTOINCREMENT,"
  "  drive_id       TEXT COLLATE NOCASE,"      /* NULL for synthetic directories */
  "  item_id        TEXT,"
  "  source_id      INTEGER,"                   /* the source that last reported it */
  "  anchored       INTEGER NOT NULL DEFAULT 0," /* position fixed by configuration */
  "  kind           INTEGER NOT NULL,"          /* StoreKind */
  "  state          INTEGER NOT NULL,"          /* ITEM_* */
  "  parent_id      TEXT,"
  "  t_parent_ino   INTEGER,"
  "  t_name         TEXT,"
  "  r_size         INTEGER NOT NULL DEFAULT 0,"
  "  r_mtime        INTEGER NOT NULL DEFAULT 0,"
  "  r_etag         TEXT,"
  "  r_ctag         TEXT,"
  "  r_qxh          TEXT,"
  "  r_name_problem TEXT,"
  "  parent_ino     INTEGER,"
  "  name           TEXT,"
  "  size           INTEGER NOT NULL DEFAULT 0,"
  "  mtime          INTEGER NOT NULL DEFAULT 0,"
  "  etag           TEXT,"
  "  ctag           TEXT,"
  "  qxh            TEXT,"
  "  cache_object   TEXT,"
  "  generation     INTEGER NOT NULL DEFAULT 0"
  ");"
  "CREATE UNIQUE INDEX items_remote ON items (drive_id, item_id);"
  "CREATE INDEX items_dir ON items (parent_ino, name);"
  "CREATE INDEX items_tree ON items (t_parent_ino);"
  /* Dropped by 3 → 4. */
  "CREATE INDEX items_cache ON items (cache_object) WHERE cache_object IS NOT NULL;"
  /* The queue. UNIQUE(ino): an item is never queued twice, whatever sources overlap.
   * AUTOINCREMENT: a publish names its work by id, and an id is never reused. */
  "CREATE TABLE work ("
  "  id             INTEGER PRIMARY KEY AUTOINCREMENT,"
  "  ino            INTEGER NOT NULL UNIQUE REFERENCES items (ino) ON DELETE CASCADE,"
  "  source_id      INTEGER,"
  "  action         INTEGER NOT NULL,"          /* StoreAction */
  "  attempts       INTEGER NOT NULL DEFAULT 0,"
  "  error_type     TEXT,"
  "  error_message  TEXT,"
  "  next_attempt   INTEGER NOT NULL DEFAULT 0"
  ");"
  "CREATE TABLE runs ("
  "  id             INTEGER PRIMARY KEY AUTOINCREMENT,"
  "  state          TEXT NOT NULL,"
  "  started        INTEGER NOT NULL,"
  "  finished       INTEGER NOT NULL DEFAULT 0,"
  "  pid            INTEGER NOT NULL,"
  "  pid_start      TEXT,"                      /* /proc start time: tells a reused pid apart */
  "  processed      INTEGER NOT NULL DEFAULT 0,"
  "  unchanged      INTEGER NOT NULL DEFAULT 0,"
  "  failed         INTEGER NOT NULL DEFAULT 0,"
  "  filtered       INTEGER NOT NULL DEFAULT 0,"
  "  deleted        INTEGER NOT NULL DEFAULT 0,"
  "  renamed        INTEGER NOT NULL DEFAULT 0,"
  "  bytes          INTEGER NOT NULL DEFAULT 0,"
  "  error_message  TEXT"
  ");"
  "CREATE TABLE run_failures ("
  "  run_id         INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,"
  "  path           TEXT NOT NULL,"
  "  error_type     TEXT NOT NULL,"
  "  message        TEXT,"
  "  at             INTEGER NOT NULL"
  ");"
  "CREATE INDEX run_failures_run ON run_failures (run_id);"
  /* The mount root: a synthetic directory (bound to the drive root by a source \"/\"). */
  "INSERT INTO items (ino, anchored, kind, state, t_name, name, t_parent_ino, parent_ino)"
  "  VALUES (1, 1, 1, 1, '', '', NULL, NULL);",
  /* 1 → 2: filtered items (state 4) carry the filter's reason. */
  "ALTER TABLE items ADD COLUMN filter_reason TEXT;",
  /* 2 → 3: item id first. Every lookup names both columns; with the drive id (one value per
   * drive, compared with NOCASE) first, each comparison in the index walked it in full. */
  "DROP INDEX items_remote;"
  "CREATE UNIQUE INDEX items_remote ON items (item_id, drive_id);",
  /* 3 → 4: a cache object belongs to one item (store.h), so nothing looks items up by it;
   * the index cost a b-tree insert and delete at every publish. */
  "DROP INDEX items_cache;",
};

#define STORE_SCHEMA_VERSION ((int) G_N_ELEMENTS (migrations))

/* Scratch tables of the writer connection (TEMP: never in the WAL, gone with the process). */
static const char scratch_ddl[] =
  "CREATE TEMP TABLE excl (ino INTEGER PRIMARY KEY);";

/* ---- errors and statements ------------------------------------------------------------- */

static int
error_code_for (int rc)
{
  switch (rc & 0xff)
    {
    case SQLITE_FULL:
      return STORE_ERROR_FULL;
    case SQLITE_CORRUPT:
      return STORE_ERROR_CORRUPT;
    case SQLITE_NOTADB:
      return STORE_ERROR_FOREIGN;
    default:
      return STORE_ERROR_FAILED;
    }
}

void
store_set_sqlite_error (GError **error, StoreConn *conn, int rc, const char *what)
{
  const char *msg = conn && conn->db ? sqlite3_errmsg (conn->db) : sqlite3_errstr (rc);
  g_set_error (error, STORE_ERROR, error_code_for (rc), "%s: %s: %s",
               conn && conn->owner ? conn->owner->path : "store", what, msg);
}

void
store_stmt_release (StoreStmt *stmt)
{
  if (stmt == NULL)
    return;
  sqlite3_reset (stmt);
  sqlite3_clear_bindings (stmt);
}

StoreStmt *
store_conn_stmt (StoreConn *conn, const char *sql, GError **error)
{
  sqlite3_stmt *stmt = g_hash_table_lookup (conn->stmts, sql);
  if (stmt != NULL)
    return stmt;
  int rc = sqlite3_prepare_v3 (conn->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
  if (rc != SQLITE_OK)
    {
      store_set_sqlite_error (error, conn, rc, "prepare");
      g_debug ("prepare failed for: %s", sql);
      return NULL;
    }
  g_hash_table_insert (conn->stmts, (gpointer) sql, stmt);
  return stmt;
}

gboolean
store_conn_exec (StoreConn *conn, const char *sql, GError **error)
{
  char *msg = NULL;
  int rc = sqlite3_exec (conn->db, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK)
    {
      g_set_error (error, STORE_ERROR, error_code_for (rc), "%s: %s",
                   conn->owner ? conn->owner->path : "store", msg ? msg : sqlite3_errstr (rc));
      sqlite3_free (msg);
      return FALSE;
    }
  return TRUE;
}

gboolean
store_stmt_run (StoreConn *conn, StoreStmt *stmt, const char *what, GError **error)
{
  int rc = sqlite3_step (stmt);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW)
    {
      store_set_sqlite_error (error, conn, rc, what);
      sqlite3_reset (stmt);
      return FALSE;
    }
  sqlite3_reset (stmt);
  return TRUE;
}

char *
store_col_dup (sqlite3_stmt *stmt, int col)
{
  const unsigned char *text = sqlite3_column_text (stmt, col);
  return text ? g_strdup ((const char *) text) : NULL;
}

gint64
store_now (void)
{
  return g_get_real_time () / G_USEC_PER_SEC;
}

/* Runs a cached one-word statement (BEGIN, COMMIT, SAVEPOINT ...): sqlite3_exec would parse
 * and prepare it again on every call, which costs as much as a small publish. */
gboolean
store_conn_run_cached (StoreConn *conn, const char *sql, GError **error)
{
  StoreStmt *st = store_conn_stmt (conn, sql, error);
  if (st == NULL)
    return FALSE;
  return store_stmt_run (conn, st, sql, error);
}

gboolean
store_begin (Store *store, GError **error)
{
  return store_conn_run_cached (store->writer, "BEGIN IMMEDIATE", error);
}

gboolean
store_commit (Store *store, GError **error)
{
  if (store_conn_run_cached (store->writer, "COMMIT", error))
    return TRUE;
  store_rollback (store);
  return FALSE;
}

void
store_rollback (Store *store)
{
  if (!sqlite3_get_autocommit (store->writer->db))
    sqlite3_exec (store->writer->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ---- connections ----------------------------------------------------------------------- */

static void
conn_free (StoreConn *conn)
{
  if (conn == NULL)
    return;
  if (conn->stmts)
    {
      GHashTableIter iter;
      gpointer value;
      g_hash_table_iter_init (&iter, conn->stmts);
      while (g_hash_table_iter_next (&iter, NULL, &value))
        sqlite3_finalize (value);
      g_hash_table_destroy (conn->stmts);
    }
  if (conn->db)
    sqlite3_close_v2 (conn->db);
  g_free (conn);
}

static gboolean
conn_int (StoreConn *conn, const char *sql, gint64 *out, GError **error)
{
  sqlite3_stmt *stmt = NULL;
  int rc = sqlite3_prepare_v2 (conn->db, sql, -1, &stmt, NULL);
  if (rc == SQLITE_OK)
    {
      rc = sqlite3_step (stmt);
      if (rc == SQLITE_ROW)
        {
          *out = sqlite3_column_int64 (stmt, 0);
          rc = SQLITE_OK;
        }
      else if (rc == SQLITE_DONE)
        {
          *out = 0;
          rc = SQLITE_OK;
        }
    }
  if (rc != SQLITE_OK)
    store_set_sqlite_error (error, conn, rc, sql);
  sqlite3_finalize (stmt);
  return rc == SQLITE_OK;
}

/* Per-connection settings; WAL itself is a property of the file, set once by the writer. */
static gboolean
conn_configure (StoreConn *conn, GError **error)
{
  sqlite3_busy_timeout (conn->db, STORE_BUSY_TIMEOUT_MS);
  return store_conn_exec (conn, "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
                                "PRAGMA cache_size = -16384; PRAGMA mmap_size = 268435456;", error);
}

static StoreConn *
conn_open (Store *store, gboolean create, GError **error)
{
  g_autoptr (GError) local = NULL;
  StoreConn *conn = g_new0 (StoreConn, 1);
  conn->owner = store;
  conn->stmts = g_hash_table_new (g_direct_hash, g_direct_equal);
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
  int rc = sqlite3_open_v2 (store->path, &conn->db, flags, NULL);
  if (rc != SQLITE_OK)
    {
      g_set_error (error, STORE_ERROR, error_code_for (rc), "%s: cannot open: %s", store->path,
                   conn->db ? sqlite3_errmsg (conn->db) : sqlite3_errstr (rc));
      conn_free (conn);
      return NULL;
    }
  sqlite3_extended_result_codes (conn->db, 1);
  return conn;
}

StoreReader *
store_reader_acquire (Store *store, GError **error)
{
  g_mutex_lock (&store->pool_lock);
  while (store->idle->len == 0 && store->open_readers >= store->max_readers)
    g_cond_wait (&store->pool_cond, &store->pool_lock);
  if (store->idle->len > 0)
    {
      StoreConn *conn = g_ptr_array_steal_index_fast (store->idle, store->idle->len - 1);
      g_mutex_unlock (&store->pool_lock);
      return conn;
    }
  store->open_readers++;
  g_mutex_unlock (&store->pool_lock);

  StoreConn *conn = conn_open (store, FALSE, error);
  if (conn != NULL && (!conn_configure (conn, error) ||
                       !store_conn_exec (conn, "PRAGMA query_only = ON", error)))
    g_clear_pointer (&conn, conn_free);
  if (conn == NULL)
    {
      g_mutex_lock (&store->pool_lock);
      store->open_readers--;
      g_cond_signal (&store->pool_cond);
      g_mutex_unlock (&store->pool_lock);
    }
  return conn;
}

void
store_reader_release (StoreReader *reader)
{
  if (reader == NULL)
    return;
  Store *store = reader->owner;
  g_mutex_lock (&store->pool_lock);
  g_ptr_array_add (store->idle, reader);
  g_cond_signal (&store->pool_cond);
  g_mutex_unlock (&store->pool_lock);
}

/* ---- open ------------------------------------------------------------------------------ */

/* Decides, without writing, whether @conn's file is ours. Sets *@version. */
static gboolean
check_identity (Store *store, StoreConn *conn, gint64 *version, GError **error)
{
  gint64 app_id = 0, objects = 0;
  g_autoptr (GError) local = NULL;

  if (!conn_int (conn, "PRAGMA application_id", &app_id, &local) ||
      !conn_int (conn, "PRAGMA user_version", version, &local) ||
      !conn_int (conn, "SELECT count(*) FROM sqlite_master", &objects, &local))
    {
      if (local->code == STORE_ERROR_FOREIGN)
        g_set_error (error, STORE_ERROR, STORE_ERROR_FOREIGN,
                     "%s: not an SQLite database; refusing to use or overwrite it", store->path);
      else
        g_propagate_error (error, g_steal_pointer (&local));
      return FALSE;
    }
  if (app_id == 0 && *version == 0 && objects == 0)
    return TRUE; /* empty: ours to initialise */
  if (app_id != STORE_APPLICATION_ID)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_FOREIGN,
                   "%s: an SQLite database that is not an onedrive-syncfs store "
                   "(application_id %#" G_GINT64_MODIFIER "x); refusing to use or overwrite it",
                   store->path, app_id);
      return FALSE;
    }
  if (*version > STORE_SCHEMA_VERSION || *version < 1)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_FOREIGN,
                   "%s: store schema version %" G_GINT64_FORMAT " is not one this build knows "
                   "(1 to %d; written by a newer onedrive-syncfs?); refusing to use or overwrite it",
                   store->path, *version, STORE_SCHEMA_VERSION);
      return FALSE;
    }
  return TRUE;
}

static gboolean
migrate (Store *store, GError **error)
{
  StoreConn *w = store->writer;
  gint64 version = 0;
  if (!store_begin (store, error))
    return FALSE;
  /* Re-read under the write lock: another process may have migrated meanwhile. */
  if (!check_identity (store, w, &version, error))
    goto fail;
  for (gint64 v = version; v < STORE_SCHEMA_VERSION; v++)
    {
      g_info ("%s: migrating store schema %" G_GINT64_FORMAT " -> %" G_GINT64_FORMAT,
              store->path, v, v + 1);
      if (!store_conn_exec (w, migrations[v], error))
        goto fail;
    }
  if (version < STORE_SCHEMA_VERSION)
    {
      g_autofree char *sql = g_strdup_printf ("PRAGMA application_id = %d; PRAGMA user_version = %d;",
                                              STORE_APPLICATION_ID, STORE_SCHEMA_VERSION);
      if (!store_conn_exec (w, sql, error))
        goto fail;
    }
  return store_commit (store, error);

fail:
  store_rollback (store);
  return FALSE;
}

/* The start time of @pid from /proc (field 22), or NULL when unknown. */
static char *
process_start_time (pid_t pid)
{
  g_autofree char *file = g_strdup_printf ("/proc/%d/stat", (int) pid);
  g_autofree char *text = NULL;
  if (!g_file_get_contents (file, &text, NULL, NULL))
    return NULL;
  const char *p = strrchr (text, ')'); /* the command name may contain spaces */
  if (p == NULL)
    return NULL;
  g_auto (GStrv) fields = g_strsplit (p + 2, " ", 0);
  /* After ") " the first field is #3 (state); starttime is #22. */
  if (g_strv_length (fields) < 20)
    return NULL;
  return g_strdup (fields[19]);
}

static gboolean
process_alive (gint64 pid, const char *start)
{
  if (pid <= 0)
    return FALSE;
  if (kill ((pid_t) pid, 0) != 0 && errno != EPERM)
    return FALSE;
  g_autofree char *now = process_start_time ((pid_t) pid);
  if (start == NULL || now == NULL)
    return TRUE;
  return g_str_equal (start, now);
}

/* A run left "syncing" by a process that is gone becomes "interrupted": its queue is intact
 * and the next start resumes it. */
static gboolean
mark_interrupted_runs (Store *store, GError **error)
{
  StoreConn *w = store->writer;
  g_autoptr (GArray) dead = g_array_new (FALSE, FALSE, sizeof (gint64));
  {
    g_autoptr (StoreStmt) st = store_conn_stmt (w, "SELECT id, pid, pid_start FROM runs WHERE state = 'syncing'", error);
    if (st == NULL)
      return FALSE;
    int rc;
    while ((rc = sqlite3_step (st)) == SQLITE_ROW)
      if (!process_alive (sqlite3_column_int64 (st, 1), (const char *) sqlite3_column_text (st, 2)))
        {
          gint64 id = sqlite3_column_int64 (st, 0);
          g_array_append_val (dead, id);
        }
    if (rc != SQLITE_DONE)
      {
        store_set_sqlite_error (error, w, rc, "runs");
        return FALSE;
      }
  }
  for (guint i = 0; i < dead->len; i++)
    {
      g_autoptr (StoreStmt) st = store_conn_stmt (w,
          "UPDATE runs SET state = 'interrupted', finished = ?2,"
          " error_message = coalesce(error_message, 'the process running it ended')"
          " WHERE id = ?1 AND state = 'syncing'", error);
      if (st == NULL)
        return FALSE;
      sqlite3_bind_int64 (st, 1, g_array_index (dead, gint64, i));
      sqlite3_bind_int64 (st, 2, store_now ());
      if (!store_stmt_run (w, st, "interrupt run", error))
        return FALSE;
      g_info ("%s: run %" G_GINT64_FORMAT " was left syncing by a process that is gone: interrupted",
              store->path, g_array_index (dead, gint64, i));
    }
  return TRUE;
}

/* SQLite keeps global memory statistics unless told otherwise, and takes a process-wide mutex
 * on every allocation to do so: a tenth of a delta set's commit went to that lock. Nothing
 * here reads the statistics. This must come before SQLite initialises; if something else
 * in the process used SQLite first, the call fails harmlessly and the default stays. */
static void
tune_sqlite_once (void)
{
  static gsize done = 0;
  if (g_once_init_enter (&done))
    {
      if (sqlite3_config (SQLITE_CONFIG_MEMSTATUS, 0) != SQLITE_OK)
        g_debug ("SQLite already initialised: memory statistics stay on");
      g_once_init_leave (&done, 1);
    }
}

Store *
store_open (const char *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  tune_sqlite_once ();
  g_autoptr (Store) store = g_new0 (Store, 1);
  store->path = g_strdup (path);
  g_mutex_init (&store->write_lock);
  g_mutex_init (&store->pool_lock);
  g_cond_init (&store->pool_cond);
  store->idle = g_ptr_array_new ();
  store->max_readers = 8;
  g_mutex_init (&store->pub_lock);
  g_cond_init (&store->pub_cond);
  store->pub_pending = g_ptr_array_new ();

  store->writer = conn_open (store, TRUE, error);
  if (store->writer == NULL)
    return NULL;
  sqlite3_busy_timeout (store->writer->db, STORE_BUSY_TIMEOUT_MS);

  /* Nothing has written to the file yet; only now may we. */
  gint64 version = 0;
  if (!check_identity (store, store->writer, &version, error))
    return NULL;

  {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2 (store->writer->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    const char *mode = NULL;
    if (rc == SQLITE_OK && (rc = sqlite3_step (st)) == SQLITE_ROW)
      mode = (const char *) sqlite3_column_text (st, 0);
    gboolean wal = mode != NULL && g_ascii_strcasecmp (mode, "wal") == 0;
    sqlite3_finalize (st);
    if (!wal)
      {
        g_set_error (error, STORE_ERROR, STORE_ERROR_FAILED, "%s: cannot switch to WAL journal mode",
                     store->path);
        return NULL;
      }
  }
  if (!conn_configure (store->writer, error))
    return NULL;
  /* The writer's own settings, measured with tools/bench/bench-store:
   *  - no mmap: pages read through mmap bypass the page cache, so in WAL mode every access
   *    searched the WAL index again (sqlite3WalFindFrame: 18% of a commit's instructions);
   *    through the page cache the writer finds its pages at once (readers keep mmap);
   *  - a larger cache, so a 100,000-item commit does not re-read its own pages;
   *  - checkpoints every 10,000 pages (40 MB of WAL) instead of 1,000: a checkpoint writes
   *    each page once however often it changed and ends in an fsync, so one per hundreds of
   *    publishes instead of one per few dozen; the file is cut back to 16 MB afterwards. */
  if (!store_conn_exec (store->writer, "PRAGMA mmap_size = 0; PRAGMA cache_size = -32768;"
                                       "PRAGMA wal_autocheckpoint = 10000;"
                                       "PRAGMA journal_size_limit = 16777216;", error))
    return NULL;
  if (!migrate (store, error))
    return NULL;
  /* Scratch space lives in memory (a delta set is staged in memory too: stage.c). */
  if (!store_conn_exec (store->writer, "PRAGMA temp_store = MEMORY", error) ||
      !store_conn_exec (store->writer, scratch_ddl, error))
    return NULL;
  if (!mark_interrupted_runs (store, error))
    return NULL;
  return g_steal_pointer (&store);
}

/* The page cache @conn holds now, in bytes. */
static gsize
conn_cache_bytes (StoreConn *conn)
{
  int used = 0, high = 0;
  sqlite3_db_status (conn->db, SQLITE_DBSTATUS_CACHE_USED, &used, &high, 0);
  return used > 0 ? (gsize) used : 0;
}

static gsize
conn_release (StoreConn *conn)
{
  gsize before = conn_cache_bytes (conn);
  sqlite3_db_release_memory (conn->db);
  gsize after = conn_cache_bytes (conn);
  return before > after ? before - after : 0;
}

gsize
store_trim_memory (Store *store)
{
  g_mutex_lock (&store->write_lock);
  gsize released = conn_release (store->writer);
  g_mutex_unlock (&store->write_lock);
  /* Readers in use keep theirs: they are busy, and a reader's cache is small next to the
   * writer's after a commit. */
  g_mutex_lock (&store->pool_lock);
  for (guint i = 0; i < store->idle->len; i++)
    released += conn_release (store->idle->pdata[i]);
  g_mutex_unlock (&store->pool_lock);
#ifdef __GLIBC__
  malloc_trim (0);
#endif
  g_debug ("memory trimmed: %" G_GSIZE_FORMAT " KiB of page cache released", released / 1024);
  return released;
}

void
store_free (Store *store)
{
  if (store == NULL)
    return;
  g_mutex_lock (&store->pool_lock);
  if (store->idle->len != store->open_readers)
    g_warning ("%s: store freed while %u reader(s) are in use", store->path,
               store->open_readers - store->idle->len);
  for (guint i = 0; i < store->idle->len; i++)
    conn_free (store->idle->pdata[i]);
  g_ptr_array_free (store->idle, TRUE);
  g_mutex_unlock (&store->pool_lock);
  conn_free (store->writer);
  store_staging_free (store);
  g_mutex_clear (&store->write_lock);
  g_mutex_clear (&store->pool_lock);
  g_cond_clear (&store->pool_cond);
  g_ptr_array_free (store->pub_pending, TRUE);
  g_mutex_clear (&store->pub_lock);
  g_cond_clear (&store->pub_cond);
  g_free (store->path);
  g_free (store);
}

/* ---- sources --------------------------------------------------------------------------- */

void
store_source_free (StoreSource *source)
{
  if (source == NULL)
    return;
  g_free (source->remote_path);
  g_free (source->drive_id);
  g_free (source->item_id);
  g_free (source->cursor);
  g_free (source);
}

/* "/Documents//Reports/" → ["Documents", "Reports"]; NULL when the path is not absolute or
 * has "." / ".." components. */
static GStrv
split_remote_path (const char *remote_path)
{
  if (remote_path == NULL || remote_path[0] != '/')
    return NULL;
  g_auto (GStrv) raw = g_strsplit (remote_path, "/", -1);
  g_autoptr (GStrvBuilder) b = g_strv_builder_new ();
  for (char **p = raw; *p; p++)
    {
      if (**p == '\0')
        continue;
      if (g_str_equal (*p, ".") || g_str_equal (*p, ".."))
        return NULL;
      g_strv_builder_add (b, *p);
    }
  return g_strv_builder_end (b);
}

static gboolean
find_child (StoreConn *w, gint64 parent, const char *name, gint64 *ino, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "SELECT ino FROM items WHERE t_parent_ino = ?1 AND t_name = ?2 AND kind = 1"
      " ORDER BY anchored DESC, ino LIMIT 1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, parent);
  sqlite3_bind_text (st, 2, name, -1, SQLITE_STATIC);
  int rc = sqlite3_step (st);
  *ino = rc == SQLITE_ROW ? sqlite3_column_int64 (st, 0) : 0;
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, w, rc, "find child");
      return FALSE;
    }
  return TRUE;
}

static gboolean
insert_anchor (StoreConn *w, gint64 parent, const char *name, const char *drive_id,
               const char *item_id, gint64 *ino, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "INSERT INTO items (drive_id, item_id, anchored, kind, state, t_parent_ino, t_name,"
      " parent_ino, name, generation) VALUES (?1, ?2, 1, 1, 1, ?3, ?4, ?3, ?4, 1)", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_text (st, 1, drive_id, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 2, item_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, 3, parent);
  sqlite3_bind_text (st, 4, name, -1, SQLITE_STATIC);
  if (!store_stmt_run (w, st, "insert directory", error))
    return FALSE;
  *ino = sqlite3_last_insert_rowid (w->db);
  return TRUE;
}

/* Binds the directory @ino to the remote item and pins it where configuration puts it. */
static gboolean
bind_anchor (StoreConn *w, gint64 ino, gint64 parent, const char *name, const char *drive_id,
             const char *item_id, GError **error)
{
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "UPDATE items SET drive_id = ?2, item_id = ?3, anchored = 1, state = 1,"
      " t_parent_ino = coalesce(?4, t_parent_ino), t_name = coalesce(?5, t_name),"
      " parent_ino = coalesce(?4, t_parent_ino), name = coalesce(?5, t_name)"
      " WHERE ino = ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, ino);
  sqlite3_bind_text (st, 2, drive_id, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 3, item_id, -1, SQLITE_STATIC);
  if (parent > 0)
    sqlite3_bind_int64 (st, 4, parent);
  sqlite3_bind_text (st, 5, name, -1, SQLITE_STATIC);
  return store_stmt_run (w, st, "bind directory", error);
}

/* A folder on the way to a source being configured that a removed source left to be deleted
 * (its DELETE work not applied yet) must stay: the engine configures a source only once its
 * path was found remotely. Its delete is dropped, and a synthetic one is pinned again (the
 * removal had unpinned it). */
static gboolean
revive_on_path (StoreConn *w, gint64 ino, GError **error)
{
  g_autoptr (StoreStmt) drop = store_conn_stmt (w, "DELETE FROM work WHERE ino = ?1 AND action = 3", error);
  g_autoptr (StoreStmt) pin = drop == NULL ? NULL : store_conn_stmt (w,
      "UPDATE items SET anchored = 1 WHERE ino = ?1 AND item_id IS NULL", error);
  if (pin == NULL)
    return FALSE;
  sqlite3_bind_int64 (drop, 1, ino);
  sqlite3_bind_int64 (pin, 1, ino);
  return store_stmt_run (w, drop, "revive", error) && store_stmt_run (w, pin, "pin synthetic", error);
}

static gboolean
source_ensure_locked (Store *store, const char *remote_path, const char *drive_id,
                      const char *item_id, gint64 *source_id, GError **error)
{
  StoreConn *w = store->writer;
  g_auto (GStrv) parts = split_remote_path (remote_path);
  if (parts == NULL)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_FAILED,
                   "source path \"%s\" must be absolute, without \".\" or \"..\"", remote_path);
      return FALSE;
    }
  g_autofree char *joined = g_strjoinv ("/", parts);
  g_autofree char *norm = g_strconcat ("/", joined, NULL);
  guint n = g_strv_length (parts);

  /* Synthetic directories for every component above the source's own folder; a directory
   * already there (another source's, or a real folder) is shared. */
  gint64 parent = STORE_ROOT_INO;
  for (guint i = 0; i + 1 < n; i++)
    {
      gint64 ino = 0;
      if (!find_child (w, parent, parts[i], &ino, error))
        return FALSE;
      if (ino == 0 && !insert_anchor (w, parent, parts[i], NULL, NULL, &ino, error))
        return FALSE;
      if (!revive_on_path (w, ino, error))
        return FALSE;
      parent = ino;
    }

  /* The source's own folder: the row already bound to the item (an overlapping source knows
   * it), else a directory with that name (a synthetic one another source made), else new. */
  gint64 root = 0;
  if (n == 0)
    root = STORE_ROOT_INO;
  else
    {
      g_autoptr (StoreStmt) st = store_conn_stmt (w,
          "SELECT ino FROM items WHERE drive_id = ?1 AND item_id = ?2", error);
      if (st == NULL)
        return FALSE;
      sqlite3_bind_text (st, 1, drive_id, -1, SQLITE_STATIC);
      sqlite3_bind_text (st, 2, item_id, -1, SQLITE_STATIC);
      if (sqlite3_step (st) == SQLITE_ROW)
        root = sqlite3_column_int64 (st, 0);
      if (root == 0 && !find_child (w, parent, parts[n - 1], &root, error))
        return FALSE;
    }
  if (root == 0)
    {
      if (!insert_anchor (w, parent, parts[n - 1], drive_id, item_id, &root, error))
        return FALSE;
    }
  else if (!bind_anchor (w, root, n == 0 ? 0 : parent, n == 0 ? NULL : parts[n - 1],
                         drive_id, item_id, error) ||
           !revive_on_path (w, root, error))
    return FALSE;

  /* The source row. A different item under the same path (deleted and re-created remotely)
   * invalidates the cursor: the new folder must be enumerated. */
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "INSERT INTO sources (remote_path, drive_id, item_id, root_ino) VALUES (?1, ?2, ?3, ?4)"
      " ON CONFLICT (remote_path) DO UPDATE SET"
      "  cursor = CASE WHEN item_id = excluded.item_id AND drive_id = excluded.drive_id"
      "           THEN cursor ELSE NULL END,"
      "  drive_id = excluded.drive_id, item_id = excluded.item_id, root_ino = excluded.root_ino"
      " RETURNING id", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_text (st, 1, norm, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 2, drive_id, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 3, item_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, 4, root);
  int rc = sqlite3_step (st);
  if (rc != SQLITE_ROW)
    {
      store_set_sqlite_error (error, w, rc, "source");
      return FALSE;
    }
  gint64 id = sqlite3_column_int64 (st, 0);
  sqlite3_reset (st);

  g_autoptr (StoreStmt) own = store_conn_stmt (w,
      "UPDATE items SET source_id = ?1 WHERE ino = ?2 AND source_id IS NULL", error);
  if (own == NULL)
    return FALSE;
  sqlite3_bind_int64 (own, 1, id);
  sqlite3_bind_int64 (own, 2, root);
  if (!store_stmt_run (w, own, "source root", error))
    return FALSE;
  if (source_id)
    *source_id = id;
  return TRUE;
}

gboolean
store_source_ensure (Store *store, const char *remote_path, const char *drive_id,
                     const char *item_id, gint64 *source_id, GError **error)
{
  g_return_val_if_fail (drive_id != NULL && item_id != NULL, FALSE);
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  if (!store_begin (store, error))
    return FALSE;
  if (!source_ensure_locked (store, remote_path, drive_id, item_id, source_id, error))
    {
      store_rollback (store);
      return FALSE;
    }
  return store_commit (store, error);
}

GPtrArray *
store_sources (Store *store, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return NULL;
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT id, remote_path, drive_id, item_id, cursor, last_completed FROM sources ORDER BY id",
      error);
  if (st == NULL)
    return NULL;
  g_autoptr (GPtrArray) out = g_ptr_array_new_with_free_func ((GDestroyNotify) store_source_free);
  int rc;
  while ((rc = sqlite3_step (st)) == SQLITE_ROW)
    {
      StoreSource *s = g_new0 (StoreSource, 1);
      s->id = sqlite3_column_int64 (st, 0);
      s->remote_path = store_col_dup (st, 1);
      s->drive_id = store_col_dup (st, 2);
      s->item_id = store_col_dup (st, 3);
      s->cursor = store_col_dup (st, 4);
      s->last_completed = sqlite3_column_int64 (st, 5);
      g_ptr_array_add (out, s);
    }
  if (rc != SQLITE_DONE)
    {
      store_set_sqlite_error (error, r, rc, "sources");
      return NULL;
    }
  return g_steal_pointer (&out);
}

gboolean
store_source_reset_cursor (Store *store, gint64 source_id, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  g_autoptr (StoreStmt) st = store_conn_stmt (store->writer,
      "UPDATE sources SET cursor = NULL WHERE id = ?1", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, source_id);
  if (!store_stmt_run (store->writer, st, "reset cursor", error))
    return FALSE;
  if (sqlite3_changes (store->writer->db) == 0)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no source %" G_GINT64_FORMAT, source_id);
      return FALSE;
    }
  return TRUE;
}

/* ---- runs ------------------------------------------------------------------------------ */

static gboolean
run_begin_locked (Store *store, gint64 *run_id, GError **error)
{
  g_autofree char *start = process_start_time (getpid ());
  StoreConn *w = store->writer;
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "INSERT INTO runs (state, started, pid, pid_start) VALUES ('syncing', ?1, ?2, ?3)", error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, store_now ());
  sqlite3_bind_int64 (st, 2, getpid ());
  sqlite3_bind_text (st, 3, start, -1, SQLITE_STATIC);
  if (!store_stmt_run (w, st, "begin run", error))
    return FALSE;
  *run_id = sqlite3_last_insert_rowid (w->db);
  g_autoptr (StoreStmt) prune = store_conn_stmt (w,
      "DELETE FROM runs WHERE id <= ?1 - " G_STRINGIFY (STORE_RUNS_KEPT), error);
  if (prune == NULL)
    return FALSE;
  sqlite3_bind_int64 (prune, 1, *run_id);
  return store_stmt_run (w, prune, "prune runs", error);
}

gboolean
store_run_begin (Store *store, gint64 *run_id, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  gint64 id = 0;
  if (!store_begin (store, error))
    return FALSE;
  if (!run_begin_locked (store, &id, error))
    {
      store_rollback (store);
      return FALSE;
    }
  if (!store_commit (store, error))
    return FALSE;
  if (run_id)
    *run_id = id;
  return TRUE;
}

gboolean
store_run_finish (Store *store, gint64 run_id, const char *state, const StoreRunCounters *c,
                  const char *error_message, GError **error)
{
  g_return_val_if_fail (state != NULL, FALSE);
  static const StoreRunCounters zero;
  if (c == NULL)
    c = &zero;
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  StoreConn *w = store->writer;
  g_autoptr (StoreStmt) st = store_conn_stmt (w,
      "UPDATE runs SET state = ?2, finished = ?3, processed = ?4, unchanged = ?5, failed = ?6,"
      " filtered = ?7, deleted = ?8, renamed = ?9, bytes = ?10, error_message = ?11 WHERE id = ?1",
      error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, run_id);
  sqlite3_bind_text (st, 2, state, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, 3, store_now ());
  sqlite3_bind_int64 (st, 4, c->processed);
  sqlite3_bind_int64 (st, 5, c->unchanged);
  sqlite3_bind_int64 (st, 6, c->failed);
  sqlite3_bind_int64 (st, 7, c->filtered);
  sqlite3_bind_int64 (st, 8, c->deleted);
  sqlite3_bind_int64 (st, 9, c->renamed);
  sqlite3_bind_int64 (st, 10, (gint64) c->bytes);
  sqlite3_bind_text (st, 11, error_message, -1, SQLITE_STATIC);
  if (!store_stmt_run (w, st, "finish run", error))
    return FALSE;
  if (sqlite3_changes (w->db) == 0)
    {
      g_set_error (error, STORE_ERROR, STORE_ERROR_NOT_FOUND, "no run %" G_GINT64_FORMAT, run_id);
      return FALSE;
    }
  if (g_str_equal (state, "completed") || g_str_equal (state, "completed_with_errors"))
    {
      /* Every source's set was committed in this run: record when. */
      g_autoptr (StoreStmt) done = store_conn_stmt (w,
          "UPDATE sources SET last_completed = ?1 WHERE cursor IS NOT NULL", error);
      if (done == NULL)
        return FALSE;
      sqlite3_bind_int64 (done, 1, store_now ());
      if (!store_stmt_run (w, done, "last completed", error))
        return FALSE;
    }
  return TRUE;
}

gboolean
store_run_add_failure (Store *store, gint64 run_id, const char *path, const char *error_type,
                       const char *message, GError **error)
{
  g_return_val_if_fail (path != NULL && error_type != NULL, FALSE);
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&store->write_lock);
  g_autoptr (StoreStmt) st = store_conn_stmt (store->writer,
      "INSERT INTO run_failures (run_id, path, error_type, message, at) VALUES (?1, ?2, ?3, ?4, ?5)",
      error);
  if (st == NULL)
    return FALSE;
  sqlite3_bind_int64 (st, 1, run_id);
  sqlite3_bind_text (st, 2, path, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 3, error_type, -1, SQLITE_STATIC);
  sqlite3_bind_text (st, 4, message, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (st, 5, store_now ());
  return store_stmt_run (store->writer, st, "run failure", error);
}

void
store_run_free (StoreRun *run)
{
  if (run == NULL)
    return;
  g_free (run->state);
  g_free (run->error_message);
  g_free (run);
}

StoreRun *
store_last_run (Store *store, GError **error)
{
  g_autoptr (StoreReader) r = store_reader_acquire (store, error);
  if (r == NULL)
    return NULL;
  g_autoptr (StoreStmt) st = store_conn_stmt (r,
      "SELECT id, state, started, finished, processed, unchanged, failed, filtered, deleted,"
      " renamed, bytes, error_message FROM runs ORDER BY id DESC LIMIT 1", error);
  if (st == NULL)
    return NULL;
  int rc = sqlite3_step (st);
  if (rc == SQLITE_DONE)
    return NULL;
  if (rc != SQLITE_ROW)
    {
      store_set_sqlite_error (error, r, rc, "last run");
      return NULL;
    }
  StoreRun *run = g_new0 (StoreRun, 1);
  run->id = sqlite3_column_int64 (st, 0);
  run->state = store_col_dup (st, 1);
  run->started = sqlite3_column_int64 (st, 2);
  run->finished = sqlite3_column_int64 (st, 3);
  run->counters.processed = sqlite3_column_int (st, 4);
  run->counters.unchanged = sqlite3_column_int (st, 5);
  run->counters.failed = sqlite3_column_int (st, 6);
  run->counters.filtered = sqlite3_column_int (st, 7);
  run->counters.deleted = sqlite3_column_int (st, 8);
  run->counters.renamed = sqlite3_column_int (st, 9);
  run->counters.bytes = (guint64) sqlite3_column_int64 (st, 10);
  run->error_message = store_col_dup (st, 11);
  return run;
}
