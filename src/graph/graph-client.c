/* The Graph client: the attempt loop with the one retry policy, the throttle gate, delta
 * pages, item lookups and verified, resumable, cancellable downloads.
 *
 * The throttle gate. A 429 or 503 with Retry-After is the service telling the whole client
 * to stop, not the one request: the rest of the workers would be violating the window
 * within milliseconds. So the answer closes a process-wide gate (gate_until, a monotonic
 * deadline that only moves forward) and every attempt of every thread waits for it before
 * it starts. The deadline is computed from when the answer *arrived*, which is after the
 * service started its window, so waiting it out can never be early; a small margin absorbs
 * a server that rounds its clock. Requests already on the wire when the gate closes cannot
 * be called back; the service forgives those (the fake models this as throttle_grace).
 *
 * Everything else the policy decides is in graph_retry_classify(): backoff with jitter for
 * 5xx/network/truncation, one refresh-and-retry for 401, nothing for other 4xx.
 *
 * Downloads. /content answers 302 with a pre-authenticated URL on another host; that URL
 * is fetched with no Authorization header at all (libcurl would keep it on a same-host
 * redirect, so redirects are never left to libcurl). Bytes go straight to the caller's fd
 * with pwrite while QuickXorHash runs over them. Before every attempt the fd's size says
 * where to resume (Range: bytes=k-); the hash state always covers exactly the bytes the fd
 * holds, so a 206 continues it and a 200 (Range ignored) truncates and restarts it. A 4xx
 * from the download host means the URL expired: /content is asked once more.
 */
#define G_LOG_DOMAIN "odsf-graph"

#include "config.h"

#include "graph-private.h"

#include <onedrive-syncfs/qxhash.h>

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Gate margin: Retry-After has one-second resolution; a server may round its window end. */
#define GATE_MARGIN_US (50 * 1000)
/* Throttle waits are not counted against max_retries (they are the service's pacing, not
 * failures) but are bounded too, so a service that throttles forever fails the request. */
#define MAX_GATE_WAITS 30

static const char delta_select[] =
  "id,name,eTag,cTag,deleted,file,folder,root,fileSystemInfo,remoteItem,parentReference,size,"
  "package,lastModifiedDateTime";

/* ---- URLs ----------------------------------------------------------------------------- */

static int
default_port (const char *scheme)
{
  return g_ascii_strcasecmp (scheme, "https") == 0 ? 443 : 80;
}

gboolean
graph_link_on_base (const char *link, const char *base)
{
  if (link == NULL || base == NULL)
    return FALSE;
  g_autoptr (GUri) l = g_uri_parse (link, G_URI_FLAGS_ENCODED | G_URI_FLAGS_SCHEME_NORMALIZE, NULL);
  g_autoptr (GUri) b = g_uri_parse (base, G_URI_FLAGS_ENCODED | G_URI_FLAGS_SCHEME_NORMALIZE, NULL);
  if (l == NULL || b == NULL)
    return FALSE;
  const char *ls = g_uri_get_scheme (l), *bs = g_uri_get_scheme (b);
  if (g_ascii_strcasecmp (ls, "https") != 0 && g_ascii_strcasecmp (ls, "http") != 0)
    return FALSE;
  if (g_ascii_strcasecmp (ls, bs) != 0 || g_uri_get_userinfo (l) != NULL)
    return FALSE;
  const char *lh = g_uri_get_host (l), *bh = g_uri_get_host (b);
  if (lh == NULL || bh == NULL || g_ascii_strcasecmp (lh, bh) != 0)
    return FALSE;
  int lp = g_uri_get_port (l), bp = g_uri_get_port (b);
  if ((lp < 0 ? default_port (ls) : lp) != (bp < 0 ? default_port (bs) : bp))
    return FALSE;
  const char *lpath = g_uri_get_path (l), *bpath = g_uri_get_path (b);
  gsize n = strlen (bpath);
  while (n > 0 && bpath[n - 1] == '/')
    n--;
  if (strncmp (lpath, bpath, n) != 0 || (lpath[n] != '/' && lpath[n] != '\0'))
    return FALSE;
  /* "/v1.0/../beta" would pass the prefix test and leave the base. */
  return strstr (lpath, "/../") == NULL && !g_str_has_suffix (lpath, "/..")
         && strstr (lpath, "%2e%2e") == NULL && strstr (lpath, "%2E%2E") == NULL;
}

