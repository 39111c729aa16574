/* Errors of the Graph layer and the one retry policy.
 *
 * Every failure crosses into the caller as a GRAPH_ERROR whose private data (an extended
 * GError domain) holds the HTTP status, the service's error codes outermost first, a kept
 * errno and the Retry-After/Location the answer carried. Two mapping functions build those
 * errors — one for HTTP answers, one for libcurl failures — and graph_retry_classify() reads
 * only the mapped error, so the policy is decided from codes, never from message strings,
 * and lives in exactly one place.
 */
#define G_LOG_DOMAIN "odsf-graph"

#include "config.h"

#include "graph-private.h"

#include <errno.h>
#include <string.h>

static void
graph_error_private_init (GraphErrorPrivate *priv)
{
  priv->retry_after_ms = -1;
}

static void
graph_error_private_copy (const GraphErrorPrivate *src, GraphErrorPrivate *dest)
{
  dest->status = src->status;
  dest->codes = g_strdupv (src->codes);
  dest->saved_errno = src->saved_errno;
  dest->location = g_strdup (src->location);
  dest->retry_after_ms = src->retry_after_ms;
}

static void
graph_error_private_clear (GraphErrorPrivate *priv)
{
  g_clear_pointer (&priv->codes, g_strfreev);
  g_clear_pointer (&priv->location, g_free);
}

G_DEFINE_EXTENDED_ERROR (GraphError, graph_error)

GraphErrorPrivate *
graph_error_private (const GError *error)
{
  if (error == NULL || error->domain != GRAPH_ERROR)
    return NULL;
  return graph_error_get_private (error);
}

guint
graph_error_status (const GError *error)
{
  GraphErrorPrivate *priv = graph_error_private (error);
  return priv != NULL ? priv->status : 0;
}

const char *
graph_error_code (const GError *error, guint index)
{
  GraphErrorPrivate *priv = graph_error_private (error);
  if (priv == NULL || priv->codes == NULL || index >= g_strv_length (priv->codes))
    return NULL;
  return priv->codes[index];
}

gboolean
graph_error_has_code (const GError *error, const char *code)
{
  GraphErrorPrivate *priv = graph_error_private (error);
  return priv != NULL && priv->codes != NULL && g_strv_contains ((const char * const *) priv->codes, code);
}

const char *
graph_error_location (const GError *error)
{
  GraphErrorPrivate *priv = graph_error_private (error);
  return priv != NULL ? priv->location : NULL;
}

int
graph_error_errno (const GError *error)
{
  GraphErrorPrivate *priv = graph_error_private (error);
  return priv != NULL ? priv->saved_errno : 0;
}

/* ---- bodies ------------------------------------------------------------------------- */

#define MAX_CODE_DEPTH 8
#define MAX_CODE_LEN   128

/* Codes reach logs and comparisons: keep them short and printable. */
static gboolean
usable_code (const char *s)
{
  if (s == NULL || s[0] == '\0' || strlen (s) > MAX_CODE_LEN)
    return FALSE;
  for (const char *c = s; *c; c++)
    if ((guchar) *c < 0x21 || (guchar) *c > 0x7e)
      return FALSE;
  return TRUE;
}

