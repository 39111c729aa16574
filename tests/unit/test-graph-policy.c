/* The parts of the Graph client that need no server: the retry policy as a function of
 * the mapped error, backoff bounds, Retry-After, the link check that keeps the client on
 * its configured base, path encoding, and the token file (mode rule, atomic rewrite). */
#include "config.h"

#include <onedrive-syncfs/graph-client.h>

#include "graph-private.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>

static GError *
http_error (guint status, const char *body, const char *retry_after)
{
  GError *error = NULL;
  graph_set_http_error (&error, "GET x", status, body, body != NULL ? strlen (body) : 0, NULL, retry_after);
  g_assert_nonnull (error);
  g_assert_cmpuint (graph_error_status (error), ==, status);
  return error;
}

static void
test_classify (void)
{
  struct { guint status; const char *body; const char *ra; GraphErrorCode code; GraphRetryAction action; } cases[] = {
    { 429, NULL, "3", GRAPH_ERROR_THROTTLED, GRAPH_RETRY_GATE },
    { 503, NULL, "1", GRAPH_ERROR_THROTTLED, GRAPH_RETRY_GATE },
    { 429, NULL, NULL, GRAPH_ERROR_THROTTLED, GRAPH_RETRY_BACKOFF },
    { 503, NULL, NULL, GRAPH_ERROR_THROTTLED, GRAPH_RETRY_BACKOFF },
    { 429, NULL, "soon", GRAPH_ERROR_THROTTLED, GRAPH_RETRY_BACKOFF },
    { 500, NULL, NULL, GRAPH_ERROR_HTTP, GRAPH_RETRY_BACKOFF },
    { 502, NULL, NULL, GRAPH_ERROR_HTTP, GRAPH_RETRY_BACKOFF },
    { 504, NULL, NULL, GRAPH_ERROR_HTTP, GRAPH_RETRY_BACKOFF },
    { 400, "{\"error\":{\"code\":\"invalidRequest\",\"innerError\":{\"code\":\"cannotSnapshotTree\"}}}", NULL,
      GRAPH_ERROR_HTTP, GRAPH_RETRY_BACKOFF },
    { 501, NULL, NULL, GRAPH_ERROR_NOT_SUPPORTED, GRAPH_RETRY_NEVER },
    { 400, "{\"error\":{\"code\":\"notSupported\"}}", NULL, GRAPH_ERROR_NOT_SUPPORTED, GRAPH_RETRY_NEVER },
    { 507, NULL, NULL, GRAPH_ERROR_HTTP, GRAPH_RETRY_NEVER },
    { 400, NULL, NULL, GRAPH_ERROR_HTTP, GRAPH_RETRY_NEVER },
    { 403, NULL, NULL, GRAPH_ERROR_HTTP, GRAPH_RETRY_NEVER },
    { 404, "{\"error\":{\"code\":\"itemNotFound\"}}", NULL, GRAPH_ERROR_NOT_FOUND, GRAPH_RETRY_NEVER },
    { 410, "{\"error\":{\"code\":\"resyncRequired\"}}", NULL, GRAPH_ERROR_RESYNC_REQUIRED, GRAPH_RETRY_NEVER },
    { 401, "{\"error\":{\"code\":\"InvalidAuthenticationToken\"}}", NULL, GRAPH_ERROR_AUTH, GRAPH_RETRY_REAUTH },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) e = http_error (cases[i].status, cases[i].body, cases[i].ra);
      g_assert_error (e, GRAPH_ERROR, (gint) cases[i].code);
      g_assert_cmpint (graph_retry_classify (e), ==, cases[i].action);
    }

  g_autoptr (GError) gone = NULL;
  static const char body410[] = "{\"error\":{\"code\":\"resyncRequired\",\"innererror\":{\"code\":\"resyncApplyDifferences\"}}}";
  graph_set_http_error (&gone, "GET delta", 410, body410, strlen (body410), "https://g/v1.0/x?token=new", NULL);
  g_assert_cmpstr (graph_error_code (gone, 0), ==, "resyncRequired");
  g_assert_cmpstr (graph_error_code (gone, 1), ==, "resyncApplyDifferences");
  g_assert_null (graph_error_code (gone, 2));
  g_assert_true (graph_error_has_code (gone, "resyncApplyDifferences"));
  g_assert_cmpstr (graph_error_location (gone), ==, "https://g/v1.0/x?token=new");
  g_autoptr (GError) copy = g_error_copy (gone);
  g_assert_cmpstr (graph_error_location (copy), ==, "https://g/v1.0/x?token=new");
  g_assert_cmpuint (graph_error_status (copy), ==, 410);

  struct { CURLcode code; GraphErrorCode expect; GraphRetryAction action; } curl[] = {
    { CURLE_COULDNT_CONNECT, GRAPH_ERROR_NETWORK, GRAPH_RETRY_BACKOFF },
    { CURLE_RECV_ERROR, GRAPH_ERROR_NETWORK, GRAPH_RETRY_BACKOFF },
    { CURLE_OPERATION_TIMEDOUT, GRAPH_ERROR_TIMEOUT, GRAPH_RETRY_BACKOFF },
    { CURLE_PARTIAL_FILE, GRAPH_ERROR_TRUNCATED, GRAPH_RETRY_BACKOFF },
    { CURLE_PEER_FAILED_VERIFICATION, GRAPH_ERROR_FAILED, GRAPH_RETRY_NEVER },
    { CURLE_ABORTED_BY_CALLBACK, GRAPH_ERROR_CANCELLED, GRAPH_RETRY_NEVER },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (curl); i++)
    {
      g_autoptr (GError) e = NULL;
      graph_set_curl_error (&e, "GET x", curl[i].code, "detail");
      g_assert_error (e, GRAPH_ERROR, (gint) curl[i].expect);
      g_assert_cmpuint (graph_error_status (e), ==, 0);
      g_assert_cmpint (graph_retry_classify (e), ==, curl[i].action);
    }

  g_autoptr (GError) io = NULL;
  graph_set_io_error (&io, ENOSPC, "writing %s", "f");
  g_assert_error (io, GRAPH_ERROR, GRAPH_ERROR_LOCAL_IO);
  g_assert_cmpint (graph_error_errno (io), ==, ENOSPC);
  g_assert_cmpint (graph_retry_classify (io), ==, GRAPH_RETRY_NEVER);

  /* other domains carry nothing and are never retried */
  g_autoptr (GError) other = g_error_new_literal (G_IO_ERROR, G_IO_ERROR_FAILED, "x");
  g_assert_cmpuint (graph_error_status (other), ==, 0);
  g_assert_null (graph_error_code (other, 0));
  g_assert_cmpint (graph_retry_classify (other), ==, GRAPH_RETRY_NEVER);
}