char *
graph_url_for_log (const char *url)
{
  if (url == NULL)
    return g_strdup ("(null)");
  gsize n = strcspn (url, "?#");
  return g_strndup (url, n);
}

char *
graph_url_origin (const char *url)
{
  if (url == NULL)
    return g_strdup ("(null)");
  const char *p = strstr (url, "://");
  if (p == NULL)
    return g_strdup ("(not a URL)");
  p += 3;
  gsize n = strcspn (p, "/?#");
  return g_strndup (url, (gsize) (p - url) + n);
}

char *
graph_encode_path (const char *path)
{
  g_auto (GStrv) parts = g_strsplit (path != NULL ? path : "", "/", -1);
  GString *out = g_string_new (NULL);
  for (guint i = 0; parts[i] != NULL; i++)
    {
      if (parts[i][0] == '\0')
        continue;
      if (out->len > 0)
        g_string_append_c (out, '/');
      /* Nothing reserved is allowed through: '#', '%', '?', '+' all get escaped, and the
       * UTF-8 bytes of other scripts are escaped as bytes. */
      g_autofree char *seg = g_uri_escape_string (parts[i], NULL, FALSE);
      g_string_append (out, seg);
    }
  return g_string_free (out, FALSE);
}

static char *
escape_id (const char *id)
{
  /* Ids are opaque; '!' appears in personal ids and is a legal path character. */
  return g_uri_escape_string (id, "!", FALSE);
}

static char *
drive_prefix (GraphClient *client, const char *drive_id)
{
  if (drive_id == NULL)
    return g_strconcat (client->graph_url, "/me/drive", NULL);
  g_autofree char *d = escape_id (drive_id);
  return g_strconcat (client->graph_url, "/drives/", d, NULL);
}

/* ---- lifetime ------------------------------------------------------------------------- */

static char *
strip_slash (const char *url)
{
  char *s = g_strdup (url);
  gsize n = strlen (s);
  while (n > 0 && s[n - 1] == '/')
    s[--n] = '\0';
  return s;
}

GraphClient *
graph_client_new (const GraphConfig *config, GError **error)
{
  g_return_val_if_fail (config != NULL, NULL);
  const char *graph_url = config->graph_url != NULL ? config->graph_url : ODSF_DEFAULT_GRAPH_URL;
  const char *login_url = config->login_url != NULL ? config->login_url : ODSF_DEFAULT_LOGIN_URL;
  for (guint i = 0; i < 2; i++)
    {
      const char *u = i == 0 ? graph_url : login_url;
      if (!g_str_has_prefix (u, "https://") && !g_str_has_prefix (u, "http://"))
        {
          g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "Not an http(s) URL: %s", u);
          return NULL;
        }
    }

  g_autoptr (GraphClient) client = g_new0 (GraphClient, 1);
  g_mutex_init (&client->gate_lock);
  g_cond_init (&client->gate_cond);
  g_mutex_init (&client->refresh_lock);
  g_mutex_init (&client->token_lock);
  client->graph_url = strip_slash (graph_url);
  client->login_url = strip_slash (login_url);
  client->tenant = g_strdup (config->tenant != NULL ? config->tenant : ODSF_DEFAULT_TENANT);
  client->client_id = g_strdup (config->client_id);
  client->token_file = g_strdup (config->token_file);
  client->max_retries = config->max_retries > 0 ? config->max_retries : 5;
  client->retry_base_ms = config->retry_base_ms > 0 ? config->retry_base_ms : 500;
  client->retry_max_ms = config->retry_max_ms > 0 ? config->retry_max_ms : 30000;
  client->refresh_margin_s = 60;

  GraphHttpConfig hc = {
    .ca_file = config->ca_file,
    .max_idle = config->max_connections > 0 ? config->max_connections : 8,
    .connect_timeout_ms = config->connect_timeout_ms,
    .stall_timeout_s = config->stall_timeout_s,
  };
  client->http = graph_http_new (&hc, error);
  if (client->http == NULL)
    return NULL;
  if (client->token_file != NULL && !graph_auth_load (client, error))
    return NULL;
  return g_steal_pointer (&client);
}

