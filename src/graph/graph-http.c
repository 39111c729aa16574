/* The libcurl transport: one attempt of one request, cancellable within milliseconds.
 *
 * Connection reuse without sharing a connection between threads. libcurl's share handle
 * can hold a connection cache, but sharing it between concurrently running threads is a
 * documented known bug (curl KNOWN_BUGS "A shared connection cache is not thread-safe",
 * curl issues 4915 and 9404: two threads can pick the same connection). So the share handle
 * holds only what is safe to share under lock callbacks — the DNS cache and TLS sessions —
 * and connections live in "slots": a slot is a multi handle with its own connection cache,
 * used by one request at a time. A request takes an idle slot (the most recently used
 * first, whose connections are warm) and gives it back afterwards, whichever thread it runs
 * on. So a keep-alive connection opened by one worker is reused by the next request of any
 * worker, and no connection is ever touched by two threads at once.
 *
 * Cancellation. Each transfer runs on its slot's multi handle with curl_multi_poll(). The
 * caller's GCancellable is connected to curl_multi_wakeup(), so a cancel interrupts the poll
 * at once even when no byte is moving; CURLOPT_XFERINFOFUNCTION checks the cancellable as
 * well, which stops a transfer between two chunks of a fast body. Either way the transfer is
 * removed from the multi handle (its connection is closed) and the attempt returns
 * GRAPH_ERROR_CANCELLED, never a network error.
 *
 * Nothing here logs a header or a query string: Authorization is set through a header list
 * and never printed, and URLs are logged without their query (download URLs carry
 * credentials there).
 *
 * Lock order: slot_lock and the share locks are leaves; no callback takes another lock.
 */
#define G_LOG_DOMAIN "odsf-graph"

#include "config.h"

#include "graph-private.h"

#include <errno.h>
#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (CURL, curl_easy_cleanup)

/* Bodies that are not streamed to a sink are JSON pages and error documents. A delta page
 * of 1000 items is well under a megabyte; anything near this cap is not a page. */
#define MAX_COLLECTED_BODY (64 * 1024 * 1024)
#define MAX_ERROR_BODY     (1024 * 1024)

struct _GraphHttp {
  CURLSH    *share;
  GMutex     share_locks[CURL_LOCK_DATA_LAST];  /* one per kind of shared data */
  GMutex     slot_lock;
  GPtrArray *idle_slots;       /* CURLM*; protected by slot_lock; LIFO */
  guint      max_idle;
  char      *ca_file;
  guint      connect_timeout_ms;
  guint      stall_timeout_s;
  gint       connections_opened;  /* atomic */
};

static gsize curl_initialised;

static void
share_lock (CURL *handle, curl_lock_data data, curl_lock_access access, void *user)
{
  GraphHttp *http = user;
  if ((guint) data < CURL_LOCK_DATA_LAST)
    g_mutex_lock (&http->share_locks[data]);
}

static void
share_unlock (CURL *handle, curl_lock_data data, void *user)
{
  GraphHttp *http = user;
  if ((guint) data < CURL_LOCK_DATA_LAST)
    g_mutex_unlock (&http->share_locks[data]);
}

GraphHttp *
graph_http_new (const GraphHttpConfig *config, GError **error)
{
  if (g_once_init_enter (&curl_initialised))
    {
      /* Not thread-safe on old libcurl; the client is created before any worker runs. */
      CURLcode rc = curl_global_init (CURL_GLOBAL_DEFAULT);
      g_once_init_leave (&curl_initialised, rc == CURLE_OK ? 1 : 2);
    }
  if (curl_initialised != 1)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "libcurl could not be initialised");
      return NULL;
    }
  if (config->ca_file != NULL && !g_file_test (config->ca_file, G_FILE_TEST_IS_REGULAR))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "CA file %s does not exist", config->ca_file);
      return NULL;
    }

  GraphHttp *http = g_new0 (GraphHttp, 1);
  for (guint i = 0; i < CURL_LOCK_DATA_LAST; i++)
    g_mutex_init (&http->share_locks[i]);
  g_mutex_init (&http->slot_lock);
  http->idle_slots = g_ptr_array_new ();
  http->max_idle = config->max_idle > 0 ? config->max_idle : 8;
  http->ca_file = g_strdup (config->ca_file);
  http->connect_timeout_ms = config->connect_timeout_ms > 0 ? config->connect_timeout_ms : 15000;
  http->stall_timeout_s = config->stall_timeout_s > 0 ? config->stall_timeout_s : 60;

  http->share = curl_share_init ();
  if (http->share == NULL
      || curl_share_setopt (http->share, CURLSHOPT_LOCKFUNC, share_lock) != CURLSHE_OK
      || curl_share_setopt (http->share, CURLSHOPT_UNLOCKFUNC, share_unlock) != CURLSHE_OK
      || curl_share_setopt (http->share, CURLSHOPT_USERDATA, http) != CURLSHE_OK
      || curl_share_setopt (http->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK
      || curl_share_setopt (http->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "libcurl share handle could not be set up");
      graph_http_free (http);
      return NULL;
    }
  return http;
}

