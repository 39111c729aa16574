/* Delta and children pages: JSON from the service to GraphItem records.
 *
 * Everything here is input from the network, so nothing is asserted and nothing is trusted.
 * Three levels of failure, from coarse to fine:
 *   - the page: not JSON, not an object, no "value" array, a link of the wrong type, or no
 *     link at all where one is required → NULL and GRAPH_ERROR_PARSE; the caller must not
 *     advance its cursor past a page it could not read.
 *   - an item: not an object, no usable id, a field of the wrong type, an over-long or
 *     non-UTF-8 identifier → skipped, one message in item_errors (with the item's index, never
 *     its raw bytes, so the message is always printable UTF-8).
 *   - a name: kept, with name_problem set, so the engine can report "name_invalid" for an
 *     item it will not create instead of silently dropping it.
 *
 * cJSON decodes "\u0000" into a NUL byte, which would silently cut a string short (a name
 * "a\u0000b" would come out as "a" and look valid). The page is therefore scanned for that
 * escape first and, where it occurs, a copy is parsed with the NUL replaced by U+0001: a
 * control character the name check rejects. Ids and tags are opaque; a substituted byte
 * there changes nothing that matters.
 *
 * Memory is bounded by the page: the cJSON tree lives only while this function runs.
 */
#define G_LOG_DOMAIN "odsf-graph"

#include "config.h"

#include <onedrive-syncfs/graph-item.h>
#include <onedrive-syncfs/graph-client.h>

#include "graph-private.h"

#include <string.h>

/* Identifiers longer than this are not identifiers: refusing them keeps a hostile page from
 * pushing megabytes into the store row by row. Links can be long (they carry $select and a
 * token), names are judged by graph_item_name_problem and kept for reporting, cut short. */
#define MAX_ID_LEN       1024
#define MAX_TAG_LEN      2048
#define MAX_HASH_LEN     256
#define MAX_LINK_LEN     (64 * 1024)
#define MAX_NAME_KEEP    1024

void
graph_item_free (GraphItem *item)
{
  if (item == NULL)
    return;
  g_free (item->drive_id);
  g_free (item->id);
  g_free (item->name);
  g_free (item->parent_id);
  g_free (item->etag);
  g_free (item->ctag);
  g_free (item->quickxor_hash);
  g_free (item->remote_drive_id);
  g_free (item->remote_id);
  g_free (item->name_problem);
  g_free (item);
}

GraphItem *
graph_item_copy (const GraphItem *item)
{
  if (item == NULL)
    return NULL;
  GraphItem *c = g_new0 (GraphItem, 1);
  *c = *item;
  c->drive_id = g_strdup (item->drive_id);
  c->id = g_strdup (item->id);
  c->name = g_strdup (item->name);
  c->parent_id = g_strdup (item->parent_id);
  c->etag = g_strdup (item->etag);
  c->ctag = g_strdup (item->ctag);
  c->quickxor_hash = g_strdup (item->quickxor_hash);
  c->remote_drive_id = g_strdup (item->remote_drive_id);
  c->remote_id = g_strdup (item->remote_id);
  c->name_problem = g_strdup (item->name_problem);
  return c;
}

void
graph_delta_page_free (GraphDeltaPage *page)
{
  if (page == NULL)
    return;
  g_clear_pointer (&page->items, g_ptr_array_unref);
  g_clear_pointer (&page->item_errors, g_ptr_array_unref);
  g_free (page->next_link);
  g_free (page->delta_link);
  g_free (page);
}

const char *
graph_item_name_problem (const char *name, gssize len)
{
  if (name == NULL)
    return "missing";
  gsize n = len < 0 ? strlen (name) : (gsize) len;
  if (n == 0)
    return "empty";
  if ((n == 1 && name[0] == '.') || (n == 2 && name[0] == '.' && name[1] == '.'))
    return "is . or ..";
  /* Byte checks before UTF-8: NUL and '/' are ASCII and can never be part of a multi-byte
   * sequence, so finding them first gives the more precise reason. */
  for (gsize i = 0; i < n; i++)
    {
      guchar c = (guchar) name[i];
      if (c == '/')
        return "contains '/'";
      if (c == 0)
        return "contains a NUL byte";
      if (c < 0x20 || c == 0x7f)
        return "contains a control character";
    }
  if (n > 255)
    return "longer than 255 bytes";
  if (!g_utf8_validate_len (name, n, NULL))
    return "not valid UTF-8";
  return NULL;
}

