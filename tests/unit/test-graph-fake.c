/* The Graph client against tools/fake-graph: delta paging (duplicates, shuffled order,
 * empty pages, incremental tokens, 410 in the middle of a set), the retry policy (429/503
 * with and without Retry-After and zero throttle violations under 8 workers, 5xx retries,
 * what is never retried), auth (401 → refresh → retry, rotation, invalid_grant, the
 * device-code flow with slow_down, decline and expiry), and downloads (302 without
 * Authorization, expired URL, Range resume with 206 and 200, truncated and reset bodies,
 * hash mismatch, disk full, cancel of a large in-flight download and how long it takes).
 *
 * Every case starts its own fake with the switches it needs, so cases never see each
 * other's faults. Timing is made deterministic with the fake's controls (bandwidth cap,
 * Retry-After, device interval), never with sleeps that hope. */
#include "config.h"

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/qxhash.h>

#include "fake-graph-fixture.h"
#include "graph-private.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
  FakeGraph   *fg;
  char        *dir;          /* XDG_CONFIG_HOME-like temp dir */
  char        *token_file;
  GraphClient *client;
} Fixture;

static cJSON *
admin (Fixture *f, const char *path, const char *body)
{
  g_autoptr (GError) error = NULL;
  cJSON *o = fake_graph_admin_json (f->fg, path, body, &error);
  g_assert_no_error (error);
  g_assert_nonnull (o);
  return o;
}

/* An admin call whose answer is not needed (only that it succeeded). */
static void
admin_ok (Fixture *f, const char *path, const char *body)
{
  cJSON_Delete (admin (f, path, body));
}

static double
stat_number (Fixture *f, const char *group, const char *key)
{
  g_autoptr (cJSON) s = admin (f, "stats", NULL);
  const cJSON *o = group != NULL ? cJSON_GetObjectItem (s, group) : s;
  const cJSON *v = cJSON_GetObjectItem (o, key);
  return cJSON_IsNumber (v) ? v->valuedouble : 0;
}

static void
faults (Fixture *f, const char *json)
{
  g_autoptr (GError) error = NULL;
  g_assert_true (fake_graph_set_faults (f->fg, json, &error));
  g_assert_no_error (error);
}

static GraphClient *
new_client (Fixture *f, const char *token_file)
{
  GraphConfig config = {
    .graph_url = f->fg->graph_url,
    .login_url = f->fg->login_url,
    .client_id = "odsf-test",
    .token_file = token_file,
    .max_retries = 4,
    .retry_base_ms = 20,
    .retry_max_ms = 200,
    .stall_timeout_s = 10,
  };
  g_autoptr (GError) error = NULL;
  GraphClient *c = graph_client_new (&config, &error);
  g_assert_no_error (error);
  return c;
}

/* Starts the fake with @args and a client holding a freshly minted token. */
static void
start (Fixture *f, const char *const *args)
{
  g_autoptr (GError) error = NULL;
  f->fg = fake_graph_start (args, &error);
  if (f->fg == NULL)
    {
      g_test_skip_printf ("fake-graph cannot start: %s", error->message);
      return;
    }
  f->dir = g_dir_make_tmp ("odsf-graph-fake-XXXXXX", NULL);
  f->token_file = g_build_filename (f->dir, "p", "token.json", NULL);
  g_autofree char *access = NULL, *refresh = NULL;
  g_assert_true (fake_graph_mint_token (f->fg, 0, &access, &refresh, &error));
  g_assert_no_error (error);
  g_assert_true (graph_auth_save (f->token_file, refresh, access,
                                  g_get_real_time () / G_USEC_PER_SEC + 3000, &error));
  g_assert_no_error (error);
  f->client = new_client (f, f->token_file);
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  memset (f, 0, sizeof *f);
}

static void
rm_rf (const char *path)
{
  g_autoptr (GDir) d = g_dir_open (path, 0, NULL);
  if (d != NULL)
    {
      const char *name;
      while ((name = g_dir_read_name (d)) != NULL)
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          rm_rf (child);
        }
    }
  g_remove (path);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_clear_pointer (&f->client, graph_client_free);
  if (f->fg != NULL)
    {
      g_autoptr (GError) error = NULL;
      gboolean clean = fake_graph_stop (f->fg, &error);
      g_assert_no_error (error);
      g_assert_true (clean);
    }
  g_clear_pointer (&f->fg, fake_graph_free);
  if (f->dir != NULL)
    rm_rf (f->dir);
  g_free (f->dir);
  g_free (f->token_file);
}

#define START(f, ...) \
  do { start ((f), (const char *[]) { __VA_ARGS__, NULL }); if ((f)->fg == NULL) return; } while (0)

/* ---- delta ---------------------------------------------------------------------------- */

typedef struct {
  GHashTable *ids;     /* id → GraphItem* (the last occurrence wins) */
  guint       items;   /* occurrences, duplicates included */
  guint       pages;
  guint       empty_pages;
  char       *delta_link;
} DeltaSet;

static void
delta_set_clear (DeltaSet *s)
{
  g_clear_pointer (&s->ids, g_hash_table_unref);
  g_clear_pointer (&s->delta_link, g_free);
}

/* Reads one whole delta set from @link (NULL: full enumeration). FALSE + error on failure. */
static gboolean
read_set (GraphClient *client, const char *link, const char *drive_id, const char *item_id,
          DeltaSet *out, GError **error)
{
  memset (out, 0, sizeof *out);
  out->ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, (GDestroyNotify) graph_item_free);
  g_autofree char *next = g_strdup (link);
  for (;;)
    {
      g_autoptr (GraphDeltaPage) page = graph_client_delta (client, next, drive_id, item_id, NULL, error);
      if (page == NULL)
        return FALSE;
      g_assert_cmpuint (page->item_errors->len, ==, 0);
      out->pages++;
      if (page->items->len == 0)
        out->empty_pages++;
      for (guint i = 0; i < page->items->len; i++)
        {
          GraphItem *it = page->items->pdata[i];
          out->items++;
          g_hash_table_replace (out->ids, g_strdup (it->id), graph_item_copy (it));
        }
      g_free (next);
      next = g_strdup (page->next_link);
      if (page->delta_link != NULL)
        {
          out->delta_link = g_strdup (page->delta_link);
          return TRUE;
        }
      g_assert_nonnull (next);
      g_assert_cmpuint (out->pages, <, 10000);
    }
}

static guint
tree_count (Fixture *f)
{
  g_autoptr (cJSON) t = admin (f, "tree", NULL);
  return (guint) cJSON_GetArraySize (cJSON_GetObjectItem (t, "items"));
}

