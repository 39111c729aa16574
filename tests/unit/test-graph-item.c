/* The delta page parser against well-formed pages from both account styles and against
 * hostile input: wrong types, missing fields, huge strings, invalid UTF-8, NUL escapes and
 * names Linux cannot hold. Also ISO 8601 times and the error-body code extraction. */
#include "config.h"

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/graph-item.h>

#include "graph-private.h"

#include <string.h>

static GraphDeltaPage *
parse_ok (const char *json, gboolean require_link)
{
  g_autoptr (GError) error = NULL;
  GraphDeltaPage *page = graph_delta_page_parse (json, strlen (json), "DRIVE", require_link, &error);
  g_assert_no_error (error);
  g_assert_nonnull (page);
  return page;
}

static void
parse_fails (const char *json, gssize len)
{
  g_autoptr (GError) error = NULL;
  gsize n = len < 0 ? strlen (json) : (gsize) len;
  g_autoptr (GraphDeltaPage) page = graph_delta_page_parse (json, n, "DRIVE", TRUE, &error);
  g_assert_null (page);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE);
}

static const char personal_page[] =
  "{\"@odata.context\":\"x\",\"value\":["
  "{\"id\":\"D6EBF6B564426B61!101\",\"name\":\"root\",\"root\":{},\"folder\":{\"childCount\":2},"
  " \"parentReference\":{\"driveId\":\"d6ebf6b564426b61\"},\"eTag\":\"aRDZFQkY2QjU2NDQyNkI2MSExMDEuMA\","
  " \"cTag\":\"adDpENkVCRjZCNTY0NDI2QjYxITEwMS42Mzc\",\"size\":1234,"
  " \"lastModifiedDateTime\":\"2024-03-01T10:00:00Z\"},"
  "{\"id\":\"D6EBF6B564426B61!107\",\"name\":\"report.pdf\",\"size\":11,"
  " \"parentReference\":{\"driveId\":\"D6EBF6B564426B61\",\"id\":\"D6EBF6B564426B61!101\",\"path\":\"/drive/root:\"},"
  " \"file\":{\"mimeType\":\"application/pdf\",\"hashes\":{\"quickXorHash\":\"aCgDG9jwBhDc4Q1yawMZAAAAAAA=\",\"sha1Hash\":\"X\"}},"
  " \"fileSystemInfo\":{\"createdDateTime\":\"2020-01-01T00:00:00Z\",\"lastModifiedDateTime\":\"2021-06-15T08:30:21.573Z\"},"
  " \"lastModifiedDateTime\":\"2024-03-01T10:00:00Z\",\"eTag\":\"e1\",\"cTag\":\"c1\",\"unknownField\":[1,2,{}]},"
  "{\"id\":\"D6EBF6B564426B61!200\",\"deleted\":{},\"parentReference\":{\"id\":\"D6EBF6B564426B61!101\"}}"
  "],\"@odata.deltaLink\":\"https://graph.microsoft.com/v1.0/drives/x/root/delta?token=abc\"}";

static void
test_personal_page (void)
{
  g_autoptr (GraphDeltaPage) page = parse_ok (personal_page, TRUE);
  g_assert_cmpuint (page->items->len, ==, 3);
  g_assert_cmpuint (page->item_errors->len, ==, 0);
  g_assert_null (page->next_link);
  g_assert_cmpstr (page->delta_link, ==, "https://graph.microsoft.com/v1.0/drives/x/root/delta?token=abc");

  GraphItem *root = page->items->pdata[0];
  g_assert_true (root->is_root);
  g_assert_cmpint (root->kind, ==, GRAPH_ITEM_FOLDER);
  g_assert_null (root->parent_id);
  g_assert_cmpstr (root->drive_id, ==, "d6ebf6b564426b61");

  GraphItem *f = page->items->pdata[1];
  g_assert_cmpstr (f->id, ==, "D6EBF6B564426B61!107");
  g_assert_cmpstr (f->name, ==, "report.pdf");
  g_assert_null (f->name_problem);
  g_assert_cmpint (f->kind, ==, GRAPH_ITEM_FILE);
  g_assert_cmpint (f->size, ==, 11);
  g_assert_cmpstr (f->parent_id, ==, "D6EBF6B564426B61!101");
  g_assert_cmpstr (f->quickxor_hash, ==, "aCgDG9jwBhDc4Q1yawMZAAAAAAA=");
  g_assert_cmpstr (f->etag, ==, "e1");
  g_assert_cmpstr (f->ctag, ==, "c1");
  g_assert_false (f->deleted);
  /* fileSystemInfo wins over the service's own timestamp */
  g_assert_cmpint (f->mtime, ==, 1623745821);

  GraphItem *t = page->items->pdata[2];
  g_assert_true (t->deleted);
  g_assert_null (t->name);
  g_assert_cmpint (t->size, ==, -1);
  g_assert_cmpstr (t->drive_id, ==, "DRIVE");  /* the default fills in */
}

