/* The state store: one SQLite database per profile, the single source of truth for what the
 * mount shows and what work remains.
 *
 * The invariant (docs/architecture.md): a delta set is staged page by page; when its deltaLink
 * arrives, ONE transaction turns the staged items into pending work AND stores the new cursor.
 * After that the queue, not the cursor, carries what remains. A work item leaves the queue only
 * in the transaction that publishes its new state. So a cancel, failure or SIGKILL at any
 * point loses nothing and repeats nothing.
 *
 * Thread-safety: every function may be called from any thread. Readers (the filesystem) never
 * wait behind a writer for longer than one short transaction.
 *
 * This header is the contract between the store, the engine (src/sync) and the filesystem
 * (src/fs). Its owner may refine it; consumers adapt.
 */
#pragma once

#include <glib.h>

#include <onedrive-syncfs/graph-item.h>

G_BEGIN_DECLS

#define STORE_ERROR (store_error_quark ())
GQuark store_error_quark (void);

typedef enum {
  STORE_ERROR_FAILED,
  STORE_ERROR_NOT_FOUND,      /* no such inode / name */
  STORE_ERROR_FOREIGN,        /* not SQLite, not our schema, or a newer user_version: refused */
  STORE_ERROR_CORRUPT,
  STORE_ERROR_FULL,           /* SQLITE_FULL: the disk is full */
} StoreErrorCode;

#define STORE_ROOT_INO 1        /* the mount root */

typedef struct _Store Store;

/* Opens (creating or migrating) the database at @path. A run left "syncing" by a process that
 * is gone becomes "interrupted". A foreign or newer database is refused, never overwritten. */
Store *store_open (const char *path, GError **error);
void store_free (Store *store);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Store, store_free)

/* ---- what the filesystem reads -------------------------------------------------------- */

typedef enum { STORE_KIND_FILE, STORE_KIND_DIR } StoreKind;

typedef struct {
  guint64   ino;
  guint64   parent_ino;
  char     *name;
  StoreKind kind;
  gint64    size;
  gint64    mtime;           /* unix seconds */
  char     *cache_object;    /* file name inside the cache's objects dir; NULL for dirs */
  char     *quickxor_hash;
  guint64   generation;      /* bumps when the content changes: the fs invalidates on it */
} StoreEntry;

void store_entry_clear (StoreEntry *entry);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (StoreEntry, store_entry_clear)

/* Only published, not excluded entries are visible. Synthetic directories (the path above a
 * source, e.g. "Documents" for the source "/Documents/Reports") are visible dirs too. */
gboolean store_lookup (Store *store, guint64 parent_ino, const char *name, StoreEntry *out, GError **error);
gboolean store_getattr (Store *store, guint64 ino, StoreEntry *out, GError **error);
/* Children of @ino, sorted by name, StoreEntry* each (free with store_entry_free). */
GPtrArray *store_readdir (Store *store, guint64 ino, GError **error);
void store_entry_free (StoreEntry *entry);
/* Every cache object some item holds (a set of char*), whatever the item's state or place: a
 * published item whose folder is already gone, or that shares its name with a newer one, is out
 * of the visible tree but still holds its bytes until its pending work applies. What is not in
 * the set belongs to nobody. */
GHashTable *store_cache_objects (Store *store, GError **error);
/* "/Documents/Reports/a.txt" — the mount path of @ino. */
char *store_path (Store *store, guint64 ino, GError **error);
/* Bytes and files held by published entries (statfs). */
gboolean store_usage (Store *store, guint64 *bytes, guint64 *files, GError **error);

/* Gives back memory the store holds but no longer needs: the clean pages the writer and the
 * idle readers cache, and what the C library keeps of freed heap (a staged set, a big
 * commit). Nothing is lost: caches refill on use. For the end of a sync run. Returns the
 * bytes of page cache released. */
gsize store_trim_memory (Store *store);

/* Removes @ino and its descendants from the mount and records them as excluded, so no later
 * run brings them back until store_clear_exclusions(): later sets record their changes and new
 * items below them, but queue nothing; their pending work is dropped. Returns the cache
 * objects to unlink. The root cannot be excluded. */
gboolean store_exclude (Store *store, guint64 ino, GPtrArray **cache_objects_to_remove, GError **error);
/* Excluded items become pending downloads again. Returns how many came back. */
gboolean store_clear_exclusions (Store *store, guint *count, GError **error);

