/* Fault switches and error rules (set from --faults or POST /_admin/faults), and the
 * statistics tests read back (GET /_admin/stats).
 *
 * A throttle violation is a Graph call that arrives after the fake answered 429/503 with
 * Retry-After R and before R seconds have passed. Calls that arrive within a short grace
 * period after the throttling answer are not counted: a client with several connections
 * has other requests already on the wire when the first 429 reaches it.
 */
#define G_LOG_DOMAIN "fake-graph"

#include "config.h"

#include "fake-graph.h"

#include <string.h>

static const char *const route_names[FAKE_ROUTE_COUNT] = {
  [FAKE_ROUTE_ME_DRIVE] = "me_drive",
  [FAKE_ROUTE_DRIVE] = "drive",
  [FAKE_ROUTE_ITEM] = "item",
  [FAKE_ROUTE_CHILDREN] = "children",
  [FAKE_ROUTE_DELTA] = "delta",
  [FAKE_ROUTE_CONTENT] = "content",
  [FAKE_ROUTE_DOWNLOAD] = "download",
  [FAKE_ROUTE_TOKEN] = "token",
  [FAKE_ROUTE_DEVICECODE] = "devicecode",
  [FAKE_ROUTE_ADMIN] = "admin",
  [FAKE_ROUTE_OTHER] = "other",
};

const char *
fake_route_name (FakeRoute route)
{
  return route < FAKE_ROUTE_COUNT ? route_names[route] : "other";
}

static gboolean
is_graph_route (FakeRoute route)
{
  return route <= FAKE_ROUTE_CONTENT;
}

void
fake_error_rule_free (FakeErrorRule *rule)
{
  if (rule == NULL)
    return;
  g_free (rule->route);
  g_free (rule->code);
  g_free (rule->inner_code);
  g_free (rule->item_id);
  g_free (rule);
}

void
fake_download_rule_free (FakeDownloadRule *rule)
{
  if (rule == NULL)
    return;
  g_free (rule->kind);
  g_free (rule->item_id);
  g_free (rule);
}

static void
faults_defaults (FakeFaults *f)
{
  f->latency_ms = 0;
  f->download_latency_ms = 0;
  f->bandwidth_bps = 0;
  f->ignore_range = FALSE;
  f->no_hash_empty = FALSE;
  f->no_hash = FALSE;
  f->no_sha = FALSE;
  f->delta_duplicates = FALSE;
  f->delta_shuffle = FALSE;
  f->delta_empty_pages = FALSE;
  f->delta_short_pages = FALSE;
  f->delta_paths = FALSE;
  f->initial_tombstones = FALSE;
  f->mixed_case_drive_id = FALSE;
  f->folder_delta_not_supported = 0;
  f->child_tombstones = TRUE;
  f->token_max_age = 0;
  f->download_url_ttl = 3600;
  f->throttle_grace = 0.2;
  g_clear_pointer (&f->link_base, g_free);
  g_ptr_array_set_size (f->errors, 0);
  g_ptr_array_set_size (f->download_errors, 0);
}

void
fake_faults_init (FakeFaults *faults)
{
  memset (faults, 0, sizeof *faults);
  g_mutex_init (&faults->lock);
  faults->errors = g_ptr_array_new_with_free_func ((GDestroyNotify) fake_error_rule_free);
  faults->download_errors = g_ptr_array_new_with_free_func ((GDestroyNotify) fake_download_rule_free);
  faults->rand = g_rand_new_with_seed (20240601);
  faults_defaults (faults);
}

void
fake_faults_clear (FakeFaults *faults)
{
  g_ptr_array_unref (faults->errors);
  g_ptr_array_unref (faults->download_errors);
  g_rand_free (faults->rand);
  g_free (faults->link_base);
  g_mutex_clear (&faults->lock);
}

static gboolean
get_bool (const cJSON *v, gboolean *out, GError **error)
{
  if (!cJSON_IsBool (v))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "%s: expected true or false",
                   v->string);
      return FALSE;
    }
  *out = cJSON_IsTrue (v);
  return TRUE;
}

static gboolean
get_number (const cJSON *v, double min, double *out, GError **error)
{
  if (!cJSON_IsNumber (v) || v->valuedouble < min)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "%s: expected a number >= %g",
                   v->string, min);
      return FALSE;
    }
  *out = v->valuedouble;
  return TRUE;
}

static const char *
opt_string (const cJSON *obj, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  return cJSON_IsString (v) ? v->valuestring : NULL;
}