static void
test_business_and_kinds (void)
{
  static const char json[] =
    "{\"value\":["
    "{\"id\":\"01D6JQOR2\",\"name\":\"Notebook\",\"package\":{\"type\":\"oneNote\"},\"folder\":{},"
    " \"parentReference\":{\"driveId\":\"b!xA9h\",\"id\":\"01ROOT\"},\"eTag\":\"\\\"{6E8B0A5C-1D4E-4C87-9CB5-8C6DA1F0B12E},5\\\"\"},"
    "{\"id\":\"01SHORT\",\"name\":\"Shared\",\"folder\":{},\"remoteItem\":{\"id\":\"R!5\",\"parentReference\":{\"driveId\":\"rdrive\"},\"folder\":{}},"
    " \"parentReference\":{\"driveId\":\"b!xA9h\",\"id\":\"01ROOT\"}},"
    "{\"id\":\"01GONE\",\"deleted\":{\"state\":\"deleted\"},\"size\":0,\"parentReference\":{\"driveId\":\"b!xA9h\",\"id\":\"01ROOT\"}},"
    "{\"id\":\"01DIR\",\"name\":\"Reports\",\"folder\":{\"childCount\":0},\"size\":null,\"cTag\":null}"
    "],\"@odata.nextLink\":\"https://graph.microsoft.com/v1.0/drives/b!xA9h/root/delta?$skiptoken=1\"}";
  g_autoptr (GraphDeltaPage) page = parse_ok (json, TRUE);
  g_assert_cmpuint (page->items->len, ==, 4);
  g_assert_cmpstr (page->next_link, ==, "https://graph.microsoft.com/v1.0/drives/b!xA9h/root/delta?$skiptoken=1");
  g_assert_null (page->delta_link);
  GraphItem *pkg = page->items->pdata[0];
  g_assert_cmpint (pkg->kind, ==, GRAPH_ITEM_PACKAGE);
  g_assert_cmpstr (pkg->etag, ==, "\"{6E8B0A5C-1D4E-4C87-9CB5-8C6DA1F0B12E},5\"");
  GraphItem *sc = page->items->pdata[1];
  g_assert_cmpint (sc->kind, ==, GRAPH_ITEM_REMOTE);
  g_assert_cmpstr (sc->remote_id, ==, "R!5");
  g_assert_cmpstr (sc->remote_drive_id, ==, "rdrive");
  GraphItem *gone = page->items->pdata[2];
  g_assert_true (gone->deleted);
  g_assert_cmpint (gone->size, ==, 0);
  GraphItem *dir = page->items->pdata[3];
  g_assert_cmpint (dir->kind, ==, GRAPH_ITEM_FOLDER);
  g_assert_cmpint (dir->size, ==, -1);
  g_assert_null (dir->ctag);
  g_assert_cmpint (dir->mtime, ==, 0);

  g_autoptr (GraphItem) copy = graph_item_copy (sc);
  g_assert_cmpstr (copy->remote_drive_id, ==, "rdrive");
  g_assert_true (copy->id != sc->id);
}