static void
test_delta_paging (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "450,1k,7");
  g_autoptr (GError) error = NULL;
  g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (drive, ==, f->fg->drive_id);

  DeltaSet s;
  g_assert_true (read_set (f->client, NULL, drive, NULL, &s, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (s.ids), ==, tree_count (f));
  g_assert_cmpuint (s.pages, >, 1);  /* 458 items do not fit in one page */
  g_assert_cmpuint (s.items, ==, g_hash_table_size (s.ids));
  /* every non-root item names a parent we were given */
  GHashTableIter it;
  gpointer k, v;
  guint roots = 0;
  g_hash_table_iter_init (&it, s.ids);
  while (g_hash_table_iter_next (&it, &k, &v))
    {
      GraphItem *item = v;
      if (item->is_root)
        roots++;
      else
        g_assert_true (g_hash_table_contains (s.ids, item->parent_id));
      if (item->kind == GRAPH_ITEM_FILE)
        {
          g_assert_nonnull (item->quickxor_hash);
          g_assert_cmpint (item->size, ==, 1024);
        }
    }
  g_assert_cmpuint (roots, ==, 1);

  /* incremental: nothing changed → an empty set; one change → that item (and ancestors) */
  DeltaSet inc;
  g_assert_true (read_set (f->client, s.delta_link, drive, NULL, &inc, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (inc.ids), ==, 0);
  g_autoptr (cJSON) added = admin (f, "items/add", "{\"path\":\"/new folder/late.txt\",\"content\":\"late\",\"parents\":true}");
  const char *new_id = cJSON_GetObjectItem (added, "id")->valuestring;
  DeltaSet inc2;
  g_assert_true (read_set (f->client, inc.delta_link, drive, NULL, &inc2, &error));
  g_assert_no_error (error);
  GraphItem *late = g_hash_table_lookup (inc2.ids, new_id);
  g_assert_nonnull (late);
  g_assert_cmpstr (late->name, ==, "late.txt");
  g_assert_true (g_hash_table_contains (inc2.ids, late->parent_id));
  g_assert_cmpuint (g_hash_table_size (inc2.ids), <=, 3);  /* root, folder, file */
  delta_set_clear (&s);
  delta_set_clear (&inc);
  delta_set_clear (&inc2);
}

static void
test_delta_duplicates_shuffle_empty (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "300,1k,5");
  faults (f, "{\"delta_duplicates\":true,\"delta_shuffle\":true,\"delta_empty_pages\":true,\"delta_short_pages\":true}");
  g_autoptr (GError) error = NULL;
  DeltaSet s;
  g_assert_true (read_set (f->client, NULL, f->fg->drive_id, NULL, &s, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (s.ids), ==, tree_count (f));
  g_assert_cmpuint (s.items, >, g_hash_table_size (s.ids));   /* duplicates arrived */
  g_assert_cmpuint (s.empty_pages, >, 0);                      /* and empty pages */
  delta_set_clear (&s);
}

static void
test_delta_folder_scope (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "40,1k,4");
  g_autoptr (GError) error = NULL;
  g_autoptr (cJSON) added = admin (f, "items/add", "{\"path\":\"/Docs/Reports/a b#c%+.txt\",\"content\":\"x\",\"parents\":true}");
  g_autoptr (GraphItem) folder = graph_client_item_by_path (f->client, NULL, "/Docs/Reports", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (folder->kind, ==, GRAPH_ITEM_FOLDER);
  g_autoptr (GraphItem) file = graph_client_item_by_path (f->client, f->fg->drive_id, "/docs/reports/A B#C%+.txt", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (file->id, ==, cJSON_GetObjectItem (added, "id")->valuestring);
  g_assert_cmpstr (file->name, ==, "a b#c%+.txt");
  g_autoptr (GraphItem) root = graph_client_item_by_path (f->client, NULL, "/", NULL, &error);
  g_assert_no_error (error);
  g_assert_true (root->is_root);

  g_autoptr (GraphItem) missing = graph_client_item_by_path (f->client, NULL, "/Docs/nope", NULL, &error);
  g_assert_null (missing);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_NOT_FOUND);
  g_assert_cmpstr (graph_error_code (error, 0), ==, "itemNotFound");
  g_clear_error (&error);

  DeltaSet s;
  g_assert_true (read_set (f->client, NULL, f->fg->drive_id, folder->id, &s, &error));
  g_assert_no_error (error);
  g_assert_true (g_hash_table_contains (s.ids, file->id));
  delta_set_clear (&s);

  for (guint i = 0; i < 2; i++)
    {
      faults (f, i == 0 ? "{\"folder_delta_not_supported\":501}" : "{\"folder_delta_not_supported\":400}");
      double before = stat_number (f, "requests", "delta");
      g_autoptr (GraphDeltaPage) page = graph_client_delta (f->client, NULL, f->fg->drive_id, folder->id, NULL, &error);
      g_assert_null (page);
      g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_NOT_SUPPORTED);
      g_clear_error (&error);
      g_assert_cmpfloat (stat_number (f, "requests", "delta") - before, ==, 1);  /* not retried */
    }
}

static void
test_delta_resync_mid_set (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "400,1k,3");
  faults (f, "{\"delta_short_pages\":true}");
  g_autoptr (GError) error = NULL;
  g_autoptr (GraphDeltaPage) first = graph_client_delta (f->client, NULL, f->fg->drive_id, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_nonnull (first->next_link);
  admin_ok (f, "epoch", "{}");
  g_autoptr (GraphDeltaPage) second = graph_client_delta (f->client, first->next_link, f->fg->drive_id, NULL, NULL, &error);
  g_assert_null (second);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_RESYNC_REQUIRED);
  g_assert_cmpuint (graph_error_status (error), ==, 410);
  g_assert_cmpstr (graph_error_code (error, 0), ==, "resyncRequired");
  g_clear_error (&error);
  g_assert_cmpfloat (stat_number (f, NULL, "resyncs"), ==, 1);  /* not retried */

  /* a full enumeration works again */
  DeltaSet s;
  g_assert_true (read_set (f->client, NULL, f->fg->drive_id, NULL, &s, &error));
  g_assert_no_error (error);
  delta_set_clear (&s);
}

static void
test_delta_bad_link (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  g_autoptr (GError) error = NULL;
  const char *links[] = {
    "http://127.0.0.2:1/v1.0/drives/x/root/delta",
    "https://graph.microsoft.com/v1.0/drives/x/root/delta",
    "file:///etc/passwd",
  };
  double before = stat_number (f, "requests", "total");
  for (gsize i = 0; i < G_N_ELEMENTS (links); i++)
    {
      g_autoptr (GraphDeltaPage) page = graph_client_delta (f->client, links[i], NULL, NULL, NULL, &error);
      g_assert_null (page);
      g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_BAD_LINK);
      g_clear_error (&error);
    }
  /* only the stats call itself reached the server */
  g_assert_cmpfloat (stat_number (f, "requests", "total") - before, ==, 1);
}

/* ---- retry policy ------------------------------------------------------------------- */