static double
opt_number (const cJSON *obj, const char *key, double dflt)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  return cJSON_IsNumber (v) ? v->valuedouble : dflt;
}

static gboolean
valid_route (const char *r)
{
  if (g_strcmp0 (r, "any") == 0 || g_strcmp0 (r, "graph") == 0)
    return TRUE;
  for (guint i = 0; i < FAKE_ROUTE_COUNT; i++)
    if (g_strcmp0 (r, route_names[i]) == 0)
      return TRUE;
  return FALSE;
}

static FakeErrorRule *
parse_error_rule (const cJSON *o, GError **error)
{
  if (!cJSON_IsObject (o) || !cJSON_IsNumber (cJSON_GetObjectItemCaseSensitive (o, "status")))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "an error rule needs a status");
      return NULL;
    }
  g_autoptr(FakeErrorRule) r = g_new0 (FakeErrorRule, 1);
  r->status = (guint) opt_number (o, "status", 500);
  r->route = g_strdup (opt_string (o, "route") ? opt_string (o, "route") : "graph");
  r->code = g_strdup (opt_string (o, "code"));
  r->inner_code = g_strdup (opt_string (o, "inner_code"));
  r->item_id = g_strdup (opt_string (o, "item_id"));
  r->count = (int) opt_number (o, "count", 1);
  r->every = (guint) MAX (1.0, opt_number (o, "every", 1));
  r->probability = opt_number (o, "probability", 0);
  r->retry_after = (int) opt_number (o, "retry_after", (r->status == 429 || r->status == 503) ? 1 : -1);
  if (r->status < 400 || r->status > 599 || !valid_route (r->route) || r->count == 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "bad error rule (status 400..599, a known route, count != 0)");
      return NULL;
    }
  return g_steal_pointer (&r);
}

static FakeDownloadRule *
parse_download_rule (const cJSON *o, GError **error)
{
  const char *kind = cJSON_IsObject (o) ? opt_string (o, "kind") : NULL;
  if (g_strcmp0 (kind, "reset") != 0 && g_strcmp0 (kind, "truncate") != 0)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "a download rule needs kind \"reset\" or \"truncate\"");
      return NULL;
    }
  FakeDownloadRule *r = g_new0 (FakeDownloadRule, 1);
  r->kind = g_strdup (kind);
  r->after_bytes = (guint64) opt_number (o, "after_bytes", 0);
  r->count = (int) opt_number (o, "count", 1);
  r->item_id = g_strdup (opt_string (o, "item_id"));
  return r;
}

/* f->lock held (or @f private). May stop half way on a bad field: see fake_faults_apply. */
static gboolean
apply_settings (FakeFaults *f, const cJSON *json, GError **error)
{
  const cJSON *clear = cJSON_GetObjectItemCaseSensitive (json, "clear");
  if (cJSON_IsTrue (clear))
    faults_defaults (f);

  const cJSON *v;
  cJSON_ArrayForEach (v, json)
    {
      const char *k = v->string;
      double d;
      gboolean b;
      struct { const char *name; gboolean *field; } bools[] = {
        { "ignore_range", &f->ignore_range },
        { "no_hash_empty", &f->no_hash_empty },
        { "no_hash", &f->no_hash },
        { "no_sha", &f->no_sha },
        { "delta_duplicates", &f->delta_duplicates },
        { "delta_shuffle", &f->delta_shuffle },
        { "delta_empty_pages", &f->delta_empty_pages },
        { "delta_short_pages", &f->delta_short_pages },
        { "delta_paths", &f->delta_paths },
        { "initial_tombstones", &f->initial_tombstones },
        { "mixed_case_drive_id", &f->mixed_case_drive_id },
        { "child_tombstones", &f->child_tombstones },
      };
      gboolean done = FALSE;
      for (guint i = 0; i < G_N_ELEMENTS (bools); i++)
        if (strcmp (k, bools[i].name) == 0)
          {
            if (!get_bool (v, &b, error))
              return FALSE;
            *bools[i].field = b;
            done = TRUE;
          }
      if (done || strcmp (k, "clear") == 0)
        continue;

      if (strcmp (k, "latency_ms") == 0 || strcmp (k, "download_latency_ms") == 0 ||
          strcmp (k, "bandwidth_bps") == 0 || strcmp (k, "token_max_age") == 0 ||
          strcmp (k, "download_url_ttl") == 0 || strcmp (k, "throttle_grace") == 0 ||
          strcmp (k, "folder_delta_not_supported") == 0)
        {
          if (strcmp (k, "folder_delta_not_supported") == 0 && cJSON_IsBool (v))
            {
              f->folder_delta_not_supported = cJSON_IsTrue (v) ? 501 : 0;
              continue;
            }
          if (!get_number (v, 0, &d, error))
            return FALSE;
          if (strcmp (k, "latency_ms") == 0) f->latency_ms = (guint) d;
          else if (strcmp (k, "download_latency_ms") == 0) f->download_latency_ms = (guint) d;
          else if (strcmp (k, "bandwidth_bps") == 0) f->bandwidth_bps = (guint64) d;
          else if (strcmp (k, "token_max_age") == 0) f->token_max_age = d;
          else if (strcmp (k, "download_url_ttl") == 0) f->download_url_ttl = d;
          else if (strcmp (k, "throttle_grace") == 0) f->throttle_grace = d;
          else f->folder_delta_not_supported = (guint) d;
          continue;
        }
      if (strcmp (k, "link_base") == 0)
        {
          if (!cJSON_IsString (v) && !cJSON_IsNull (v))
            {
              g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "link_base: a URL or null");
              return FALSE;
            }
          g_free (f->link_base);
          f->link_base = cJSON_IsString (v) && *v->valuestring ? g_strdup (v->valuestring) : NULL;
          continue;
        }
      if (strcmp (k, "errors") == 0 || strcmp (k, "download_errors") == 0)
        {
          if (!cJSON_IsArray (v))
            {
              g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "%s: expected an array", k);
              return FALSE;
            }
          const cJSON *r;
          cJSON_ArrayForEach (r, v)
            {
              if (k[0] == 'e')
                {
                  FakeErrorRule *rule = parse_error_rule (r, error);
                  if (rule == NULL)
                    return FALSE;
                  g_ptr_array_add (f->errors, rule);
                }
              else
                {
                  FakeDownloadRule *rule = parse_download_rule (r, error);
                  if (rule == NULL)
                    return FALSE;
                  g_ptr_array_add (f->download_errors, rule);
                }
            }
          continue;
        }
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "unknown fault setting %s", k);
      return FALSE;
    }
  return TRUE;
}