static void
test_page_errors (void)
{
  parse_fails ("", 0);
  parse_fails ("not json", -1);
  parse_fails ("[]", -1);
  parse_fails ("{}", -1);
  parse_fails ("{\"value\":{}}", -1);
  parse_fails ("{\"value\":\"x\"}", -1);
  parse_fails ("{\"value\":[]}", -1);                                         /* no link */
  parse_fails ("{\"value\":[],\"@odata.nextLink\":5}", -1);                    /* wrong type */
  parse_fails ("{\"value\":[],\"@odata.deltaLink\":\"\"}", -1);                 /* empty */
  parse_fails ("{\"value\":[],\"@odata.nextLink\":\"a\",\"@odata.deltaLink\":\"b\"}", -1);
  parse_fails ("{\"value\":[],\"@odata.nextLink\":\"\xff\xfe\"}", -1);          /* bad UTF-8 */
  parse_fails ("{\"value\":[{\"id\":\"a\"}", -1);                               /* truncated */
  /* a length shorter than the text: the parser must not read past it */
  static const char whole[] = "{\"value\":[],\"@odata.deltaLink\":\"x\"}";
  parse_fails (whole, sizeof whole - 5);

  /* a children listing needs no link; the last page has none */
  g_autoptr (GraphDeltaPage) page = parse_ok ("{\"value\":[]}", FALSE);
  g_assert_cmpuint (page->items->len, ==, 0);

  /* deep nesting is refused by cJSON's limit, not by the stack */
  GString *deep = g_string_new ("{\"value\":[{\"id\":\"a\",\"x\":");
  for (int i = 0; i < 100000; i++)
    g_string_append_c (deep, '[');
  parse_fails (deep->str, (gssize) deep->len);
  g_string_free (deep, TRUE);
}

static void
test_item_errors (void)
{
  static const char json[] =
    "{\"value\":["
    "5,"
    "{\"name\":\"no id\",\"file\":{}},"
    "{\"id\":7,\"file\":{}},"
    "{\"id\":\"\",\"file\":{}},"
    "{\"id\":\"a\\u0001b\",\"file\":{}},"
    "{\"id\":\"x1\",\"name\":5,\"file\":{}},"
    "{\"id\":\"x2\",\"name\":\"n\",\"file\":\"yes\"},"
    "{\"id\":\"x3\",\"name\":\"n\",\"file\":{},\"size\":\"12\"},"
    "{\"id\":\"x4\",\"name\":\"n\",\"file\":{},\"size\":-1},"
    "{\"id\":\"x5\",\"name\":\"n\",\"file\":{},\"size\":1.5},"
    "{\"id\":\"x6\",\"name\":\"n\",\"file\":{},\"size\":1e300},"
    "{\"id\":\"x7\",\"name\":\"n\",\"file\":{},\"parentReference\":[]},"
    "{\"id\":\"x8\",\"name\":\"n\",\"file\":{},\"parentReference\":{\"id\":{}}},"
    "{\"id\":\"x9\",\"name\":\"n\",\"file\":{\"hashes\":{\"quickXorHash\":12}}},"
    "{\"id\":\"x10\",\"name\":\"n\",\"file\":{},\"lastModifiedDateTime\":\"yesterday\"},"
    "{\"id\":\"x11\",\"name\":\"n\",\"remoteItem\":{\"id\":\"r\"}},"
    "{\"id\":\"x12\",\"name\":\"n\"},"
    "{\"id\":\"x13\",\"name\":\"n\",\"file\":{},\"eTag\":[]},"
    "{\"id\":\"\xc3\x28\",\"file\":{}},"
    "{\"id\":\"ok\",\"name\":\"fine.txt\",\"file\":{}}"
    "],\"@odata.deltaLink\":\"d\"}";
  g_autoptr (GraphDeltaPage) page = parse_ok (json, TRUE);
  g_assert_cmpuint (page->items->len, ==, 1);
  g_assert_cmpstr (((GraphItem *) page->items->pdata[0])->id, ==, "ok");
  g_assert_cmpuint (page->item_errors->len, ==, 19);
  for (guint i = 0; i < page->item_errors->len; i++)
    {
      const char *msg = page->item_errors->pdata[i];
      g_assert_true (g_utf8_validate (msg, -1, NULL));
      g_assert_true (g_str_has_prefix (msg, "item "));
    }
  g_assert_cmpstr (page->item_errors->pdata[0], ==, "item 0: entry is not an object");
  g_assert_cmpstr (page->item_errors->pdata[1], ==, "item 1: id is missing");
}

