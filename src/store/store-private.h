/* Internals shared by the store's modules (store.c, stage.c, queue.c, fsread.c).
 *
 * Lock order: pub_lock is never held while taking another lock; write_lock may be held while
 * taking pool_lock. Code holding a reader connection never waits for write_lock, so a reader is
 * never part of a wait cycle.
 */
#pragma once

#include <sqlite3.h>

#include <onedrive-syncfs/store.h>

G_BEGIN_DECLS

/* Item states (items.state). */
enum {
  ITEM_PENDING = 0,      /* known remotely, never published: invisible */
  ITEM_PUBLISHED = 1,    /* visible with its published columns */
  ITEM_EXCLUDED = 2,     /* removed by the user: recorded, never queued, invisible */
  ITEM_FAILED = 3,       /* never published and its last attempt failed: invisible */
  ITEM_FILTERED = 4,     /* kept out by the engine's filters (filter_reason): no work, invisible */
};

typedef struct _StoreConn StoreConn;
struct _StoreConn {
  Store      *owner;
  sqlite3    *db;
  GHashTable *stmts;     /* const char *sql (a literal's address) → sqlite3_stmt*, owned */
};

struct _Store {
  char      *path;
  GMutex     write_lock;   /* serialises every write; protects writer */
  StoreConn *writer;       /* protected by write_lock */
  GHashTable *staging;     /* gint64 source id → its delta set being paged (stage.c); write_lock */

  GMutex     pool_lock;    /* protects idle, open_readers */
  GCond      pool_cond;
  GPtrArray *idle;         /* StoreConn*, readers not in use */
  guint      open_readers; /* readers opened, idle or in use */
  guint      max_readers;

  GMutex     pub_lock;     /* protects pub_pending, pub_leader (group commit, queue.c) */
  GCond      pub_cond;
  GPtrArray *pub_pending;  /* PubReq*, waiting for the next publish transaction */
  gboolean   pub_leader;   /* a thread is committing a batch */
};

/* A cached prepared statement: reset and unbound when released. */
typedef sqlite3_stmt StoreStmt;
void store_stmt_release (StoreStmt *stmt);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (StoreStmt, store_stmt_release)

/* Returns the cached statement for @sql (prepared on first use), or NULL with @error. @sql
 * must be a string literal: the cache is keyed by its address. */
StoreStmt *store_conn_stmt (StoreConn *conn, const char *sql, GError **error);

/* A reader connection from the pool; give it back with store_reader_release. */
typedef StoreConn StoreReader;
StoreReader *store_reader_acquire (Store *store, GError **error);
void store_reader_release (StoreReader *reader);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (StoreReader, store_reader_release)

/* Sets @error from @db's last error (@rc its code), prefixed with @what and the file. */
void store_set_sqlite_error (GError **error, StoreConn *conn, int rc, const char *what);

/* Runs @sql (no results) on @conn. */
gboolean store_conn_exec (StoreConn *conn, const char *sql, GError **error);
/* Runs the literal @sql (no parameters, no results) through the statement cache. */
gboolean store_conn_run_cached (StoreConn *conn, const char *sql, GError **error);
/* Steps a statement that returns no rows (SQLITE_DONE expected). */
gboolean store_stmt_run (StoreConn *conn, StoreStmt *stmt, const char *what, GError **error);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK on the writer (write_lock held). */
gboolean store_begin (Store *store, GError **error);
gboolean store_commit (Store *store, GError **error);
void store_rollback (Store *store);

/* An item to delete: its depth below the outermost item deleted with it, and what decides
 * whether it gets DELETE work (an excluded or filtered one is forgotten instead; an anchored one
 * stays). Deleted deepest first: store_doomed_deeper_first orders values of this type. */
typedef struct {
  gint64   ino;
  int      depth;
  int      state;
  gboolean anchored;
} StoreDoomed;
int store_doomed_deeper_first (gconstpointer a, gconstpointer b);

/* Drops every staged delta set (store_free). */
void store_staging_free (Store *store);

/* Column helpers. */
char *store_col_dup (sqlite3_stmt *stmt, int col);

/* The mount path of @ino along the published (@published) or remote-target tree. */
char *store_path_on (StoreConn *conn, guint64 ino, gboolean published, GError **error);

gint64 store_now (void);

G_END_DECLS