static void
test_backoff (void)
{
  for (guint attempt = 0; attempt < 20; attempt++)
    for (int k = 0; k < 200; k++)
      {
        gint64 d = graph_retry_backoff_ms (attempt, 100, 5000);
        gint64 step = MIN ((gint64) 100 << MIN (attempt, 40u), 5000);
        g_assert_cmpint (d, >=, step / 2);
        g_assert_cmpint (d, <=, step);
      }
  /* jitter: not every delay is the same */
  gint64 first = graph_retry_backoff_ms (3, 100, 5000);
  gboolean differs = FALSE;
  for (int k = 0; k < 100 && !differs; k++)
    differs = graph_retry_backoff_ms (3, 100, 5000) != first;
  g_assert_true (differs);
}

static void
test_retry_after (void)
{
  gint64 ms = 0;
  g_assert_true (graph_parse_retry_after ("5", 0, &ms));
  g_assert_cmpint (ms, ==, 5000);
  g_assert_true (graph_parse_retry_after (" 0 ", 0, &ms));
  g_assert_cmpint (ms, ==, 0);
  g_assert_true (graph_parse_retry_after ("99999999999", 0, &ms));
  g_assert_cmpint (ms, ==, 24 * 3600 * 1000);
  /* HTTP-date, relative to "now" */
  g_assert_true (graph_parse_retry_after ("Thu, 01 Jan 1970 00:01:40 GMT", 40, &ms));
  g_assert_cmpint (ms, ==, 60000);
  g_assert_true (graph_parse_retry_after ("Thu, 01 Jan 1970 00:00:10 GMT", 40, &ms));
  g_assert_cmpint (ms, ==, 0);  /* in the past: now */
  g_assert_false (graph_parse_retry_after ("-3", 0, &ms));
  g_assert_false (graph_parse_retry_after ("5s", 0, &ms));
  g_assert_false (graph_parse_retry_after ("", 0, &ms));
  g_assert_false (graph_parse_retry_after (NULL, 0, &ms));
}

