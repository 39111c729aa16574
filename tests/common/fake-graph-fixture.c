/* See fake-graph-fixture.h. */
#define G_LOG_DOMAIN "fake-fixture"

#include "config.h"

#include "fake-graph-fixture.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (CURL, curl_easy_cleanup)

#define FIXTURE_ERROR (g_quark_from_static_string ("fake-graph-fixture"))

static const char *
binary (void)
{
  const char *env = g_getenv ("FAKE_GRAPH");
  return env && *env ? env : FAKE_GRAPH_PATH;
}

static char *
json_string (const cJSON *o, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (o, key);
  return cJSON_IsString (v) ? g_strdup (v->valuestring) : NULL;
}

/* Reads from @fd until a newline or the deadline. */
static char *
read_line (int fd, gint64 deadline, GError **error)
{
  GString *s = g_string_new (NULL);
  for (;;)
    {
      const char *nl = strchr (s->str, '\n');
      if (nl)
        {
          g_string_truncate (s, (gsize) (nl - s->str));
          return g_string_free (s, FALSE);
        }
      gint64 left = (deadline - g_get_monotonic_time ()) / 1000;
      if (left <= 0)
        break;
      struct pollfd p = { .fd = fd, .events = POLLIN };
      int r = poll (&p, 1, (int) MIN (left, 1000));
      if (r < 0 && errno == EINTR)
        continue;
      if (r < 0)
        break;
      if (r == 0)
        continue;
      char buf[4096];
      ssize_t n = read (fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        {
          g_set_error (error, FIXTURE_ERROR, 1, "fake-graph exited before it was ready");
          g_string_free (s, TRUE);
          return NULL;
        }
      g_string_append_len (s, buf, n);
    }
  g_set_error (error, FIXTURE_ERROR, 2, "fake-graph did not print its ready line in time");
  g_string_free (s, TRUE);
  return NULL;
}

FakeGraph *
fake_graph_start (const char *const *args, GError **error)
{
  g_autoptr(FakeGraph) fg = g_new0 (FakeGraph, 1);
  fg->stdout_fd = -1;
  fg->tmpdir = g_dir_make_tmp ("fake-graph-XXXXXX", error);
  if (fg->tmpdir == NULL)
    return NULL;
  fg->log_path = g_build_filename (fg->tmpdir, "stderr.log", NULL);
  int log_fd = open (fg->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd < 0)
    {
      g_set_error (error, FIXTURE_ERROR, 3, "open(%s): %s", fg->log_path, g_strerror (errno));
      return NULL;
    }
  g_autoptr(GPtrArray) argv = g_ptr_array_new ();
  g_ptr_array_add (argv, (gpointer) binary ());
  g_ptr_array_add (argv, (gpointer) "--die-with-parent");
  for (guint i = 0; args && args[i]; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);

  gboolean ok = g_spawn_async_with_pipes_and_fds (NULL, (const char *const *) argv->pdata, NULL,
                                                  G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDIN_FROM_DEV_NULL,
                                                  NULL, NULL, -1, -1, log_fd, NULL, NULL, 0,
                                                  &fg->pid, NULL, &fg->stdout_fd, NULL, error);
  close (log_fd);
  if (!ok)
    return NULL;

  g_autofree char *line = read_line (fg->stdout_fd, g_get_monotonic_time () + 30 * G_USEC_PER_SEC, error);
  if (line == NULL)
    {
      g_autofree char *log = fake_graph_log (fg);
      g_prefix_error (error, "%s\n", log ? log : "");
      return NULL;
    }
  cJSON *ready = cJSON_Parse (line);
  if (ready == NULL)
    {
      g_set_error (error, FIXTURE_ERROR, 4, "fake-graph's ready line is not JSON: %s", line);
      return NULL;
    }
  fg->graph_url = json_string (ready, "graph_url");
  fg->login_url = json_string (ready, "login_url");
  fg->admin_url = json_string (ready, "admin_url");
  fg->download_url = json_string (ready, "download_url");
  fg->drive_id = json_string (ready, "drive_id");
  fg->root_id = json_string (ready, "root_id");
  cJSON_Delete (ready);
  if (!fg->graph_url || !fg->login_url || !fg->admin_url || !fg->drive_id || !fg->root_id)
    {
      g_set_error (error, FIXTURE_ERROR, 4, "fake-graph's ready line lacks a field: %s", line);
      return NULL;
    }
  return g_steal_pointer (&fg);
}

static size_t
collect (char *ptr, size_t size, size_t nmemb, void *userdata)
{
  g_string_append_len (userdata, ptr, (gssize) (size * nmemb));
  return size * nmemb;
}

char *
fake_graph_admin (FakeGraph *fg, const char *path, const char *json_body, guint *status, GError **error)
{
  g_autoptr(CURL) curl = curl_easy_init ();
  if (curl == NULL)
    {
      g_set_error (error, FIXTURE_ERROR, 5, "curl_easy_init failed");
      return NULL;
    }
  g_autofree char *url = g_strdup_printf ("%s/%s", fg->admin_url, path);
  g_autoptr(GString) body = g_string_new (NULL);
  struct curl_slist *headers = NULL;
  curl_easy_setopt (curl, CURLOPT_URL, url);
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, body);
  curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT, 60L);
  if (json_body)
    {
      headers = curl_slist_append (headers, "Content-Type: application/json");
      curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
      curl_easy_setopt (curl, CURLOPT_POSTFIELDS, json_body);
    }
  CURLcode rc = curl_easy_perform (curl);
  curl_slist_free_all (headers);
  if (rc != CURLE_OK)
    {
      g_set_error (error, FIXTURE_ERROR, 6, "admin %s: %s", path, curl_easy_strerror (rc));
      return NULL;
    }
  long code = 0;
  curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &code);
  if (status)
    *status = (guint) code;
  return g_string_free (g_steal_pointer (&body), FALSE);
}

