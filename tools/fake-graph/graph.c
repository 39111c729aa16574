/* The Graph listener: /v1.0 routes, the OAuth endpoints and the admin API on one port.
 *
 * Every /v1.0 request goes through the same gate, in this order: count it (and check it
 * against the Retry-After window), wait the configured latency, check the bearer token,
 * apply any error rule that fires, then answer. Paths arrive undecoded (the daemon's
 * unescape callback is a no-op) so that path addressing can split on '/' and ':' first and
 * decode each segment after: a name may hold '#', '%', '+' or ' ', and an escaped byte must
 * never be mistaken for a separator.
 *
 * Delta tokens and skiptokens are base64url text naming a server instance, an epoch and a
 * position; they are opaque to clients and answer 410 resyncRequired once stale.
 */
#define G_LOG_DOMAIN "fake-graph"

#include "config.h"

#include "fake-graph.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_PAGE 200
#define MAX_PAGE 1000
#define MAX_BODY (64u << 20)

/* Identifies this process's tokens: a token from an earlier run of the fake is stale. */
static guint32 instance_nonce;

void
fake_graph_init_nonce (void)
{
  while (instance_nonce == 0)
    instance_nonce = g_random_int ();
}

static void
sleep_ms (guint ms)
{
  if (ms > 0)
    g_usleep ((gulong) ms * 1000);
}

static const char *
default_code (guint status)
{
  switch (status)
    {
    case 400: return "invalidRequest";
    case 401: return "InvalidAuthenticationToken";
    case 403: return "accessDenied";
    case 404: return "itemNotFound";
    case 410: return "resyncRequired";
    case 429: return "activityLimitReached";
    case 500: return "generalException";
    case 501: return "notSupported";
    case 502: return "badGateway";
    case 503: return "serviceNotAvailable";
    case 504: return "gatewayTimeout";
    case 507: return "quotaLimitReached";
    case 509: return "bandwidthLimitExceeded";
    default:  return "generalException";
    }
}

/* Answers the error an admin-installed rule asks for. */
static enum MHD_Result
respond_rule (FakeServer *server, struct MHD_Connection *conn, FakeRoute route, FakeErrorRule *rule)
{
  g_autofree char *ra = rule->retry_after >= 0 ? g_strdup_printf ("%d", rule->retry_after) : NULL;
  const char *headers[] = { "Retry-After", ra, NULL };
  fake_stats_add (&server->stats, &server->stats.faults_injected, 1);
  if (rule->retry_after >= 0)
    fake_stats_window (&server->stats, rule->retry_after);
  g_message ("fault: %u on %s", rule->status, fake_route_name (route));
  if (route == FAKE_ROUTE_TOKEN || route == FAKE_ROUTE_DEVICECODE)
    {
      g_autoptr(cJSON) o = cJSON_CreateObject ();
      cJSON_AddStringToObject (o, "error", rule->code ? rule->code
                                           : rule->status >= 500 || rule->status == 429
                                             ? "temporarily_unavailable" : "invalid_request");
      cJSON_AddStringToObject (o, "error_description", "injected by fake-graph");
      return fake_respond_json (conn, server, rule->status, o, ra ? headers : NULL);
    }
  const char *inner = rule->inner_code;
  if (inner == NULL && rule->status == 410)
    inner = "resyncApplyDifferences";
  return fake_respond_graph_error (conn, server, rule->status,
                                   rule->code ? rule->code : default_code (rule->status),
                                   "injected by fake-graph", inner, ra ? headers : NULL);
}

/* ---------- links and tokens ---------- */

static char *
select_suffix (const char *select_raw)
{
  if (select_raw == NULL)
    return g_strdup ("");
  g_autofree char *esc = g_uri_escape_string (select_raw, ",", FALSE);
  return g_strdup_printf ("&$select=%s", esc);
}

static char *
encode_token (const char *fmt, ...) G_GNUC_PRINTF (1, 2);
static char *
encode_token (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  g_autofree char *text = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  return fake_b64url_encode (text, strlen (text));
}

