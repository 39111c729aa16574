/* bench-download: how fast the Graph client downloads from the fake, against what the
 * loopback can do, and how fast a cancel stops transfers in flight. Not a test.
 *
 *   build/tools/bench/bench-download [--small N] [--small-size BYTES] [--large M]
 *       [--large-size BYTES] [--workers W] [--cancel-rounds K] [--cancel-bps BPS]
 *
 * 1. Starts tools/fake-graph with N small files and adds M large ones.
 * 2. Enumerates the drive with delta (items/s).
 * 3. Downloads every file with W worker threads through graph_client_download (the 302
 *    to the download host, QuickXorHash verified on the fly), writing to /dev/null so the
 *    disk is not what is measured: files/s and MB/s.
 * 4. Fetches the same download URLs with `curl --parallel --parallel-max W` into /dev/null:
 *    the loopback limit of this server on this machine. The ratio compares the two. (The
 *    client also pays one /content round trip per file, which curl is spared.)
 * 5. Cancel latency: K rounds of W large downloads in flight at a capped bandwidth; one
 *    GCancellable is cancelled and each worker's time from cancel to return is recorded.
 */
#include "config.h"

#include <onedrive-syncfs/graph-client.h>

#include "fake-graph-fixture.h"
#include "graph-private.h"

#include <fcntl.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  char   *id;
  char   *hash;
  gint64  size;
} File;

static void
file_free (File *f)
{
  g_free (f->id);
  g_free (f->hash);
  g_free (f);
}

static gint opt_small = 400, opt_large = 4, opt_workers = 8, opt_rounds = 10;
static gint64 opt_small_size = 16 * 1024, opt_large_size = 64 * 1024 * 1024, opt_cancel_bps = 8 * 1000 * 1000;

static void
die (const char *what, GError *error)
{
  fprintf (stderr, "bench-download: %s: %s\n", what, error != NULL ? error->message : "failed");
  exit (1);
}

static GraphClient *
make_client (FakeGraph *fg, const char *dir)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *access = NULL, *refresh = NULL;
  if (!fake_graph_mint_token (fg, 0, &access, &refresh, &error))
    die ("minting a token", error);
  g_autofree char *token_file = g_build_filename (dir, "token.json", NULL);
  if (!graph_auth_save (token_file, refresh, access, g_get_real_time () / G_USEC_PER_SEC + 3000, &error))
    die ("saving the token", error);
  GraphConfig config = {
    .graph_url = fg->graph_url,
    .login_url = fg->login_url,
    .client_id = "bench",
    .token_file = token_file,
    .max_connections = (guint) opt_workers * 2,
  };
  GraphClient *client = graph_client_new (&config, &error);
  if (client == NULL)
    die ("creating the client", error);
  return client;
}

static GPtrArray *
enumerate (GraphClient *client, FakeGraph *fg, double *seconds)
{
  GPtrArray *files = g_ptr_array_new_with_free_func ((GDestroyNotify) file_free);
  g_autoptr (GHashTable) seen = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autofree char *link = NULL;
  guint items = 0;
  gint64 t0 = g_get_monotonic_time ();
  for (;;)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GraphDeltaPage) page = graph_client_delta (client, link, fg->drive_id, NULL, NULL, &error);
      if (page == NULL)
        die ("delta", error);
      for (guint i = 0; i < page->items->len; i++)
        {
          GraphItem *it = page->items->pdata[i];
          items++;
          if (it->kind != GRAPH_ITEM_FILE || it->deleted || g_hash_table_contains (seen, it->id))
            continue;
          g_hash_table_add (seen, g_strdup (it->id));
          File *f = g_new0 (File, 1);
          f->id = g_strdup (it->id);
          f->hash = g_strdup (it->quickxor_hash);
          f->size = it->size;
          g_ptr_array_add (files, f);
        }
      g_free (link);
      link = g_strdup (page->next_link);
      if (page->delta_link != NULL)
        break;
    }
  *seconds = (g_get_monotonic_time () - t0) / 1e6;
  printf ("enumerate: %u items in %.3f s (%.0f items/s)\n", items, *seconds, items / *seconds);
  return files;
}

