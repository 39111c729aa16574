/* fake-graph: a fake Microsoft Graph (OneDrive) server for tests and benchmarks.
 *
 *   fake-graph --data DIR | --synthetic N,SIZE,FOLDERS[,SEED] [options]
 *
 * When both listeners are up it prints one JSON line on stdout (base URLs, drive id),
 * then serves until SIGTERM or SIGINT and exits 0. docs/fake-graph.md has the details.
 */
#define G_LOG_DOMAIN "fake-graph"

#include "config.h"

#include "fake-graph.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static size_t
no_unescape (void *cls, struct MHD_Connection *c, char *s)
{
  /* Paths are decoded per segment by the handlers; see graph.c. */
  return strlen (s);
}

static void mhd_log (void *cls, const char *fmt, va_list ap) G_GNUC_PRINTF (2, 0);
static void
mhd_log (void *cls, const char *fmt, va_list ap)
{
  /* libmicrohttpd reports client-side trouble (resets, timeouts) here: expected in
   * fault tests, so informational only. Startup failures are reported by main. */
  g_autofree char *msg = g_strdup_vprintf (fmt, ap);
  g_strchomp (msg);
  g_info ("libmicrohttpd: %s", msg);
}

static void
request_completed (void *cls, struct MHD_Connection *conn, void **con_cls,
                   enum MHD_RequestTerminationCode toe)
{
  FakeServer *server = cls;
  FakeRequest *req = *con_cls;
  if (req == NULL)
    return;
  if (req->planned_bytes && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
    fake_stats_bytes (&server->stats, req->item, -(gint64) req->planned_bytes);
  fake_request_free (req);
  *con_cls = NULL;
}

typedef struct {
  char *host;
  char *port;
} ListenAddr;

static gboolean
parse_listen (const char *spec, ListenAddr *out, GError **error)
{
  const char *colon;
  if (spec[0] == '[')
    {
      const char *close = strchr (spec, ']');
      if (close == NULL || close[1] != ':')
        goto bad;
      out->host = g_strndup (spec + 1, (gsize) (close - spec - 1));
      out->port = g_strdup (close + 2);
    }
  else if ((colon = strrchr (spec, ':')) != NULL)
    {
      out->host = g_strndup (spec, (gsize) (colon - spec));
      out->port = g_strdup (colon + 1);
    }
  else
    {
      out->host = g_strdup ("127.0.0.1");
      out->port = g_strdup (spec);
    }
  return TRUE;
bad:
  g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "bad listen address %s", spec);
  return FALSE;
}

static struct MHD_Daemon *
start_listener (FakeServer *server, const char *spec, MHD_AccessHandlerCallback handler,
                guint threads, const char *cert, const char *key, char **base_out, GError **error)
{
  ListenAddr la = { 0 };
  if (!parse_listen (spec, &la, error))
    return NULL;
  g_autofree char *host = la.host;
  g_autofree char *port = la.port;
  struct addrinfo hints = { .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM };
  struct addrinfo *ai = NULL;
  int rc = getaddrinfo (host, port, &hints, &ai);
  if (rc != 0)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "listen address %s: %s", spec,
                   gai_strerror (rc));
      return NULL;
    }
  gboolean v6 = ai->ai_family == AF_INET6;
  unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_AUTO;
  if (threads == 0)
    flags |= MHD_USE_THREAD_PER_CONNECTION;
  if (v6)
    flags |= MHD_USE_IPv6;
  if (cert)
    flags |= MHD_USE_TLS;

  struct MHD_OptionItem opts[16];
  guint n = 0;
  opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_SOCK_ADDR, 0, ai->ai_addr };
  opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t) no_unescape, NULL };
  opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) request_completed, server };
  opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_EXTERNAL_LOGGER, (intptr_t) mhd_log, NULL };
  opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_CONNECTION_TIMEOUT, 300, NULL };
  if (threads > 0)
    opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_THREAD_POOL_SIZE, threads, NULL };
  if (cert)
    {
      opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_HTTPS_MEM_CERT, 0, (void *) cert };
      opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_HTTPS_MEM_KEY, 0, (void *) key };
    }
  opts[n++] = (struct MHD_OptionItem) { MHD_OPTION_END, 0, NULL };

  struct MHD_Daemon *d = MHD_start_daemon (flags, 0, NULL, NULL, handler, server,
                                           MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
  freeaddrinfo (ai);
  if (d == NULL)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "cannot listen on %s (in use, or a bad address)", spec);
      return NULL;
    }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info (d, MHD_DAEMON_INFO_BIND_PORT);
  guint bound = info ? info->port : 0;
  *base_out = g_strdup_printf ("%s://%s%s%s:%u", cert ? "https" : "http", v6 ? "[" : "", host,
                               v6 ? "]" : "", bound);
  return d;
}