static void
clear_secret (char **s)
{
  if (*s != NULL)
    explicit_bzero (*s, strlen (*s));
  g_clear_pointer (s, g_free);
}

void
graph_client_free (GraphClient *client)
{
  if (client == NULL)
    return;
  g_clear_pointer (&client->http, graph_http_free);
  clear_secret (&client->access_token);
  clear_secret (&client->refresh_token);
  g_free (client->graph_url);
  g_free (client->login_url);
  g_free (client->tenant);
  g_free (client->client_id);
  g_free (client->token_file);
  g_mutex_clear (&client->gate_lock);
  g_cond_clear (&client->gate_cond);
  g_mutex_clear (&client->refresh_lock);
  g_mutex_clear (&client->token_lock);
  g_free (client);
}

/* ---- the gate and cancellable waits ----------------------------------------------------- */

static void
wake_waiters (GCancellable *cancel, gpointer data)
{
  GraphClient *client = data;
  g_mutex_lock (&client->gate_lock);
  g_cond_broadcast (&client->gate_cond);
  g_mutex_unlock (&client->gate_lock);
}

/* Waits until the monotonic @deadline (or, when @use_gate, until the gate is open, which
 * may move while waiting). */
static gboolean
wait_until (GraphClient *client, gint64 deadline, gboolean use_gate, GCancellable *cancel, GError **error)
{
  /* Connected before the lock is taken: a cancellable that already fired runs the handler
   * at once, and the handler takes the lock. */
  gulong handler = cancel != NULL ? g_cancellable_connect (cancel, G_CALLBACK (wake_waiters), client, NULL) : 0;
  gboolean cancelled = FALSE;
  g_mutex_lock (&client->gate_lock);
  for (;;)
    {
      if (g_cancellable_is_cancelled (cancel))
        {
          cancelled = TRUE;
          break;
        }
      gint64 until = use_gate ? client->gate_until : deadline;
      if (g_get_monotonic_time () >= until)
        break;
      g_cond_wait_until (&client->gate_cond, &client->gate_lock, until);
    }
  g_mutex_unlock (&client->gate_lock);
  if (handler != 0)
    g_cancellable_disconnect (cancel, handler);
  if (cancelled)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED, "Cancelled while waiting to retry");
      return FALSE;
    }
  return TRUE;
}

gboolean
graph_client_wait_gate (GraphClient *client, GCancellable *cancel, GError **error)
{
  return wait_until (client, 0, TRUE, cancel, error);
}

gboolean
graph_client_sleep (GraphClient *client, gint64 delay_ms, GCancellable *cancel, GError **error)
{
  return wait_until (client, g_get_monotonic_time () + delay_ms * 1000, FALSE, cancel, error);
}

static void
close_gate (GraphClient *client, gint64 delay_ms)
{
  gint64 until = g_get_monotonic_time () + delay_ms * 1000 + GATE_MARGIN_US;
  g_mutex_lock (&client->gate_lock);
  if (until > client->gate_until)
    client->gate_until = until;
  g_cond_broadcast (&client->gate_cond);
  g_mutex_unlock (&client->gate_lock);
  g_info ("Throttled by the service: every request waits %" G_GINT64_FORMAT " ms", delay_ms);
}

/* ---- the attempt loop ------------------------------------------------------------------- */

