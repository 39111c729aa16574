/* Root-delta mode: a source whose folder-scoped delta the service refuses.
 *
 * OneDrive for Business may answer `notSupported` to /items/{folder}/delta. The source then
 * reads /root/delta — every change of the drive — and keeps only what lies under its folder.
 * A delta item carries only its parent's id, and an incremental set holds only the items that
 * changed, so ancestry is resolved through two things: the set itself (a new folder and its
 * children arrive together, in any order) and the ids known under the source from earlier sets
 * (an unchanged folder is not in the set, but its id is known). An item is under the source
 * when its parent chain reaches the source folder's id, or reaches a known id that this set does
 * not move. A known id that now resolves outside has been moved out: for this source it is a
 * deletion, so a tombstone is synthesized for it. Tombstones of ids never known are dropped.
 *
 * A folder moved in from outside is the hard case: the root delta lists the folder, not its
 * unchanged contents. So the ids of folders outside the source that hold items are kept too;
 * when one of them turns up under the source, the filter asks for a rescan (a fresh root
 * enumeration, reconciled), which is rare and always correct.
 *
 * The mode and the known ids persist in a small JSON file per source (written atomically),
 * <cache>/sources/source-<store source id>.json. The engine removes the file of a source that
 * is no longer configured, together with its cursor (engine.c, forget_unconfigured_modes).
 * Known ids only grow before the commit of a set and shrink after it, so a crash in between
 * leaves a superset: the replayed set still recognises every item that left, and an extra id is
 * harmless (its later tombstone reaches the store as a tombstone for an id it never saw).
 */
#define G_LOG_DOMAIN "odsf-sync"

#include "config.h"

#include "root-delta.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

struct _SyncRootDelta {
  char       *path;
  gboolean    root_mode;
  GHashTable *known;    /* ids under the source (files and folders) */
  GHashTable *left;     /* ids found moved out or deleted by the last filter */
  GHashTable *outside_parents;   /* ids outside the source that are some item's parent */
  gboolean    rescan;   /* the last filter met a populated folder moving in */
};