typedef struct {
  GraphClient  *client;
  GPtrArray    *files;
  gint          next;      /* atomic */
  gint          failures;  /* atomic */
  guint64       bytes;     /* protected by lock */
  GMutex        lock;
} Pool;

static gpointer
download_worker (gpointer data)
{
  Pool *p = data;
  for (;;)
    {
      gint i = g_atomic_int_add (&p->next, 1);
      if (i >= (gint) p->files->len)
        return NULL;
      File *f = p->files->pdata[i];
      int fd = open ("/dev/null", O_WRONLY | O_CLOEXEC);
      g_autoptr (GError) error = NULL;
      guint64 n = 0;
      if (!graph_client_download (p->client, NULL, f->id, f->hash, fd, NULL, NULL, NULL, &n, &error))
        {
          fprintf (stderr, "download %s: %s\n", f->id, error->message);
          g_atomic_int_inc (&p->failures);
        }
      close (fd);
      g_mutex_lock (&p->lock);
      p->bytes += n;
      g_mutex_unlock (&p->lock);
    }
}

static double
run_downloads (GraphClient *client, GPtrArray *files, guint64 *bytes)
{
  Pool p = { .client = client, .files = files };
  g_mutex_init (&p.lock);
  GPtrArray *threads = g_ptr_array_new ();
  gint64 t0 = g_get_monotonic_time ();
  for (int i = 0; i < opt_workers; i++)
    g_ptr_array_add (threads, g_thread_new ("dl", download_worker, &p));
  for (guint i = 0; i < threads->len; i++)
    g_thread_join (threads->pdata[i]);
  double s = (g_get_monotonic_time () - t0) / 1e6;
  g_ptr_array_unref (threads);
  g_mutex_clear (&p.lock);
  if (p.failures > 0)
    {
      fprintf (stderr, "bench-download: %d downloads failed\n", p.failures);
      exit (1);
    }
  *bytes = p.bytes;
  return s;
}

/* The download URL the client would be redirected to (GET /content, no follow). */
static char *
download_url (GraphClient *client, FakeGraph *fg, const char *id)
{
  g_autofree char *url = g_strdup_printf ("%s/drives/%s/items/%s/content", fg->graph_url, fg->drive_id, id);
  GraphCall call = { .http = { .url = url, .what = "GET content" }, .authenticated = TRUE };
  GraphHttpResponse response = { 0 };
  g_autoptr (GError) error = NULL;
  if (!graph_client_call (client, &call, &response, NULL, &error) || response.location == NULL)
    die ("GET content", error);
  char *location = g_steal_pointer (&response.location);
  graph_http_response_clear (&response);
  return location;
}

static double
run_curl (GraphClient *client, FakeGraph *fg, GPtrArray *files, const char *dir, guint64 *bytes)
{
  g_autofree char *cfg = g_build_filename (dir, "curl.cfg", NULL);
  GString *text = g_string_new (NULL);
  *bytes = 0;
  for (guint i = 0; i < files->len; i++)
    {
      File *f = files->pdata[i];
      g_autofree char *u = download_url (client, fg, f->id);
      g_string_append_printf (text, "url = \"%s\"\noutput = \"/dev/null\"\n", u);
      *bytes += (guint64) f->size;
    }
  g_autoptr (GError) error = NULL;
  if (!g_file_set_contents (cfg, text->str, (gssize) text->len, &error))
    die ("writing the curl config", error);
  g_string_free (text, TRUE);
  g_autofree char *max = g_strdup_printf ("%d", opt_workers);
  const char *argv[] = { "curl", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", max,
                         "--config", cfg, NULL };
  gint status = 0;
  gint64 t0 = g_get_monotonic_time ();
  if (!g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, &status, &error))
    die ("running curl", error);
  double s = (g_get_monotonic_time () - t0) / 1e6;
  if (!g_spawn_check_wait_status (status, &error))
    die ("curl", error);
  return s;
}

typedef struct {
  GraphClient  *client;
  const char   *id;
  const char   *hash;
  GCancellable *cancel;
  GMutex       *lock;
  GCond        *cond;
  gint         *flowing;      /* protected by lock */
  gint64        returned_at;
  gboolean      cancelled;
} CancelJob;