static void
test_retry_5xx (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  struct { const char *rule; gboolean ok; double calls; GraphErrorCode code; } cases[] = {
    { "{\"status\":500,\"route\":\"me_drive\",\"count\":2}", TRUE, 3, 0 },
    { "{\"status\":502,\"route\":\"me_drive\",\"count\":1}", TRUE, 2, 0 },
    { "{\"status\":504,\"route\":\"me_drive\",\"count\":3}", TRUE, 4, 0 },
    { "{\"status\":503,\"route\":\"me_drive\",\"count\":2,\"retry_after\":-1}", TRUE, 3, 0 },
    { "{\"status\":429,\"route\":\"me_drive\",\"count\":1,\"retry_after\":-1}", TRUE, 2, 0 },
    { "{\"status\":400,\"route\":\"me_drive\",\"count\":1,\"code\":\"invalidRequest\",\"inner_code\":\"cannotSnapshotTree\"}", TRUE, 2, 0 },
    { "{\"status\":500,\"route\":\"me_drive\",\"count\":-1}", FALSE, 5, GRAPH_ERROR_HTTP },  /* 1 + 4 retries */
    { "{\"status\":501,\"route\":\"me_drive\",\"count\":1}", FALSE, 1, GRAPH_ERROR_NOT_SUPPORTED },
    { "{\"status\":507,\"route\":\"me_drive\",\"count\":1}", FALSE, 1, GRAPH_ERROR_HTTP },
    { "{\"status\":400,\"route\":\"me_drive\",\"count\":1}", FALSE, 1, GRAPH_ERROR_HTTP },
    { "{\"status\":403,\"route\":\"me_drive\",\"count\":1}", FALSE, 1, GRAPH_ERROR_HTTP },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *json = g_strdup_printf ("{\"clear\":true,\"errors\":[%s]}", cases[i].rule);
      faults (f, json);
      double before = stat_number (f, "requests", "me_drive");
      g_autoptr (GError) error = NULL;
      g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
      if (cases[i].ok)
        {
          g_assert_no_error (error);
          g_assert_cmpstr (drive, ==, f->fg->drive_id);
        }
      else
        {
          g_assert_null (drive);
          g_assert_error (error, GRAPH_ERROR, (gint) cases[i].code);
        }
      g_assert_cmpfloat (stat_number (f, "requests", "me_drive") - before, ==, cases[i].calls);
    }
}

typedef struct {
  GraphClient *client;
  const char  *drive_id;
  gint64       until;
  gint         calls;     /* atomic */
  gint         failures;  /* atomic */
} Hammer;

static gpointer
hammer_thread (gpointer data)
{
  Hammer *h = data;
  while (g_get_monotonic_time () < h->until)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GraphDeltaPage) page = graph_client_delta (h->client, NULL, h->drive_id, NULL, NULL, &error);
      if (page == NULL)
        {
          g_test_message ("worker: %s", error->message);
          g_atomic_int_inc (&h->failures);
        }
      g_atomic_int_inc (&h->calls);
    }
  return NULL;
}

static void
run_hammer (Fixture *f, guint workers, gint64 duration_us, Hammer *h)
{
  h->client = f->client;
  h->drive_id = f->fg->drive_id;
  h->until = g_get_monotonic_time () + duration_us;
  GThread *threads[16];
  for (guint i = 0; i < workers; i++)
    threads[i] = g_thread_new ("hammer", hammer_thread, h);
  for (guint i = 0; i < workers; i++)
    g_thread_join (threads[i]);
}

static void
test_throttle_gate (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "20,1k,2");
  /* Sustained throttling: every 5th Graph call answers 429 or 503 with Retry-After: 1. */
  faults (f, "{\"errors\":[{\"status\":429,\"route\":\"graph\",\"count\":-1,\"every\":5,\"retry_after\":1,\"code\":\"activityLimitReached\"},"
             "{\"status\":503,\"route\":\"graph\",\"count\":-1,\"every\":7,\"retry_after\":1}]}");
  Hammer h = { 0 };
  gint64 t0 = g_get_monotonic_time ();
  run_hammer (f, 8, 3500 * 1000, &h);
  gint64 elapsed = g_get_monotonic_time () - t0;
  double throttled = stat_number (f, NULL, "throttled");
  double violations = stat_number (f, NULL, "throttle_violations");
  g_test_message ("8 workers, %.1f s: %d calls, %.0f throttled answers, %.0f violations",
                  elapsed / 1e6, h.calls, throttled, violations);
  g_assert_cmpint (h.failures, ==, 0);
  g_assert_cmpfloat (throttled, >=, 2);
  g_assert_cmpfloat (violations, ==, 0);
  g_assert_cmpfloat (stat_number (f, NULL, "download_throttle_violations"), ==, 0);
  /* the gate paused everyone: far fewer calls than free-running workers would make */
  g_assert_cmpint (h.calls, <, 200);
}

static void
test_throttle_exhausted (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  /* Retry-After: 0 keeps the test fast; the gate still counts waits and gives up. */
  faults (f, "{\"errors\":[{\"status\":429,\"route\":\"me_drive\",\"count\":-1,\"retry_after\":0}]}");
  g_autoptr (GError) error = NULL;
  g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_null (drive);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_THROTTLED);
  g_assert_cmpuint (graph_error_status (error), ==, 429);
}

/* ---- auth ---------------------------------------------------------------------------- */

static char *
file_refresh_token (const char *path)
{
  g_autofree char *text = NULL;
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  g_autoptr (cJSON) o = cJSON_Parse (text);
  g_assert_nonnull (o);
  struct stat st;
  g_assert_cmpint (g_stat (path, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  g_assert_true (cJSON_IsNumber (cJSON_GetObjectItem (o, "expires_at")));
  g_assert_true (cJSON_IsString (cJSON_GetObjectItem (o, "access_token")));
  return g_strdup (cJSON_GetObjectItem (o, "refresh_token")->valuestring);
}

static void
test_auth_refresh_on_401 (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  g_autoptr (GError) error = NULL;
  g_autofree char *rt0 = file_refresh_token (f->token_file);
  g_autofree char *old_copy = g_strconcat (f->token_file, ".old", NULL);
  g_autofree char *contents = NULL;
  g_assert_true (g_file_get_contents (f->token_file, &contents, NULL, NULL));
  g_assert_true (g_file_set_contents_full (old_copy, contents, -1, G_FILE_SET_CONTENTS_NONE, 0600, NULL));

  admin_ok (f, "tokens/expire", "{}");
  double token_calls = stat_number (f, "requests", "token");
  g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (drive, ==, f->fg->drive_id);
  g_assert_cmpfloat (stat_number (f, "requests", "token") - token_calls, ==, 1);
  g_assert_cmpfloat (stat_number (f, "statuses", "401"), ==, 1);

  /* rotation: the file holds a new refresh token, 0600 */
  g_autofree char *rt1 = file_refresh_token (f->token_file);
  g_assert_cmpstr (rt1, !=, rt0);

  /* the old refresh token is dead: a client still holding it must log in again */
  g_autoptr (GraphClient) stale = new_client (f, old_copy);
  admin_ok (f, "tokens/expire", "{}");
  g_autofree char *d2 = graph_client_my_drive_id (stale, NULL, &error);
  g_assert_null (d2);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "log in again"));
  g_assert_cmpstr (graph_error_code (error, 0), ==, "invalid_grant");
  g_clear_error (&error);

  /* the rotated one still works (the stale client did not break it) */
  g_autofree char *d3 = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (d3, ==, f->fg->drive_id);

  /* concurrent 401s refresh once, not once per thread */
  admin_ok (f, "tokens/expire", "{}");
  token_calls = stat_number (f, "requests", "token");
  Hammer h = { 0 };
  run_hammer (f, 6, 300 * 1000, &h);
  g_assert_cmpint (h.failures, ==, 0);
  g_assert_cmpfloat (stat_number (f, "requests", "token") - token_calls, ==, 1);
  g_unlink (old_copy);
}

static void
test_auth_invalid_grant (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  admin_ok (f, "tokens/revoke", "{}");
  admin_ok (f, "tokens/expire", "{}");
  g_autoptr (GError) error = NULL;
  double token_calls = stat_number (f, "requests", "token");
  g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_null (drive);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "log in again"));
  g_assert_cmpfloat (stat_number (f, "requests", "token") - token_calls, ==, 1);  /* no retry */
}

