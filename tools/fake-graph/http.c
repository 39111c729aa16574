/* HTTP helpers shared by the fake's listeners: responses, Graph and OAuth error bodies,
 * percent-decoding (the daemon is told not to unescape, so paths are decoded here, one
 * segment at a time), form parsing. */
#define G_LOG_DOMAIN "fake-graph"

#include "config.h"

#include "fake-graph.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

void
fake_request_free (FakeRequest *req)
{
  if (req == NULL)
    return;
  if (req->body)
    g_string_free (req->body, TRUE);
  g_free (req);
}

enum MHD_Result
fake_respond (struct MHD_Connection *conn, FakeServer *server, guint status,
              const char *content_type, char *body, const char *const *headers)
{
  size_t len = body ? strlen (body) : 0;
  struct MHD_Response *resp =
    MHD_create_response_from_buffer_with_free_callback (len, body ? body : g_strdup (""), g_free);
  if (content_type)
    MHD_add_response_header (resp, "Content-Type", content_type);
  for (guint i = 0; headers && headers[i] && headers[i + 1]; i += 2)
    MHD_add_response_header (resp, headers[i], headers[i + 1]);
  fake_stats_status (&server->stats, status);
  enum MHD_Result r = MHD_queue_response (conn, status, resp);
  MHD_destroy_response (resp);
  return r;
}

enum MHD_Result
fake_respond_json (struct MHD_Connection *conn, FakeServer *server, guint status,
                   const cJSON *json, const char *const *headers)
{
  char *text = cJSON_PrintUnformatted (json);
  char *body = g_strdup (text);
  cJSON_free (text);
  return fake_respond (conn, server, status, "application/json", body, headers);
}

enum MHD_Result
fake_respond_graph_error (struct MHD_Connection *conn, FakeServer *server, guint status,
                          const char *code, const char *message, const char *inner_code,
                          const char *const *headers)
{
  g_autoptr(cJSON) root = cJSON_CreateObject ();
  cJSON *err = cJSON_AddObjectToObject (root, "error");
  cJSON_AddStringToObject (err, "code", code);
  cJSON_AddStringToObject (err, "message", message ? message : code);
  cJSON *inner = cJSON_AddObjectToObject (err, "innerError");
  if (inner_code)
    cJSON_AddStringToObject (inner, "code", inner_code);
  g_autofree char *date = fake_format_time (g_get_real_time () / G_USEC_PER_SEC, FALSE);
  cJSON_AddStringToObject (inner, "date", date);
  g_autofree char *rid = fake_random_token (12);
  cJSON_AddStringToObject (inner, "request-id", rid);
  return fake_respond_json (conn, server, status, root, headers);
}

enum MHD_Result
fake_respond_oauth_error (struct MHD_Connection *conn, FakeServer *server, guint status,
                          const char *error, const char *description)
{
  g_autoptr(cJSON) root = cJSON_CreateObject ();
  cJSON_AddStringToObject (root, "error", error);
  cJSON_AddStringToObject (root, "error_description", description ? description : error);
  cJSON *codes = cJSON_AddArrayToObject (root, "error_codes");
  cJSON_AddItemToArray (codes, cJSON_CreateNumber (70000));
  return fake_respond_json (conn, server, status, root, NULL);
}

static int
hexval (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char *
fake_percent_decode (const char *s, gsize len, gboolean plus_is_space)
{
  GString *out = g_string_sized_new (len);
  for (gsize i = 0; i < len; i++)
    {
      char c = s[i];
      if (c == '%')
        {
          int hi = i + 1 < len ? hexval (s[i + 1]) : -1;
          int lo = i + 2 < len ? hexval (s[i + 2]) : -1;
          if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            {
              g_string_free (out, TRUE);
              return NULL;
            }
          g_string_append_c (out, (char) (hi << 4 | lo));
          i += 2;
        }
      else if (c == '+' && plus_is_space)
        g_string_append_c (out, ' ');
      else
        g_string_append_c (out, c);
    }
  return g_string_free (out, FALSE);
}

GHashTable *
fake_parse_form (const char *body, gsize len)
{
  GHashTable *form = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  gsize i = 0;
  while (i < len)
    {
      gsize end = i;
      while (end < len && body[end] != '&')
        end++;
      const char *eq = memchr (body + i, '=', end - i);
      gsize klen = eq ? (gsize) (eq - (body + i)) : end - i;
      char *key = fake_percent_decode (body + i, klen, TRUE);
      char *val = eq ? fake_percent_decode (eq + 1, end - i - klen - 1, TRUE) : g_strdup ("");
      if (key && val)
        g_hash_table_replace (form, key, val);
      else
        {
          g_free (key);
          g_free (val);
        }
      i = end + 1;
    }
  return form;
}

char *
fake_query_arg (struct MHD_Connection *conn, const char *name)
{
  const char *raw = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, name);
  if (raw == NULL)
    return NULL;
  /* MHD already turned '+' into ' ' in arguments; %XX is left to us. */
  return fake_percent_decode (raw, strlen (raw), FALSE);
}

gboolean
fake_peer_is_loopback (struct MHD_Connection *conn)
{
  const union MHD_ConnectionInfo *info =
    MHD_get_connection_info (conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (info == NULL || info->client_addr == NULL)
    return FALSE;
  const struct sockaddr *sa = info->client_addr;
  if (sa->sa_family == AF_INET)
    {
      const struct sockaddr_in *in = (const struct sockaddr_in *) (const void *) sa;
      return (ntohl (in->sin_addr.s_addr) >> 24) == 127;
    }
  if (sa->sa_family == AF_INET6)
    {
      const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) (const void *) sa;
      if (IN6_IS_ADDR_LOOPBACK (&in6->sin6_addr))
        return TRUE;
      return IN6_IS_ADDR_V4MAPPED (&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
    }
  return FALSE;
}

char *
fake_random_token (gsize bytes)
{
  g_autofree guint8 *raw = g_malloc (bytes);
  gsize got = 0;
  while (got < bytes)
    {
      ssize_t n = getrandom (raw + got, bytes - got, 0);
      if (n > 0)
        got += (gsize) n;
    }
  return fake_b64url_encode (raw, bytes);
}

char *
fake_b64url_decode (const char *text)
{
  gsize n = strlen (text);
  GString *s = g_string_sized_new (n + 4);
  for (gsize i = 0; i < n; i++)
    {
      char c = text[i];
      if (c == '-')
        c = '+';
      else if (c == '_')
        c = '/';
      else if (!g_ascii_isalnum (c))
        {
          g_string_free (s, TRUE);
          return NULL;
        }
      g_string_append_c (s, c);
    }
  while (s->len % 4)
    g_string_append_c (s, '=');
  gsize len = 0;
  guchar *raw = g_base64_decode (s->str, &len);
  g_string_free (s, TRUE);
  char *out = g_strndup ((const char *) raw, len);
  g_free (raw);
  return out;
}

char *
fake_b64url_encode (const void *data, gsize len)
{
  char *b64 = g_base64_encode (data, len);
  /* base64url without padding: safe in URLs and form bodies without escaping. */
  for (char *p = b64; *p; p++)
    {
      if (*p == '+')
        *p = '-';
      else if (*p == '/')
        *p = '_';
      else if (*p == '=')
        *p = 0;
    }
  return b64;
}