gboolean
fake_faults_apply (FakeFaults *f, const cJSON *json, GError **error)
{
  if (!cJSON_IsObject (json))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "faults: expected a JSON object");
      return FALSE;
    }
  /* All or nothing: try the settings on a scratch copy first, so a typo in the last field
   * does not leave the first ones applied. */
  FakeFaults scratch;
  fake_faults_init (&scratch);
  gboolean valid = apply_settings (&scratch, json, error);
  fake_faults_clear (&scratch);
  if (!valid)
    return FALSE;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
  return apply_settings (f, json, error);
}

cJSON *
fake_faults_to_json (FakeFaults *f)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
  cJSON *o = cJSON_CreateObject ();
  cJSON_AddNumberToObject (o, "latency_ms", f->latency_ms);
  cJSON_AddNumberToObject (o, "download_latency_ms", f->download_latency_ms);
  cJSON_AddNumberToObject (o, "bandwidth_bps", (double) f->bandwidth_bps);
  cJSON_AddBoolToObject (o, "ignore_range", f->ignore_range);
  cJSON_AddBoolToObject (o, "no_hash_empty", f->no_hash_empty);
  cJSON_AddBoolToObject (o, "no_hash", f->no_hash);
  cJSON_AddBoolToObject (o, "no_sha", f->no_sha);
  cJSON_AddBoolToObject (o, "delta_duplicates", f->delta_duplicates);
  cJSON_AddBoolToObject (o, "delta_shuffle", f->delta_shuffle);
  cJSON_AddBoolToObject (o, "delta_empty_pages", f->delta_empty_pages);
  cJSON_AddBoolToObject (o, "delta_short_pages", f->delta_short_pages);
  cJSON_AddBoolToObject (o, "delta_paths", f->delta_paths);
  cJSON_AddBoolToObject (o, "initial_tombstones", f->initial_tombstones);
  cJSON_AddBoolToObject (o, "mixed_case_drive_id", f->mixed_case_drive_id);
  cJSON_AddBoolToObject (o, "child_tombstones", f->child_tombstones);
  cJSON_AddNumberToObject (o, "folder_delta_not_supported", f->folder_delta_not_supported);
  cJSON_AddNumberToObject (o, "token_max_age", f->token_max_age);
  cJSON_AddNumberToObject (o, "download_url_ttl", f->download_url_ttl);
  cJSON_AddNumberToObject (o, "throttle_grace", f->throttle_grace);
  if (f->link_base)
    cJSON_AddStringToObject (o, "link_base", f->link_base);
  else
    cJSON_AddNullToObject (o, "link_base");
  cJSON *errs = cJSON_AddArrayToObject (o, "errors");
  for (guint i = 0; i < f->errors->len; i++)
    {
      FakeErrorRule *r = f->errors->pdata[i];
      cJSON *e = cJSON_CreateObject ();
      cJSON_AddNumberToObject (e, "status", r->status);
      cJSON_AddStringToObject (e, "route", r->route);
      cJSON_AddNumberToObject (e, "count", r->count);
      cJSON_AddNumberToObject (e, "every", r->every);
      cJSON_AddNumberToObject (e, "retry_after", r->retry_after);
      cJSON_AddItemToArray (errs, e);
    }
  cJSON *dls = cJSON_AddArrayToObject (o, "download_errors");
  for (guint i = 0; i < f->download_errors->len; i++)
    {
      FakeDownloadRule *r = f->download_errors->pdata[i];
      cJSON *e = cJSON_CreateObject ();
      cJSON_AddStringToObject (e, "kind", r->kind);
      cJSON_AddNumberToObject (e, "after_bytes", (double) r->after_bytes);
      cJSON_AddNumberToObject (e, "count", r->count);
      cJSON_AddItemToArray (dls, e);
    }
  return o;
}