/* ---- sources --------------------------------------------------------------------------- */

typedef struct {
  gint64  id;
  char   *remote_path;      /* as configured: "/Documents/Reports" */
  char   *drive_id;
  char   *item_id;
  char   *cursor;           /* saved deltaLink, NULL before the first completed enumeration */
  gint64  last_completed;   /* unix seconds, 0 never */
} StoreSource;

void store_source_free (StoreSource *source);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (StoreSource, store_source_free)

/* Adds or updates the source for @remote_path ("/Documents/Reports": normalised, must be
 * absolute) and the synthetic dirs above it; sources under a shared prefix share them. The
 * source's own folder is bound to (@drive_id, @item_id) and pinned at the configured path.
 * A different item under the same path drops the cursor. */
gboolean store_source_ensure (Store *store, const char *remote_path, const char *drive_id,
                              const char *item_id, gint64 *source_id, GError **error);
GPtrArray *store_sources (Store *store, GError **error);   /* StoreSource* */

/* ---- staging a delta set --------------------------------------------------------------- */

/* Forgets any staged items of @source_id (a set that was interrupted is re-read from the old
 * cursor). Staged items are held in memory until the commit or until store_free. */
gboolean store_stage_begin (Store *store, gint64 source_id, GError **error);
/* Stages one page; duplicates are fine (the last occurrence wins at commit). */
gboolean store_stage_add (Store *store, gint64 source_id, GPtrArray *graph_items, GError **error);

typedef struct {
  guint queued_downloads;
  guint queued_updates;
  guint queued_moves;
  guint queued_deletes;     /* tombstones, their known descendants, a reconcile's leftovers */
  guint unchanged;          /* nothing to do (includes tombstones for ids never seen) */
  guint queued_mkdirs;      /* folders new, renamed or moved */
} StoreCommitStats;

/* The one transaction: staged items → pending work, cursor := @delta_link, staging cleared.
 * @reconcile (full enumeration or 410 resync): items of this source not in the set are queued
 * for deletion, so the server wins. Items under an exclusion are recorded but not queued. */
gboolean store_stage_commit (Store *store, gint64 source_id, const char *delta_link,
                             gboolean reconcile, StoreCommitStats *stats, GError **error);
/* Removes a source that left the configuration (src/store/source-remove.c): the source row
 * goes, and what only it showed gets DELETE work, deepest first (@queued_deletes, optional,
 * counts it), which the engine applies at its next run. What another source shows, or the
 * folders that lead to one, stays; a source another one covers only loses its row. */
gboolean store_source_remove (Store *store, gint64 source_id, guint *queued_deletes, GError **error);
/* Drops the cursor (410, or a start with "full"); the queue is kept. */
gboolean store_source_reset_cursor (Store *store, gint64 source_id, GError **error);

/* ---- the work queue -------------------------------------------------------------------- */

typedef enum {
  STORE_ACTION_DOWNLOAD,    /* new file */
  STORE_ACTION_UPDATE,      /* content changed */
  STORE_ACTION_MOVE,        /* name or parent changed, content the same: metadata only */
  STORE_ACTION_DELETE,
  STORE_ACTION_MKDIR,       /* new folder, or a folder renamed / moved */
} StoreAction;

typedef struct {
  gint64      work_id;
  gint64      source_id;
  StoreAction action;
  guint64     ino;
  GraphItem  *item;          /* the remote state to publish */
  char       *path;          /* mount path it will have ("/Documents/Reports/a.txt") */
  char       *old_path;      /* for MOVE / DELETE: where it was */
  guint       attempts;      /* failed attempts so far */
  char       *last_error_type; /* of the last failed attempt, NULL if none */
} StoreWork;

void store_work_free (StoreWork *work);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (StoreWork, store_work_free)

/* Up to @limit due work items with work_id > @after, ascending work_id, which is an order
 * that is safe to apply: deletes first (deepest first), then folders (parents first), then
 * moves, updates, downloads. @path follows the target parent chain (parentReference.id,
 * never delta paths); @old_path is the published path, NULL for never-published items.
 * Items whose name_problem is set are queued like any other, for the engine to fail them. */
GPtrArray *store_work_next (Store *store, gint64 after, guint limit, GError **error);
/* Counts the due work (the run's total). */
gboolean store_work_count (Store *store, guint *count, GError **error);

