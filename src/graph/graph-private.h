/* Internal surface of the Graph layer: shared between the files of src/graph and the graph unit
 * tests, never installed or used by other layers. */
#pragma once

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <gio/gio.h>
#include <glib.h>

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/graph-item.h>

G_BEGIN_DECLS

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

/* ---- JSON (graph-item.c) ----------------------------------------------------------- */

/* cJSON_ParseWithLength, but a "\u0000" escape becomes U+0001 instead of cutting the
 * string short (see the essay in graph-item.c). NULL when not JSON. */
cJSON *graph_json_parse (const char *json, gsize len);
/* One drive item object (GET /items/{id}, /root:/path:) → record; GRAPH_ERROR_PARSE. */
GraphItem *graph_item_from_json (const cJSON *obj, const char *default_drive_id, GError **error);

/* ---- errors and the retry policy (graph-error.c) ----------------------------------- */

/* Extra data every GRAPH_ERROR carries (an extended GError domain). */
typedef struct {
  guint   status;          /* HTTP status, 0 when no response */
  char  **codes;           /* Graph/OAuth error codes, outermost first; NULL-terminated or NULL */
  int     saved_errno;     /* GRAPH_ERROR_LOCAL_IO */
  char   *location;        /* Location header of a 410 */
  gint64  retry_after_ms;  /* from Retry-After; -1 when absent */
} GraphErrorPrivate;

GraphErrorPrivate *graph_error_private (const GError *error);

/* The one place where an HTTP answer becomes an error: status + body (+ headers) → code.
 * @what says what was asked ("GET /me/drive"); it is never a URL with a query. */
void graph_set_http_error (GError **error, const char *what, guint status,
                           const char *body, gsize body_len,
                           const char *location, const char *retry_after);
/* The one place where a libcurl failure becomes an error. */
void graph_set_curl_error (GError **error, const char *what, CURLcode code, const char *detail);
/* Local I/O failure: GRAPH_ERROR_LOCAL_IO keeping @errsv. */
void graph_set_io_error (GError **error, int errsv, const char *format, ...) G_GNUC_PRINTF (3, 4);

/* Outermost-first error codes from a Graph ({"error":{"code",..,"innerError":{..}}}) or
 * OAuth ({"error":"invalid_grant"}) body; NULL when there are none. @message, when non-NULL,
 * gets the outermost message (for people; never branched on). */
char **graph_error_codes_from_body (const char *body, gsize len, char **message);

typedef enum {
  GRAPH_RETRY_NEVER,     /* give up at once */
  GRAPH_RETRY_BACKOFF,   /* capped exponential backoff with jitter, bounded tries */
  GRAPH_RETRY_GATE,      /* Retry-After: close the process-wide gate, then retry */
  GRAPH_RETRY_REAUTH,    /* 401: refresh the token once and retry once */
} GraphRetryAction;

/* The retry policy, as a pure function of the mapped error. */
GraphRetryAction graph_retry_classify (const GError *error);
/* Delay before try @attempt+1 (attempt 0 = the first retry): uniform in
 * [d/2, d] with d = min(cap, base * 2^attempt). */
gint64 graph_retry_backoff_ms (guint attempt, gint64 base_ms, gint64 cap_ms);
/* Retry-After: delta-seconds or an HTTP-date (relative to @now_unix). FALSE if neither. */
gboolean graph_parse_retry_after (const char *value, gint64 now_unix, gint64 *delay_ms);

/* ---- URLs (graph-client.c) --------------------------------------------------------- */

/* TRUE when @link is an absolute http(s) URL on the same scheme, host and port as @base and
 * its path lies under @base's path (segment boundary respected), with no userinfo. */
gboolean graph_link_on_base (const char *link, const char *base);
/* Removes the query and fragment: what may be logged of a URL (download URLs and links
 * carry credentials or tokens in their query). */
char *graph_url_for_log (const char *url);
/* "scheme://host:port" of @url: all that may be logged of a pre-authenticated URL, whose
 * path or query carries its signature. */
char *graph_url_origin (const char *url);
/* "/a b/c#d" → "a%20b/c%23d": every segment percent-encoded as UTF-8; empty segments go. */
char *graph_encode_path (const char *path);

/* ---- transport (graph-http.c) ------------------------------------------------------ */

typedef struct _GraphHttp GraphHttp;

typedef struct {
  guint   status;
  GByteArray *body;          /* the body unless it went to the sink */
  char   *location;
  char   *retry_after;
  char   *content_range;
  gint64  content_length;    /* -1 unknown */
  guint64 sunk;              /* bytes handed to the sink */
} GraphHttpResponse;

/* Receives 2xx body bytes. Returns FALSE to abort the transfer; set *@errsv for I/O errors. */
typedef gboolean (*GraphSinkFunc) (GraphHttpResponse *response, const void *data, gsize len,
                                   gpointer user_data, int *errsv);

