/* The live status of the current (or last) run, and its JSON snapshot (docs/status.md).
 *
 * Every counter that has a list beside it (files_failed / failed_files, files_filtered /
 * filtered_files, files_unverified / unverified_files) is changed in the same critical section
 * as its list, so a snapshot can never show them disagreeing — the seed's status counted
 * failures in one place and listed them in another. One mutex; held only to copy data.
 */
#pragma once

#include <glib.h>

#include <onedrive-syncfs/run-state.h>

G_BEGIN_DECLS

typedef enum {
  SYNC_OUTCOME_ADDED,        /* new file published: files_processed, bytes */
  SYNC_OUTCOME_UPDATED,      /* new content published: files_processed, bytes */
  SYNC_OUTCOME_UNCHANGED,    /* same content as published: files_unchanged */
  SYNC_OUTCOME_RENAMED,      /* name or parent changed, metadata only: renamed_count */
  SYNC_OUTCOME_DELETED,      /* deleted_count */
  SYNC_OUTCOME_FOLDER,       /* folder created or changed: folders_processed */
} SyncOutcome;

typedef struct {
  guint   files_processed, files_unchanged, files_failed, files_filtered;
  guint   files_unverified, folders_processed, deleted_count, renamed_count;
  guint64 bytes_downloaded;
} SyncCounters;

typedef struct _SyncStatus SyncStatus;

SyncStatus *sync_status_new (void);
void sync_status_free (SyncStatus *status);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (SyncStatus, sync_status_free)

/* A new run: counters, lists, current files, total and last_error start over. */
void sync_status_begin_run (SyncStatus *status, gint64 run_id);
/* Restores what the store remembers of the last run (after a restart), lists empty. */
void sync_status_restore (SyncStatus *status, gint64 run_id, const SyncCounters *counters,
                          const char *last_error);
/* Files this run will process (folders are not counted). */
void sync_status_add_total (SyncStatus *status, guint more);
/* Items the store found unchanged when it committed a delta set (no work, no path). */
void sync_status_add_unchanged (SyncStatus *status, guint count);

/* A worker took @path (added to current_files). */
void sync_status_file_started (SyncStatus *status, const char *path);
/* Ends a started (or never started) @path with @outcome; @bytes counts for ADDED/UPDATED.
 * @unverified: published without a hash to check (listed in unverified_files). */
void sync_status_file_done (SyncStatus *status, const char *path, SyncOutcome outcome,
                            guint64 bytes, gboolean unverified);
/* A folder's work is done (created, renamed or moved, deleted). Folders are not files:
 * `current` and `total` count files only; this counts folders_processed / renamed_count /
 * deleted_count. */
void sync_status_folder_done (SyncStatus *status, SyncOutcome outcome);
void sync_status_file_failed (SyncStatus *status, const char *path, const char *error_type,
                              const char *message, guint attempts);
/* A started @path ends without an outcome (a cancel interrupted it; it stays queued). */
void sync_status_file_abandoned (SyncStatus *status, const char *path);
/* @reason: "too_large", "excluded", "not_included", "package", ... */
void sync_status_file_filtered (SyncStatus *status, const char *path, const char *reason);
/* Partial bytes of in-flight transfers (progress only; no state change). */
void sync_status_add_bytes (SyncStatus *status, guint64 bytes);
void sync_status_set_last_error (SyncStatus *status, const char *message);

/* Per-source state: "idle", "enumerating", "processing", "completed", "error". */
void sync_status_source_set (SyncStatus *status, const char *path, const char *state,
                             gint64 last_completed, gboolean has_cursor, const char *error);
/* Records a full resync of @path (410 or a "full" start) and what reconciliation queued. */
void sync_status_source_resync (SyncStatus *status, const char *path, const char *reason,
                                guint reconciled_deletes);

void sync_status_counters (SyncStatus *status, SyncCounters *out);
/* The status document: @run is the run state's snapshot. Newly allocated JSON text. */
char *sync_status_to_json (SyncStatus *status, const SyncRunSnapshot *run);

/* "2026-12-03T10:20:00Z" from unix microseconds; NULL for 0. */
char *sync_status_format_time (gint64 unix_us);

G_END_DECLS