static void
test_auth_401_after_refresh (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  /* The service keeps refusing even fresh tokens: refresh once, retry once, then stop. */
  faults (f, "{\"errors\":[{\"status\":401,\"route\":\"me_drive\",\"count\":-1,\"code\":\"InvalidAuthenticationToken\"}]}");
  g_autoptr (GError) error = NULL;
  double token_calls = stat_number (f, "requests", "token");
  g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_null (drive);
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH);
  g_assert_nonnull (strstr (error->message, "log in again"));
  g_assert_cmpfloat (stat_number (f, "requests", "me_drive"), ==, 2);
  g_assert_cmpfloat (stat_number (f, "requests", "token") - token_calls, ==, 1);
}

static void
test_auth_refresh_before_expiry (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  /* A token the file says expires in 5 s is refreshed before use, without a 401. */
  g_autoptr (GError) error = NULL;
  g_autofree char *access = NULL, *refresh = NULL;
  g_assert_true (fake_graph_mint_token (f->fg, 0, &access, &refresh, &error));
  g_assert_true (graph_auth_save (f->token_file, refresh, access, g_get_real_time () / G_USEC_PER_SEC + 5, &error));
  g_clear_pointer (&f->client, graph_client_free);
  f->client = new_client (f, f->token_file);
  g_autofree char *drive = graph_client_my_drive_id (f->client, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (drive, ==, f->fg->drive_id);
  g_assert_cmpfloat (stat_number (f, "statuses", "401"), ==, 0);
  g_assert_cmpfloat (stat_number (f, "requests", "token"), >=, 1);
}

typedef struct {
  Fixture  *f;
  char     *user_code;
  char     *uri;
  gint64    shown_at;
  GMutex    lock;
  GCond     cond;
} Login;

static void
on_code (const char *uri, const char *user_code, const char *message, gpointer data)
{
  Login *l = data;
  g_mutex_lock (&l->lock);
  l->user_code = g_strdup (user_code);
  l->uri = g_strdup (uri);
  l->shown_at = g_get_monotonic_time ();
  g_cond_broadcast (&l->cond);
  g_mutex_unlock (&l->lock);
}

typedef struct {
  GraphClient *client;
  Login       *login;
  gboolean     ok;
  GError      *error;
  gint64       done_at;
} LoginRun;

static gpointer
login_thread (gpointer data)
{
  LoginRun *r = data;
  r->ok = graph_client_login_device_code (r->client, on_code, r->login, NULL, &r->error);
  r->done_at = g_get_monotonic_time ();
  return NULL;
}

static void
wait_code (Login *l)
{
  g_mutex_lock (&l->lock);
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (l->user_code == NULL)
    g_assert_true (g_cond_wait_until (&l->cond, &l->lock, deadline));
  g_mutex_unlock (&l->lock);
}

/* Polls of this code the fake has seen, via its device-code table. */
static char *
device_state (Fixture *f, const char *user_code)
{
  g_autoptr (cJSON) o = admin (f, "devicecode", NULL);
  const cJSON *e;
  cJSON_ArrayForEach (e, cJSON_GetObjectItem (o, "codes"))
    if (g_strcmp0 (cJSON_GetObjectItem (e, "user_code")->valuestring, user_code) == 0)
      return g_strdup (cJSON_GetObjectItem (e, "state")->valuestring);
  return NULL;
}

static double
device_interval (Fixture *f, const char *user_code)
{
  g_autoptr (cJSON) o = admin (f, "devicecode", NULL);
  const cJSON *e;
  cJSON_ArrayForEach (e, cJSON_GetObjectItem (o, "codes"))
    if (g_strcmp0 (cJSON_GetObjectItem (e, "user_code")->valuestring, user_code) == 0)
      return cJSON_GetObjectItem (e, "interval")->valuedouble;
  return 0;
}

static void
test_device_code (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  admin_ok (f, "auth", "{\"device_interval\":1}");
  g_autofree char *new_file = g_build_filename (f->dir, "fresh", "token.json", NULL);
  g_autoptr (GraphClient) client = new_client (f, new_file);
  g_assert_false (graph_client_has_token (client));

  /* approve, after one forced slow_down: the poll after it comes 5 s later */
  Login l = { .f = f };
  g_mutex_init (&l.lock);
  g_cond_init (&l.cond);
  LoginRun r = { .client = client, .login = &l };
  GThread *t = g_thread_new ("login", login_thread, &r);
  wait_code (&l);
  g_assert_nonnull (l.uri);
  g_autofree char *sd = g_strdup_printf ("{\"user_code\":\"%s\",\"count\":1}", l.user_code);
  admin_ok (f, "devicecode/slow_down", sd);
  /* approve only once the slow_down answer went out (the fake's interval grows by 5) */
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (device_interval (f, l.user_code) < 6)
    g_assert_cmpint (g_get_monotonic_time (), <, deadline);
  g_autofree char *ap = g_strdup_printf ("{\"user_code\":\"%s\"}", l.user_code);
  admin_ok (f, "devicecode/approve", ap);
  g_thread_join (t);
  g_assert_no_error (r.error);
  g_assert_true (r.ok);
  gint64 waited = r.done_at - l.shown_at;
  g_test_message ("device code with one slow_down: approved after %.1f s", waited / 1e6);
  /* interval 1 s, slow_down → 6 s: at least 1 + 6 s from the code to the token */
  g_assert_cmpint (waited, >=, 7 * G_USEC_PER_SEC - 200000);
  g_assert_true (graph_client_has_token (client));
  g_autofree char *rt = file_refresh_token (new_file);
  g_assert_nonnull (rt);
  g_autofree char *drive = graph_client_my_drive_id (client, NULL, &r.error);
  g_assert_no_error (r.error);
  g_assert_cmpstr (drive, ==, f->fg->drive_id);
  g_autofree char *state = device_state (f, l.user_code);
  g_assert_cmpstr (state, ==, "consumed");

  /* decline and expiry stop with clear messages and save nothing */
  const char *ops[] = { "decline", "expire" };
  const char *words[] = { "declined", "expired" };
  for (guint i = 0; i < 2; i++)
    {
      g_autofree char *other = g_build_filename (f->dir, ops[i], "token.json", NULL);
      g_autoptr (GraphClient) c2 = new_client (f, other);
      Login l2 = { .f = f };
      g_mutex_init (&l2.lock);
      g_cond_init (&l2.cond);
      LoginRun r2 = { .client = c2, .login = &l2 };
      GThread *t2 = g_thread_new ("login", login_thread, &r2);
      wait_code (&l2);
      g_autofree char *path = g_strdup_printf ("devicecode/%s", ops[i]);
      g_autofree char *body = g_strdup_printf ("{\"user_code\":\"%s\"}", l2.user_code);
      admin_ok (f, path, body);
      g_thread_join (t2);
      g_assert_false (r2.ok);
      g_assert_error (r2.error, GRAPH_ERROR, GRAPH_ERROR_AUTH);
      g_assert_nonnull (strstr (r2.error->message, words[i]));
      g_assert_false (g_file_test (other, G_FILE_TEST_EXISTS));
      g_clear_error (&r2.error);
      g_free (l2.user_code);
      g_free (l2.uri);
      g_mutex_clear (&l2.lock);
      g_cond_clear (&l2.cond);
    }
  g_free (l.user_code);
  g_free (l.uri);
  g_mutex_clear (&l.lock);
  g_cond_clear (&l.cond);
}

static void
test_device_code_cancel (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  admin_ok (f, "auth", "{\"device_interval\":30}");
  g_autofree char *new_file = g_build_filename (f->dir, "c", "token.json", NULL);
  g_autoptr (GraphClient) client = new_client (f, new_file);
  g_autoptr (GCancellable) cancel = g_cancellable_new ();
  g_cancellable_cancel (cancel);
  g_autoptr (GError) error = NULL;
  g_assert_false (graph_client_login_device_code (client, NULL, NULL, cancel, &error));
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED);
}