void
graph_http_free (GraphHttp *http)
{
  if (http == NULL)
    return;
  /* Every request has returned its slot by now (the client outlives its requests). */
  for (guint i = 0; i < http->idle_slots->len; i++)
    curl_multi_cleanup (http->idle_slots->pdata[i]);
  g_ptr_array_unref (http->idle_slots);
  if (http->share != NULL)
    curl_share_cleanup (http->share);
  for (guint i = 0; i < CURL_LOCK_DATA_LAST; i++)
    g_mutex_clear (&http->share_locks[i]);
  g_mutex_clear (&http->slot_lock);
  g_free (http->ca_file);
  g_free (http);
}

guint64
graph_http_connections_opened (GraphHttp *http)
{
  return (guint64) g_atomic_int_get (&http->connections_opened);
}

static CURLM *
slot_take (GraphHttp *http)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&http->slot_lock);
  if (http->idle_slots->len > 0)
    return g_ptr_array_steal_index (http->idle_slots, http->idle_slots->len - 1);
  g_clear_pointer (&locker, g_mutex_locker_free);
  CURLM *multi = curl_multi_init ();
  if (multi != NULL)
    curl_multi_setopt (multi, CURLMOPT_MAXCONNECTS, 4L);
  return multi;
}

static void
slot_return (GraphHttp *http, CURLM *multi)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&http->slot_lock);
  if (http->idle_slots->len < http->max_idle)
    {
      g_ptr_array_add (http->idle_slots, multi);
      return;
    }
  g_clear_pointer (&locker, g_mutex_locker_free);
  curl_multi_cleanup (multi);
}

void
graph_http_response_clear (GraphHttpResponse *response)
{
  g_clear_pointer (&response->body, g_byte_array_unref);
  g_clear_pointer (&response->location, g_free);
  g_clear_pointer (&response->retry_after, g_free);
  g_clear_pointer (&response->content_range, g_free);
  response->status = 0;
  response->content_length = -1;
  response->sunk = 0;
}

typedef struct {
  GraphHttp               *http;
  const GraphHttpRequest  *request;
  GraphHttpResponse       *response;
  CURL                    *easy;
  GCancellable            *cancel;
  gboolean                 cancelled;
  gboolean                 too_large;
  gboolean                 sink_failed;
  int                      sink_errno;
} Transfer;

static char *
header_value (const char *line, gsize len, const char *name)
{
  gsize n = strlen (name);
  if (len <= n || g_ascii_strncasecmp (line, name, n) != 0 || line[n] != ':')
    return NULL;
  const char *v = line + n + 1, *end = line + len;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
    end--;
  return g_strndup (v, (gsize) (end - v));
}

static void
replace_string (char **slot, char *value)
{
  g_free (*slot);
  *slot = value;
}

static size_t
on_header (char *data, size_t size, size_t nmemb, void *user)
{
  Transfer *t = user;
  gsize len = size * nmemb;
  char *v;
  /* A new status line (after a 100 Continue, say) starts a new set of headers. */
  if (len >= 5 && memcmp (data, "HTTP/", 5) == 0)
    {
      g_clear_pointer (&t->response->location, g_free);
      g_clear_pointer (&t->response->retry_after, g_free);
      g_clear_pointer (&t->response->content_range, g_free);
    }
  else if ((v = header_value (data, len, "Location")) != NULL)
    replace_string (&t->response->location, v);
  else if ((v = header_value (data, len, "Retry-After")) != NULL)
    replace_string (&t->response->retry_after, v);
  else if ((v = header_value (data, len, "Content-Range")) != NULL)
    replace_string (&t->response->content_range, v);
  return len;
}