/* Where nextLinks and deltaLinks point: the Graph listener, unless a test asked for links
 * on a foreign host (which a client must refuse to follow). */
static char *
link_base (FakeServer *server)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&server->faults.lock);
  return g_strdup (server->faults.link_base ? server->faults.link_base : server->graph_base);
}

static char *
delta_base (FakeServer *server, FakeItem *scope)
{
  FakeDrive *drive = server->drive;
  g_autofree char *base = link_base (server);
  if (scope == drive->root)
    return g_strdup_printf ("%s/v1.0/drives/%s/root/delta", base, drive->drive_id);
  g_autofree char *id = g_uri_escape_string (scope->id, "!", FALSE);
  /* A shared folder's delta runs on the remote drive. */
  const char *did = scope->remote ? drive->remote_drive_id : fake_item_drive_id (drive, scope);
  return g_strdup_printf ("%s/v1.0/drives/%s/items/%s/delta", base, did, id);
}

static char *
delta_link (FakeServer *server, FakeItem *scope, guint epoch, guint64 seq, const char *select_raw)
{
  g_autofree char *base = delta_base (server, scope);
  g_autofree char *tok = encode_token ("d1.%u.%u.%" G_GUINT64_FORMAT ".%" G_GINT64_FORMAT ".%" G_GUINT64_FORMAT,
                                       instance_nonce, epoch, seq, g_get_real_time (), scope->num);
  g_autofree char *sel = select_suffix (select_raw);
  return g_strdup_printf ("%s?token=%s%s", base, tok, sel);
}

static char *
next_link (FakeServer *server, FakeDeltaSet *set, guint offset, guint page, guint top,
           const char *select_raw)
{
  g_autofree char *base = delta_base (server, set->scope);
  g_autofree char *tok = encode_token ("n1.%u.%u.%u.%u.%u.%u", instance_nonce, set->epoch, set->id,
                                       offset, page, top);
  g_autofree char *sel = select_suffix (select_raw);
  return g_strdup_printf ("%s?token=%s%s", base, tok, sel);
}

/* ---------- request parsing ---------- */

typedef enum { TARGET_DRIVE, TARGET_ROOT, TARGET_ID, TARGET_PATH } TargetKind;

typedef struct {
  gboolean   me;
  char      *drive_seg;      /* decoded {d}, NULL for /me/drive */
  TargetKind kind;
  char      *id;             /* TARGET_ID */
  char      *path;           /* TARGET_PATH: decoded, '/'-separated; relative to id when set */
  FakeRoute  route;
  gboolean   bad;            /* malformed escapes */
} Target;

static void
target_clear (Target *t)
{
  g_free (t->drive_seg);
  g_free (t->id);
  g_free (t->path);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Target, target_clear)

/* Decodes each '/'-separated segment of a raw path. NULL on a bad escape. */
static char *
decode_path (const char *raw, gsize len)
{
  g_autofree char *copy = g_strndup (raw, len);
  g_auto(GStrv) parts = g_strsplit (copy, "/", -1);
  GString *out = g_string_new (NULL);
  for (guint i = 0; parts[i]; i++)
    {
      if (parts[i][0] == 0)
        continue;
      g_autofree char *seg = fake_percent_decode (parts[i], strlen (parts[i]), FALSE);
      if (seg == NULL || strchr (seg, '/') != NULL)
        {
          g_string_free (out, TRUE);
          return NULL;
        }
      g_string_append_c (out, '/');
      g_string_append (out, seg);
    }
  return g_string_free (out, FALSE);
}

static gboolean
parse_tail (Target *t, const char *tail)
{
  if (*tail == 0)
    t->route = FAKE_ROUTE_ITEM;
  else if (strcmp (tail, "/children") == 0)
    t->route = FAKE_ROUTE_CHILDREN;
  else if (strcmp (tail, "/delta") == 0 || strcmp (tail, "/delta()") == 0)
    t->route = FAKE_ROUTE_DELTA;
  else if (strcmp (tail, "/content") == 0)
    t->route = FAKE_ROUTE_CONTENT;
  else
    return FALSE;
  return TRUE;
}