static gboolean
parse_size (const char *s, guint64 *out)
{
  char *end = NULL;
  guint64 v = g_ascii_strtoull (s, &end, 10);
  if (end == s)
    return FALSE;
  guint64 mult = 1;
  if (*end == 'k' || *end == 'K') mult = 1024, end++;
  else if (*end == 'm' || *end == 'M') mult = 1024 * 1024, end++;
  else if (*end == 'g' || *end == 'G') mult = 1024ull * 1024 * 1024, end++;
  if (*end == 'i' && end[-1] != 0)
    end++;
  if (*end == 'B' || *end == 'b')
    end++;
  if (*end != 0)
    return FALSE;
  *out = v * mult;
  return TRUE;
}

int
main (int argc, char **argv)
{
  g_autofree char *data = NULL, *synthetic = NULL, *listen = NULL, *dl_listen = NULL;
  g_autofree char *tls_cert = NULL, *tls_key = NULL, *flavour = NULL, *faults_json = NULL;
  g_autofree char *static_token = NULL, *client_id = NULL;
  double access_lifetime = 3599, url_ttl = -1, token_max_age = -1;
  int device_interval = 5, device_lifetime = 900, threads = 0, latency = -1;
  gboolean die_with_parent = FALSE, verbose = FALSE, features = FALSE;

  /* "--tls CERT KEY" takes two values, which GOption cannot express: rewrite it. */
  g_autoptr(GPtrArray) args = g_ptr_array_new_with_free_func (g_free);
  for (int i = 0; i < argc; i++)
    {
      if (strcmp (argv[i], "--tls") == 0 && i + 2 < argc)
        {
          g_ptr_array_add (args, g_strdup_printf ("--tls-cert=%s", argv[i + 1]));
          g_ptr_array_add (args, g_strdup_printf ("--tls-key=%s", argv[i + 2]));
          i += 2;
        }
      else
        g_ptr_array_add (args, g_strdup (argv[i]));
    }
  g_ptr_array_add (args, NULL);
  int nargs = (int) args->len - 1;
  /* GOption drops parsed entries from the vector it is given: give it a shallow copy so
   * that @args still owns (and frees) every string. */
  g_autofree char **argvp = g_memdup2 (args->pdata, sizeof (char *) * args->len);

  GOptionEntry entries[] = {
    { "data", 0, 0, G_OPTION_ARG_FILENAME, &data, "Serve this directory as the drive", "DIR" },
    { "synthetic", 0, 0, G_OPTION_ARG_STRING, &synthetic,
      "Generate N files of SIZE bytes (k/M/G suffixes) in FOLDERS folders", "N,SIZE,FOLDERS[,SEED]" },
    { "listen", 0, 0, G_OPTION_ARG_STRING, &listen, "Graph/OAuth/admin listener (default 127.0.0.1:0)", "HOST:PORT" },
    { "download-listen", 0, 0, G_OPTION_ARG_STRING, &dl_listen, "Download listener (default 127.0.0.1:0)", "HOST:PORT" },
    { "tls-cert", 0, 0, G_OPTION_ARG_FILENAME, &tls_cert, "TLS certificate (PEM); also --tls CERT KEY", "FILE" },
    { "tls-key", 0, 0, G_OPTION_ARG_FILENAME, &tls_key, "TLS private key (PEM)", "FILE" },
    { "flavour", 0, 0, G_OPTION_ARG_STRING, &flavour, "personal (default) or business", "KIND" },
    { "faults", 0, 0, G_OPTION_ARG_STRING, &faults_json, "Initial faults: JSON as for POST /_admin/faults, or @FILE", "JSON" },
    { "latency-ms", 0, 0, G_OPTION_ARG_INT, &latency, "Latency added to every Graph request", "MS" },
    { "access-lifetime", 0, 0, G_OPTION_ARG_DOUBLE, &access_lifetime, "Access token lifetime (default 3599)", "SECONDS" },
    { "access-token", 0, 0, G_OPTION_ARG_STRING, &static_token, "Also accept this access token forever (benchmarks)", "TOKEN" },
    { "client-id", 0, 0, G_OPTION_ARG_STRING, &client_id, "Accept only this OAuth client id (default: any)", "ID" },
    { "device-interval", 0, 0, G_OPTION_ARG_INT, &device_interval, "Device-code polling interval (default 5)", "SECONDS" },
    { "device-lifetime", 0, 0, G_OPTION_ARG_INT, &device_lifetime, "Device-code lifetime (default 900)", "SECONDS" },
    { "download-url-ttl", 0, 0, G_OPTION_ARG_DOUBLE, &url_ttl, "Download URL lifetime (default 3600)", "SECONDS" },
    { "token-max-age", 0, 0, G_OPTION_ARG_DOUBLE, &token_max_age, "Delta tokens older than this answer 410", "SECONDS" },
    { "threads", 0, 0, G_OPTION_ARG_INT, &threads, "Thread pool size; 0 (default) = a thread per connection", "N" },
    { "die-with-parent", 0, 0, G_OPTION_ARG_NONE, &die_with_parent, "Exit when the parent process dies", NULL },
    { "verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Log every fault and request detail", NULL },
    { "features", 0, 0, G_OPTION_ARG_NONE, &features, "Print what this build supports as JSON and exit", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL }
  };
  g_autoptr(GOptionContext) ctx = g_option_context_new ("- a fake Microsoft Graph server");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse (ctx, &nargs, &argvp, &error))
    {
      fprintf (stderr, "fake-graph: %s\n", error->message);
      return 2;
    }
  if (features)
    {
      printf ("{\"version\":\"%s\",\"tls\":%s,\"ipv6\":%s}\n", PACKAGE_VERSION,
              MHD_is_feature_supported (MHD_FEATURE_TLS) == MHD_YES ? "true" : "false",
              MHD_is_feature_supported (MHD_FEATURE_IPv6) == MHD_YES ? "true" : "false");
      return 0;
    }
  if ((data == NULL) == (synthetic == NULL))
    {
      fprintf (stderr, "fake-graph: give exactly one of --data DIR or --synthetic N,SIZE,FOLDERS[,SEED]\n");
      return 2;
    }
  if ((tls_cert == NULL) != (tls_key == NULL))
    {
      fprintf (stderr, "fake-graph: --tls needs both a certificate and a key\n");
      return 2;
    }
  gboolean business = FALSE;
  if (flavour && strcmp (flavour, "business") == 0)
    business = TRUE;
  else if (flavour && strcmp (flavour, "personal") != 0)
    {
      fprintf (stderr, "fake-graph: --flavour is personal or business\n");
      return 2;
    }
  if (verbose)
    g_setenv ("G_MESSAGES_DEBUG", "fake-graph", FALSE);
  if (die_with_parent)
    {
      prctl (PR_SET_PDEATHSIG, SIGTERM);
      if (getppid () == 1)
        return 0;
    }
  /* Many connections and files at once: use every descriptor we may. */
  struct rlimit rl;
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
    {
      rl.rlim_cur = rl.rlim_max;
      setrlimit (RLIMIT_NOFILE, &rl);
    }

  g_autofree char *cert_pem = NULL, *key_pem = NULL;
  if (tls_cert)
    {
      if (MHD_is_feature_supported (MHD_FEATURE_TLS) != MHD_YES)
        {
          fprintf (stderr, "fake-graph: this libmicrohttpd has no TLS support\n");
          return 2;
        }
      if (!g_file_get_contents (tls_cert, &cert_pem, NULL, &error) ||
          !g_file_get_contents (tls_key, &key_pem, NULL, &error))
        {
          fprintf (stderr, "fake-graph: %s\n", error->message);
          return 2;
        }
    }

  fake_graph_init_nonce ();
  FakeServer server = { 0 };
  server.drive = fake_drive_new (business);
  fake_auth_init (&server.auth);
  fake_faults_init (&server.faults);
  fake_stats_init (&server.stats);
  server.secret = fake_random_token (32);
  server.tls = tls_cert != NULL;
  server.auth.access_lifetime = access_lifetime;
  server.auth.device_interval = (guint) MAX (device_interval, 0);
  server.auth.device_lifetime = (guint) MAX (device_lifetime, 1);
  server.auth.static_token = g_steal_pointer (&static_token);
  server.auth.client_id = g_steal_pointer (&client_id);
  if (url_ttl >= 0)
    server.faults.download_url_ttl = url_ttl;
  if (token_max_age >= 0)
    server.faults.token_max_age = token_max_age;
  if (latency >= 0)
    server.faults.latency_ms = (guint) latency;

  int status = 0;
  gboolean loaded;
  if (data)
    loaded = fake_drive_load_dir (server.drive, data, &error);
  else
    {
      g_auto(GStrv) parts = g_strsplit (synthetic, ",", -1);
      guint64 n = 0, size = 0, folders = 0, seed = 1;
      guint np = g_strv_length (parts);
      loaded = (np == 3 || np == 4) && parse_size (parts[0], &n) && parse_size (parts[1], &size) &&
               parse_size (parts[2], &folders) && (np == 3 || parse_size (parts[3], &seed)) &&
               n <= G_MAXUINT && folders <= G_MAXUINT;
      if (!loaded)
        g_set_error (&error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "--synthetic wants N,SIZE,FOLDERS[,SEED]");
      else
        loaded = fake_drive_load_synthetic (server.drive, (guint) n, size, (guint) folders, seed, &error);
    }
  if (loaded && faults_json)
    {
      g_autofree char *text = NULL;
      if (faults_json[0] == '@')
        loaded = g_file_get_contents (faults_json + 1, &text, NULL, &error);
      else
        text = g_strdup (faults_json);
      g_autoptr(cJSON) j = loaded ? cJSON_Parse (text) : NULL;
      if (loaded && j == NULL)
        {
          g_set_error (&error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "--faults: not JSON");
          loaded = FALSE;
        }
      if (loaded)
        loaded = fake_faults_apply (&server.faults, j, &error);
    }
  if (!loaded)
    {
      fprintf (stderr, "fake-graph: %s\n", error->message);
      status = 2;
      goto out;
    }

  /* Only the main thread takes the signals; the listeners' threads inherit this mask. */
  sigset_t sigs;
  sigemptyset (&sigs);
  sigaddset (&sigs, SIGTERM);
  sigaddset (&sigs, SIGINT);
  sigaddset (&sigs, SIGHUP);
  pthread_sigmask (SIG_BLOCK, &sigs, NULL);
  signal (SIGPIPE, SIG_IGN);

  server.download_daemon = start_listener (&server, dl_listen ? dl_listen : "127.0.0.1:0",
                                           fake_download_handler, (guint) MAX (threads, 0),
                                           cert_pem, key_pem, &server.download_base, &error);
  if (server.download_daemon)
    server.graph_daemon = start_listener (&server, listen ? listen : "127.0.0.1:0", fake_graph_handler,
                                          (guint) MAX (threads, 0), cert_pem, key_pem,
                                          &server.graph_base, &error);
  if (server.graph_daemon == NULL)
    {
      fprintf (stderr, "fake-graph: %s\n", error->message);
      status = 1;
      goto out;
    }

  {
    g_autoptr(cJSON) ready = cJSON_CreateObject ();
    g_autofree char *graph_url = g_strdup_printf ("%s/v1.0", server.graph_base);
    g_autofree char *admin_url = g_strdup_printf ("%s/_admin", server.graph_base);
    cJSON_AddStringToObject (ready, "graph_url", graph_url);
    cJSON_AddStringToObject (ready, "login_url", server.graph_base);
    cJSON_AddStringToObject (ready, "admin_url", admin_url);
    cJSON_AddStringToObject (ready, "download_url", server.download_base);
    cJSON_AddStringToObject (ready, "drive_id", server.drive->drive_id);
    cJSON_AddStringToObject (ready, "remote_drive_id", server.drive->remote_drive_id);
    cJSON_AddStringToObject (ready, "root_id", server.drive->root->id);
    cJSON_AddStringToObject (ready, "flavour", business ? "business" : "personal");
    cJSON_AddNumberToObject (ready, "items", server.drive->all->len);
    cJSON_AddBoolToObject (ready, "tls", server.tls);
    cJSON_AddNumberToObject (ready, "pid", getpid ());
    char *line = cJSON_PrintUnformatted (ready);
    printf ("%s\n", line);
    fflush (stdout);
    cJSON_free (line);
  }

  for (;;)
    {
      int sig = 0;
      if (sigwait (&sigs, &sig) == 0 && (sig == SIGTERM || sig == SIGINT))
        break;
    }
  g_info ("stopping");

out:
  if (server.graph_daemon)
    MHD_stop_daemon (server.graph_daemon);
  if (server.download_daemon)
    MHD_stop_daemon (server.download_daemon);
  fake_drive_free (server.drive);
  fake_auth_clear (&server.auth);
  fake_faults_clear (&server.faults);
  fake_stats_clear (&server.stats);
  g_free (server.secret);
  g_free (server.graph_base);
  g_free (server.download_base);
  return status;
}