char **
graph_error_codes_from_body (const char *body, gsize len, char **message)
{
  if (message != NULL)
    *message = NULL;
  if (body == NULL || len == 0)
    return NULL;
  g_autoptr (cJSON) root = graph_json_parse (body, len);
  if (!cJSON_IsObject (root))
    return NULL;
  const cJSON *err = cJSON_GetObjectItemCaseSensitive (root, "error");
  g_autoptr (GStrvBuilder) codes = g_strv_builder_new ();
  guint n = 0;

  if (cJSON_IsString (err))
    {
      /* OAuth: {"error": "invalid_grant", "error_description": "..."} */
      if (usable_code (err->valuestring))
        {
          g_strv_builder_add (codes, err->valuestring);
          n++;
        }
      const cJSON *desc = cJSON_GetObjectItemCaseSensitive (root, "error_description");
      if (message != NULL && cJSON_IsString (desc) && g_utf8_validate (desc->valuestring, -1, NULL))
        *message = g_strndup (desc->valuestring, 512);
    }
  else
    {
      /* Graph: {"error": {"code", "message", "innerError"|"innererror": {...}}}, nesting. */
      for (guint depth = 0; cJSON_IsObject (err) && depth < MAX_CODE_DEPTH; depth++)
        {
          const cJSON *code = cJSON_GetObjectItemCaseSensitive (err, "code");
          if (cJSON_IsString (code) && usable_code (code->valuestring))
            {
              g_strv_builder_add (codes, code->valuestring);
              n++;
            }
          const cJSON *msg = cJSON_GetObjectItemCaseSensitive (err, "message");
          if (depth == 0 && message != NULL && cJSON_IsString (msg)
              && g_utf8_validate (msg->valuestring, -1, NULL))
            *message = g_strndup (msg->valuestring, 512);
          const cJSON *inner = cJSON_GetObjectItemCaseSensitive (err, "innerError");
          if (inner == NULL)
            inner = cJSON_GetObjectItemCaseSensitive (err, "innererror");
          err = inner;
        }
    }
  if (n == 0)
    return NULL;
  return g_strv_builder_end (codes);
}

/* ---- mapping ------------------------------------------------------------------------ */

static gboolean
strv_has (char **codes, const char *code)
{
  return codes != NULL && g_strv_contains ((const char * const *) codes, code);
}

void
graph_set_http_error (GError **error, const char *what, guint status, const char *body,
                      gsize body_len, const char *location, const char *retry_after)
{
  if (error == NULL)
    return;
  g_autofree char *message = NULL;
  g_auto (GStrv) codes = graph_error_codes_from_body (body, body_len, &message);
  gint64 retry_ms = -1;
  if (retry_after != NULL && !graph_parse_retry_after (retry_after, g_get_real_time () / G_USEC_PER_SEC, &retry_ms))
    retry_ms = -1;

  GraphErrorCode code;
  const char *hint = "";
  if (status == 401)
    {
      code = GRAPH_ERROR_AUTH;
      hint = " (access token refused)";
    }
  else if (status == 404)
    code = GRAPH_ERROR_NOT_FOUND;
  else if (status == 410)
    code = GRAPH_ERROR_RESYNC_REQUIRED;
  else if (status == 501 || strv_has (codes, "notSupported"))
    code = GRAPH_ERROR_NOT_SUPPORTED;
  else if (status == 429 || status == 503 || status == 509)
    code = GRAPH_ERROR_THROTTLED;
  else
    code = GRAPH_ERROR_HTTP;

  g_autofree char *code_text = codes != NULL ? g_strjoinv ("/", codes) : NULL;
  g_set_error (error, GRAPH_ERROR, code, "%s: HTTP %u%s%s%s%s%s", what, status,
               code_text != NULL ? " " : "", code_text != NULL ? code_text : "",
               message != NULL ? ": " : "", message != NULL ? message : "", hint);
  GraphErrorPrivate *priv = graph_error_private (*error);
  priv->status = status;
  priv->codes = g_steal_pointer (&codes);
  priv->location = g_strdup (location);
  priv->retry_after_ms = retry_ms;
}

void
graph_set_curl_error (GError **error, const char *what, CURLcode code, const char *detail)
{
  GraphErrorCode gcode;
  switch (code)
    {
    case CURLE_OPERATION_TIMEDOUT:
      gcode = GRAPH_ERROR_TIMEOUT;
      break;
    case CURLE_PARTIAL_FILE:
      gcode = GRAPH_ERROR_TRUNCATED;
      break;
    case CURLE_ABORTED_BY_CALLBACK:
      gcode = GRAPH_ERROR_CANCELLED;
      break;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FAILED_INIT:
      /* Retrying cannot fix a certificate that does not verify or a bad URL. */
      gcode = GRAPH_ERROR_FAILED;
      break;
    default:
      gcode = GRAPH_ERROR_NETWORK;
      break;
    }
  g_set_error (error, GRAPH_ERROR, gcode, "%s: %s%s%s", what, curl_easy_strerror (code),
               detail != NULL && detail[0] != '\0' ? ": " : "", detail != NULL ? detail : "");
}