static void
test_hostile_names (void)
{
  GString *json = g_string_new ("{\"value\":[");
  static const char *names[] = {
    "a/b", "..", ".", "", "tab\\there", "del\\u007f", "nul\\u0000byte", "bad\xffutf8",
    "ok name (1).txt", "\xe2\x82\xac uro",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (names); i++)
    g_string_append_printf (json, "{\"id\":\"i%zu\",\"name\":\"%s\",\"file\":{}},", i, names[i]);
  /* 256 bytes: one over; 255 is fine; a 2 MB name is kept, cut short, for the report */
  g_autofree char *n256 = g_strnfill (256, 'x');
  g_autofree char *n255 = g_strnfill (255, 'y');
  g_autofree char *huge = g_strnfill (2 * 1024 * 1024, 'z');
  g_string_append_printf (json, "{\"id\":\"long\",\"name\":\"%s\",\"file\":{}},", n256);
  g_string_append_printf (json, "{\"id\":\"max\",\"name\":\"%s\",\"file\":{}},", n255);
  g_string_append_printf (json, "{\"id\":\"huge\",\"name\":\"%s\",\"file\":{}},", huge);
  /* a huge id is an item error, not a row in the store */
  g_string_append_printf (json, "{\"id\":\"%s\",\"name\":\"n\",\"file\":{}}", huge);
  g_string_append (json, "],\"@odata.deltaLink\":\"d\"}");

  g_autoptr (GError) error = NULL;
  g_autoptr (GraphDeltaPage) page = graph_delta_page_parse (json->str, json->len, NULL, TRUE, &error);
  g_string_free (json, TRUE);
  g_assert_no_error (error);
  g_assert_cmpuint (page->item_errors->len, ==, 1);
  g_assert_cmpuint (page->items->len, ==, G_N_ELEMENTS (names) + 3);

  const char *expect[] = {
    "contains '/'", "is . or ..", "is . or ..", "empty", "contains a control character",
    "contains a control character", "contains a control character", "not valid UTF-8", NULL, NULL,
    "longer than 255 bytes", NULL, "longer than 255 bytes",
  };
  for (guint i = 0; i < page->items->len; i++)
    {
      GraphItem *it = page->items->pdata[i];
      g_assert_cmpstr (it->name_problem, ==, expect[i]);
      g_assert_nonnull (it->name);
      g_assert_true (g_utf8_validate (it->name, -1, NULL));
      g_assert_cmpuint (strlen (it->name), <=, 1024);
      g_assert_null (it->drive_id);
    }
  /* the NUL was not allowed to cut the name short into something valid */
  g_assert_cmpstr (((GraphItem *) page->items->pdata[6])->name, ==, "nul\001byte");
}

static void
test_nul_escape_scan (void)
{
  /* an escaped backslash followed by "u0000" is text, not a NUL */
  static const char json[] = "{\"value\":[{\"id\":\"a\",\"name\":\"x\\\\u0000\",\"file\":{}}],\"@odata.deltaLink\":\"d\"}";
  g_autoptr (GraphDeltaPage) page = parse_ok (json, TRUE);
  g_assert_cmpuint (page->items->len, ==, 1);
  GraphItem *it = page->items->pdata[0];
  g_assert_cmpstr (it->name, ==, "x\\u0000");
  g_assert_null (it->name_problem);
}

static void
test_name_problem (void)
{
  g_assert_null (graph_item_name_problem ("a", -1));
  g_assert_null (graph_item_name_problem ("...", -1));
  g_assert_null (graph_item_name_problem (".hidden", -1));
  g_assert_cmpstr (graph_item_name_problem (NULL, -1), ==, "missing");
  g_assert_cmpstr (graph_item_name_problem ("a\0b", 3), ==, "contains a NUL byte");
  g_assert_cmpstr (graph_item_name_problem ("a\nb", -1), ==, "contains a control character");
  g_assert_cmpstr (graph_item_name_problem ("\xed\xa0\x80", -1), ==, "not valid UTF-8");  /* surrogate */
  g_assert_cmpstr (graph_item_name_problem ("..", 1), ==, "is . or ..");  /* the length rules */
}