/* ---- time ---------------------------------------------------------------------------- */

static gboolean
take_digits (const char **p, int count, int *out)
{
  int v = 0;
  for (int i = 0; i < count; i++)
    {
      char c = (*p)[i];
      if (c < '0' || c > '9')
        return FALSE;
      v = v * 10 + (c - '0');
    }
  *p += count;
  *out = v;
  return TRUE;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm): exact
 * for year 1 (Graph's "0001-01-01T00:00:00Z" placeholder) as for 9999, no libc time zone. */
static gint64
days_from_civil (int y, int m, int d)
{
  y -= m <= 2;
  gint64 era = (y >= 0 ? y : y - 399) / 400;
  gint64 yoe = y - era * 400;
  gint64 doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  gint64 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

gboolean
graph_parse_time (const char *text, gint64 *unix_seconds)
{
  if (text == NULL)
    return FALSE;
  const char *p = text;
  int Y, M, D, h, m, s;
  if (!take_digits (&p, 4, &Y) || *p++ != '-' || !take_digits (&p, 2, &M) || *p++ != '-'
      || !take_digits (&p, 2, &D))
    return FALSE;
  if (*p != 'T' && *p != 't' && *p != ' ')
    return FALSE;
  p++;
  if (!take_digits (&p, 2, &h) || *p++ != ':' || !take_digits (&p, 2, &m) || *p++ != ':'
      || !take_digits (&p, 2, &s))
    return FALSE;
  if (*p == '.' || *p == ',')
    {
      p++;
      if (*p < '0' || *p > '9')
        return FALSE;
      while (*p >= '0' && *p <= '9')
        p++;
    }
  int offset = 0;
  if (*p == 'Z' || *p == 'z')
    p++;
  else if (*p == '+' || *p == '-')
    {
      int sign = *p == '-' ? -1 : 1, oh, om;
      p++;
      if (!take_digits (&p, 2, &oh))
        return FALSE;
      if (*p == ':')
        p++;
      if (!take_digits (&p, 2, &om) || oh > 23 || om > 59)
        return FALSE;
      offset = sign * (oh * 3600 + om * 60);
    }
  /* No designator: the service always sends one; UTC is the only sane reading otherwise. */
  if (*p != '\0')
    return FALSE;

  static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  if (Y < 1 || M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 || s > 60)
    return FALSE;
  gboolean leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
  if (M == 2 && D == 29 && !leap)
    return FALSE;
  if (s == 60)
    s = 59;  /* a leap second: good enough for an mtime */

  *unix_seconds = days_from_civil (Y, M, D) * 86400 + h * 3600 + m * 60 + s - offset;
  return TRUE;
}

/* ---- field access ---------------------------------------------------------------------- */

/* Field outcomes: absent (or JSON null, which the service uses for "no value"), present and
 * good, or present and unusable. Only the last one makes the item an error. */
typedef enum { FIELD_ABSENT, FIELD_OK, FIELD_BAD } FieldResult;

static FieldResult
get_string (const cJSON *obj, const char *key, gsize max_len, gboolean need_utf8,
            const char **out, const char **why)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  *out = NULL;
  if (v == NULL || cJSON_IsNull (v))
    return FIELD_ABSENT;
  if (!cJSON_IsString (v) || v->valuestring == NULL)
    {
      *why = "is not a string";
      return FIELD_BAD;
    }
  gsize n = strlen (v->valuestring);
  if (max_len > 0 && n > max_len)
    {
      *why = "is too long";
      return FIELD_BAD;
    }
  if (need_utf8 && !g_utf8_validate_len (v->valuestring, n, NULL))
    {
      *why = "is not valid UTF-8";
      return FIELD_BAD;
    }
  *out = v->valuestring;
  return FIELD_OK;
}

static FieldResult
get_object (const cJSON *obj, const char *key, const cJSON **out, const char **why)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  *out = NULL;
  if (v == NULL || cJSON_IsNull (v))
    return FIELD_ABSENT;
  if (!cJSON_IsObject (v))
    {
      *why = "is not an object";
      return FIELD_BAD;
    }
  *out = v;
  return FIELD_OK;
}