/* ---- downloads -------------------------------------------------------------------- */

typedef struct {
  char   *id;
  char   *hash;
  gint64  size;
} Added;

static void
added_clear (Added *a)
{
  g_free (a->id);
  g_free (a->hash);
}

static Added
add_file (Fixture *f, const char *path, gint64 size, guint seed)
{
  g_autofree char *body = g_strdup_printf ("{\"path\":\"%s\",\"size\":%" G_GINT64_FORMAT ",\"seed\":%u,\"parents\":true}",
                                           path, size, seed);
  g_autoptr (cJSON) o = admin (f, "items/add", body);
  Added a = {
    .id = g_strdup (cJSON_GetObjectItem (o, "id")->valuestring),
    .hash = g_strdup (cJSON_GetObjectItem (o, "quickXorHash")->valuestring),
    .size = (gint64) cJSON_GetObjectItem (o, "size")->valuedouble,
  };
  return a;
}

static int
temp_fd (Fixture *f)
{
  int fd = open (f->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  g_assert_cmpint (fd, >=, 0);
  return fd;
}

static gint64
fd_size (int fd)
{
  struct stat st;
  g_assert_cmpint (fstat (fd, &st), ==, 0);
  return st.st_size;
}

static gboolean
fd_matches (int fd, const char *hash)
{
  GraphQxHash h;
  graph_qxhash_init (&h);
  g_assert_true (graph_qxhash_fd (fd, &h));
  guint8 raw[GRAPH_QXHASH_LEN];
  graph_qxhash_final (&h, raw);
  return graph_qxhash_matches (hash, raw);
}

static double
item_downloads (Fixture *f, const char *id, const char *key)
{
  g_autoptr (cJSON) s = admin (f, "stats", NULL);
  const cJSON *v = cJSON_GetObjectItem (cJSON_GetObjectItem (cJSON_GetObjectItem (s, "downloads"), id), key);
  return cJSON_IsNumber (v) ? v->valuedouble : 0;
}

static void
test_download_basic (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  Added a = add_file (f, "/dl/basic.bin", 300 * 1024 + 7, 11);
  int fd = temp_fd (f);
  g_autoptr (GError) error = NULL;
  guint64 n = 0;
  double content_before = stat_number (f, "requests", "content");
  /* the download host refuses any request with Authorization: success proves none was sent */
  g_assert_true (graph_client_download (f->client, f->fg->drive_id, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (n, ==, (guint64) a.size);
  g_assert_cmpint (fd_size (fd), ==, a.size);
  g_assert_true (fd_matches (fd, a.hash));
  g_assert_cmpfloat (stat_number (f, "requests", "content") - content_before, ==, 1);
  g_assert_cmpfloat (stat_number (f, "statuses", "401"), ==, 0);
  g_assert_cmpfloat (stat_number (f, "statuses", "403"), ==, 0);

  /* an empty file, with or without a hash */
  Added e = add_file (f, "/dl/empty.bin", 0, 1);
  int efd = temp_fd (f);
  g_assert_true (graph_client_download (f->client, NULL, e.id, e.hash, efd, NULL, NULL, NULL, &n, &error));
  g_assert_no_error (error);
  g_assert_cmpint (fd_size (efd), ==, 0);
  close (efd);

  /* connection reuse: many requests, few connections */
  guint64 opened = graph_http_connections_opened (f->client->http);
  for (int i = 0; i < 10; i++)
    {
      g_autofree char *d = graph_client_my_drive_id (f->client, NULL, &error);
      g_assert_no_error (error);
      g_assert_nonnull (d);
    }
  g_assert_cmpuint (graph_http_connections_opened (f->client->http) - opened, ==, 0);
  close (fd);
  added_clear (&a);
  added_clear (&e);
}

static void
test_download_expired_url (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  Added a = add_file (f, "/dl/x.bin", 64 * 1024, 3);
  g_autoptr (GError) error = NULL;
  /* the first download URL is refused (as an expired one is); the client asks /content again */
  faults (f, "{\"errors\":[{\"status\":403,\"route\":\"download\",\"count\":1}]}");
  int fd = temp_fd (f);
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (fd_matches (fd, a.hash));
  g_assert_cmpfloat (stat_number (f, "requests", "content"), ==, 2);
  close (fd);

  /* a URL that really expires while a transfer is cut short: the retry finds it expired
   * (403), asks /content for a fresh one and resumes with Range where the body stopped */
  faults (f, "{\"clear\":true,\"download_url_ttl\":0.3,\"bandwidth_bps\":100000,"
             "\"download_errors\":[{\"kind\":\"truncate\",\"after_bytes\":45000,\"count\":1}]}");
  admin_ok (f, "stats/reset", "{}");
  fd = temp_fd (f);
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (fd_matches (fd, a.hash));
  g_assert_cmpfloat (stat_number (f, "requests", "content"), ==, 2);
  g_assert_cmpfloat (stat_number (f, "statuses", "403"), ==, 1);
  g_assert_cmpfloat (item_downloads (f, a.id, "ranged"), ==, 1);
  close (fd);

  /* a 4xx twice in a row: fail after one fresh URL, do not loop */
  faults (f, "{\"clear\":true,\"errors\":[{\"status\":404,\"route\":\"download\",\"count\":2}]}");
  admin_ok (f, "stats/reset", "{}");
  fd = temp_fd (f);
  g_assert_false (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, NULL, &error));
  g_assert_cmpuint (graph_error_status (error), ==, 404);
  g_assert_cmpfloat (stat_number (f, "requests", "content"), ==, 2);
  close (fd);
  added_clear (&a);
}

static void
copy_prefix (int from, int to, gsize n)
{
  g_autofree char *buf = g_malloc (n);
  g_assert_cmpint (pread (from, buf, n, 0), ==, (gssize) n);
  g_assert_cmpint (pwrite (to, buf, n, 0), ==, (gssize) n);
}

static void
test_download_resume (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  Added a = add_file (f, "/dl/r.bin", 200 * 1024 + 3, 5);
  g_autoptr (GError) error = NULL;
  int ref = temp_fd (f);
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, ref, NULL, NULL, NULL, NULL, &error));
  g_assert_no_error (error);

  /* 206: the prefix stays, only the rest is fetched, the hash covers both */
  int fd = temp_fd (f);
  copy_prefix (ref, fd, 70001);
  guint64 n = 0;
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (n, ==, (guint64) a.size - 70001);
  g_assert_cmpint (fd_size (fd), ==, a.size);
  g_assert_true (fd_matches (fd, a.hash));
  g_assert_cmpfloat (item_downloads (f, a.id, "ranged"), ==, 1);
  close (fd);

  /* 200 although Range was asked: start over from byte 0 */
  faults (f, "{\"ignore_range\":true}");
  fd = temp_fd (f);
  copy_prefix (ref, fd, 1000);
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (n, ==, (guint64) a.size);
  g_assert_cmpint (fd_size (fd), ==, a.size);
  g_assert_true (fd_matches (fd, a.hash));
  close (fd);
  faults (f, "{\"ignore_range\":false}");

  /* a complete file: 416 with the total, nothing re-fetched, hash verified */
  fd = temp_fd (f);
  copy_prefix (ref, fd, (gsize) a.size);
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (n, ==, 0);
  g_assert_true (fd_matches (fd, a.hash));
  close (fd);

  /* a stale prefix with wrong bytes: the hash catches it and the file is emptied */
  fd = temp_fd (f);
  g_assert_cmpint (pwrite (fd, "garbage", 7, 0), ==, 7);
  g_assert_false (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_HASH_MISMATCH);
  g_clear_error (&error);
  g_assert_cmpint (fd_size (fd), ==, 0);
  /* and the next try succeeds from scratch */
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
  g_assert_no_error (error);
  close (fd);
  close (ref);
  added_clear (&a);
}