gboolean
graph_client_call (GraphClient *client, GraphCall *call, GraphHttpResponse *response,
                   GCancellable *cancel, GError **error)
{
  guint backoffs = 0, gate_waits = 0;
  gboolean reauthed = FALSE;
  g_autofree char *what_owned = NULL;
  if (call->http.what == NULL)
    {
      g_autofree char *shown = call->http.secret_url ? graph_url_origin (call->http.url)
                                                     : graph_url_for_log (call->http.url);
      what_owned = g_strdup_printf ("%s %s", call->http.method != NULL ? call->http.method : "GET", shown);
    }
  const char *what = call->http.what != NULL ? call->http.what : what_owned;

  for (;;)
    {
      g_autoptr (GError) local = NULL;
      g_autofree char *token = NULL;
      guint64 generation = 0;

      if (!graph_client_wait_gate (client, cancel, error))
        return FALSE;
      if (call->authenticated)
        {
          token = graph_auth_access_token (client, &generation, cancel, error);
          if (token == NULL)
            return FALSE;
        }
      GraphHttpRequest request = call->http;
      request.bearer = token;
      request.what = what;
      if (call->before_attempt != NULL && !call->before_attempt (&request, call->data, error))
        return FALSE;

      gboolean answered = graph_http_perform (client->http, &request, response, cancel, &local);
      if (token != NULL)
        explicit_bzero (token, strlen (token));
      if (answered && response->status < 400)
        return TRUE;
      if (answered)
        {
          graph_set_http_error (&local, what, response->status,
                                response->body != NULL ? (const char *) response->body->data : NULL,
                                response->body != NULL ? response->body->len : 0,
                                response->location, response->retry_after);
        }

      GraphRetryAction action = graph_retry_classify (local);
      /* The OAuth endpoint's own "try later". */
      if (action == GRAPH_RETRY_NEVER && graph_error_has_code (local, "temporarily_unavailable"))
        action = GRAPH_RETRY_BACKOFF;

      switch (action)
        {
        case GRAPH_RETRY_REAUTH:
          if (!call->authenticated)
            break;
          if (reauthed)
            {
              g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                           "%s: Microsoft Graph refused a freshly refreshed access token; "
                           "log in again (onedrive-syncctl login)", what);
              graph_error_private (*error)->status = 401;
              return FALSE;
            }
          reauthed = TRUE;
          g_debug ("%s: 401, refreshing the access token once", what);
          if (!graph_auth_refresh (client, generation, cancel, error))
            return FALSE;
          continue;

        case GRAPH_RETRY_GATE:
          if (gate_waits++ >= MAX_GATE_WAITS)
            break;
          close_gate (client, graph_error_private (local)->retry_after_ms);
          continue;

        case GRAPH_RETRY_BACKOFF:
          if (backoffs >= client->max_retries)
            break;
          {
            gint64 delay = graph_retry_backoff_ms (backoffs++, client->retry_base_ms, client->retry_max_ms);
            g_debug ("%s; retry %u in %" G_GINT64_FORMAT " ms", local->message, backoffs, delay);
            if (!graph_client_sleep (client, delay, cancel, error))
              return FALSE;
          }
          continue;

        case GRAPH_RETRY_NEVER:
        default:
          break;
        }
      g_propagate_error (error, g_steal_pointer (&local));
      return FALSE;
    }
}

/* GET of a JSON document with the access token; returns the parsed object. */
static cJSON *
get_json (GraphClient *client, const char *url, const char *what, GCancellable *cancel, GError **error)
{
  GraphCall call = { .http = { .url = url, .what = what, .json = TRUE }, .authenticated = TRUE };
  GraphHttpResponse response = { 0 };
  if (!graph_client_call (client, &call, &response, cancel, error))
    {
      graph_http_response_clear (&response);
      return NULL;
    }
  cJSON *root = NULL;
  if (response.status == 200 && response.body != NULL)
    root = graph_json_parse ((const char *) response.body->data, response.body->len);
  guint status = response.status;
  graph_http_response_clear (&response);
  if (!cJSON_IsObject (root))
    {
      cJSON_Delete (root);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: HTTP %u without a JSON object", what, status);
      return NULL;
    }
  return root;
}

char *
graph_client_my_drive_id (GraphClient *client, GCancellable *cancel, GError **error)
{
  g_autofree char *url = g_strconcat (client->graph_url, "/me/drive", NULL);
  g_autoptr (cJSON) root = get_json (client, url, "GET /me/drive", cancel, error);
  if (root == NULL)
    return NULL;
  const cJSON *id = cJSON_GetObjectItemCaseSensitive (root, "id");
  if (!cJSON_IsString (id) || id->valuestring[0] == '\0' || strlen (id->valuestring) > 1024
      || !g_utf8_validate (id->valuestring, -1, NULL))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "GET /me/drive: no drive id in the answer");
      return NULL;
    }
  return g_strdup (id->valuestring);
}