/* Identifiers: non-empty, bounded, valid UTF-8, no control characters (they end up in SQL
 * rows, URLs and the status JSON). */
static FieldResult
get_id (const cJSON *obj, const char *key, const char **out, const char **why)
{
  FieldResult r = get_string (obj, key, MAX_ID_LEN, TRUE, out, why);
  if (r != FIELD_OK)
    return r;
  if ((*out)[0] == '\0')
    {
      *why = "is empty";
      return FIELD_BAD;
    }
  for (const char *c = *out; *c; c++)
    if ((guchar) *c < 0x20 || *c == 0x7f)
      {
        *why = "contains a control character";
        return FIELD_BAD;
      }
  return FIELD_OK;
}

/* The largest size a double holds exactly; anything above is not a real file size. */
#define MAX_EXACT_SIZE ((double) (G_GINT64_CONSTANT (1) << 53))

static gboolean
item_error (GPtrArray *errors, guint index, const char *field, const char *why)
{
  g_ptr_array_add (errors, g_strdup_printf ("item %u: %s %s", index, field, why));
  return FALSE;
}

/* Fills @item from @obj. FALSE (one message added to @errors) when the item is unusable. */
static gboolean
parse_item (const cJSON *obj, guint index, const char *default_drive_id, GraphItem *item,
            GPtrArray *errors)
{
  const char *why = NULL, *s = NULL;
  const cJSON *parent = NULL;

  if (!cJSON_IsObject (obj))
    return item_error (errors, index, "entry", "is not an object");

  if (get_id (obj, "id", &s, &why) != FIELD_OK)
    return item_error (errors, index, "id", why != NULL ? why : "is missing");
  item->id = g_strdup (s);

  /* The name is kept even when unusable, in a printable, bounded form, so the problem can
   * be reported; the engine does not create an entry whose name_problem is set. */
  if (get_string (obj, "name", 0, FALSE, &s, &why) == FIELD_BAD)
    return item_error (errors, index, "name", why);
  if (s != NULL)
    {
      gsize n = strlen (s);
      const char *problem = graph_item_name_problem (s, (gssize) n);
      if (problem == NULL)
        item->name = g_strdup (s);
      else
        {
          item->name_problem = g_strdup (problem);
          item->name = g_utf8_make_valid (s, (gssize) MIN (n, MAX_NAME_KEEP));
        }
    }

  if (get_object (obj, "parentReference", &parent, &why) == FIELD_BAD)
    return item_error (errors, index, "parentReference", why);
  if (parent != NULL)
    {
      if (get_id (parent, "driveId", &s, &why) == FIELD_BAD)
        return item_error (errors, index, "parentReference.driveId", why);
      item->drive_id = g_strdup (s);
      if (get_id (parent, "id", &s, &why) == FIELD_BAD)
        return item_error (errors, index, "parentReference.id", why);
      item->parent_id = g_strdup (s);
    }
  if (item->drive_id == NULL)
    item->drive_id = g_strdup (default_drive_id);

  /* Facets count by presence (deleted: {} and root: {}); their content is read only where
   * we need it, and a facet that should be an object but is not makes the item unusable. */
  item->deleted = cJSON_GetObjectItemCaseSensitive (obj, "deleted") != NULL;
  item->is_root = cJSON_GetObjectItemCaseSensitive (obj, "root") != NULL;
  if (item->is_root)
    g_clear_pointer (&item->parent_id, g_free);

  const cJSON *remote = NULL, *package = NULL, *folder = NULL, *file = NULL;
  if (get_object (obj, "remoteItem", &remote, &why) == FIELD_BAD)
    return item_error (errors, index, "remoteItem", why);
  if (get_object (obj, "package", &package, &why) == FIELD_BAD)
    return item_error (errors, index, "package", why);
  if (get_object (obj, "folder", &folder, &why) == FIELD_BAD)
    return item_error (errors, index, "folder", why);
  if (get_object (obj, "file", &file, &why) == FIELD_BAD)
    return item_error (errors, index, "file", why);

  /* A shortcut may also carry a folder facet; what it points at matters more. A package
   * (OneNote) may carry a folder facet on some accounts; it is still not a folder we can
   * mirror. */
  if (remote != NULL)
    {
      item->kind = GRAPH_ITEM_REMOTE;
      if (get_id (remote, "id", &s, &why) != FIELD_OK)
        return item_error (errors, index, "remoteItem.id", why != NULL ? why : "is missing");
      item->remote_id = g_strdup (s);
      const cJSON *rparent = NULL;
      if (get_object (remote, "parentReference", &rparent, &why) == FIELD_BAD)
        return item_error (errors, index, "remoteItem.parentReference", why);
      if (rparent == NULL || get_id (rparent, "driveId", &s, &why) != FIELD_OK)
        return item_error (errors, index, "remoteItem.parentReference.driveId",
                           rparent == NULL || why == NULL ? "is missing" : why);
      item->remote_drive_id = g_strdup (s);
    }
  else if (package != NULL)
    item->kind = GRAPH_ITEM_PACKAGE;
  else if (folder != NULL || item->is_root)
    item->kind = GRAPH_ITEM_FOLDER;
  else if (file != NULL)
    item->kind = GRAPH_ITEM_FILE;
  else if (item->deleted)
    item->kind = GRAPH_ITEM_FILE;  /* tombstones may carry no facet; the kind is moot */
  else
    return item_error (errors, index, "item", "has no file, folder, package or remoteItem facet");

  item->size = -1;
  const cJSON *size = cJSON_GetObjectItemCaseSensitive (obj, "size");
  if (size != NULL && !cJSON_IsNull (size))
    {
      if (!cJSON_IsNumber (size) || !(size->valuedouble >= 0) || size->valuedouble > MAX_EXACT_SIZE
          || size->valuedouble != (double) (gint64) size->valuedouble)
        return item_error (errors, index, "size", "is not a non-negative integer");
      item->size = (gint64) size->valuedouble;
    }

  if (get_string (obj, "eTag", MAX_TAG_LEN, TRUE, &s, &why) == FIELD_BAD)
    return item_error (errors, index, "eTag", why);
  item->etag = g_strdup (s);
  if (get_string (obj, "cTag", MAX_TAG_LEN, TRUE, &s, &why) == FIELD_BAD)
    return item_error (errors, index, "cTag", why);
  item->ctag = g_strdup (s);

  /* fileSystemInfo is the time the user set (what a file manager shows); the top-level one
   * is when the service last touched the item. Either may be absent. */
  const cJSON *fsi = NULL;
  const char *mtime_text = NULL;
  if (get_object (obj, "fileSystemInfo", &fsi, &why) == FIELD_BAD)
    return item_error (errors, index, "fileSystemInfo", why);
  if (fsi != NULL && get_string (fsi, "lastModifiedDateTime", 64, TRUE, &mtime_text, &why) == FIELD_BAD)
    return item_error (errors, index, "fileSystemInfo.lastModifiedDateTime", why);
  if (mtime_text == NULL
      && get_string (obj, "lastModifiedDateTime", 64, TRUE, &mtime_text, &why) == FIELD_BAD)
    return item_error (errors, index, "lastModifiedDateTime", why);
  if (mtime_text != NULL && !graph_parse_time (mtime_text, &item->mtime))
    return item_error (errors, index, "lastModifiedDateTime", "is not an ISO 8601 time");

  if (file != NULL)
    {
      const cJSON *hashes = NULL;
      if (get_object (file, "hashes", &hashes, &why) == FIELD_BAD)
        return item_error (errors, index, "file.hashes", why);
      if (hashes != NULL)
        {
          if (get_string (hashes, "quickXorHash", MAX_HASH_LEN, TRUE, &s, &why) == FIELD_BAD)
            return item_error (errors, index, "file.hashes.quickXorHash", why);
          item->quickxor_hash = g_strdup (s);
        }
    }
  return TRUE;
}