static void
test_download_faults (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  Added a = add_file (f, "/dl/t.bin", 512 * 1024, 9);
  g_autoptr (GError) error = NULL;
  const char *kinds[] = { "truncate", "reset" };
  for (guint i = 0; i < 2; i++)
    {
      g_autofree char *json = g_strdup_printf ("{\"clear\":true,\"download_errors\":[{\"kind\":\"%s\",\"after_bytes\":100000,\"count\":1}]}", kinds[i]);
      faults (f, json);
      admin_ok (f, "stats/reset", "{}");
      int fd = temp_fd (f);
      guint64 n = 0;
      g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, &n, &error));
      g_assert_no_error (error);
      g_assert_cmpint (fd_size (fd), ==, a.size);
      g_assert_true (fd_matches (fd, a.hash));
      /* resumed where the body stopped instead of starting over */
      g_assert_cmpfloat (item_downloads (f, a.id, "ranged"), ==, 1);
      g_assert_cmpuint (n, ==, (guint64) a.size);
      close (fd);
    }

  /* a body cut every time: bounded retries, then a truncation error */
  faults (f, "{\"clear\":true,\"download_errors\":[{\"kind\":\"truncate\",\"after_bytes\":10,\"count\":-1}]}");
  int fd = temp_fd (f);
  g_assert_false (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, NULL, &error));
  g_assert_true (g_error_matches (error, GRAPH_ERROR, GRAPH_ERROR_TRUNCATED)
                 || g_error_matches (error, GRAPH_ERROR, GRAPH_ERROR_NETWORK));
  g_clear_error (&error);
  close (fd);

  /* wrong expected hash: an error, and the bytes are not kept for a resume */
  faults (f, "{\"clear\":true}");
  fd = temp_fd (f);
  g_assert_false (graph_client_download (f->client, NULL, a.id, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", fd, NULL, NULL, NULL, NULL, &error));
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_HASH_MISMATCH);
  g_clear_error (&error);
  g_assert_cmpint (fd_size (fd), ==, 0);
  close (fd);

  /* disk full: LOCAL_IO keeping ENOSPC, not a network error, not retried */
  int full = open ("/dev/full", O_WRONLY | O_CLOEXEC);
  if (full >= 0)
    {
      admin_ok (f, "stats/reset", "{}");
      g_assert_false (graph_client_download (f->client, NULL, a.id, a.hash, full, NULL, NULL, NULL, NULL, &error));
      g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_LOCAL_IO);
      g_assert_cmpint (graph_error_errno (error), ==, ENOSPC);
      g_clear_error (&error);
      g_assert_cmpfloat (stat_number (f, "requests", "download"), ==, 1);
      close (full);
    }

  /* 404 for the item itself */
  fd = temp_fd (f);
  g_assert_false (graph_client_download (f->client, NULL, "NOPE!1", NULL, fd, NULL, NULL, NULL, NULL, &error));
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_NOT_FOUND);
  close (fd);
  added_clear (&a);
}

typedef struct {
  GraphClient  *client;
  const char   *id;
  const char   *hash;
  int           fd;
  GCancellable *cancel;
  GMutex        lock;
  GCond         cond;
  guint64       progressed;   /* protected by lock */
  gboolean      ok;
  GError       *error;
  gint64        returned_at;
} CancelRun;

static void
on_progress (guint64 done, guint64 total, gpointer data)
{
  CancelRun *r = data;
  g_mutex_lock (&r->lock);
  r->progressed = done;
  g_cond_broadcast (&r->cond);
  g_mutex_unlock (&r->lock);
}

static gpointer
cancel_thread (gpointer data)
{
  CancelRun *r = data;
  r->ok = graph_client_download (r->client, NULL, r->id, r->hash, r->fd, r->cancel, on_progress, r, NULL, &r->error);
  r->returned_at = g_get_monotonic_time ();
  return NULL;
}

static void
test_download_cancel (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  /* 64 MiB at 2 MB/s: half a minute if nobody cancels */
  Added a = add_file (f, "/dl/large.bin", 64 * 1024 * 1024, 21);
  faults (f, "{\"bandwidth_bps\":2000000}");
  gint64 worst = 0, sum = 0;
  const int rounds = 5;
  for (int i = 0; i < rounds; i++)
    {
      CancelRun r = { .client = f->client, .id = a.id, .hash = a.hash, .fd = temp_fd (f),
                      .cancel = g_cancellable_new () };
      g_mutex_init (&r.lock);
      g_cond_init (&r.cond);
      GThread *t = g_thread_new ("download", cancel_thread, &r);
      /* wait until bytes are flowing: the transfer is in flight, mid-body */
      g_mutex_lock (&r.lock);
      gint64 deadline = g_get_monotonic_time () + 20 * G_USEC_PER_SEC;
      while (r.progressed < 100000)
        g_assert_true (g_cond_wait_until (&r.cond, &r.lock, deadline));
      g_mutex_unlock (&r.lock);
      gint64 cancelled_at = g_get_monotonic_time ();
      g_cancellable_cancel (r.cancel);
      g_thread_join (t);
      gint64 latency = r.returned_at - cancelled_at;
      worst = MAX (worst, latency);
      sum += latency;
      g_assert_false (r.ok);
      g_assert_error (r.error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED);
      g_assert_cmpint (fd_size (r.fd), <, a.size);
      g_clear_error (&r.error);
      close (r.fd);
      g_object_unref (r.cancel);
      g_mutex_clear (&r.lock);
      g_cond_clear (&r.cond);
    }
  g_test_message ("cancel-to-return of a 64 MiB download in flight: mean %.2f ms, worst %.2f ms (%d rounds)",
                  sum / 1000.0 / rounds, worst / 1000.0, rounds);
  /* "within milliseconds": generous for a loaded machine and sanitizers */
  g_assert_cmpint (worst, <, 250 * 1000);

  added_clear (&a);
}

typedef struct {
  GraphClient  *client;
  GCancellable *cancel;
  GError       *error;
  gint64        returned_at;
} GateRun;