static void
test_time (void)
{
  struct { const char *text; gint64 expect; } ok[] = {
    { "1970-01-01T00:00:00Z", 0 },
    { "2021-06-15T08:30:21.573Z", 1623745821 },
    { "2021-06-15T08:30:53Z", 1623745853 },
    { "2021-06-15T10:30:53+02:00", 1623745853 },
    { "2021-06-15T10:30:53+0200", 1623745853 },
    { "2000-02-29T00:00:00Z", 951782400 },
    { "0001-01-01T00:00:00-08:00", -62135596800 + 8 * 3600 },
    { "9999-12-31T23:59:59Z", 253402300799 },
    { "2021-06-15T08:30:21", 1623745821 },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (ok); i++)
    {
      gint64 t = 42;
      g_assert_true (graph_parse_time (ok[i].text, &t));
      g_assert_cmpint (t, ==, ok[i].expect);
    }
  const char *bad[] = {
    "", "2021", "2021-13-01T00:00:00Z", "2021-02-29T00:00:00Z", "2021-06-15 08:30", "2021-06-15T25:00:00Z",
    "2021-06-15T08:30:21.Z", "2021-06-15T08:30:21Zjunk", "2021-06-15T08:30:21+2", "x021-06-15T08:30:21Z",
    "0000-01-01T00:00:00Z",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      gint64 t = 42;
      g_assert_false (graph_parse_time (bad[i], &t));
      g_assert_cmpint (t, ==, 42);
    }
}

static void
test_error_codes (void)
{
  static const char graph[] = "{\"error\":{\"code\":\"resyncRequired\",\"message\":\"Resync\","
                              "\"innerError\":{\"code\":\"resyncApplyDifferences\",\"innererror\":{\"code\":\"deeper\"}}}}";
  g_autofree char *message = NULL;
  g_auto (GStrv) codes = graph_error_codes_from_body (graph, strlen (graph), &message);
  g_assert_nonnull (codes);
  g_assert_cmpuint (g_strv_length (codes), ==, 3);
  g_assert_cmpstr (codes[0], ==, "resyncRequired");
  g_assert_cmpstr (codes[1], ==, "resyncApplyDifferences");
  g_assert_cmpstr (codes[2], ==, "deeper");
  g_assert_cmpstr (message, ==, "Resync");

  static const char oauth[] = "{\"error\":\"invalid_grant\",\"error_description\":\"AADSTS70000\"}";
  g_autofree char *m2 = NULL;
  g_auto (GStrv) c2 = graph_error_codes_from_body (oauth, strlen (oauth), &m2);
  g_assert_cmpstr (c2[0], ==, "invalid_grant");
  g_assert_cmpstr (m2, ==, "AADSTS70000");

  g_assert_null (graph_error_codes_from_body ("<html>", 6, NULL));
  g_assert_null (graph_error_codes_from_body ("{\"error\":{\"code\":7}}", 20, NULL));
  g_assert_null (graph_error_codes_from_body ("{\"error\":{\"code\":\"has space\"}}", 29, NULL));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/graph-item/personal-page", test_personal_page);
  g_test_add_func ("/graph-item/business-and-kinds", test_business_and_kinds);
  g_test_add_func ("/graph-item/page-errors", test_page_errors);
  g_test_add_func ("/graph-item/item-errors", test_item_errors);
  g_test_add_func ("/graph-item/hostile-names", test_hostile_names);
  g_test_add_func ("/graph-item/nul-escape-scan", test_nul_escape_scan);
  g_test_add_func ("/graph-item/name-problem", test_name_problem);
  g_test_add_func ("/graph-item/time", test_time);
  g_test_add_func ("/graph-item/error-codes", test_error_codes);
  return g_test_run ();
}