static void
on_progress (guint64 done, guint64 total, gpointer data)
{
  CancelJob *j = data;
  if (done < 64 * 1024 || j->returned_at == -1)
    return;
  g_mutex_lock (j->lock);
  if (j->returned_at == 0)
    {
      j->returned_at = -1;  /* counted once */
      (*j->flowing)++;
      g_cond_broadcast (j->cond);
    }
  g_mutex_unlock (j->lock);
}

static gpointer
cancel_worker (gpointer data)
{
  CancelJob *j = data;
  int fd = open ("/dev/null", O_WRONLY | O_CLOEXEC);
  g_autoptr (GError) error = NULL;
  graph_client_download (j->client, NULL, j->id, j->hash, fd, j->cancel, on_progress, j, NULL, &error);
  j->returned_at = g_get_monotonic_time ();
  j->cancelled = g_error_matches (error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED);
  close (fd);
  return NULL;
}

static int
cmp_i64 (const void *a, const void *b)
{
  gint64 x = *(const gint64 *) a, y = *(const gint64 *) b;
  return x < y ? -1 : x > y;
}

static void
run_cancel (GraphClient *client, FakeGraph *fg, GPtrArray *large)
{
  g_autofree char *json = g_strdup_printf ("{\"bandwidth_bps\":%" G_GINT64_FORMAT "}", opt_cancel_bps);
  g_autoptr (GError) error = NULL;
  if (!fake_graph_set_faults (fg, json, &error))
    die ("setting the bandwidth cap", error);
  g_autoptr (GArray) samples = g_array_new (FALSE, FALSE, sizeof (gint64));
  guint not_cancelled = 0;
  for (int round = 0; round < opt_rounds; round++)
    {
      GMutex lock;
      GCond cond;
      gint flowing = 0;
      g_mutex_init (&lock);
      g_cond_init (&cond);
      g_autoptr (GCancellable) cancel = g_cancellable_new ();
      CancelJob *jobs = g_new0 (CancelJob, opt_workers);
      GThread **threads = g_new0 (GThread *, opt_workers);
      for (int i = 0; i < opt_workers; i++)
        {
          File *f = large->pdata[i % large->len];
          jobs[i] = (CancelJob) { .client = client, .id = f->id, .hash = f->hash, .cancel = cancel,
                                  .lock = &lock, .cond = &cond, .flowing = &flowing };
          threads[i] = g_thread_new ("cancel", cancel_worker, &jobs[i]);
        }
      /* every transfer is mid-body before the cancel */
      g_mutex_lock (&lock);
      while (flowing < opt_workers)
        g_cond_wait (&cond, &lock);
      g_mutex_unlock (&lock);
      g_usleep (g_random_int_range (0, 50000));  /* a random point in the body */
      gint64 t0 = g_get_monotonic_time ();
      g_cancellable_cancel (cancel);
      for (int i = 0; i < opt_workers; i++)
        {
          g_thread_join (threads[i]);
          gint64 latency = jobs[i].returned_at - t0;
          g_array_append_val (samples, latency);
          if (!jobs[i].cancelled)
            not_cancelled++;
        }
      g_free (jobs);
      g_free (threads);
      g_mutex_clear (&lock);
      g_cond_clear (&cond);
    }
  g_array_sort (samples, cmp_i64);
  gint64 *v = (gint64 *) samples->data;
  guint n = samples->len;
#define PCT(p) (v[MIN (n - 1, (guint) ((p) * n / 100))] / 1000.0)
  printf ("cancel-to-return (%u transfers in flight, %d at a time, %" G_GINT64_FORMAT " B/s each): "
          "min %.2f ms, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms%s\n",
          n, opt_workers, opt_cancel_bps, v[0] / 1000.0, PCT (50), PCT (90), PCT (99), v[n - 1] / 1000.0,
          not_cancelled ? " (some finished before the cancel!)" : "");
#undef PCT
}

