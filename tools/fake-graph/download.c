/* The download listener: the "other host" that /content redirects to.
 *
 * URLs are pre-authenticated the way the service's are: the path carries the item id, the
 * content version and an expiry, signed with a per-process secret. A request that carries
 * an Authorization header is refused (the real host answers 401), as is an expired or
 * forged URL (403) or one whose content has changed since (404: ask /content again).
 *
 * Bodies go out with sendfile (MHD_create_response_from_fd_at_offset64) unless the test
 * asked for a bandwidth cap or a broken body, which need a content callback: it sleeps to
 * hold the cap (the listener runs a thread per connection, so sleeping blocks only this
 * download; the cap is re-read every chunk, so lifting it releases downloads in flight) and ends the body early, with a TCP reset or a plain close, where told to.
 */
#define G_LOG_DOMAIN "fake-graph"

#include "config.h"

#include "fake-graph.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char *
sign (FakeServer *server, const char *payload)
{
  g_autofree char *mac = g_compute_hmac_for_string (G_CHECKSUM_SHA256, (const guchar *) server->secret,
                                                    strlen (server->secret), payload, -1);
  return g_strndup (mac, 32);
}

char *
fake_download_url (FakeServer *server, FakeItem *item)
{
  double ttl;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&server->faults.lock);
    ttl = server->faults.download_url_ttl;
  }
  gint64 expiry = g_get_real_time () + (gint64) (ttl * G_USEC_PER_SEC);
  g_autofree char *payload = g_strdup_printf ("%s\n%u\n%" G_GINT64_FORMAT, item->id, item->cversion, expiry);
  g_autofree char *enc = fake_b64url_encode (payload, strlen (payload));
  g_autofree char *sig = sign (server, enc);
  return g_strdup_printf ("%s/dl/%s.%s", server->download_base, enc, sig);
}

typedef struct {
  FakeServer       *server;
  FakeItem         *item;
  int               fd;
  guint64           base;       /* file offset of byte 0 of this body */
  guint64           len;
  guint64           cap;        /* bytes per second, 0 = none; follows the fault setting */
  guint64           cap_pos;    /* body position where the current cap started */
  FakeDownloadRule *rule;
  gint64            start;      /* monotonic µs */
  struct MHD_Connection *conn;
} Stream;

static void
stream_free (void *cls)
{
  Stream *s = cls;
  if (s->fd >= 0)
    close (s->fd);
  fake_download_rule_free (s->rule);
  g_free (s);
}