GraphItem *
graph_item_from_json (const cJSON *obj, const char *default_drive_id, GError **error)
{
  g_autoptr (GPtrArray) errors = g_ptr_array_new_with_free_func (g_free);
  g_autoptr (GraphItem) item = g_new0 (GraphItem, 1);
  if (!parse_item (obj, 0, default_drive_id, item, errors))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "Unusable item from the service: %s",
                   errors->len > 0 ? (const char *) errors->pdata[0] : "unknown");
      return NULL;
    }
  return g_steal_pointer (&item);
}

/* ---- pages ----------------------------------------------------------------------------- */

/* TRUE when the text holds an unescaped "\u0000" (any hex case). Backslash pairs are
 * skipped so "\\u0000" (a literal backslash then "u0000") is not mistaken for one. */
static gboolean
has_nul_escape (const char *json, gsize len)
{
  for (gsize i = 0; i + 1 < len; i++)
    {
      if (json[i] != '\\')
        continue;
      if (json[i + 1] == 'u' && i + 5 < len && json[i + 2] == '0' && json[i + 3] == '0'
          && json[i + 4] == '0' && json[i + 5] == '0')
        return TRUE;
      i++;  /* skip the escaped character, whatever it is */
    }
  return FALSE;
}

static char *
replace_nul_escapes (const char *json, gsize len)
{
  char *copy = g_malloc (len + 1);
  memcpy (copy, json, len);
  copy[len] = '\0';
  for (gsize i = 0; i + 1 < len; i++)
    {
      if (copy[i] != '\\')
        continue;
      if (copy[i + 1] == 'u' && i + 5 < len && copy[i + 2] == '0' && copy[i + 3] == '0'
          && copy[i + 4] == '0' && copy[i + 5] == '0')
        copy[i + 5] = '1';
      i++;
    }
  return copy;
}