typedef struct {
  const char   *method;      /* "GET" (default) or "POST" */
  const char   *url;
  const char   *what;        /* for logs and errors; NULL: the URL without its query */
  const char   *form;        /* POST body, application/x-www-form-urlencoded */
  const char   *bearer;      /* access token; NULL: no Authorization header at all */
  guint64       range_from;  /* > 0: Range: bytes=N- */
  gboolean      json;        /* Accept: application/json, compressed transfer allowed */
  gboolean      secret_url;  /* the URL itself is a credential (download URLs): log its origin only */
  gboolean      follow;      /* let libcurl follow redirects; only ever without a bearer */
  GraphSinkFunc sink;        /* 2xx bodies go here when set */
  gpointer      sink_data;
  GraphProgressFunc progress;
  gpointer      progress_data;
  guint64       progress_base;  /* added to the counts reported to @progress */
} GraphHttpRequest;

typedef struct {
  const char *ca_file;
  guint       max_idle;          /* idle connection slots kept */
  guint       connect_timeout_ms;
  guint       stall_timeout_s;   /* abort when the body moves < 1 byte/s for this long */
} GraphHttpConfig;

GraphHttp *graph_http_new (const GraphHttpConfig *config, GError **error);
void graph_http_free (GraphHttp *http);
/* One attempt, no retries. TRUE when an HTTP answer arrived (any status; @response filled);
 * FALSE with a transport error: NETWORK, TIMEOUT, TRUNCATED, CANCELLED, LOCAL_IO, PARSE
 * (answer too large). */
gboolean graph_http_perform (GraphHttp *http, const GraphHttpRequest *request,
                             GraphHttpResponse *response, GCancellable *cancel, GError **error);
void graph_http_response_clear (GraphHttpResponse *response);
/* Connections opened so far (a reuse check for tests). */
guint64 graph_http_connections_opened (GraphHttp *http);

/* ---- the client (graph-client.c, graph-auth.c) ------------------------------------- */

/* Lock order, outermost first: refresh_lock > token_lock; gate_lock is a leaf. No lock is
 * held across network I/O except refresh_lock (so one refresh runs while the others wait
 * for its result instead of each spending the rotated refresh token). */
struct _GraphClient {
  char      *graph_url;        /* no trailing '/' */
  char      *login_url;
  char      *tenant;
  char      *client_id;
  char      *token_file;
  GraphHttp *http;
  guint      max_retries;
  gint64     retry_base_ms;
  gint64     retry_max_ms;

  GMutex     gate_lock;
  GCond      gate_cond;        /* broadcast when the gate changes or a waiter is cancelled */
  gint64     gate_until;       /* monotonic µs before which no request starts; protected by gate_lock */

  GMutex     refresh_lock;
  GMutex     token_lock;
  char      *access_token;     /* protected by token_lock */
  char      *refresh_token;    /* protected by token_lock */
  gint64     expires_at;       /* unix seconds; protected by token_lock */
  gint64     refresh_margin_s; /* refresh this long before expiry; protected by token_lock */
  guint64    token_generation; /* bumps on every new access token; protected by token_lock */
};

/* One logical request: the attempt loop around graph_http_perform with the one policy. */
typedef struct {
  GraphHttpRequest http;        /* bearer is filled in per attempt when authenticated */
  gboolean         authenticated;
  /* Called before each attempt (e.g. to set Range from what the fd already holds). */
  gboolean       (*before_attempt) (GraphHttpRequest *request, gpointer data, GError **error);
  gpointer         data;
} GraphCall;

/* TRUE when an answer below 400 arrived (2xx, or 3xx which the caller interprets); else the
 * mapped error after the policy's retries. @response holds the last answer either way. */
gboolean graph_client_call (GraphClient *client, GraphCall *call, GraphHttpResponse *response,
                            GCancellable *cancel, GError **error);
/* Waits until the process-wide gate is open; FALSE + CANCELLED if @cancel fires first. */
gboolean graph_client_wait_gate (GraphClient *client, GCancellable *cancel, GError **error);
/* Waits @delay_ms (cancellable). */
gboolean graph_client_sleep (GraphClient *client, gint64 delay_ms, GCancellable *cancel, GError **error);

/* graph-auth.c */
gboolean graph_auth_load (GraphClient *client, GError **error);
/* A valid access token (refreshing first when it is missing or about to expire). */
char *graph_auth_access_token (GraphClient *client, guint64 *generation, GCancellable *cancel, GError **error);
/* Refreshes unless another thread already replaced the token of @failed_generation. */
gboolean graph_auth_refresh (GraphClient *client, guint64 failed_generation, GCancellable *cancel, GError **error);
/* Writes the token file atomically (temp file 0600, fsync, rename, fsync of the folder). */
gboolean graph_auth_save (const char *path, const char *refresh_token, const char *access_token,
                          gint64 expires_at, GError **error);

G_END_DECLS