/* @url: the part after "/v1.0". FALSE when the route is not one the fake knows. */
static gboolean
parse_target (const char *url, Target *t)
{
  const char *rest;
  if (g_str_has_prefix (url, "/me/drive"))
    {
      t->me = TRUE;
      rest = url + strlen ("/me/drive");
    }
  else if (g_str_has_prefix (url, "/drives/"))
    {
      const char *s = url + strlen ("/drives/");
      const char *e = strchr (s, '/');
      if (e == NULL)
        e = s + strlen (s);
      t->drive_seg = fake_percent_decode (s, (gsize) (e - s), FALSE);
      if (t->drive_seg == NULL)
        t->bad = TRUE;
      rest = e;
    }
  else
    return FALSE;

  if (*rest == 0)
    {
      t->kind = TARGET_DRIVE;
      t->route = t->me ? FAKE_ROUTE_ME_DRIVE : FAKE_ROUTE_DRIVE;
      return TRUE;
    }
  const char *after_item;
  if (g_str_has_prefix (rest, "/root:"))
    {
      t->kind = TARGET_PATH;
      after_item = rest + strlen ("/root");
    }
  else if (g_str_has_prefix (rest, "/root") && (rest[5] == 0 || rest[5] == '/'))
    {
      t->kind = TARGET_ROOT;
      return parse_tail (t, rest + 5);
    }
  else if (g_str_has_prefix (rest, "/items/"))
    {
      const char *s = rest + strlen ("/items/");
      const char *e = s + strcspn (s, "/:");
      t->id = fake_percent_decode (s, (gsize) (e - s), FALSE);
      if (t->id == NULL || *t->id == 0)
        t->bad = TRUE;
      t->kind = TARGET_ID;
      if (*e != ':')
        return parse_tail (t, e);
      t->kind = TARGET_PATH;        /* /items/{id}:/rel/path: */
      after_item = e;
    }
  else
    return FALSE;

  /* after_item points at ":/{path}" optionally followed by ":" and a tail. */
  const char *p = after_item + 1;
  const char *colon = strchr (p, ':');
  gsize plen = colon ? (gsize) (colon - p) : strlen (p);
  t->path = decode_path (p, plen);
  if (t->path == NULL)
    t->bad = TRUE;
  return parse_tail (t, colon ? colon + 1 : "");
}

static char **
parse_select (const char *raw)
{
  if (raw == NULL || *raw == 0)
    return NULL;
  char **parts = g_strsplit (raw, ",", -1);
  for (guint i = 0; parts[i]; i++)
    g_strstrip (parts[i]);
  return parts;
}

/* Drive lock held. NULL when the target does not exist (or names another drive). */
static FakeItem *
resolve (FakeServer *server, const Target *t)
{
  FakeDrive *drive = server->drive;
  FakeItem *base = drive->root;
  if (t->kind == TARGET_ID || (t->kind == TARGET_PATH && t->id))
    {
      base = g_ascii_strcasecmp (t->id, "root") == 0 ? drive->root : fake_drive_lookup_id (drive, t->id);
      if (base == NULL)
        return NULL;
    }
  if (t->kind == TARGET_PATH)
    return fake_drive_lookup_path (drive, base, t->path);
  return base;
}

static gboolean
drive_matches (FakeServer *server, const Target *t)
{
  /* Drive ids are compared without case: Personal drive ids come back in mixed case. */
  return t->me || g_ascii_strcasecmp (t->drive_seg, server->drive->drive_id) == 0 ||
         g_ascii_strcasecmp (t->drive_seg, server->drive->remote_drive_id) == 0;
}

/* ---------- handlers ---------- */