static void
test_link_on_base (void)
{
  const char *base = "https://graph.microsoft.com/v1.0";
  g_assert_true (graph_link_on_base ("https://graph.microsoft.com/v1.0/drives/x/root/delta?token=a", base));
  g_assert_true (graph_link_on_base ("https://GRAPH.microsoft.com:443/v1.0/me/drive/root/delta?$skiptoken=1", base));
  g_assert_true (graph_link_on_base ("https://graph.microsoft.com/v1.0/x", "https://graph.microsoft.com/v1.0/"));
  g_assert_false (graph_link_on_base ("https://graph.microsoft.com/beta/drives/x", base));
  g_assert_false (graph_link_on_base ("https://graph.microsoft.com/v1.0x/drives", base));
  g_assert_false (graph_link_on_base ("https://graph.microsoft.com.evil.example/v1.0/x", base));
  g_assert_false (graph_link_on_base ("https://evil.example/?https://graph.microsoft.com/v1.0/", base));
  g_assert_false (graph_link_on_base ("http://graph.microsoft.com/v1.0/x", base));
  g_assert_false (graph_link_on_base ("https://graph.microsoft.com:8443/v1.0/x", base));
  g_assert_false (graph_link_on_base ("https://user@graph.microsoft.com/v1.0/x", base));
  g_assert_false (graph_link_on_base ("https://graph.microsoft.com/v1.0/../beta/x", base));
  g_assert_false (graph_link_on_base ("https://graph.microsoft.com/v1.0/%2e%2e/beta", base));
  g_assert_false (graph_link_on_base ("file:///etc/passwd", base));
  g_assert_false (graph_link_on_base ("/v1.0/drives/x", base));
  g_assert_false (graph_link_on_base ("", base));
  g_assert_false (graph_link_on_base (NULL, base));
  g_assert_true (graph_link_on_base ("http://127.0.0.1:8080/v1.0/drives/d/root/delta?token=1", "http://127.0.0.1:8080/v1.0"));
  g_assert_false (graph_link_on_base ("http://127.0.0.1:8081/v1.0/drives/d", "http://127.0.0.1:8080/v1.0"));
}