GraphItem *
graph_client_item_by_path (GraphClient *client, const char *drive_id, const char *path,
                           GCancellable *cancel, GError **error)
{
  g_autofree char *prefix = drive_prefix (client, drive_id);
  g_autofree char *encoded = graph_encode_path (path);
  g_autofree char *url = encoded[0] == '\0'
                           ? g_strconcat (prefix, "/root", NULL)
                           : g_strconcat (prefix, "/root:/", encoded, ":", NULL);
  g_autofree char *what = g_strdup_printf ("GET item by path %s", path != NULL ? path : "/");
  g_autoptr (cJSON) root = get_json (client, url, what, cancel, error);
  if (root == NULL)
    return NULL;
  return graph_item_from_json (root, drive_id, error);
}

GraphDeltaPage *
graph_client_delta (GraphClient *client, const char *link, const char *drive_id,
                    const char *item_id, GCancellable *cancel, GError **error)
{
  g_autofree char *url = NULL;
  if (link != NULL)
    {
      if (!graph_link_on_base (link, client->graph_url))
        {
          g_autofree char *shown = graph_url_for_log (link);
          g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_BAD_LINK,
                       "Refusing to follow a delta link that is not on %s: %s", client->graph_url, shown);
          return NULL;
        }
      url = g_strdup (link);
    }
  else
    {
      g_autofree char *prefix = drive_prefix (client, drive_id);
      g_autofree char *item = item_id != NULL ? escape_id (item_id) : NULL;
      url = item != NULL ? g_strdup_printf ("%s/items/%s/delta?$select=%s", prefix, item, delta_select)
                         : g_strdup_printf ("%s/root/delta?$select=%s", prefix, delta_select);
    }

  GraphCall call = { .http = { .url = url, .what = "GET delta", .json = TRUE }, .authenticated = TRUE };
  GraphHttpResponse response = { 0 };
  if (!graph_client_call (client, &call, &response, cancel, error))
    {
      graph_http_response_clear (&response);
      return NULL;
    }
  GraphDeltaPage *page = NULL;
  if (response.status != 200 || response.body == NULL)
    g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "GET delta: unexpected HTTP %u", response.status);
  else
    page = graph_delta_page_parse ((const char *) response.body->data, response.body->len,
                                   drive_id, TRUE, error);
  graph_http_response_clear (&response);
  return page;
}

/* ---- downloads ------------------------------------------------------------------------ */

typedef struct {
  int          fd;
  GraphQxHash  hash;          /* covers exactly bytes [0, offset) of the fd */
  guint64      offset;        /* where the next byte goes */
  guint64      written;       /* bytes this call wrote */
  guint64      expected_end;  /* from Content-Range / Content-Length; 0 unknown */
  gboolean     regular;       /* a regular file (resume and truncation possible) */
  gboolean     bad_range;     /* a 206 that did not start where we asked */
} Download;

static gboolean
download_truncate (Download *d, int *errsv)
{
  if (d->regular && ftruncate (d->fd, 0) != 0)
    {
      *errsv = errno;
      return FALSE;
    }
  d->offset = 0;
  graph_qxhash_init (&d->hash);
  return TRUE;
}

/* "bytes a-b/total" → a and b+1 (or total); FALSE when unparseable. */
static gboolean
parse_content_range (const char *value, guint64 *start, guint64 *end)
{
  if (value == NULL || g_ascii_strncasecmp (value, "bytes ", 6) != 0)
    return FALSE;
  char *p = NULL;
  guint64 a = g_ascii_strtoull (value + 6, &p, 10);
  if (p == value + 6 || *p != '-')
    return FALSE;
  const char *q = p + 1;
  guint64 b = g_ascii_strtoull (q, &p, 10);
  if (p == q || b < a)
    return FALSE;
  *start = a;
  *end = b + 1;
  return TRUE;
}

