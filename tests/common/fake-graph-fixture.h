/* A fake Graph server for C tests: start tools/fake-graph as a child, learn its URLs from
 * its ready line, talk to its admin API, stop it and check it exited cleanly.
 *
 *   g_autoptr(FakeGraph) fg = fake_graph_start ((const char *[]) { "--data", dir, NULL }, &error);
 *   g_autofree char *access = NULL, *refresh = NULL;
 *   fake_graph_mint_token (fg, 0, &access, &refresh, &error);
 *   ... point the code under test at fg->graph_url / fg->login_url ...
 *   g_assert_true (fake_graph_stop (fg, &error));
 *
 * The child gets --die-with-parent, so a test that crashes leaves no server behind, and
 * fake_graph_free() kills a fake that was not stopped. The binary is $FAKE_GRAPH, or the one
 * this build made.
 */
#pragma once

#include <cjson/cJSON.h>
#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  GPid   pid;
  char  *graph_url;     /* "http://127.0.0.1:P/v1.0" */
  char  *login_url;     /* "http://127.0.0.1:P": {login_url}/{tenant}/oauth2/v2.0/token */
  char  *admin_url;     /* "http://127.0.0.1:P/_admin" */
  char  *download_url;  /* base of the download listener */
  char  *drive_id;
  char  *root_id;
  char  *log_path;      /* the child's stderr */
  char  *tmpdir;        /* holds log_path; removed by fake_graph_free */
  int    stdout_fd;
  gboolean stopped;
} FakeGraph;

/* Starts the fake with @args (NULL-terminated, e.g. { "--synthetic", "10,4k,2", NULL }) and
 * waits up to 30 s for its ready line. NULL with @error set when it cannot start. */
FakeGraph *fake_graph_start (const char *const *args, GError **error);

/* One admin call: @path like "stats" or "items/add"; POST with @json_body, GET when NULL.
 * Returns the response body (owned) and its HTTP status in @status; NULL on a transport
 * error. A non-2xx status is not an error here: check @status. */
char *fake_graph_admin (FakeGraph *fg, const char *path, const char *json_body, guint *status,
                        GError **error);

/* Like fake_graph_admin, but parses the body; NULL with @error on a transport error, a
 * non-2xx status or a body that is not JSON. Free with cJSON_Delete. */
cJSON *fake_graph_admin_json (FakeGraph *fg, const char *path, const char *json_body, GError **error);

/* Mints a valid access/refresh token pair (POST /_admin/token) without the device-code
 * flow. @lifetime seconds for the access token, 0 for the fake's default. */
gboolean fake_graph_mint_token (FakeGraph *fg, double lifetime, char **access_token,
                                char **refresh_token, GError **error);

/* Sets faults (POST /_admin/faults) from a JSON object text. */
gboolean fake_graph_set_faults (FakeGraph *fg, const char *json, GError **error);

/* The child's stderr so far (owned). */
char *fake_graph_log (FakeGraph *fg);

/* SIGTERM, wait (SIGKILL after 30 s). FALSE with @error when the fake did not exit 0 or
 * logged an unexpected error (a GLib warning or critical, a sanitizer report). */
gboolean fake_graph_stop (FakeGraph *fg, GError **error);

/* Kills a fake that is still running, removes its log, frees. NULL is fine. */
void fake_graph_free (FakeGraph *fg);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FakeGraph, fake_graph_free)

G_END_DECLS
