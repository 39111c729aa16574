/* The durable change feed for indexers (docs/changes.md): an append-only JSON Lines file in
 * the cache directory, one line per published change, in the order the store committed them,
 * kept across restarts.
 *
 * Line 1 is a header {"format":"odsf-changes","version":1,"generation":G,"first_seq":F}.
 * Every other line is {"seq":N,"time":T,"action":A,"path":P,"old_path"?:Q,"id":I,"size":S,
 * "hash":H,"folder"?:true}, seq strictly increasing by one. The file is bounded: when an append would take it
 * past max_bytes, it is rewritten (atomically, by rename) keeping the newest lines that fit in
 * half the bound, with generation + 1 and first_seq = the first kept seq. A reader that kept
 * (generation, byte offset, last seq) can therefore tell exactly whether its offset is still
 * valid (same generation) and, if not, whether it lost lines (first_seq > last seq + 1).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define SYNC_CHANGES_FILE "changes.jsonl"
#define SYNC_CHANGES_DEFAULT_MAX_BYTES (8 * 1024 * 1024)

typedef struct _SyncChanges SyncChanges;

/* Opens or creates @dir/changes.jsonl. A torn last line (a crash mid-write) is cut off; a file
 * that is not a change feed is refused (G_IO_ERROR_INVALID_DATA), never overwritten.
 * @max_bytes: 0 for SYNC_CHANGES_DEFAULT_MAX_BYTES; at least 4096. */
SyncChanges *sync_changes_open (const char *dir, gsize max_bytes, GError **error);
void sync_changes_free (SyncChanges *changes);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (SyncChanges, sync_changes_free)

/* Appends one change; returns its seq via @seq (may be NULL). Call in commit order (the
 * engine calls it under the same lock as the store publish). @old_path, @id, @hash may be
 * NULL; @size < 0 is written as null; @folder adds "folder":true (a folder renamed, moved or
 * deleted changes the paths of everything below it). */
gboolean sync_changes_append (SyncChanges *changes, const char *action, const char *path,
                              const char *old_path, const char *id, gint64 size,
                              const char *hash, gboolean folder, guint64 *seq, GError **error);
/* fdatasync: the lines appended so far survive a power loss. */
gboolean sync_changes_flush (SyncChanges *changes, GError **error);

/* The seq the next line will get, the current generation, and the first seq in the file. */
guint64 sync_changes_next_seq (SyncChanges *changes);
guint64 sync_changes_generation (SyncChanges *changes);
guint64 sync_changes_first_seq (SyncChanges *changes);
/* Absolute path of the feed file. */
const char *sync_changes_path (SyncChanges *changes);

G_END_DECLS