static size_t
on_body (char *data, size_t size, size_t nmemb, void *user)
{
  Transfer *t = user;
  gsize len = size * nmemb;
  long status = 0;
  curl_easy_getinfo (t->easy, CURLINFO_RESPONSE_CODE, &status);

  if (t->request->sink != NULL && status >= 200 && status < 300)
    {
      if (t->response->status == 0)
        {
          curl_off_t cl = -1;
          t->response->status = (guint) status;
          if (curl_easy_getinfo (t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK)
            t->response->content_length = cl;
        }
      int errsv = 0;
      if (!t->request->sink (t->response, data, len, t->request->sink_data, &errsv))
        {
          t->sink_failed = TRUE;
          t->sink_errno = errsv;
          return 0;  /* CURLE_WRITE_ERROR */
        }
      t->response->sunk += len;
      return len;
    }

  gsize cap = status >= 400 ? MAX_ERROR_BODY : MAX_COLLECTED_BODY;
  if (t->response->body == NULL)
    t->response->body = g_byte_array_new ();
  if (t->response->body->len + len > cap)
    {
      t->too_large = TRUE;
      return 0;
    }
  g_byte_array_append (t->response->body, (const guint8 *) data, (guint) len);
  return len;
}

static int
on_progress (void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
  Transfer *t = user;
  if (g_cancellable_is_cancelled (t->cancel))
    {
      t->cancelled = TRUE;
      return 1;  /* CURLE_ABORTED_BY_CALLBACK */
    }
  if (t->request->progress != NULL && t->response->sunk > 0)
    t->request->progress (t->request->progress_base + (guint64) dlnow,
                          dltotal > 0 ? t->request->progress_base + (guint64) dltotal : 0,
                          t->request->progress_data);
  return 0;
}

static curl_socket_t
on_open_socket (void *user, curlsocktype purpose, struct curl_sockaddr *address)
{
  GraphHttp *http = user;
  g_atomic_int_inc (&http->connections_opened);
  return socket (address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

static void
on_cancelled (GCancellable *cancel, gpointer multi)
{
  curl_multi_wakeup (multi);
}

static gboolean
setup_easy (Transfer *t, struct curl_slist **headers, char *errbuf)
{
  const GraphHttpRequest *r = t->request;
  GraphHttp *http = t->http;
  CURL *e = t->easy;
  char range[64];
  gboolean ok = TRUE;
#define SET(opt, val) ok = ok && curl_easy_setopt (e, opt, val) == CURLE_OK

  SET (CURLOPT_URL, r->url);
  SET (CURLOPT_SHARE, http->share);
  SET (CURLOPT_PROTOCOLS_STR, "http,https");
  /* Redirects of authenticated requests are followed by the caller, without the token; a
   * request that carries no credential at all may let libcurl follow a few. */
  if (r->follow && r->bearer == NULL)
    {
      SET (CURLOPT_FOLLOWLOCATION, 1L);
      SET (CURLOPT_MAXREDIRS, 3L);
      SET (CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    }
  else
    SET (CURLOPT_FOLLOWLOCATION, 0L);
  SET (CURLOPT_NOSIGNAL, 1L);
  SET (CURLOPT_USERAGENT, "onedrive-syncfs/" PACKAGE_VERSION);
  SET (CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
  SET (CURLOPT_SSL_VERIFYPEER, 1L);
  SET (CURLOPT_SSL_VERIFYHOST, 2L);
  if (http->ca_file != NULL)
    SET (CURLOPT_CAINFO, http->ca_file);
  SET (CURLOPT_CONNECTTIMEOUT_MS, (long) http->connect_timeout_ms);
  SET (CURLOPT_LOW_SPEED_LIMIT, 1L);
  SET (CURLOPT_LOW_SPEED_TIME, (long) http->stall_timeout_s);
  SET (CURLOPT_TCP_KEEPALIVE, 1L);
  SET (CURLOPT_TCP_KEEPIDLE, 60L);
  SET (CURLOPT_TCP_KEEPINTVL, 20L);
  SET (CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  SET (CURLOPT_OPENSOCKETDATA, http);
  SET (CURLOPT_HEADERFUNCTION, on_header);
  SET (CURLOPT_HEADERDATA, t);
  SET (CURLOPT_WRITEFUNCTION, on_body);
  SET (CURLOPT_WRITEDATA, t);
  SET (CURLOPT_NOPROGRESS, 0L);
  SET (CURLOPT_XFERINFOFUNCTION, on_progress);
  SET (CURLOPT_XFERINFODATA, t);
  SET (CURLOPT_ERRORBUFFER, errbuf);
  if (r->json)
    {
      SET (CURLOPT_ACCEPT_ENCODING, "");
      *headers = curl_slist_append (*headers, "Accept: application/json");
    }
  if (r->method != NULL && strcmp (r->method, "POST") == 0)
    {
      SET (CURLOPT_POSTFIELDS, r->form != NULL ? r->form : "");
      *headers = curl_slist_append (*headers, "Content-Type: application/x-www-form-urlencoded");
    }
  if (r->range_from > 0)
    {
      g_snprintf (range, sizeof range, "%" G_GUINT64_FORMAT "-", r->range_from);
      SET (CURLOPT_RANGE, range);
    }
  if (r->bearer != NULL)
    {
      g_autofree char *auth = g_strconcat ("Authorization: Bearer ", r->bearer, NULL);
      *headers = curl_slist_append (*headers, auth);
      explicit_bzero (auth, strlen (auth));
    }
  /* Keep-alive is the HTTP/1.1 default; an Expect: 100-continue round trip is not wanted
   * for form bodies of a few hundred bytes. */
  *headers = curl_slist_append (*headers, "Expect:");
  SET (CURLOPT_HTTPHEADER, *headers);
#undef SET
  return ok;
}

gboolean
graph_http_perform (GraphHttp *http, const GraphHttpRequest *request, GraphHttpResponse *response,
                    GCancellable *cancel, GError **error)
{
  const char *method = request->method != NULL ? request->method : "GET";
  g_autofree char *url_shown = request->secret_url ? graph_url_origin (request->url)
                                                   : graph_url_for_log (request->url);
  g_autofree char *what = request->what != NULL ? g_strdup (request->what)
                                                : g_strdup_printf ("%s %s", method, url_shown);

  graph_http_response_clear (response);
  if (g_cancellable_set_error_if_cancelled (cancel, NULL))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED, "%s: cancelled", what);
      return FALSE;
    }

  g_autoptr (CURL) easy = curl_easy_init ();
  char errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *headers = NULL;
  Transfer t = { .http = http, .request = request, .response = response, .easy = easy,
                 .cancel = cancel };
  if (easy == NULL || !setup_easy (&t, &headers, errbuf))
    {
      curl_slist_free_all (headers);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "%s: libcurl set-up failed", what);
      return FALSE;
    }

  CURLM *multi = slot_take (http);
  if (multi == NULL || curl_multi_add_handle (multi, easy) != CURLM_OK)
    {
      if (multi != NULL)
        curl_multi_cleanup (multi);
      curl_slist_free_all (headers);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "%s: libcurl multi set-up failed", what);
      return FALSE;
    }
  gulong handler = cancel != NULL ? g_cancellable_connect (cancel, G_CALLBACK (on_cancelled), multi, NULL) : 0;

  CURLcode result = CURLE_OK;
  gboolean done = FALSE;
  while (!done)
    {
      int running = 0;
      CURLMcode mc = curl_multi_perform (multi, &running);
      if (mc != CURLM_OK)
        {
          result = CURLE_FAILED_INIT;
          break;
        }
      CURLMsg *msg;
      int left;
      while ((msg = curl_multi_info_read (multi, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy)
          {
            result = msg->data.result;
            done = TRUE;
          }
      if (done)
        break;
      if (g_cancellable_is_cancelled (cancel))
        {
          t.cancelled = TRUE;
          result = CURLE_ABORTED_BY_CALLBACK;
          break;
        }
      curl_multi_poll (multi, NULL, 0, 1000, NULL);
    }

  if (handler != 0)
    g_cancellable_disconnect (cancel, handler);
  /* Removing an unfinished transfer closes its connection; a finished one stays cached. */
  curl_multi_remove_handle (multi, easy);
  slot_return (http, multi);
  curl_slist_free_all (headers);

  if (t.cancelled || (result == CURLE_ABORTED_BY_CALLBACK && g_cancellable_is_cancelled (cancel)))
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED, "%s: cancelled", what);
      return FALSE;
    }
  if (t.sink_failed)
    {
      if (t.sink_errno != 0)
        graph_set_io_error (error, t.sink_errno, "%s: writing the download", what);
      else
        g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: the answer was refused", what);
      return FALSE;
    }
  if (t.too_large)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: the answer is too large", what);
      return FALSE;
    }
  if (result != CURLE_OK)
    {
      graph_set_curl_error (error, what, result, errbuf);
      g_debug ("%s: %s", what, curl_easy_strerror (result));
      return FALSE;
    }

  long status = 0;
  curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &status);
  response->status = (guint) status;
  if (response->content_length < 0)
    {
      curl_off_t cl = -1;
      if (curl_easy_getinfo (easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK)
        response->content_length = cl;
    }
  g_debug ("%s -> %ld (%s)", what, status, url_shown);
  return TRUE;
}