static enum MHD_Result
not_found (FakeServer *server, struct MHD_Connection *conn)
{
  return fake_respond_graph_error (conn, server, 404, "itemNotFound", "The resource could not be found.",
                                   NULL, NULL);
}

static enum MHD_Result
handle_drive (FakeServer *server, struct MHD_Connection *conn)
{
  FakeDrive *drive = server->drive;
  g_autoptr(cJSON) o = cJSON_CreateObject ();
  g_rw_lock_reader_lock (&drive->lock);
  cJSON_AddStringToObject (o, "id", drive->drive_id);
  cJSON_AddStringToObject (o, "driveType", drive->business ? "business" : "personal");
  cJSON_AddStringToObject (o, "name", drive->business ? "OneDrive - Contoso" : "OneDrive");
  cJSON *owner = cJSON_AddObjectToObject (o, "owner");
  cJSON *user = cJSON_AddObjectToObject (owner, "user");
  cJSON_AddStringToObject (user, "displayName", "Fake User");
  cJSON_AddStringToObject (user, "id", drive->business ? "5f9c1a2e-0d1b-4c3e-9f7a-6b8d2e4c1a0f" : "d6ebf6b564426b61");
  cJSON *quota = cJSON_AddObjectToObject (o, "quota");
  double total = 1099511627776.0, used = (double) drive->root->size;
  cJSON_AddNumberToObject (quota, "total", total);
  cJSON_AddNumberToObject (quota, "used", used);
  cJSON_AddNumberToObject (quota, "remaining", total - used);
  cJSON_AddNumberToObject (quota, "deleted", 0);
  cJSON_AddStringToObject (quota, "state", "normal");
  g_rw_lock_reader_unlock (&drive->lock);
  return fake_respond_json (conn, server, 200, o, NULL);
}

static void
render_opts (FakeServer *server, FakeRenderOpts *opts)
{
  FakeFaults *f = &server->faults;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
  opts->no_hash_empty = f->no_hash_empty;
  opts->no_hash = f->no_hash;
  opts->no_sha = f->no_sha;
  opts->mixed_case_drive_id = f->mixed_case_drive_id;
  opts->delta_paths = f->delta_paths;
}

static enum MHD_Result
handle_item (FakeServer *server, struct MHD_Connection *conn, const Target *t, char **select)
{
  FakeDrive *drive = server->drive;
  FakeRenderOpts opts = { .select = select };
  render_opts (server, &opts);
  g_rw_lock_reader_lock (&drive->lock);
  FakeItem *item = resolve (server, t);
  if (item == NULL)
    {
      g_rw_lock_reader_unlock (&drive->lock);
      return not_found (server, conn);
    }
  g_autofree char *url = item->folder ? NULL : fake_download_url (server, item);
  opts.download_url = url;
  g_autoptr(cJSON) o = fake_render_item (drive, item, &opts);
  g_rw_lock_reader_unlock (&drive->lock);
  return fake_respond_json (conn, server, 200, o, NULL);
}

static gboolean
parse_top (struct MHD_Connection *conn, guint *top)
{
  g_autofree char *raw = fake_query_arg (conn, "$top");
  *top = DEFAULT_PAGE;
  if (raw == NULL)
    return TRUE;
  char *end = NULL;
  guint64 v = g_ascii_strtoull (raw, &end, 10);
  if (end == raw || *end != 0 || v == 0)
    return FALSE;
  *top = (guint) MIN (v, (guint64) MAX_PAGE);
  return TRUE;
}