/* Publishes the work's new state and removes it from the queue, in one transaction.
 * @cache_object: the file now holding the verified bytes (DOWNLOAD / UPDATE of a file), else NULL.
 * A cache object holds the bytes of ONE item: the caller gives each publish a name of its own
 * (never one another item holds), so the store need not look objects up to know they are free.
 * @stale_cache_objects receives cache objects no longer referenced by any item (after UPDATE /
 * DELETE): a new array when *@stale_cache_objects is NULL, else appended to; the caller unlinks
 * them. When a later commit superseded this work (new target: new work_id) or made it obsolete,
 * nothing is published and @cache_object itself comes back in @stale_cache_objects (TRUE is
 * returned): bytes for a superseded target must never show. Concurrent callers are merged
 * into one transaction (group commit); serialising calls outside the store defeats that. */
gboolean store_work_publish (Store *store, const StoreWork *work, const char *cache_object,
                             GPtrArray **stale_cache_objects, GError **error);
/* The same for @n works in one transaction (cheaper per item; each still all-or-nothing).
 * @cache_objects may be NULL (metadata-only works). Returns FALSE with the first failure in
 * @error; @errors (optional) receives one GError* or NULL per work, in order. */
gboolean store_work_publish_batch (Store *store, StoreWork *const *works,
                                   const char *const *cache_objects, guint n,
                                   GPtrArray **stale_cache_objects, GPtrArray **errors,
                                   GError **error);
/* Keeps the work queued with its error and one more attempt; the next attempt is due after a
 * backoff: at once after the first failure (the next run retries), then 1, 2, 4 … minutes,
 * capped at one hour; never abandoned. Superseded work: nothing happens. @error_type: "download_error", "timeout", "hash_mismatch", "name_invalid",
 * "too_large", "disk_full", ... */
gboolean store_work_fail (Store *store, const StoreWork *work, const char *error_type,
                          const char *message, GError **error);

/* Takes the work out of the queue and records its item as filtered (by the engine's
 * max_file_size, include or exclude globs), with @reason ("too_large", "not_included",
 * "excluded", ...), in one transaction. A filtered item is not visible in the mount (one that
 * was published is withdrawn: its cache object comes back in @stale_cache_objects, as for
 * store_work_publish), has no work and no backoff, and is not a failure.
 * It is reconsidered whenever a delta set reports it again: store_stage_commit queues every
 * re-reported item that is not published, so a change of the file is honoured on its next
 * change; and a start with "full" enumerates everything (store_source_reset_cursor, then a
 * reconciling commit), which re-queues every filtered item, so a changed filter takes effect
 * (a published file the new filter refuses has no work then: see store_withdraw_file).
 * A filtered item deleted remotely is forgotten at commit (nothing to delete in the mount).
 * Superseded work: nothing happens (TRUE). */
gboolean store_work_skip (Store *store, const StoreWork *work, const char *reason,
                          GPtrArray **stale_cache_objects, GError **error);
/* Withdraws the published file @ino that a filter now refuses (a filter changed since it was
 * published, and the file did not): as store_work_skip, for an item with no work to skip — it
 * leaves the mount, keeps its place for a later publish, and its cache object comes back in
 * @stale_cache_objects. Queued work for it goes too: the filter would refuse it. Anything but
 * a published, unanchored file is left alone (TRUE, @withdrawn FALSE). */
gboolean store_withdraw_file (Store *store, guint64 ino, const char *reason, gboolean *withdrawn,
                              GPtrArray **stale_cache_objects, GError **error);

/* ---- runs ------------------------------------------------------------------------------ */

typedef struct {
  guint   processed, unchanged, failed, filtered, deleted, renamed;
  guint64 bytes;
} StoreRunCounters;

gboolean store_run_begin (Store *store, gint64 *run_id, GError **error);
/* @state: "completed", "completed_with_errors", "cancelled", "failed". */
gboolean store_run_finish (Store *store, gint64 run_id, const char *state,
                           const StoreRunCounters *counters, const char *error_message,
                           GError **error);
gboolean store_run_add_failure (Store *store, gint64 run_id, const char *path,
                                const char *error_type, const char *message, GError **error);

typedef struct {
  gint64           id;
  char            *state;
  gint64           started, finished;
  StoreRunCounters counters;
  char            *error_message;
} StoreRun;

void store_run_free (StoreRun *run);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (StoreRun, store_run_free)
/* The newest run, or NULL (no error) when there was none. */
StoreRun *store_last_run (Store *store, GError **error);

G_END_DECLS