static gpointer
gate_thread (gpointer data)
{
  GateRun *r = data;
  g_autofree char *d = graph_client_my_drive_id (r->client, r->cancel, &r->error);
  r->returned_at = g_get_monotonic_time ();
  g_assert_null (d);
  return NULL;
}

static void
test_gate_cancel (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  /* A 30 s Retry-After closes the gate; a cancel must not wait it out. */
  faults (f, "{\"errors\":[{\"status\":503,\"route\":\"me_drive\",\"count\":1,\"retry_after\":30}]}");
  GateRun r = { .client = f->client, .cancel = g_cancellable_new () };
  GThread *t = g_thread_new ("gate", gate_thread, &r);
  /* the throttling answer has been sent: the worker is now behind the gate (or about to be) */
  gint64 deadline = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  while (stat_number (f, NULL, "throttled") < 1)
    g_assert_cmpint (g_get_monotonic_time (), <, deadline);
  gint64 cancelled_at = g_get_monotonic_time ();
  g_cancellable_cancel (r.cancel);
  g_thread_join (t);
  g_assert_error (r.error, GRAPH_ERROR, GRAPH_ERROR_CANCELLED);
  g_test_message ("cancel while behind the throttle gate: %.2f ms", (r.returned_at - cancelled_at) / 1000.0);
  g_assert_cmpint (r.returned_at - cancelled_at, <, 250 * 1000);
  g_assert_cmpfloat (stat_number (f, "requests", "me_drive"), ==, 1);
  g_clear_error (&r.error);
  g_object_unref (r.cancel);
}

/* ---- transport ------------------------------------------------------------------------ */

static void
test_stall_timeout (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  Added a = add_file (f, "/dl/slow.bin", 4096, 2);
  /* the download host sits on the request for 3 s; the client gives up after 1 s of no bytes */
  faults (f, "{\"download_latency_ms\":3000}");
  GraphConfig config = {
    .graph_url = f->fg->graph_url, .login_url = f->fg->login_url, .client_id = "odsf-test",
    .token_file = f->token_file, .max_retries = 1, .retry_base_ms = 10, .retry_max_ms = 10,
    .stall_timeout_s = 1,
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (GraphClient) impatient = graph_client_new (&config, &error);
  g_assert_no_error (error);
  int fd = temp_fd (f);
  gint64 t0 = g_get_monotonic_time ();
  g_assert_false (graph_client_download (impatient, NULL, a.id, a.hash, fd, NULL, NULL, NULL, NULL, &error));
  gint64 took = g_get_monotonic_time () - t0;
  g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_TIMEOUT);
  g_test_message ("stalled download gave up after %.2f s (2 tries, 1 s stall limit)", took / 1e6);
  g_assert_cmpint (took, <, 2900 * 1000);  /* did not wait the stall out */
  g_assert_cmpfloat (stat_number (f, "requests", "download"), ==, 2);  /* retried once */
  close (fd);
  added_clear (&a);
}

static void
test_tls (Fixture *f, gconstpointer data)
{
  g_autofree char *openssl = g_find_program_in_path ("openssl");
  if (openssl == NULL)
    {
      g_test_skip ("openssl is not installed");
      return;
    }
  f->dir = g_dir_make_tmp ("odsf-graph-tls-XXXXXX", NULL);
  g_autofree char *cert = g_build_filename (f->dir, "cert.pem", NULL);
  g_autofree char *key = g_build_filename (f->dir, "key.pem", NULL);
  const char *argv[] = { openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                         "-keyout", key, "-out", cert, NULL };
  gint status = 0;
  g_autoptr (GError) error = NULL;
  g_assert_true (g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL,
                               NULL, NULL, NULL, NULL, &status, &error));
  g_assert_true (g_spawn_check_wait_status (status, &error));
  /* the C fixture's admin calls do not speak TLS: a static token stands in for minting */
  f->fg = fake_graph_start ((const char *[]) { "--synthetic", "2,4k,1", "--tls", cert, key,
                                               "--access-token", "static-bench-token", NULL }, &error);
  if (f->fg == NULL)
    {
      g_test_skip_printf ("fake-graph cannot start with TLS: %s", error->message);
      return;
    }
  g_assert_true (g_str_has_prefix (f->fg->graph_url, "https://"));
  f->token_file = g_build_filename (f->dir, "p", "token.json", NULL);
  g_assert_true (graph_auth_save (f->token_file, "unused-refresh", "static-bench-token", G_MAXINT32, &error));

  for (guint with_ca = 0; with_ca < 2; with_ca++)
    {
      GraphConfig config = {
        .graph_url = f->fg->graph_url, .login_url = f->fg->login_url, .client_id = "odsf-test",
        .token_file = f->token_file, .ca_file = with_ca ? cert : NULL, .retry_base_ms = 10,
      };
      g_autoptr (GraphClient) c = graph_client_new (&config, &error);
      g_assert_no_error (error);
      gint64 t0 = g_get_monotonic_time ();
      g_autofree char *drive = graph_client_my_drive_id (c, NULL, &error);
      if (with_ca)
        {
          g_assert_no_error (error);
          g_assert_cmpstr (drive, ==, f->fg->drive_id);
          /* a download over TLS, the redirect target verified too */
          g_autoptr (GraphItem) item = graph_client_item_by_path (c, NULL, "/folder-0000/file-000000.bin", NULL, &error);
          g_assert_no_error (error);
          int fd = open (f->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
          g_assert_true (graph_client_download (c, NULL, item->id, item->quickxor_hash, fd, NULL, NULL, NULL, NULL, &error));
          g_assert_no_error (error);
          g_assert_cmpint (fd_size (fd), ==, 4096);
          close (fd);
        }
      else
        {
          /* a self-signed server without its CA: refused, and not retried (fast) */
          g_assert_null (drive);
          g_assert_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED);
          g_assert_cmpint (g_get_monotonic_time () - t0, <, 2 * G_USEC_PER_SEC);
          g_clear_error (&error);
        }
    }
}

/* Every log line of the process, for the no-secrets check. */
static GMutex log_lock;
static GString *log_text;

static GLogWriterOutput
capture_writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
  g_mutex_lock (&log_lock);
  if (log_text != NULL)
    for (gsize i = 0; i < n_fields; i++)
      if (g_strcmp0 (fields[i].key, "MESSAGE") == 0)
        {
          g_string_append_len (log_text, fields[i].value, fields[i].length);
          g_string_append_c (log_text, '\n');
        }
  g_mutex_unlock (&log_lock);
  /* debug lines are captured above whether or not they are shown */
  if (level & G_LOG_LEVEL_DEBUG)
    return G_LOG_WRITER_HANDLED;
  return g_log_writer_default (level, fields, n_fields, data);
}