static enum MHD_Result
handle_children (FakeServer *server, struct MHD_Connection *conn, const Target *t,
                 char **select, const char *select_raw)
{
  FakeDrive *drive = server->drive;
  guint top;
  if (!parse_top (conn, &top))
    return fake_respond_graph_error (conn, server, 400, "invalidRequest", "Invalid $top", NULL, NULL);
  guint offset = 0;
  g_autofree char *skip = fake_query_arg (conn, "$skiptoken");
  if (skip)
    {
      g_autofree char *text = fake_b64url_decode (skip);
      guint nonce = 0;
      if (text == NULL || sscanf (text, "c1.%u.%u", &nonce, &offset) != 2 || nonce != instance_nonce)
        return fake_respond_graph_error (conn, server, 400, "invalidRequest", "Invalid $skiptoken",
                                         NULL, NULL);
    }
  FakeRenderOpts opts = { .select = select };
  render_opts (server, &opts);
  g_autoptr(cJSON) o = cJSON_CreateObject ();
  cJSON *value = cJSON_AddArrayToObject (o, "value");
  g_rw_lock_reader_lock (&drive->lock);
  FakeItem *item = resolve (server, t);
  if (item == NULL)
    {
      g_rw_lock_reader_unlock (&drive->lock);
      return not_found (server, conn);
    }
  g_autoptr(GPtrArray) kids = fake_drive_sorted_children (item);
  for (guint i = offset; i < kids->len && i < offset + top; i++)
    {
      FakeItem *k = kids->pdata[i];
      g_autofree char *url = k->folder ? NULL : fake_download_url (server, k);
      opts.download_url = url;
      cJSON_AddItemToArray (value, fake_render_item (drive, k, &opts));
    }
  if (offset + top < kids->len)
    {
      g_autofree char *tok = encode_token ("c1.%u.%u", instance_nonce, offset + top);
      g_autofree char *id = g_uri_escape_string (item->id, "!", FALSE);
      g_autofree char *sel = select_suffix (select_raw);
      g_autofree char *base = link_base (server);
      g_autofree char *link = g_strdup_printf ("%s/v1.0/drives/%s/items/%s/children?$top=%u&$skiptoken=%s%s",
                                               base, fake_item_drive_id (drive, item), id, top, tok, sel);
      cJSON_AddStringToObject (o, "@odata.nextLink", link);
    }
  g_rw_lock_reader_unlock (&drive->lock);
  return fake_respond_json (conn, server, 200, o, NULL);
}

static enum MHD_Result
resync (FakeServer *server, struct MHD_Connection *conn, FakeItem *scope, const char *why)
{
  g_autofree char *fresh = delta_base (server, scope);
  const char *headers[] = { "Location", fresh, NULL };
  fake_stats_add (&server->stats, &server->stats.resyncs, 1);
  g_message ("delta: 410 resyncRequired (%s)", why);
  return fake_respond_graph_error (conn, server, 410, "resyncRequired",
                                   "Resync required. Replace any local items with the server's version "
                                   "(including deletes) if you're sure that the service was up to date with "
                                   "your local changes when you last sync'd. Upload any local changes that "
                                   "the server doesn't know about.",
                                   "resyncApplyDifferences", headers);
}

