/* Items and delta pages as the service reports them, parsed from JSON with cJSON.
 *
 * The parser never trusts the service: a page that is not the expected JSON is a page error;
 * an item missing what identifies it (id) is skipped and counted as an item error; an item
 * whose name Linux cannot hold is kept, with name_problem saying why, so the engine can
 * report it (error type name_invalid) instead of dropping it silently.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  GRAPH_ITEM_FILE,
  GRAPH_ITEM_FOLDER,
  GRAPH_ITEM_PACKAGE,      /* e.g. OneNote: neither file nor folder */
  GRAPH_ITEM_REMOTE,       /* shortcut to an item on another drive (remoteItem) */
} GraphItemKind;

typedef struct {
  char          *drive_id;        /* parentReference.driveId, or the drive the page came from;
                                   * spelled as the service sent it: compare ignoring case */
  char          *id;              /* never NULL */
  char          *name;            /* may be NULL on tombstones; when name_problem is set, a
                                   * printable form for reports (valid UTF-8, at most 1024
                                   * bytes, NUL shown as U+0001), never a name to create */
  char          *parent_id;       /* NULL for the root */
  GraphItemKind  kind;
  gboolean       is_root;
  gboolean       deleted;         /* the deleted facet is present */
  gint64         size;            /* -1 when absent */
  char          *etag;
  char          *ctag;
  gint64         mtime;           /* unix seconds; fileSystemInfo.lastModifiedDateTime preferred */
  char          *quickxor_hash;   /* as given (base64); NULL when absent */
  char          *remote_drive_id; /* GRAPH_ITEM_REMOTE only */
  char          *remote_id;
  char          *name_problem;    /* NULL when the name is usable as a Linux file name */
} GraphItem;

void graph_item_free (GraphItem *item);
GraphItem *graph_item_copy (const GraphItem *item);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GraphItem, graph_item_free)

typedef struct {
  GPtrArray *items;          /* GraphItem*, owned, in page order (duplicates kept) */
  GPtrArray *item_errors;    /* char*, one message per item that could not be parsed */
  char      *next_link;      /* exactly one of next_link / delta_link is set */
  char      *delta_link;
} GraphDeltaPage;

void graph_delta_page_free (GraphDeltaPage *page);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GraphDeltaPage, graph_delta_page_free)

/* Parses one page of a delta or children listing. @default_drive_id fills drive_id where
 * the item carries none. Returns NULL with GRAPH_ERROR_PARSE for a page that is not a JSON
 * object with a "value" array, or that has neither link on a delta page (@require_link). */
GraphDeltaPage *graph_delta_page_parse (const char *json, gsize len,
                                        const char *default_drive_id,
                                        gboolean require_link,
                                        GError **error);

/* NULL if @name can be a file name on Linux, else a static reason: empty, ".", "..",
 * contains '/', NUL or a control character, longer than 255 bytes, invalid UTF-8. */
const char *graph_item_name_problem (const char *name, gssize len);

/* ISO 8601 with or without fraction and with Z or an offset → unix seconds. FALSE if not a time. */
gboolean graph_parse_time (const char *text, gint64 *unix_seconds);

G_END_DECLS
