/* The C fixture for the fake Graph server: start, admin calls, a real Graph call with a
 * minted token, clean stop. */
#include "config.h"

#include "fake-graph-fixture.h"

#include <curl/curl.h>

static size_t
collect (char *ptr, size_t size, size_t nmemb, void *userdata)
{
  g_string_append_len (userdata, ptr, (gssize) (size * nmemb));
  return size * nmemb;
}

/* GET @url with a bearer token; returns the status, the body in @out. */
static long
get (const char *url, const char *token, GString *out)
{
  CURL *curl = curl_easy_init ();
  g_autofree char *auth = g_strdup_printf ("Authorization: Bearer %s", token);
  struct curl_slist *h = curl_slist_append (NULL, auth);
  curl_easy_setopt (curl, CURLOPT_URL, url);
  curl_easy_setopt (curl, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, out);
  long code = 0;
  if (curl_easy_perform (curl) == CURLE_OK)
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &code);
  curl_slist_free_all (h);
  curl_easy_cleanup (curl);
  return code;
}

static void
test_start_call_stop (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FakeGraph) fg = fake_graph_start ((const char *[]) { "--synthetic", "5,1k,1", NULL }, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_suffix (fg->graph_url, "/v1.0"));

  g_autofree char *access = NULL, *refresh = NULL;
  gboolean minted = fake_graph_mint_token (fg, 0, &access, &refresh, &error);
  g_assert_no_error (error);
  g_assert_true (minted);

  g_autoptr(GString) body = g_string_new (NULL);
  g_autofree char *url = g_strdup_printf ("%s/me/drive", fg->graph_url);
  g_assert_cmpint (get (url, access, body), ==, 200);
  g_assert_nonnull (strstr (body->str, fg->drive_id));
  g_string_truncate (body, 0);
  g_assert_cmpint (get (url, "wrong", body), ==, 401);

  cJSON *added = fake_graph_admin_json (fg, "items/add", "{\"path\":\"/new.txt\",\"content\":\"abc\"}", &error);
  g_assert_no_error (error);
  g_assert_cmpint ((int) cJSON_GetObjectItem (added, "size")->valuedouble, ==, 3);
  cJSON_Delete (added);

  guint status = 0;
  g_autofree char *missing = fake_graph_admin (fg, "item?path=/nope", NULL, &status, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (status, ==, 404);

  gboolean set = fake_graph_set_faults (fg, "{\"latency_ms\": 1}", &error);
  g_assert_no_error (error);
  g_assert_true (set);
  g_assert_false (fake_graph_set_faults (fg, "{\"no_such_switch\": 1}", &error));
  g_assert_nonnull (error);
  g_clear_error (&error);

  cJSON *stats = fake_graph_admin_json (fg, "stats", NULL, &error);
  g_assert_no_error (error);
  cJSON *req = cJSON_GetObjectItem (stats, "requests");
  g_assert_cmpint ((int) cJSON_GetObjectItem (req, "me_drive")->valuedouble, ==, 2);
  cJSON_Delete (stats);

  gboolean stopped = fake_graph_stop (fg, &error);
  g_assert_no_error (error);
  g_assert_true (stopped);
}

static void
test_bad_arguments_fail_to_start (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FakeGraph) fg = fake_graph_start ((const char *[]) { "--synthetic", "nonsense", NULL }, &error);
  g_assert_null (fg);
  g_assert_nonnull (error);
  g_assert_nonnull (strstr (error->message, "--synthetic"));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  curl_global_init (CURL_GLOBAL_DEFAULT);
  g_test_add_func ("/fake-fixture/start-call-stop", test_start_call_stop);
  g_test_add_func ("/fake-fixture/bad-arguments", test_bad_arguments_fail_to_start);
  int r = g_test_run ();
  curl_global_cleanup ();
  return r;
}