static gboolean
download_sink (GraphHttpResponse *response, const void *data, gsize len, gpointer user, int *errsv)
{
  Download *d = user;
  if (response->sunk == 0)
    {
      if (response->status == 206)
        {
          guint64 start = 0, end = 0;
          if (!parse_content_range (response->content_range, &start, &end) || start != d->offset)
            {
              d->bad_range = TRUE;
              return FALSE;
            }
          d->expected_end = end;
        }
      else
        {
          /* The whole body, Range or not: start over. A pipe cannot take back what it
           * already passed on. */
          if (d->offset > 0 && !d->regular)
            {
              *errsv = ESPIPE;
              return FALSE;
            }
          if (d->offset > 0 && !download_truncate (d, errsv))
            return FALSE;
          d->expected_end = response->content_length >= 0 ? (guint64) response->content_length : 0;
        }
    }
  const guint8 *p = data;
  gsize left = len;
  while (left > 0)
    {
      ssize_t n = d->regular ? pwrite (d->fd, p, left, (off_t) d->offset) : write (d->fd, p, left);
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          *errsv = errno;
          return FALSE;
        }
      graph_qxhash_update (&d->hash, p, (size_t) n);
      d->offset += (guint64) n;
      d->written += (guint64) n;
      p += n;
      left -= (gsize) n;
    }
  return TRUE;
}

/* Before each attempt: resume from what the fd holds, with a hash that covers it. */
static gboolean
download_before_attempt (GraphHttpRequest *request, gpointer user, GError **error)
{
  Download *d = user;
  struct stat st;
  if (fstat (d->fd, &st) != 0)
    {
      graph_set_io_error (error, errno, "fstat of the download file");
      return FALSE;
    }
  d->regular = S_ISREG (st.st_mode);
  if (!d->regular)
    {
      request->range_from = d->offset;  /* a pipe or device: no resume beyond what we wrote */
      return TRUE;
    }
  if ((guint64) st.st_size != d->offset || d->hash.length != d->offset)
    {
      /* Someone else's bytes (a previous run) or the first attempt: hash the prefix. */
      graph_qxhash_init (&d->hash);
      if (!graph_qxhash_fd (d->fd, &d->hash))
        {
          graph_set_io_error (error, errno, "reading the partial download");
          return FALSE;
        }
      d->offset = d->hash.length;
    }
  request->range_from = d->offset;
  request->progress_base = d->offset;
  d->bad_range = FALSE;
  d->expected_end = 0;
  return TRUE;
}

/* GET /content → the redirect target, without following it. */
static char *
content_location (GraphClient *client, const char *content_url, const char *what,
                  GCancellable *cancel, GError **error)
{
  GraphCall call = { .http = { .url = content_url, .what = what }, .authenticated = TRUE };
  GraphHttpResponse response = { 0 };
  if (!graph_client_call (client, &call, &response, cancel, error))
    {
      graph_http_response_clear (&response);
      return NULL;
    }
  char *location = NULL;
  if (response.status >= 300 && response.status < 400 && response.location != NULL)
    location = g_steal_pointer (&response.location);
  else
    g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                 "%s: expected a redirect to the download URL, got HTTP %u", what, response.status);
  graph_http_response_clear (&response);
  if (location != NULL && !g_str_has_prefix (location, "https://") && !g_str_has_prefix (location, "http://"))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: the download URL is not http(s)", what);
      g_clear_pointer (&location, g_free);
    }
  return location;
}