static ssize_t
stream_read (void *cls, uint64_t pos, char *buf, size_t max)
{
  Stream *s = cls;
  if (pos >= s->len)
    return MHD_CONTENT_READER_END_OF_STREAM;
  size_t n = (size_t) MIN ((guint64) max, s->len - pos);
  if (s->rule)
    {
      if (pos >= s->rule->after_bytes)
        {
          if (strcmp (s->rule->kind, "reset") == 0)
            {
              /* libmicrohttpd shuts a connection down with a FIN before closing it, so a
               * plain error return is a clean (if short) end. For a reset, close the socket
               * ourselves with linger 0 (the kernel sends RST), by dup2-ing /dev/null over its
               * descriptor: the number stays valid for libmicrohttpd, which then fails on it
               * and closes /dev/null, and no other connection can be handed that number. */
              const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info (s->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
              struct linger lg = { 1, 0 };
              int devnull = open ("/dev/null", O_RDWR | O_CLOEXEC);
              if (ci && devnull >= 0 &&
                  setsockopt (ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0)
                dup3 (devnull, ci->connect_fd, O_CLOEXEC);
              if (devnull >= 0)
                close (devnull);
            }
          g_message ("download: %s after %" G_GUINT64_FORMAT " bytes (injected)", s->rule->kind, pos);
          return MHD_CONTENT_READER_END_WITH_ERROR;
        }
      n = (size_t) MIN ((guint64) n, s->rule->after_bytes - pos);
    }
  guint64 cap;
  {
    /* Read each chunk, so a test can slow a download down, or release held downloads by
     * lifting the cap, while they are in flight. */
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->server->faults.lock);
    cap = s->server->faults.bandwidth_bps;
  }
  if (cap != s->cap)
    {
      s->cap = cap;
      s->cap_pos = pos;
      s->start = g_get_monotonic_time ();
    }
  if (s->cap > 0)
    {
      guint64 chunk = MAX (s->cap / 20, (guint64) 1);
      n = (size_t) MIN ((guint64) n, chunk);
      gint64 due = s->start + (gint64) ((double) (pos - s->cap_pos + n) * G_USEC_PER_SEC / (double) s->cap);
      gint64 now = g_get_monotonic_time ();
      if (due > now)
        g_usleep ((gulong) (due - now));
    }
  ssize_t got;
  do
    got = pread (s->fd, buf, n, (off_t) (s->base + pos));
  while (got < 0 && errno == EINTR);
  if (got <= 0)
    {
      g_warning ("download: read failed: %s", got < 0 ? g_strerror (errno) : "short file");
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
  fake_stats_bytes (&s->server->stats, s->item, got);
  return got;
}

/* Parses a single "bytes=" range against @size. Returns 1 with [start,end] for a usable
 * range, 0 to ignore the header (absent, multi-range, malformed: send the whole body),
 * -1 for unsatisfiable (416). */
static int
parse_range (const char *h, guint64 size, guint64 *start, guint64 *end)
{
  if (h == NULL || !g_str_has_prefix (h, "bytes=") || strchr (h, ',') != NULL)
    return 0;
  const char *p = h + 6;
  char *e = NULL;
  if (*p == '-')
    {
      guint64 n = g_ascii_strtoull (p + 1, &e, 10);
      if (e == p + 1 || *e != 0)
        return 0;
      if (n == 0 || size == 0)
        return -1;
      *start = n >= size ? 0 : size - n;
      *end = size - 1;
      return 1;
    }
  guint64 a = g_ascii_strtoull (p, &e, 10);
  if (e == p || *e != '-')
    return 0;
  const char *q = e + 1;
  guint64 b = G_MAXUINT64;
  if (*q)
    {
      b = g_ascii_strtoull (q, &e, 10);
      if (e == q || *e != 0)
        return 0;
      if (b < a)
        return 0;
    }
  if (a >= size)
    return -1;
  *start = a;
  *end = MIN (b, size - 1);
  return 1;
}

static gboolean
decode_url (FakeServer *server, const char *url, char **id, guint *cversion, gint64 *expiry)
{
  if (!g_str_has_prefix (url, "/dl/"))
    return FALSE;
  const char *tok = url + 4;
  const char *dot = strrchr (tok, '.');
  if (dot == NULL)
    return FALSE;
  g_autofree char *enc = g_strndup (tok, (gsize) (dot - tok));
  g_autofree char *sig = sign (server, enc);
  if (strcmp (sig, dot + 1) != 0)
    return FALSE;
  g_autofree char *payload = fake_b64url_decode (enc);
  if (payload == NULL)
    return FALSE;
  g_auto(GStrv) parts = g_strsplit (payload, "\n", 3);
  if (g_strv_length (parts) != 3)
    return FALSE;
  *id = g_strdup (parts[0]);
  *cversion = (guint) g_ascii_strtoull (parts[1], NULL, 10);
  *expiry = g_ascii_strtoll (parts[2], NULL, 10);
  return TRUE;
}

static enum MHD_Result
dl_error (FakeServer *server, struct MHD_Connection *conn, guint status, const char *code,
          const char *message)
{
  return fake_respond_graph_error (conn, server, status, code, message, NULL, NULL);
}

enum MHD_Result
fake_download_handler (void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                       const char *version, const char *upload_data, size_t *upload_data_size,
                       void **con_cls)
{
  FakeServer *server = cls;
  FakeRequest *req = *con_cls;
  if (req == NULL)
    {
      req = g_new0 (FakeRequest, 1);
      req->route = FAKE_ROUTE_DOWNLOAD;
      *con_cls = req;
      return MHD_YES;
    }
  if (*upload_data_size > 0)
    {
      *upload_data_size = 0;
      return MHD_YES;
    }

  FakeFaults *f = &server->faults;
  double grace;
  guint latency;
  gboolean ignore_range;
  guint64 cap;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
    grace = f->throttle_grace;
    latency = f->download_latency_ms;
    ignore_range = f->ignore_range;
    cap = f->bandwidth_bps;
  }
  fake_stats_request (&server->stats, FAKE_ROUTE_DOWNLOAD, grace);

  gboolean head = strcmp (method, "HEAD") == 0;
  if (strcmp (method, "GET") != 0 && !head)
    return dl_error (server, conn, 405, "invalidRequest", "GET only");
  if (MHD_lookup_connection_value (conn, MHD_HEADER_KIND, "Authorization") != NULL)
    {
      g_message ("download: refused a request that carries Authorization");
      fake_stats_add (&server->stats, &server->stats.auth_failures, 1);
      return dl_error (server, conn, 401, "unauthenticated",
                       "Pre-authenticated download URLs must not carry an Authorization header");
    }
  g_autofree char *id = NULL;
  guint cversion = 0;
  gint64 expiry = 0;
  if (!decode_url (server, url, &id, &cversion, &expiry))
    return dl_error (server, conn, 403, "accessDenied", "Invalid download URL");
  if (g_get_real_time () > expiry)
    {
      g_message ("download: expired URL for %s", id);
      return dl_error (server, conn, 403, "accessDenied", "The download URL has expired");
    }
  if (latency)
    g_usleep ((gulong) latency * 1000);
  g_autoptr(FakeErrorRule) rule = fake_faults_match (f, FAKE_ROUTE_DOWNLOAD, id);
  if (rule)
    {
      g_autofree char *ra = rule->retry_after >= 0 ? g_strdup_printf ("%d", rule->retry_after) : NULL;
      const char *headers[] = { "Retry-After", ra, NULL };
      fake_stats_add (&server->stats, &server->stats.faults_injected, 1);
      if (rule->retry_after >= 0)
        fake_stats_window (&server->stats, rule->retry_after);
      g_message ("fault: %u on download", rule->status);
      return fake_respond_graph_error (conn, server, rule->status, rule->code ? rule->code : "generalException",
                                       "injected by fake-graph", NULL, ra ? headers : NULL);
    }

  FakeDrive *drive = server->drive;
  g_rw_lock_reader_lock (&drive->lock);
  FakeItem *item = fake_drive_lookup_id (drive, id);
  if (item == NULL || item->folder || item->cversion != cversion)
    {
      g_rw_lock_reader_unlock (&drive->lock);
      return dl_error (server, conn, 404, "itemNotFound", "The content behind this URL changed or is gone");
    }
  g_autoptr(FakeBlob) blob = fake_blob_ref (item->blob);
  g_rw_lock_reader_unlock (&drive->lock);

  guint64 size = blob->size, start = 0, end = size ? size - 1 : 0;
  int r = ignore_range ? 0 : parse_range (MHD_lookup_connection_value (conn, MHD_HEADER_KIND, "Range"),
                                         size, &start, &end);
  if (r < 0)
    {
      g_autofree char *cr = g_strdup_printf ("bytes */%" G_GUINT64_FORMAT, size);
      const char *headers[] = { "Content-Range", cr, NULL };
      return fake_respond (conn, server, 416, "application/json",
                           g_strdup ("{\"error\":{\"code\":\"invalidRange\",\"message\":\"Range not satisfiable\"}}"),
                           headers);
    }
  guint64 len = size == 0 ? 0 : end - start + 1;
  guint status = r == 1 ? 206 : 200;

  FakeDownloadRule *drule = head ? NULL : fake_faults_match_download (f, id);
  if (!head)
    fake_stats_download (&server->stats, item, r == 1);

  struct MHD_Response *resp;
  if (len == 0)
    resp = MHD_create_response_from_buffer (0, (void *) "", MHD_RESPMEM_PERSISTENT);
  else
    {
      int fd = fake_blob_open (blob);
      if (fd < 0)
        {
          fake_download_rule_free (drule);
          g_warning ("download: open content of %s: %s", id, g_strerror (errno));
          return dl_error (server, conn, 500, "generalException", "cannot open content");
        }
      if (drule || cap)
        {
          Stream *s = g_new0 (Stream, 1);
          s->server = server;
          s->item = item;
          s->fd = fd;
          s->base = blob->offset + start;
          s->len = len;
          s->cap = cap;
          s->rule = drule;
          s->start = g_get_monotonic_time ();
          s->conn = conn;
          /* stream_read counts the bytes as they go out. */
          resp = MHD_create_response_from_callback (len, 64 * 1024, stream_read, s, stream_free);
        }
      else
        {
          resp = MHD_create_response_from_fd_at_offset64 (len, fd, blob->offset + start);
          if (!head)
            {
              /* Counted now: the client may read the body and ask for stats before
               * libmicrohttpd reports completion. request_completed takes it back if the
               * body did not go out. */
              fake_stats_bytes (&server->stats, item, (gint64) len);
              req->planned_bytes = len;
              req->item = item;
            }
        }
    }
  MHD_add_response_header (resp, "Content-Type", "application/octet-stream");
  MHD_add_response_header (resp, "Accept-Ranges", "bytes");
  if (status == 206)
    {
      g_autofree char *cr = g_strdup_printf ("bytes %" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT,
                                             start, end, size);
      MHD_add_response_header (resp, "Content-Range", cr);
    }
  fake_stats_status (&server->stats, status);
  enum MHD_Result ret = MHD_queue_response (conn, status, resp);
  MHD_destroy_response (resp);
  return ret;
}