static enum MHD_Result
handle_delta (FakeServer *server, struct MHD_Connection *conn, const Target *t,
              char **select, const char *select_raw)
{
  FakeDrive *drive = server->drive;
  FakeFaults *f = &server->faults;
  guint top;
  if (!parse_top (conn, &top))
    return fake_respond_graph_error (conn, server, 400, "invalidRequest", "Invalid $top", NULL, NULL);
  g_autofree char *token = fake_query_arg (conn, "token");

  gboolean dups, shuffle, empty_pages, short_pages, initial_tombs;
  guint not_supported;
  double max_age;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&f->lock);
    dups = f->delta_duplicates;
    shuffle = f->delta_shuffle;
    empty_pages = f->delta_empty_pages;
    short_pages = f->delta_short_pages;
    initial_tombs = f->initial_tombstones;
    not_supported = f->folder_delta_not_supported;
    max_age = f->token_max_age;
  }
  FakeRenderOpts opts = { .select = select, .in_delta = TRUE };
  render_opts (server, &opts);

  /* Sets are created and evicted here: the write lock. */
  g_rw_lock_writer_lock (&drive->lock);
  FakeItem *scope = resolve (server, t);
  if (scope == NULL)
    {
      g_rw_lock_writer_unlock (&drive->lock);
      return not_found (server, conn);
    }
  if (scope != drive->root && not_supported)
    {
      g_rw_lock_writer_unlock (&drive->lock);
      return fake_respond_graph_error (conn, server, not_supported, "notSupported",
                                       "Delta is only supported on the root of the drive", NULL, NULL);
    }
  if (!scope->folder)
    {
      g_rw_lock_writer_unlock (&drive->lock);
      return fake_respond_graph_error (conn, server, 400, "invalidRequest",
                                       "Delta is only supported on folders", NULL, NULL);
    }

  FakeDeltaSet *set = NULL;
  guint offset = 0, page = 0;
  if (token && strcmp (token, "latest") == 0)
    {
      g_autofree char *link = delta_link (server, scope, drive->epoch, drive->seq, select_raw);
      g_rw_lock_writer_unlock (&drive->lock);
      g_autoptr(cJSON) o = cJSON_CreateObject ();
      cJSON_AddArrayToObject (o, "value");
      cJSON_AddStringToObject (o, "@odata.deltaLink", link);
      return fake_respond_json (conn, server, 200, o, NULL);
    }
  else if (token)
    {
      g_autofree char *text = fake_b64url_decode (token);
      guint nonce = 0, epoch = 0, set_id = 0, ptop = 0;
      guint64 seq = 0, scope_num = 0;
      gint64 issued = 0;
      const char *why = NULL;
      if (text && sscanf (text, "d1.%u.%u.%" G_GUINT64_FORMAT ".%" G_GINT64_FORMAT ".%" G_GUINT64_FORMAT,
                          &nonce, &epoch, &seq, &issued, &scope_num) == 5)
        {
          if (nonce != instance_nonce)
            why = "token from another server instance";
          else if (epoch != drive->epoch)
            why = "epoch bumped";
          else if (scope_num != scope->num)
            why = "token for another scope";
          else if (seq > drive->seq)
            why = "token from the future";
          else if (max_age > 0 && (double) (g_get_real_time () - issued) / G_USEC_PER_SEC > max_age)
            why = "token too old";
          else
            set = fake_drive_new_set (drive, scope, FALSE, seq, FALSE, dups, shuffle);
        }
      else if (text && sscanf (text, "n1.%u.%u.%u.%u.%u.%u", &nonce, &epoch, &set_id, &offset, &page,
                               &ptop) == 6)
        {
          set = nonce == instance_nonce ? fake_drive_get_set (drive, set_id) : NULL;
          if (nonce != instance_nonce)
            why = "token from another server instance";
          else if (epoch != drive->epoch)
            why = "epoch bumped during the set";
          else if (set == NULL || set->scope != scope)
            why = "set expired";
          else if (max_age > 0 &&
                   (double) (g_get_monotonic_time () - set->created) / G_USEC_PER_SEC > max_age)
            why = "set too old";
          if (why)
            set = NULL;
          top = ptop ? ptop : top;
        }
      else
        {
          g_rw_lock_writer_unlock (&drive->lock);
          return fake_respond_graph_error (conn, server, 400, "invalidRequest", "Invalid token", NULL, NULL);
        }
      if (set == NULL)
        {
          g_rw_lock_writer_unlock (&drive->lock);
          return resync (server, conn, scope, why);
        }
    }
  else
    set = fake_drive_new_set (drive, scope, TRUE, 0, initial_tombs, dups, shuffle);

  g_autoptr(cJSON) o = cJSON_CreateObject ();
  cJSON *value = cJSON_AddArrayToObject (o, "value");
  guint len = set->entries->len;
  guint size = top;
  gboolean empty = empty_pages && page % 2 == 0 && offset < len;
  if (short_pages)
    {
      g_autoptr(GRand) r = g_rand_new_with_seed (set->id * 31u + page);
      size = (guint) g_rand_int_range (r, 1, (gint32) top + 1);
    }
  if (empty)
    size = 0;
  for (guint i = offset; i < len && i < offset + size; i++)
    {
      FakeSetEntry *e = &g_array_index (set->entries, FakeSetEntry, i);
      opts.as_tombstone = e->as_tombstone;
      cJSON_AddItemToArray (value, fake_render_item (drive, e->item, &opts));
    }
  guint next = MIN (len, offset + size);
  g_autofree char *link = NULL;
  if (next < len || empty)
    {
      link = next_link (server, set, next, page + 1, top, select_raw);
      cJSON_AddStringToObject (o, "@odata.nextLink", link);
    }
  else
    {
      link = delta_link (server, scope, set->epoch, set->to_seq, select_raw);
      cJSON_AddStringToObject (o, "@odata.deltaLink", link);
    }
  g_rw_lock_writer_unlock (&drive->lock);
  return fake_respond_json (conn, server, 200, o, NULL);
}