static void
test_no_secrets_in_logs (Fixture *f, gconstpointer data)
{
  START (f, "--synthetic", "3,1k,1");
  Added a = add_file (f, "/dl/s.bin", 100000, 4);
  g_autoptr (GError) error = NULL;
  g_autofree char *access = NULL, *refresh = NULL;
  g_assert_true (fake_graph_mint_token (f->fg, 0, &access, &refresh, &error));
  g_assert_true (graph_auth_save (f->token_file, refresh, access, g_get_real_time () / G_USEC_PER_SEC + 3000, &error));
  g_clear_pointer (&f->client, graph_client_free);

  g_mutex_lock (&log_lock);
  log_text = g_string_new (NULL);
  g_mutex_unlock (&log_lock);
  gboolean was_enabled = g_log_get_debug_enabled ();
  g_log_set_debug_enabled (TRUE);

  f->client = new_client (f, f->token_file);
  /* a refresh (the rotated pair), a 401, retries, a download with its signed URL */
  admin_ok (f, "tokens/expire", "{}");
  faults (f, "{\"errors\":[{\"status\":500,\"route\":\"download\",\"count\":1}]}");
  int fd = temp_fd (f);
  g_assert_true (graph_client_download (f->client, NULL, a.id, a.hash, fd, NULL, NULL, NULL, NULL, &error));
  g_assert_no_error (error);
  close (fd);
  g_autofree char *rotated = file_refresh_token (f->token_file);
  g_autofree char *text = NULL;
  g_assert_true (g_file_get_contents (f->token_file, &text, NULL, NULL));
  g_autoptr (cJSON) tok = cJSON_Parse (text);
  const char *new_access = cJSON_GetObjectItem (tok, "access_token")->valuestring;

  g_log_set_debug_enabled (was_enabled);
  g_mutex_lock (&log_lock);
  g_autofree char *logged = g_string_free (g_steal_pointer (&log_text), FALSE);
  g_mutex_unlock (&log_lock);
  g_assert_nonnull (strstr (logged, "refreshing"));  /* the capture saw the client's debug lines */
  g_assert_null (strstr (logged, access));
  g_assert_null (strstr (logged, refresh));
  g_assert_null (strstr (logged, rotated));
  g_assert_null (strstr (logged, new_access));
  g_assert_null (strstr (logged, "Bearer"));
  g_assert_null (strstr (logged, "Authorization"));
  g_assert_null (strstr (logged, "?"));  /* no URL query (signed download URLs, delta tokens) */
  /* nothing of a signed download URL beyond its origin (the fake signs in the path) */
  g_autofree char *dl_path = g_strconcat (f->fg->download_url, "/", NULL);
  g_assert_null (strstr (logged, dl_path));
  g_assert_nonnull (strstr (logged, f->fg->download_url));
  added_clear (&a);
}

/* A one-shot raw HTTP listener: records the request head, answers with @reply. */
typedef struct {
  GSocketListener *listener;
  guint16          port;
  const char      *reply;
  GString         *head;
} RawServer;

static gpointer
raw_serve (gpointer data)
{
  RawServer *r = data;
  g_autoptr (GSocketConnection) conn = g_socket_listener_accept (r->listener, NULL, NULL, NULL);
  if (conn == NULL)
    return NULL;
  GInputStream *in = g_io_stream_get_input_stream (G_IO_STREAM (conn));
  char buf[4096];
  while (strstr (r->head->str, "\r\n\r\n") == NULL)
    {
      gssize n = g_input_stream_read (in, buf, sizeof buf, NULL, NULL);
      if (n <= 0)
        break;
      g_string_append_len (r->head, buf, n);
    }
  g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (conn)), r->reply, strlen (r->reply),
                             NULL, NULL, NULL);
  g_io_stream_close (G_IO_STREAM (conn), NULL, NULL);
  return NULL;
}

static void
test_request_headers (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  RawServer r = { .listener = g_socket_listener_new (), .head = g_string_new (NULL),
                  .reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
                           "Connection: close\r\n\r\n{\"id\":\"RAW\"}\n" };
  g_autoptr (GInetAddress) lo = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (lo, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  g_assert_true (g_socket_listener_add_address (r.listener, addr, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP,
                                                NULL, &bound, &error));
  r.port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  f->dir = g_dir_make_tmp ("odsf-graph-raw-XXXXXX", NULL);
  f->token_file = g_build_filename (f->dir, "token.json", NULL);
  g_assert_true (graph_auth_save (f->token_file, "refresh-raw", "access-raw", G_MAXINT32, &error));
  g_autofree char *base = g_strdup_printf ("http://127.0.0.1:%u/v1.0", r.port);
  GraphConfig config = { .graph_url = base, .login_url = base, .client_id = "odsf-test", .token_file = f->token_file };
  g_autoptr (GraphClient) c = graph_client_new (&config, &error);
  g_assert_no_error (error);
  GThread *t = g_thread_new ("raw", raw_serve, &r);
  g_autofree char *drive = graph_client_my_drive_id (c, NULL, &error);
  g_thread_join (t);
  g_assert_no_error (error);
  g_assert_cmpstr (drive, ==, "RAW");
  g_test_message ("request head:\n%s", r.head->str);
  g_assert_true (g_str_has_prefix (r.head->str, "GET /v1.0/me/drive HTTP/1.1\r\n"));
  g_assert_nonnull (strstr (r.head->str, "\r\nUser-Agent: onedrive-syncfs/" PACKAGE_VERSION "\r\n"));
  g_assert_nonnull (strstr (r.head->str, "\r\nAuthorization: Bearer access-raw\r\n"));
  g_assert_nonnull (strstr (r.head->str, "\r\nAccept: application/json\r\n"));
  g_socket_listener_close (r.listener);
  g_object_unref (r.listener);
  g_string_free (r.head, TRUE);
}

int
main (int argc, char **argv)
{
  g_log_set_writer_func (capture_writer, NULL, NULL);
  g_test_init (&argc, &argv, NULL);
  /* Route messages through the writer above (g_test_init prints them itself, debug included,
   * thousands of lines under the throttle test), so debug lines are captured, not shown. */
  g_log_set_default_handler (g_log_default_handler, NULL);
#define ADD(path, fn) g_test_add ("/graph-fake/" path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  ADD ("delta/paging-and-tokens", test_delta_paging);
  ADD ("delta/duplicates-shuffle-empty", test_delta_duplicates_shuffle_empty);
  ADD ("delta/folder-scope-and-paths", test_delta_folder_scope);
  ADD ("delta/resync-mid-set", test_delta_resync_mid_set);
  ADD ("delta/bad-link", test_delta_bad_link);
  ADD ("retry/5xx-and-never", test_retry_5xx);
  ADD ("retry/throttle-gate-8-workers", test_throttle_gate);
  ADD ("retry/throttle-exhausted", test_throttle_exhausted);
  ADD ("auth/refresh-on-401-and-rotation", test_auth_refresh_on_401);
  ADD ("auth/invalid-grant", test_auth_invalid_grant);
  ADD ("auth/401-after-refresh", test_auth_401_after_refresh);
  ADD ("auth/refresh-before-expiry", test_auth_refresh_before_expiry);
  ADD ("auth/device-code", test_device_code);
  ADD ("auth/device-code-cancel", test_device_code_cancel);
  ADD ("download/basic-no-auth-reuse", test_download_basic);
  ADD ("download/expired-url", test_download_expired_url);
  ADD ("download/resume", test_download_resume);
  ADD ("download/faults", test_download_faults);
  ADD ("download/cancel-latency", test_download_cancel);
  ADD ("transport/stall-timeout", test_stall_timeout);
  ADD ("transport/tls-verify", test_tls);
  ADD ("transport/no-secrets-in-logs", test_no_secrets_in_logs);
  ADD ("transport/request-headers", test_request_headers);
  ADD ("retry/cancel-behind-gate", test_gate_cancel);
  return g_test_run ();
}
