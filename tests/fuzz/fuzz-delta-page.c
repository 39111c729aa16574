/* libFuzzer target for the delta page parser: any bytes in, never a crash, a leak or an
 * out-of-bounds read out (ASan/UBSan are on in this build). Every record that comes out
 * must keep the parser's promises: an id, a printable name or a name_problem, exactly one
 * link on a delta page. The input is not NUL-terminated on purpose: the parser is given
 * a length and must respect it. */
#include "config.h"

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/graph-item.h>

#include "graph-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
check_page (const GraphDeltaPage *page, gboolean require_link)
{
  if (require_link && (page->next_link == NULL) == (page->delta_link == NULL))
    abort ();
  for (guint i = 0; i < page->items->len; i++)
    {
      const GraphItem *it = page->items->pdata[i];
      if (it->id == NULL || it->id[0] == '\0' || !g_utf8_validate (it->id, -1, NULL))
        abort ();
      if (it->name != NULL && it->name_problem == NULL
          && graph_item_name_problem (it->name, -1) != NULL)
        abort ();
      if (it->name != NULL && !g_utf8_validate (it->name, -1, NULL))
        abort ();
      if (it->kind == GRAPH_ITEM_REMOTE && (it->remote_id == NULL || it->remote_drive_id == NULL))
        abort ();
      g_autoptr (GraphItem) copy = graph_item_copy (it);
      if (strcmp (copy->id, it->id) != 0)
        abort ();
    }
  for (guint i = 0; i < page->item_errors->len; i++)
    if (!g_utf8_validate (page->item_errors->pdata[i], -1, NULL))
      abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  /* A private copy of exactly @size bytes, so ASan flags any read past the end. */
  char *copy = malloc (size > 0 ? size : 1);
  if (copy == NULL)
    return 0;
  memcpy (copy, data, size);
  for (int require = 0; require < 2; require++)
    {
      GError *error = NULL;
      GraphDeltaPage *page = graph_delta_page_parse (copy, size, require ? "DRIVE" : NULL, require, &error);
      if ((page == NULL) == (error == NULL))
        abort ();
      if (page != NULL)
        check_page (page, require);
      graph_delta_page_free (page);
      g_clear_error (&error);
    }
  /* Error bodies go through the same JSON front door. */
  char *message = NULL;
  char **codes = graph_error_codes_from_body (copy, size, &message);
  g_strfreev (codes);
  g_free (message);
  free (copy);
  return 0;
}