static enum MHD_Result
handle_content (FakeServer *server, struct MHD_Connection *conn, const Target *t)
{
  FakeDrive *drive = server->drive;
  g_rw_lock_reader_lock (&drive->lock);
  FakeItem *item = resolve (server, t);
  if (item == NULL)
    {
      g_rw_lock_reader_unlock (&drive->lock);
      return not_found (server, conn);
    }
  if (item->folder)
    {
      g_rw_lock_reader_unlock (&drive->lock);
      return fake_respond_graph_error (conn, server, 400, "invalidRequest",
                                       "Folders have no content", NULL, NULL);
    }
  g_autofree char *url = fake_download_url (server, item);
  g_rw_lock_reader_unlock (&drive->lock);
  const char *headers[] = { "Location", url, NULL };
  return fake_respond (conn, server, 302, NULL, NULL, headers);
}

static enum MHD_Result
handle_graph (FakeServer *server, struct MHD_Connection *conn, const char *url, const char *method)
{
  g_auto(Target) t = { 0 };
  if (!parse_target (url, &t))
    {
      fake_stats_request (&server->stats, FAKE_ROUTE_OTHER, 0);
      return fake_respond_graph_error (conn, server, 400, "invalidRequest",
                                       "Invalid request (unknown route)", NULL, NULL);
    }
  double grace;
  guint latency;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&server->faults.lock);
    grace = server->faults.throttle_grace;
    latency = server->faults.latency_ms;
  }
  fake_stats_request (&server->stats, t.route, grace);
  sleep_ms (latency);

  const char *authz = MHD_lookup_connection_value (conn, MHD_HEADER_KIND, "Authorization");
  int auth = authz && g_ascii_strncasecmp (authz, "Bearer ", 7) == 0
               ? fake_auth_check (&server->auth, authz + 7) : 1;
  if (auth != 0)
    {
      fake_stats_add (&server->stats, &server->stats.auth_failures, 1);
      g_message ("401 on %s: %s access token", fake_route_name (t.route),
                 auth == 2 ? "expired" : authz ? "unknown" : "no");
      const char *headers[] = { "WWW-Authenticate", "Bearer realm=\"\", error=\"invalid_token\"", NULL };
      return fake_respond_graph_error (conn, server, 401, "InvalidAuthenticationToken",
                                       auth == 2 ? "Lifetime validation failed, the token is expired."
                                                 : authz ? "Access token validation failure."
                                                         : "Access token is empty.",
                                       NULL, headers);
    }
  if (strcmp (method, "GET") != 0 && strcmp (method, "HEAD") != 0)
    return fake_respond_graph_error (conn, server, 405, "invalidRequest",
                                     "The fake drive is read-only", NULL, NULL);

  g_autoptr(FakeErrorRule) rule = fake_faults_match (&server->faults, t.route, t.id);
  if (rule)
    return respond_rule (server, conn, t.route, rule);

  if (t.bad)
    return fake_respond_graph_error (conn, server, 400, "invalidRequest", "Malformed path", NULL, NULL);
  if (!drive_matches (server, &t))
    return not_found (server, conn);

  g_autofree char *select_raw = fake_query_arg (conn, "$select");
  g_auto(GStrv) select = parse_select (select_raw);
  switch (t.route)
    {
    case FAKE_ROUTE_ME_DRIVE:
    case FAKE_ROUTE_DRIVE:
      return handle_drive (server, conn);
    case FAKE_ROUTE_ITEM:
      return handle_item (server, conn, &t, select);
    case FAKE_ROUTE_CHILDREN:
      return handle_children (server, conn, &t, select, select_raw);
    case FAKE_ROUTE_DELTA:
      return handle_delta (server, conn, &t, select, select_raw);
    case FAKE_ROUTE_CONTENT:
      return handle_content (server, conn, &t);
    default:
      return not_found (server, conn);
    }
}