int
main (int argc, char **argv)
{
  GOptionEntry entries[] = {
    { "small", 0, 0, G_OPTION_ARG_INT, &opt_small, "Small files (default 400)", "N" },
    { "small-size", 0, 0, G_OPTION_ARG_INT64, &opt_small_size, "Bytes per small file (default 16384)", "BYTES" },
    { "large", 0, 0, G_OPTION_ARG_INT, &opt_large, "Large files (default 4)", "M" },
    { "large-size", 0, 0, G_OPTION_ARG_INT64, &opt_large_size, "Bytes per large file (default 64 MiB)", "BYTES" },
    { "workers", 0, 0, G_OPTION_ARG_INT, &opt_workers, "Concurrent downloads (default 8)", "W" },
    { "cancel-rounds", 0, 0, G_OPTION_ARG_INT, &opt_rounds, "Cancel rounds (default 10)", "K" },
    { "cancel-bps", 0, 0, G_OPTION_ARG_INT64, &opt_cancel_bps, "Per-download bandwidth during cancel rounds", "BPS" },
    G_OPTION_ENTRY_NULL,
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- download benchmark against tools/fake-graph");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, &argc, &argv, &error))
    die ("options", error);
  if (opt_small < 0 || opt_large < 1 || opt_workers < 1 || opt_rounds < 0)
    die ("options", NULL);

  g_autofree char *dir = g_dir_make_tmp ("odsf-bench-XXXXXX", &error);
  if (dir == NULL)
    die ("temp dir", error);
  g_autofree char *synthetic = g_strdup_printf ("%d,%" G_GINT64_FORMAT ",8", opt_small, opt_small_size);
  g_autoptr (FakeGraph) fg = fake_graph_start ((const char *[]) { "--synthetic", synthetic, NULL }, &error);
  if (fg == NULL)
    die ("starting fake-graph", error);
  for (int i = 0; i < opt_large; i++)
    {
      g_autofree char *body = g_strdup_printf ("{\"path\":\"/large/big-%d.bin\",\"size\":%" G_GINT64_FORMAT ",\"seed\":%d,\"parents\":true}",
                                               i, opt_large_size, 100 + i);
      g_autoptr (cJSON) added = fake_graph_admin_json (fg, "items/add", body, &error);
      if (added == NULL)
        die ("adding a large file", error);
    }
  GraphClient *client = make_client (fg, dir);

  double enum_s;
  g_autoptr (GPtrArray) files = enumerate (client, fg, &enum_s);
  g_autoptr (GPtrArray) large = g_ptr_array_new ();
  for (guint i = 0; i < files->len; i++)
    if (((File *) files->pdata[i])->size == opt_large_size)
      g_ptr_array_add (large, files->pdata[i]);

  guint64 bytes = 0, curl_bytes = 0;
  guint64 conns_before = graph_http_connections_opened (client->http);
  double s = run_downloads (client, files, &bytes);
  guint64 conns = graph_http_connections_opened (client->http) - conns_before;
  double curl_s = run_curl (client, fg, files, dir, &curl_bytes);

  double mb = bytes / 1e6, curl_mb = curl_bytes / 1e6;
  printf ("files: %d x %" G_GINT64_FORMAT " B + %d x %" G_GINT64_FORMAT " B, %d workers\n",
          opt_small, opt_small_size, opt_large, opt_large_size, opt_workers);
  printf ("graph client: %u files, %.1f MB in %.3f s: %.1f files/s, %.1f MB/s (%" G_GUINT64_FORMAT " connections opened)\n",
          files->len, mb, s, files->len / s, mb / s, conns);
  printf ("curl --parallel: %u files, %.1f MB in %.3f s: %.1f files/s, %.1f MB/s\n",
          files->len, curl_mb, curl_s, files->len / curl_s, curl_mb / curl_s);
  printf ("ratio client/curl: %.2f (files/s), %.2f (MB/s)\n",
          (files->len / s) / (files->len / curl_s), (mb / s) / (curl_mb / curl_s));

  if (opt_rounds > 0 && large->len > 0)
    run_cancel (client, fg, large);

  graph_client_free (client);
  if (!fake_graph_stop (fg, &error))
    die ("stopping fake-graph", error);
  g_autofree char *token = g_build_filename (dir, "token.json", NULL);
  g_autofree char *cfg = g_build_filename (dir, "curl.cfg", NULL);
  g_unlink (token);
  g_unlink (cfg);
  g_rmdir (dir);
  return 0;
}