cJSON *
fake_graph_admin_json (FakeGraph *fg, const char *path, const char *json_body, GError **error)
{
  guint status = 0;
  g_autofree char *body = fake_graph_admin (fg, path, json_body, &status, error);
  if (body == NULL)
    return NULL;
  if (status < 200 || status > 299)
    {
      g_set_error (error, FIXTURE_ERROR, 7, "admin %s: HTTP %u: %s", path, status, body);
      return NULL;
    }
  cJSON *j = cJSON_Parse (body);
  if (j == NULL)
    g_set_error (error, FIXTURE_ERROR, 8, "admin %s: not JSON: %s", path, body);
  return j;
}

gboolean
fake_graph_mint_token (FakeGraph *fg, double lifetime, char **access_token, char **refresh_token,
                       GError **error)
{
  g_autofree char *req = g_strdup_printf ("{\"lifetime\": %.3f}", lifetime);
  cJSON *j = fake_graph_admin_json (fg, "token", req, error);
  if (j == NULL)
    return FALSE;
  char *a = json_string (j, "access_token");
  char *r = json_string (j, "refresh_token");
  cJSON_Delete (j);
  if (a == NULL || r == NULL)
    {
      g_free (a);
      g_free (r);
      g_set_error (error, FIXTURE_ERROR, 9, "admin token: no token in the answer");
      return FALSE;
    }
  if (access_token)
    *access_token = a;
  else
    g_free (a);
  if (refresh_token)
    *refresh_token = r;
  else
    g_free (r);
  return TRUE;
}

gboolean
fake_graph_set_faults (FakeGraph *fg, const char *json, GError **error)
{
  cJSON *j = fake_graph_admin_json (fg, "faults", json, error);
  cJSON_Delete (j);
  return j != NULL;
}

char *
fake_graph_log (FakeGraph *fg)
{
  char *text = NULL;
  if (!g_file_get_contents (fg->log_path, &text, NULL, NULL))
    return g_strdup ("");
  return text;
}

static gboolean
unexpected_line (const char *line)
{
  static const char *const bad[] = {
    "-WARNING **", "-CRITICAL **", "-ERROR **", "Sanitizer", "runtime error:", NULL
  };
  for (guint i = 0; bad[i]; i++)
    if (strstr (line, bad[i]))
      return TRUE;
  return FALSE;
}

/* Waits up to @ms for the child; TRUE when it was reaped. */
static gboolean
wait_child (FakeGraph *fg, int ms, int *wstatus)
{
  for (int waited = 0; waited <= ms; waited += 10)
    {
      pid_t r = waitpid (fg->pid, wstatus, WNOHANG);
      if (r == fg->pid)
        return TRUE;
      if (r < 0 && errno != EINTR)
        return TRUE;
      g_usleep (10 * 1000);
    }
  return FALSE;
}

gboolean
fake_graph_stop (FakeGraph *fg, GError **error)
{
  if (fg->stopped)
    return TRUE;
  fg->stopped = TRUE;
  int wstatus = 0;
  kill (fg->pid, SIGTERM);
  if (!wait_child (fg, 30000, &wstatus))
    {
      kill (fg->pid, SIGKILL);
      waitpid (fg->pid, &wstatus, 0);
      g_set_error (error, FIXTURE_ERROR, 10, "fake-graph did not stop on SIGTERM");
      return FALSE;
    }
  g_spawn_close_pid (fg->pid);
  g_autofree char *log = fake_graph_log (fg);
  if (!WIFEXITED (wstatus) || WEXITSTATUS (wstatus) != 0)
    {
      g_set_error (error, FIXTURE_ERROR, 11, "fake-graph ended with status 0x%x:\n%s", wstatus, log);
      return FALSE;
    }
  g_auto(GStrv) lines = g_strsplit (log, "\n", -1);
  for (guint i = 0; lines[i]; i++)
    if (unexpected_line (lines[i]))
      {
        g_set_error (error, FIXTURE_ERROR, 12, "fake-graph logged an unexpected error: %s\n%s",
                     lines[i], log);
        return FALSE;
      }
  return TRUE;
}

void
fake_graph_free (FakeGraph *fg)
{
  if (fg == NULL)
    return;
  if (fg->pid > 0 && !fg->stopped)
    {
      kill (fg->pid, SIGKILL);
      waitpid (fg->pid, NULL, 0);
      g_spawn_close_pid (fg->pid);
    }
  if (fg->stdout_fd >= 0)
    close (fg->stdout_fd);
  if (fg->log_path)
    g_unlink (fg->log_path);
  if (fg->tmpdir)
    g_rmdir (fg->tmpdir);
  g_free (fg->graph_url);
  g_free (fg->login_url);
  g_free (fg->admin_url);
  g_free (fg->download_url);
  g_free (fg->drive_id);
  g_free (fg->root_id);
  g_free (fg->log_path);
  g_free (fg->tmpdir);
  g_free (fg);
}