cJSON *
graph_json_parse (const char *json, gsize len)
{
  if (json == NULL)
    return NULL;
  if (has_nul_escape (json, len))
    {
      g_autofree char *copy = replace_nul_escapes (json, len);
      return cJSON_ParseWithLength (copy, len);
    }
  return cJSON_ParseWithLength (json, len);
}

static gboolean
get_link (const cJSON *root, const char *key, char **out, GError **error)
{
  const char *why = NULL, *s = NULL;
  if (get_string (root, key, MAX_LINK_LEN, TRUE, &s, &why) == FIELD_BAD)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "Page from the service: %s %s", key, why);
      return FALSE;
    }
  if (s != NULL && s[0] == '\0')
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "Page from the service: %s is empty", key);
      return FALSE;
    }
  *out = g_strdup (s);
  return TRUE;
}

GraphDeltaPage *
graph_delta_page_parse (const char *json, gsize len, const char *default_drive_id,
                        gboolean require_link, GError **error)
{
  g_autoptr (cJSON) root = graph_json_parse (json, len);
  if (root == NULL || !cJSON_IsObject (root))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                   "Page from the service is not a JSON object (%" G_GSIZE_FORMAT " bytes)", len);
      return NULL;
    }
  const cJSON *value = cJSON_GetObjectItemCaseSensitive (root, "value");
  if (!cJSON_IsArray (value))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                   "Page from the service has no \"value\" array");
      return NULL;
    }

  g_autoptr (GraphDeltaPage) page = g_new0 (GraphDeltaPage, 1);
  page->items = g_ptr_array_new_with_free_func ((GDestroyNotify) graph_item_free);
  page->item_errors = g_ptr_array_new_with_free_func (g_free);
  if (!get_link (root, "@odata.nextLink", &page->next_link, error)
      || !get_link (root, "@odata.deltaLink", &page->delta_link, error))
    return NULL;
  if (page->next_link != NULL && page->delta_link != NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                   "Page from the service has both a nextLink and a deltaLink");
      return NULL;
    }
  if (require_link && page->next_link == NULL && page->delta_link == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                   "Delta page from the service has neither a nextLink nor a deltaLink");
      return NULL;
    }

  guint index = 0;
  const cJSON *entry;
  cJSON_ArrayForEach (entry, value)
    {
      g_autoptr (GraphItem) item = g_new0 (GraphItem, 1);
      if (parse_item (entry, index, default_drive_id, item, page->item_errors))
        g_ptr_array_add (page->items, g_steal_pointer (&item));
      index++;
    }
  return g_steal_pointer (&page);
}