gboolean
graph_client_download (GraphClient *client, const char *drive_id, const char *item_id,
                       const char *expected_quickxor, int fd, GCancellable *cancel,
                       GraphProgressFunc progress, gpointer user_data,
                       guint64 *bytes_downloaded, GError **error)
{
  g_return_val_if_fail (item_id != NULL, FALSE);
  g_autofree char *prefix = drive_prefix (client, drive_id);
  g_autofree char *item = escape_id (item_id);
  g_autofree char *content_url = g_strdup_printf ("%s/items/%s/content", prefix, item);
  g_autofree char *what_content = g_strdup_printf ("GET content of item %s", item_id);
  g_autofree char *what_download = g_strdup_printf ("GET download of item %s", item_id);
  Download d = { .fd = fd };
  graph_qxhash_init (&d.hash);
  if (bytes_downloaded != NULL)
    *bytes_downloaded = 0;

  gboolean ok = FALSE;
  GraphHttpResponse response = { 0 };
  for (guint url_tries = 0; url_tries < 2 && !ok; url_tries++)
    {
      g_autoptr (GError) local = NULL;
      g_autofree char *location = content_location (client, content_url, what_content, cancel, error);
      if (location == NULL)
        goto out;

      GraphCall call = {
        .http = { .url = location, .what = what_download, .secret_url = TRUE, .follow = TRUE,
                  .sink = download_sink, .sink_data = &d, .progress = progress, .progress_data = user_data },
        .authenticated = FALSE,  /* never send the token to the download host */
        .before_attempt = download_before_attempt,
        .data = &d,
      };
      for (guint restarts = 0; restarts < 2; restarts++)
        {
          g_clear_error (&local);
          if (graph_client_call (client, &call, &response, cancel, &local))
            {
              if (response.status != 200 && response.status != 206)
                g_set_error (&local, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: unexpected HTTP %u",
                             what_download, response.status);
              /* An empty 200 never reached the sink, which truncates a stale prefix. */
              int errsv = 0;
              if (response.status == 200 && response.sunk == 0 && d.offset > 0 && !download_truncate (&d, &errsv))
                {
                  graph_set_io_error (error, errsv, "truncating the download file");
                  goto out;
                }
              break;
            }
          /* Asked for a range past the end: complete already, or a longer stale file. */
          if (graph_error_status (local) == 416)
            {
              guint64 total = 0;
              const char *cr = response.content_range;
              if (cr != NULL && g_str_has_prefix (cr, "bytes */"))
                total = g_ascii_strtoull (cr + 8, NULL, 10);
              if (cr != NULL && total == d.offset)
                {
                  g_clear_error (&local);
                  response.status = 206;
                  d.expected_end = total;
                  break;
                }
              int errsv = 0;
              if (!download_truncate (&d, &errsv))
                {
                  graph_set_io_error (error, errsv, "truncating the download file");
                  goto out;
                }
              continue;
            }
          if (d.bad_range)
            {
              /* A 206 for some other range than the one asked: start over without Range. */
              g_clear_error (&local);
              g_set_error (&local, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                           "%s: the partial answer does not start at byte %" G_GUINT64_FORMAT, what_download, d.offset);
              int errsv = 0;
              if (!download_truncate (&d, &errsv))
                {
                  graph_set_io_error (error, errsv, "truncating the download file");
                  goto out;
                }
              continue;
            }
          break;
        }
      if (local == NULL)
        {
          ok = TRUE;
          break;
        }
      guint status = graph_error_status (local);
      if (url_tries == 0 && status >= 400 && status < 500 && status != 429)
        {
          g_debug ("download URL refused (HTTP %u): asking /content again", status);
          continue;
        }
      g_propagate_error (error, g_steal_pointer (&local));
      goto out;
    }
  if (!ok)
    goto out;

  if (d.expected_end > 0 && d.offset != d.expected_end)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_TRUNCATED,
                   "%s: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " bytes arrived",
                   what_download, d.offset, d.expected_end);
      ok = FALSE;
      goto out;
    }
  if (expected_quickxor != NULL)
    {
      guint8 raw[GRAPH_QXHASH_LEN];
      graph_qxhash_final (&d.hash, raw);
      if (!graph_qxhash_matches (expected_quickxor, raw))
        {
          g_autofree char *got = graph_qxhash_final_base64 (&d.hash);
          /* The bytes are wrong: a resume must not build on them. */
          int errsv = 0;
          download_truncate (&d, &errsv);
          g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_HASH_MISMATCH,
                       "Content of item %s does not match its quickXorHash (expected %s, got %s)",
                       item_id, expected_quickxor, got);
          ok = FALSE;
          goto out;
        }
    }

out:
  graph_http_response_clear (&response);
  if (bytes_downloaded != NULL)
    *bytes_downloaded = d.written;
  return ok;
}