void
graph_set_io_error (GError **error, int errsv, const char *format, ...)
{
  if (error == NULL)
    return;
  va_list args;
  va_start (args, format);
  g_autofree char *text = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_LOCAL_IO, "%s: %s", text, g_strerror (errsv));
  graph_error_private (*error)->saved_errno = errsv;
}

/* ---- policy ------------------------------------------------------------------------- */

GraphRetryAction
graph_retry_classify (const GError *error)
{
  GraphErrorPrivate *priv = graph_error_private (error);
  if (priv == NULL)
    return GRAPH_RETRY_NEVER;
  switch ((GraphErrorCode) error->code)
    {
    case GRAPH_ERROR_NETWORK:
    case GRAPH_ERROR_TIMEOUT:
    case GRAPH_ERROR_TRUNCATED:
      return GRAPH_RETRY_BACKOFF;
    case GRAPH_ERROR_THROTTLED:
      return priv->retry_after_ms >= 0 ? GRAPH_RETRY_GATE : GRAPH_RETRY_BACKOFF;
    case GRAPH_ERROR_AUTH:
      return priv->status == 401 ? GRAPH_RETRY_REAUTH : GRAPH_RETRY_NEVER;
    case GRAPH_ERROR_HTTP:
      if (priv->status == 500 || priv->status == 502 || priv->status == 504)
        return GRAPH_RETRY_BACKOFF;
      if (strv_has (priv->codes, "cannotSnapshotTree"))
        return GRAPH_RETRY_BACKOFF;
      return GRAPH_RETRY_NEVER;
    case GRAPH_ERROR_FAILED:
    case GRAPH_ERROR_NOT_FOUND:
    case GRAPH_ERROR_RESYNC_REQUIRED:
    case GRAPH_ERROR_NOT_SUPPORTED:
    case GRAPH_ERROR_PARSE:
    case GRAPH_ERROR_HASH_MISMATCH:
    case GRAPH_ERROR_CANCELLED:
    case GRAPH_ERROR_LOCAL_IO:
    case GRAPH_ERROR_BAD_LINK:
    default:
      return GRAPH_RETRY_NEVER;
    }
}

gint64
graph_retry_backoff_ms (guint attempt, gint64 base_ms, gint64 cap_ms)
{
  gint64 d = base_ms;
  for (guint i = 0; i < attempt && d < cap_ms; i++)
    d *= 2;
  d = MIN (d, cap_ms);
  if (d <= 1)
    return MAX (d, 0);
  /* "Equal jitter": never less than half the step, so retries stay spread out, and never
   * all workers in lockstep. */
  return d / 2 + g_random_int_range (0, (gint32) MIN (d / 2 + 1, G_MAXINT32));
}

/* A Retry-After beyond this is not honoured literally: a worker must not sleep for hours
 * because a (hostile or broken) server said so; the caller gives up instead. */
#define MAX_RETRY_AFTER_S (24 * 3600)

gboolean
graph_parse_retry_after (const char *value, gint64 now_unix, gint64 *delay_ms)
{
  if (value == NULL)
    return FALSE;
  while (*value == ' ' || *value == '\t')
    value++;
  if (*value >= '0' && *value <= '9')
    {
      char *end = NULL;
      guint64 s = g_ascii_strtoull (value, &end, 10);
      while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
        end++;
      if (*end != '\0')
        return FALSE;
      *delay_ms = (gint64) MIN (s, (guint64) MAX_RETRY_AFTER_S) * 1000;
      return TRUE;
    }
  time_t when = curl_getdate (value, NULL);
  if (when == (time_t) -1)
    return FALSE;
  gint64 d = ((gint64) when - now_unix) * 1000;
  *delay_ms = CLAMP (d, 0, (gint64) MAX_RETRY_AFTER_S * 1000);
  return TRUE;
}