static gboolean
route_matches (const char *filter, FakeRoute route)
{
  if (strcmp (filter, "any") == 0)
    return is_graph_route (route) || route == FAKE_ROUTE_DOWNLOAD;
  if (strcmp (filter, "graph") == 0)
    return is_graph_route (route);
  return strcmp (filter, fake_route_name (route)) == 0;
}

FakeErrorRule *
fake_faults_match (FakeFaults *f, FakeRoute route, const char *item_id)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
  for (guint i = 0; i < f->errors->len; i++)
    {
      FakeErrorRule *r = f->errors->pdata[i];
      if (!route_matches (r->route, route))
        continue;
      if (r->item_id && g_strcmp0 (r->item_id, item_id) != 0)
        continue;
      r->seen++;
      if (r->seen % r->every != 0)
        continue;
      if (r->probability > 0 && g_rand_double (f->rand) >= r->probability)
        continue;
      FakeErrorRule *copy = g_new0 (FakeErrorRule, 1);
      *copy = *r;
      copy->route = g_strdup (r->route);
      copy->code = g_strdup (r->code);
      copy->inner_code = g_strdup (r->inner_code);
      copy->item_id = g_strdup (r->item_id);
      if (r->count > 0 && --r->count == 0)
        g_ptr_array_remove_index (f->errors, i);
      return copy;
    }
  return NULL;
}

FakeDownloadRule *
fake_faults_match_download (FakeFaults *f, const char *item_id)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
  for (guint i = 0; i < f->download_errors->len; i++)
    {
      FakeDownloadRule *r = f->download_errors->pdata[i];
      if (r->item_id && g_strcmp0 (r->item_id, item_id) != 0)
        continue;
      FakeDownloadRule *copy = g_new0 (FakeDownloadRule, 1);
      *copy = *r;
      copy->kind = g_strdup (r->kind);
      copy->item_id = g_strdup (r->item_id);
      if (r->count > 0 && --r->count == 0)
        g_ptr_array_remove_index (f->download_errors, i);
      return copy;
    }
  return NULL;
}

/* ---------- stats ---------- */

void
fake_stats_init (FakeStats *s)
{
  memset (s, 0, sizeof *s);
  g_mutex_init (&s->lock);
  s->statuses = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
}

void
fake_stats_clear (FakeStats *s)
{
  g_hash_table_unref (s->statuses);
  g_mutex_clear (&s->lock);
}

void
fake_stats_reset (FakeStats *s, FakeDrive *drive)
{
  g_rw_lock_reader_lock (&drive->lock);
  g_mutex_lock (&s->lock);
  for (guint i = 0; i < drive->all->len; i++)
    {
      FakeItem *item = drive->all->pdata[i];
      item->full_downloads = item->ranged_downloads = item->bytes_served = 0;
    }
  memset (s->requests, 0, sizeof s->requests);
  g_hash_table_remove_all (s->statuses);
  s->bytes_served = s->throttled = s->throttle_violations = s->download_throttle_violations = 0;
  s->auth_failures = s->resyncs = s->faults_injected = 0;
  s->window_start = s->window_end = 0;
  g_mutex_unlock (&s->lock);
  g_rw_lock_reader_unlock (&drive->lock);
}