/* "/{tenant}/oauth2/v2.0/{devicecode|token}" → tenant and endpoint, or FALSE. */
static gboolean
parse_oauth (const char *url, char **tenant, const char **endpoint)
{
  const char *s = url + 1;
  const char *e = strchr (s, '/');
  if (e == NULL || e == s || !g_str_has_prefix (e, "/oauth2/v2.0/"))
    return FALSE;
  const char *ep = e + strlen ("/oauth2/v2.0/");
  if (strcmp (ep, "token") != 0 && strcmp (ep, "devicecode") != 0)
    return FALSE;
  *tenant = g_strndup (s, (gsize) (e - s));
  *endpoint = ep;
  return TRUE;
}

enum MHD_Result
fake_graph_handler (void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                    const char *version, const char *upload_data, size_t *upload_data_size,
                    void **con_cls)
{
  FakeServer *server = cls;
  FakeRequest *req = *con_cls;
  if (req == NULL)
    {
      req = g_new0 (FakeRequest, 1);
      req->body = g_string_new (NULL);
      *con_cls = req;
      return MHD_YES;
    }
  if (*upload_data_size > 0)
    {
      if (req->body->len + *upload_data_size <= MAX_BODY)
        g_string_append_len (req->body, upload_data, (gssize) *upload_data_size);
      *upload_data_size = 0;
      return MHD_YES;
    }

  if (g_str_has_prefix (url, "/_admin/"))
    {
      req->route = FAKE_ROUTE_ADMIN;
      fake_stats_request (&server->stats, FAKE_ROUTE_ADMIN, 0);
      if (!fake_peer_is_loopback (conn))
        return fake_respond_graph_error (conn, server, 403, "accessDenied",
                                         "The admin API answers loopback clients only", NULL, NULL);
      return fake_admin_handle (server, conn, url + strlen ("/_admin/"), method, req->body);
    }
  if (g_str_has_prefix (url, "/v1.0/"))
    return handle_graph (server, conn, url + strlen ("/v1.0"), method);

  g_autofree char *tenant = NULL;
  const char *endpoint = NULL;
  if (parse_oauth (url, &tenant, &endpoint))
    {
      FakeRoute route = strcmp (endpoint, "token") == 0 ? FAKE_ROUTE_TOKEN : FAKE_ROUTE_DEVICECODE;
      guint latency;
      {
        g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&server->faults.lock);
        latency = server->faults.latency_ms;
      }
      fake_stats_request (&server->stats, route, 0);
      sleep_ms (latency);
      if (strcmp (method, "POST") != 0)
        return fake_respond_oauth_error (conn, server, 405, "invalid_request", "POST only");
      g_autoptr(FakeErrorRule) rule = fake_faults_match (&server->faults, route, NULL);
      if (rule)
        return respond_rule (server, conn, route, rule);
      return fake_oauth_handle (server, conn, tenant, endpoint, req->body);
    }
  fake_stats_request (&server->stats, FAKE_ROUTE_OTHER, 0);
  return fake_respond_graph_error (conn, server, 404, "itemNotFound", "No such route", NULL, NULL);
}