static void
load_file (SyncRootDelta *rd)
{
  g_autofree char *text = NULL;
  gsize len = 0;
  g_autoptr (GError) error = NULL;
  if (!g_file_get_contents (rd->path, &text, &len, &error))
    {
      if (!g_error_matches (error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
        g_warning ("%s: %s (folder mode assumed)", rd->path, error->message);
      return;
    }
  cJSON *doc = cJSON_ParseWithLength (text, len);
  const cJSON *format = doc ? cJSON_GetObjectItemCaseSensitive (doc, "format") : NULL;
  const cJSON *mode = doc ? cJSON_GetObjectItemCaseSensitive (doc, "mode") : NULL;
  const cJSON *known = doc ? cJSON_GetObjectItemCaseSensitive (doc, "known") : NULL;
  if (!cJSON_IsString (format) || strcmp (format->valuestring, "odsf-source-mode") != 0 || !cJSON_IsString (mode)
      || !cJSON_IsArray (known))
    {
      g_warning ("%s: not a source mode file (folder mode assumed)", rd->path);
      cJSON_Delete (doc);
      return;
    }
  rd->root_mode = strcmp (mode->valuestring, "root") == 0;
  const cJSON *id;
  cJSON_ArrayForEach (id, known)
    if (cJSON_IsString (id))
      g_hash_table_add (rd->known, g_strdup (id->valuestring));
  cJSON_ArrayForEach (id, cJSON_GetObjectItemCaseSensitive (doc, "outside_parents"))
    if (cJSON_IsString (id))
      g_hash_table_add (rd->outside_parents, g_strdup (id->valuestring));
  cJSON_Delete (doc);
}

static char *
file_name (gint64 source_id)
{
  return g_strdup_printf ("source-%" G_GINT64_FORMAT ".json", source_id);
}

gboolean
sync_root_delta_file_id (const char *name, gint64 *source_id)
{
  if (!g_str_has_prefix (name, "source-") || !g_str_has_suffix (name, ".json"))
    return FALSE;
  gint64 id = 0;
  const char *p = name + strlen ("source-");
  for (; g_ascii_isdigit (*p) && id < G_MAXINT64 / 10 - 10; p++)
    id = id * 10 + (*p - '0');
  /* Round trip: "source-01.json" or "source-1x.json" is not a name we ever wrote. */
  g_autofree char *again = file_name (id);
  if (id <= 0 || strcmp (again, name) != 0)
    return FALSE;
  *source_id = id;
  return TRUE;
}

SyncRootDelta *
sync_root_delta_load (const char *dir, gint64 source_id)
{
  SyncRootDelta *rd = g_new0 (SyncRootDelta, 1);
  g_autofree char *name = file_name (source_id);
  if (g_mkdir_with_parents (dir, 0700) != 0)
    g_warning ("mkdir(%s): %s", dir, g_strerror (errno));
  rd->path = g_build_filename (dir, name, NULL);
  rd->known = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  rd->left = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  rd->outside_parents = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  load_file (rd);
  return rd;
}

void
sync_root_delta_free (SyncRootDelta *rd)
{
  if (!rd)
    return;
  g_free (rd->path);
  g_hash_table_unref (rd->known);
  g_hash_table_unref (rd->left);
  g_hash_table_unref (rd->outside_parents);
  g_free (rd);
}

gboolean
sync_root_delta_active (const SyncRootDelta *rd)
{
  return rd->root_mode;
}

void
sync_root_delta_activate (SyncRootDelta *rd)
{
  rd->root_mode = TRUE;
  g_hash_table_remove_all (rd->known);
  g_hash_table_remove_all (rd->left);
  g_hash_table_remove_all (rd->outside_parents);
  rd->rescan = FALSE;
}

typedef enum { ANC_UNKNOWN = 0, ANC_UNDER, ANC_OUTSIDE } Ancestry;

/* Walks @id's parent chain through @last (id → last GraphItem of the set) and the known ids.
 * Memoized in @memo (id → Ancestry); a cycle or a chain longer than the set is "outside". */
static Ancestry
resolve (SyncRootDelta *rd, const char *source_item_id, GHashTable *last, GHashTable *memo, const char *id)
{
  g_autoptr (GPtrArray) chain = g_ptr_array_new ();
  Ancestry verdict = ANC_OUTSIDE;
  const char *cur = id;
  for (guint steps = 0; cur && steps <= g_hash_table_size (last) + 1; steps++)
    {
      if (strcmp (cur, source_item_id) == 0)
        {
          verdict = ANC_UNDER;
          break;
        }
      Ancestry m = GPOINTER_TO_INT (g_hash_table_lookup (memo, cur));
      if (m != ANC_UNKNOWN)
        {
          verdict = m;
          break;
        }
      const GraphItem *it = g_hash_table_lookup (last, cur);
      if (!it)
        {
          /* Not changed in this set: where it was is where it is. */
          verdict = g_hash_table_contains (rd->known, cur) ? ANC_UNDER : ANC_OUTSIDE;
          break;
        }
      if (it->deleted || it->is_root)
        break;   /* outside: a deleted parent cannot hold a live child, the root is above us */
      g_ptr_array_add (chain, (gpointer) cur);
      cur = it->parent_id;
    }
  for (guint i = 0; i < chain->len; i++)
    g_hash_table_insert (memo, chain->pdata[i], GINT_TO_POINTER (verdict));
  return verdict;
}

gboolean
sync_root_delta_needs_rescan (const SyncRootDelta *rd)
{
  return rd->rescan;
}

GPtrArray *
sync_root_delta_filter (SyncRootDelta *rd, const char *source_item_id, GPtrArray *items, gboolean incremental)
{
  g_autoptr (GHashTable) last = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (GHashTable) memo = g_hash_table_new (g_str_hash, g_str_equal);
  for (guint i = 0; i < items->len; i++)
    {
      const GraphItem *it = items->pdata[i];
      g_hash_table_insert (last, it->id, (gpointer) it);   /* the last occurrence wins */
    }

  GPtrArray *out = g_ptr_array_new_with_free_func ((GDestroyNotify) graph_item_free);
  g_hash_table_remove_all (rd->left);
  rd->rescan = FALSE;
  for (guint i = 0; i < items->len; i++)
    {
      const GraphItem *it = items->pdata[i];
      if (strcmp (it->id, source_item_id) == 0)
        {
          g_ptr_array_add (out, graph_item_copy (it));   /* as a folder-scoped set lists it */
          continue;
        }
      gboolean known = g_hash_table_contains (rd->known, it->id);
      if (it->deleted)
        {
          if (known)
            {
              g_ptr_array_add (out, graph_item_copy (it));
              g_hash_table_add (rd->left, g_strdup (it->id));
            }
          continue;
        }
      if (resolve (rd, source_item_id, last, memo, it->parent_id) == ANC_UNDER)
        {
          if (incremental && !known && it->kind == GRAPH_ITEM_FOLDER
              && g_hash_table_contains (rd->outside_parents, it->id))
            rd->rescan = TRUE;   /* moved in with contents the set does not list */
          g_ptr_array_add (out, graph_item_copy (it));
          g_hash_table_add (rd->known, g_strdup (it->id));
          g_hash_table_remove (rd->left, it->id);
          continue;
        }
      if (it->parent_id)
        g_hash_table_add (rd->outside_parents, g_strdup (it->parent_id));
      if (known)
        {
          /* Moved out of the source: gone, as far as this source is concerned. */
          GraphItem *tomb = graph_item_copy (it);
          tomb->deleted = TRUE;
          g_ptr_array_add (out, tomb);
          g_hash_table_add (rd->left, g_strdup (it->id));
        }
    }
  return out;
}

void
sync_root_delta_forget_left (SyncRootDelta *rd)
{
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init (&iter, rd->left);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    g_hash_table_remove (rd->known, key);
  g_hash_table_remove_all (rd->left);
}

gboolean
sync_root_delta_save (SyncRootDelta *rd, GError **error)
{
  cJSON *doc = cJSON_CreateObject ();
  cJSON_AddStringToObject (doc, "format", "odsf-source-mode");
  cJSON_AddNumberToObject (doc, "version", 1);
  cJSON_AddStringToObject (doc, "mode", rd->root_mode ? "root" : "folder");
  cJSON *known = cJSON_AddArrayToObject (doc, "known");
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init (&iter, rd->known);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    cJSON_AddItemToArray (known, cJSON_CreateString (key));
  cJSON *outside = cJSON_AddArrayToObject (doc, "outside_parents");
  g_hash_table_iter_init (&iter, rd->outside_parents);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    cJSON_AddItemToArray (outside, cJSON_CreateString (key));
  char *text = cJSON_PrintUnformatted (doc);
  cJSON_Delete (doc);
  /* g_file_set_contents_full with DURABLE fsyncs the temp file before the rename. */
  gboolean ok = g_file_set_contents_full (rd->path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE,
                                          0600, error);
  cJSON_free (text);
  return ok;
}