static void
test_encode_path (void)
{
  struct { const char *in, *out; } cases[] = {
    { "/Documents/Reports", "Documents/Reports" },
    { "/a b/c#d", "a%20b/c%23d" },
    { "100%/x+y", "100%25/x%2By" },
    { "//double//slash/", "double/slash" },
    { "/", "" },
    { "/\xc3\xa9t\xc3\xa9", "%C3%A9t%C3%A9" },
    { "/q?x=1", "q%3Fx%3D1" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *got = graph_encode_path (cases[i].in);
      g_assert_cmpstr (got, ==, cases[i].out);
    }
  g_autofree char *log = graph_url_for_log ("https://dl.example/file?tempauth=SECRET#frag");
  g_assert_cmpstr (log, ==, "https://dl.example/file");
  g_autofree char *origin = graph_url_origin ("https://dl.example:8443/sig/NATURE?x=1");
  g_assert_cmpstr (origin, ==, "https://dl.example:8443");
}

typedef struct {
  char *dir;
  char *path;
} TokenFixture;

static void
token_setup (TokenFixture *f, gconstpointer data)
{
  f->dir = g_dir_make_tmp ("odsf-token-XXXXXX", NULL);
  g_assert_nonnull (f->dir);
  f->path = g_build_filename (f->dir, "profile", "token.json", NULL);
}

static void
token_teardown (TokenFixture *f, gconstpointer data)
{
  g_autofree char *sub = g_path_get_dirname (f->path);
  g_unlink (f->path);
  g_rmdir (sub);
  g_rmdir (f->dir);
  g_free (f->path);
  g_free (f->dir);
}

static GraphClient *
client_for (const char *token_file, GError **error)
{
  GraphConfig config = { .graph_url = "http://127.0.0.1:9/v1.0", .login_url = "http://127.0.0.1:9",
                         .client_id = "test-client", .token_file = token_file };
  return graph_client_new (&config, error);
}

static void
test_token_roundtrip (TokenFixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_assert_true (graph_auth_save (f->path, "RT-1", "AT-1", 4102444800, &error));
  g_assert_no_error (error);
  struct stat st;
  g_assert_cmpint (g_stat (f->path, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  g_autofree char *sub = g_path_get_dirname (f->path);
  g_assert_cmpint (g_stat (sub, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0700);

  g_autofree char *text = NULL;
  g_assert_true (g_file_get_contents (f->path, &text, NULL, NULL));
  g_autoptr (cJSON) root = cJSON_Parse (text);
  g_assert_cmpstr (cJSON_GetObjectItem (root, "refresh_token")->valuestring, ==, "RT-1");
  g_assert_cmpstr (cJSON_GetObjectItem (root, "access_token")->valuestring, ==, "AT-1");
  g_assert_cmpfloat (cJSON_GetObjectItem (root, "expires_at")->valuedouble, ==, 4102444800.0);

  g_autoptr (GraphClient) client = client_for (f->path, &error);
  g_assert_no_error (error);
  g_assert_true (graph_client_has_token (client));
  guint64 gen = 0;
  g_autofree char *at = graph_auth_access_token (client, &gen, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (at, ==, "AT-1");

  /* a rewrite replaces the file and leaves no temp file behind */
  g_assert_true (graph_auth_save (f->path, "RT-2", NULL, 1, &error));
  g_autoptr (GDir) d = g_dir_open (sub, 0, NULL);
  guint entries = 0;
  while (g_dir_read_name (d) != NULL)
    entries++;
  g_assert_cmpuint (entries, ==, 1);
}

static void
test_token_mode (TokenFixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_assert_true (graph_auth_save (f->path, "RT", "AT", 1, &error));
  guint modes[] = { 0640, 0604, 0660, 0644, 0601 };
  for (gsize i = 0; i < G_N_ELEMENTS (modes); i++)
    {
      g_assert_cmpint (g_chmod (f->path, modes[i]), ==, 0);
      g_autoptr (GError) e = NULL;
      g_autoptr (GraphClient) client = client_for (f->path, &e);
      g_assert_null (client);
      g_assert_error (e, GRAPH_ERROR, GRAPH_ERROR_AUTH);
      /* the message names the file and the fix */
      g_assert_nonnull (strstr (e->message, f->path));
      g_assert_nonnull (strstr (e->message, "chmod 600"));
    }
  g_assert_cmpint (g_chmod (f->path, 0600), ==, 0);
  g_autoptr (GraphClient) ok = client_for (f->path, &error);
  g_assert_no_error (error);
  g_assert_true (graph_client_has_token (ok));

  /* a symlink is not followed */
  g_autofree char *link = g_strconcat (f->path, ".link", NULL);
  g_assert_cmpint (symlink (f->path, link), ==, 0);
  g_autoptr (GError) e2 = NULL;
  g_autoptr (GraphClient) via_link = client_for (link, &e2);
  g_unlink (link);
  g_assert_null (via_link);
  g_assert_error (e2, GRAPH_ERROR, GRAPH_ERROR_AUTH);
}

static void
test_token_missing_or_bad (TokenFixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  /* no file yet: the client exists, holds no token, and says so when asked for one */
  g_autoptr (GraphClient) client = client_for (f->path, &error);
  g_assert_no_error (error);
  g_assert_false (graph_client_has_token (client));
  guint64 gen;
  g_autofree char *at = graph_auth_access_token (client, &gen, NULL, &error);
  g_assert_null (at);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH);
  g_clear_error (&error);

  const char *bad[] = { "", "{}", "[]", "{\"refresh_token\":5}", "{\"refresh_token\":\"a b\"}", "garbage" };
  g_autofree char *sub = g_path_get_dirname (f->path);
  g_mkdir_with_parents (sub, 0700);
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_assert_true (g_file_set_contents_full (f->path, bad[i], -1, G_FILE_SET_CONTENTS_NONE, 0600, NULL));
      g_autoptr (GError) e = NULL;
      g_autoptr (GraphClient) c = client_for (f->path, &e);
      g_assert_null (c);
      g_assert_error (e, GRAPH_ERROR, GRAPH_ERROR_AUTH);
      g_assert_nonnull (strstr (e->message, "log in again"));
    }
}

static void
test_token_path (void)
{
  g_autofree char *p = graph_token_file_path ("work");
  g_autofree char *expect = g_build_filename (g_get_user_config_dir (), "onedrive-syncfs", "work", "token.json", NULL);
  g_assert_cmpstr (p, ==, expect);
}

static void
test_config_errors (void)
{
  g_autoptr (GError) error = NULL;
  GraphConfig bad_url = { .graph_url = "ftp://x" };
  g_assert_null (graph_client_new (&bad_url, &error));
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED);
  g_clear_error (&error);
  GraphConfig bad_ca = { .ca_file = "/nonexistent/ca.pem" };
  g_assert_null (graph_client_new (&bad_ca, &error));
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED);
  g_clear_error (&error);
  GraphConfig defaults = { 0 };
  g_autoptr (GraphClient) c = graph_client_new (&defaults, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (c->graph_url, ==, ODSF_DEFAULT_GRAPH_URL);
  g_assert_cmpstr (c->tenant, ==, "common");
}

int
main (int argc, char **argv)
{
  g_setenv ("XDG_CONFIG_HOME", "/nonexistent-odsf-config", TRUE);
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/graph-policy/classify", test_classify);
  g_test_add_func ("/graph-policy/backoff", test_backoff);
  g_test_add_func ("/graph-policy/retry-after", test_retry_after);
  g_test_add_func ("/graph-policy/link-on-base", test_link_on_base);
  g_test_add_func ("/graph-policy/encode-path", test_encode_path);
  g_test_add_func ("/graph-policy/token-path", test_token_path);
  g_test_add_func ("/graph-policy/config-errors", test_config_errors);
  g_test_add ("/graph-policy/token-roundtrip", TokenFixture, NULL, token_setup, test_token_roundtrip, token_teardown);
  g_test_add ("/graph-policy/token-mode", TokenFixture, NULL, token_setup, test_token_mode, token_teardown);
  g_test_add ("/graph-policy/token-missing-or-bad", TokenFixture, NULL, token_setup, test_token_missing_or_bad, token_teardown);
  return g_test_run ();
}
