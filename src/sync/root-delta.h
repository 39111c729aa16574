/* Root-delta mode of a source (engine-internal; see root-delta.c for the idea). */
#pragma once

#include <onedrive-syncfs/graph-item.h>

#include <glib.h>

G_BEGIN_DECLS

typedef struct _SyncRootDelta SyncRootDelta;

/* Loads the persisted mode of source @source_id from @dir (created when missing). Never
 * fails: an absent or unreadable file means "folder mode, nothing known"; an unreadable one is
 * logged. */
SyncRootDelta *sync_root_delta_load (const char *dir, gint64 source_id);
void sync_root_delta_free (SyncRootDelta *rd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (SyncRootDelta, sync_root_delta_free)

/* TRUE when the source reads the drive's root delta filtered by ancestry. */
gboolean sync_root_delta_active (const SyncRootDelta *rd);
/* Switches to root mode and forgets every known id (the caller enumerates afresh and
 * reconciles). Persisted by the next save. */
void sync_root_delta_activate (SyncRootDelta *rd);

/* Filters one whole root delta set (@items: GraphItem*, in set order) down to the items of the
 * source folder @source_item_id: items whose parentReference chain reaches it (resolved through
 * the set and the ids known from earlier sets), tombstones of known ids, and — for a known id
 * now outside the source (moved out) — a synthesized tombstone. Returns a new array of copies.
 * The ids seen under the source are added to the known set at once (so a save before the commit
 * holds a superset: a replay of the set still recognises everything); ids that left are only
 * dropped by sync_root_delta_forget_left(), to be called after the commit. */
GPtrArray *sync_root_delta_filter (SyncRootDelta *rd, const char *source_item_id, GPtrArray *items,
                                   gboolean incremental);
/* TRUE when the last (incremental) filter met a folder moving in from outside with contents:
 * the set cannot describe them, the caller must enumerate afresh (activate, no cursor). */
gboolean sync_root_delta_needs_rescan (const SyncRootDelta *rd);
void sync_root_delta_forget_left (SyncRootDelta *rd);

/* Whether @name is exactly the name sync_root_delta_load() gives the file of a source
 * ("source-<id>.json"); its id goes to @source_id. Temp files of an interrupted save and
 * anything else in the directory are not ours to judge: FALSE. */
gboolean sync_root_delta_file_id (const char *name, gint64 *source_id);

/* Writes the mode and the known ids atomically (temp file, fsync, rename). */
gboolean sync_root_delta_save (SyncRootDelta *rd, GError **error);

G_END_DECLS