void
fake_stats_request (FakeStats *s, FakeRoute route, double grace)
{
  gint64 now = g_get_monotonic_time ();
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->lock);
  s->requests[route]++;
  if (now < s->window_end && now > s->window_start + (gint64) (grace * G_USEC_PER_SEC))
    {
      if (is_graph_route (route))
        {
          s->throttle_violations++;
          g_message ("throttle violation: %s call %.3f s before Retry-After ends",
                     fake_route_name (route), (double) (s->window_end - now) / G_USEC_PER_SEC);
        }
      else if (route == FAKE_ROUTE_DOWNLOAD)
        s->download_throttle_violations++;
    }
}

void
fake_stats_status (FakeStats *s, guint status)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->lock);
  g_autofree char *key = g_strdup_printf ("%u", status);
  gint64 *n = g_hash_table_lookup (s->statuses, key);
  if (n == NULL)
    {
      n = g_new0 (gint64, 1);
      g_hash_table_insert (s->statuses, g_steal_pointer (&key), n);
    }
  (*n)++;
}

void
fake_stats_window (FakeStats *s, int retry_after)
{
  gint64 now = g_get_monotonic_time ();
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->lock);
  s->throttled++;
  if (retry_after <= 0)
    return;
  s->window_start = now;
  s->window_end = MAX (s->window_end, now + (gint64) retry_after * G_USEC_PER_SEC);
}

cJSON *
fake_stats_to_json (FakeStats *s, FakeDrive *drive)
{
  cJSON *o = cJSON_CreateObject ();
  cJSON *dl = cJSON_CreateObject ();
  gint64 full = 0, ranged = 0;
  g_rw_lock_reader_lock (&drive->lock);
  g_mutex_lock (&s->lock);
  for (guint i = 0; i < drive->all->len; i++)
    {
      FakeItem *item = drive->all->pdata[i];
      gint64 f = item->full_downloads, r = item->ranged_downloads, b = item->bytes_served;
      if (f == 0 && r == 0 && b == 0)
        continue;
      cJSON *e = cJSON_AddObjectToObject (dl, item->id);
      g_autofree char *path = fake_drive_item_path (item);
      cJSON_AddStringToObject (e, "path", path);
      cJSON_AddNumberToObject (e, "full", (double) f);
      cJSON_AddNumberToObject (e, "ranged", (double) r);
      cJSON_AddNumberToObject (e, "bytes", (double) b);
      full += f;
      ranged += r;
    }
  g_rw_lock_reader_unlock (&drive->lock);

  cJSON *req = cJSON_AddObjectToObject (o, "requests");
  gint64 total = 0;
  for (guint i = 0; i < FAKE_ROUTE_COUNT; i++)
    {
      cJSON_AddNumberToObject (req, route_names[i], (double) s->requests[i]);
      total += s->requests[i];
    }
  cJSON_AddNumberToObject (req, "total", (double) total);
  cJSON *st = cJSON_AddObjectToObject (o, "statuses");
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init (&it, s->statuses);
  while (g_hash_table_iter_next (&it, &k, &v))
    cJSON_AddNumberToObject (st, k, (double) *(gint64 *) v);
  cJSON_AddItemToObject (o, "downloads", dl);
  cJSON_AddNumberToObject (o, "full_downloads", (double) full);
  cJSON_AddNumberToObject (o, "ranged_downloads", (double) ranged);
  cJSON_AddNumberToObject (o, "bytes_served", (double) s->bytes_served);
  cJSON_AddNumberToObject (o, "throttled", (double) s->throttled);
  cJSON_AddNumberToObject (o, "throttle_violations", (double) s->throttle_violations);
  cJSON_AddNumberToObject (o, "download_throttle_violations", (double) s->download_throttle_violations);
  cJSON_AddNumberToObject (o, "auth_failures", (double) s->auth_failures);
  cJSON_AddNumberToObject (o, "resyncs", (double) s->resyncs);
  cJSON_AddNumberToObject (o, "faults_injected", (double) s->faults_injected);
  g_mutex_unlock (&s->lock);
  return o;
}

void
fake_stats_download (FakeStats *s, FakeItem *item, gboolean ranged)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->lock);
  if (ranged)
    item->ranged_downloads++;
  else
    item->full_downloads++;
}

void
fake_stats_bytes (FakeStats *s, FakeItem *item, gint64 n)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->lock);
  s->bytes_served += n;
  if (item)
    item->bytes_served += n;
}

void
fake_stats_add (FakeStats *s, gint64 *counter, gint64 n)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&s->lock);
  *counter += n;
}
