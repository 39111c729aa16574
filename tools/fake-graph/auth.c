/* The fake identity platform: /{tenant}/oauth2/v2.0/devicecode and /token.
 *
 * Access tokens are random strings with an expiry; refresh tokens are single use (a refresh
 * grant removes the old one and mints a new pair, as Microsoft rotates them). A device
 * code stays pending until a test approves or declines it through the admin API; polling
 * faster than the interval answers slow_down and grows the interval by 5 s (RFC 8628).
 */
#define G_LOG_DOMAIN "fake-graph"

#include "config.h"

#include "fake-graph.h"

#include <math.h>
#include <string.h>

static void
device_free (FakeDeviceCode *d)
{
  g_free (d->device_code);
  g_free (d->user_code);
  g_free (d->scope);
  g_free (d);
}

void
fake_auth_init (FakeAuth *auth)
{
  memset (auth, 0, sizeof *auth);
  g_mutex_init (&auth->lock);
  auth->access = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  auth->refresh = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  auth->devices = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) device_free);
  auth->device_order = g_ptr_array_new ();
  auth->access_lifetime = 3599;
  auth->device_interval = 5;
  auth->device_lifetime = 900;
}

void
fake_auth_clear (FakeAuth *auth)
{
  g_ptr_array_unref (auth->device_order);
  g_hash_table_unref (auth->devices);
  g_hash_table_unref (auth->refresh);
  g_hash_table_unref (auth->access);
  g_free (auth->static_token);
  g_free (auth->client_id);
  g_mutex_clear (&auth->lock);
}

/* auth->lock held. */
static cJSON *
mint_locked (FakeAuth *auth, double lifetime, const char *scope)
{
  g_autofree char *rnd_a = fake_random_token (24);
  g_autofree char *rnd_r = fake_random_token (24);
  auth->counter++;
  char *access = g_strdup_printf ("fake-at-%" G_GUINT64_FORMAT "-%s", auth->counter, rnd_a);
  char *refresh = g_strdup_printf ("fake-rt-%" G_GUINT64_FORMAT "-%s", auth->counter, rnd_r);
  gint64 *expiry = g_new (gint64, 1);
  *expiry = g_get_monotonic_time () + (gint64) (lifetime * G_USEC_PER_SEC);
  cJSON *o = cJSON_CreateObject ();
  cJSON_AddStringToObject (o, "token_type", "Bearer");
  cJSON_AddStringToObject (o, "scope", scope ? scope : "Files.Read Files.Read.All offline_access");
  cJSON_AddNumberToObject (o, "expires_in", ceil (lifetime));
  cJSON_AddNumberToObject (o, "ext_expires_in", ceil (lifetime));
  cJSON_AddStringToObject (o, "access_token", access);
  cJSON_AddStringToObject (o, "refresh_token", refresh);
  g_hash_table_insert (auth->access, access, expiry);
  g_hash_table_insert (auth->refresh, refresh, g_strdup (scope ? scope : ""));
  return o;
}

cJSON *
fake_auth_mint (FakeAuth *auth, double lifetime, const char *scope)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&auth->lock);
  return mint_locked (auth, lifetime > 0 ? lifetime : auth->access_lifetime, scope);
}

int
fake_auth_check (FakeAuth *auth, const char *token)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&auth->lock);
  if (auth->static_token && g_strcmp0 (token, auth->static_token) == 0)
    return 0;
  gint64 *expiry = token ? g_hash_table_lookup (auth->access, token) : NULL;
  if (expiry == NULL)
    return 1;
  return g_get_monotonic_time () < *expiry ? 0 : 2;
}

static char *
user_code_new (void)
{
  static const char alphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
  char code[10];
  for (int i = 0; i < 9; i++)
    code[i] = alphabet[g_random_int_range (0, (gint32) sizeof alphabet - 1)];
  code[9] = 0;
  return g_strdup (code);
}

static enum MHD_Result
devicecode (FakeServer *server, struct MHD_Connection *conn, GHashTable *form)
{
  const char *client_id = g_hash_table_lookup (form, "client_id");
  const char *scope = g_hash_table_lookup (form, "scope");
  if (client_id == NULL || *client_id == 0)
    return fake_respond_oauth_error (conn, server, 400, "invalid_request",
                                     "AADSTS900144: The request body must contain: client_id");
  if (server->auth.client_id && strcmp (client_id, server->auth.client_id) != 0)
    return fake_respond_oauth_error (conn, server, 400, "unauthorized_client",
                                     "AADSTS700016: Application not found");

  FakeAuth *auth = &server->auth;
  g_autoptr(cJSON) o = cJSON_CreateObject ();
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&auth->lock);
    FakeDeviceCode *d = g_new0 (FakeDeviceCode, 1);
    d->device_code = fake_random_token (32);
    d->user_code = user_code_new ();
    d->state = FAKE_DEVICE_PENDING;
    d->expires = g_get_monotonic_time () + (gint64) auth->device_lifetime * G_USEC_PER_SEC;
    d->interval = auth->device_interval;
    d->scope = g_strdup (scope);
    g_hash_table_insert (auth->devices, d->device_code, d);
    g_ptr_array_add (auth->device_order, d);
    g_autofree char *uri = g_strdup_printf ("%s/devicelogin", server->graph_base);
    g_autofree char *msg = g_strdup_printf ("To sign in, use a web browser to open the page %s and "
                                            "enter the code %s to authenticate.", uri, d->user_code);
    cJSON_AddStringToObject (o, "device_code", d->device_code);
    cJSON_AddStringToObject (o, "user_code", d->user_code);
    cJSON_AddStringToObject (o, "verification_uri", uri);
    cJSON_AddNumberToObject (o, "expires_in", auth->device_lifetime);
    cJSON_AddNumberToObject (o, "interval", d->interval);
    cJSON_AddStringToObject (o, "message", msg);
  }
  return fake_respond_json (conn, server, 200, o, NULL);
}

static enum MHD_Result
token_device (FakeServer *server, struct MHD_Connection *conn, GHashTable *form)
{
  FakeAuth *auth = &server->auth;
  const char *code = g_hash_table_lookup (form, "device_code");
  const char *err = NULL, *desc = NULL;
  g_autoptr(cJSON) tokens = NULL;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&auth->lock);
    FakeDeviceCode *d = code ? g_hash_table_lookup (auth->devices, code) : NULL;
    gint64 now = g_get_monotonic_time ();
    if (d == NULL)
      err = "bad_verification_code", desc = "AADSTS70019: the device code is not known";
    else
      {
        if (d->state == FAKE_DEVICE_PENDING && now >= d->expires)
          d->state = FAKE_DEVICE_EXPIRED;
        switch (d->state)
          {
          case FAKE_DEVICE_EXPIRED:
            err = "expired_token", desc = "AADSTS70020: The provided value for the input parameter 'device_code' is not valid. This device code has expired.";
            break;
          case FAKE_DEVICE_DECLINED:
            err = "authorization_declined", desc = "AADSTS70000: the user declined to authorize";
            break;
          case FAKE_DEVICE_CONSUMED:
            err = "invalid_grant", desc = "AADSTS54005: the device code was already redeemed";
            break;
          case FAKE_DEVICE_APPROVED:
            tokens = mint_locked (auth, auth->access_lifetime, d->scope);
            d->state = FAKE_DEVICE_CONSUMED;
            break;
          case FAKE_DEVICE_PENDING:
            if (d->forced_slow_downs > 0 ||
                (d->interval > 0 && d->last_poll != 0 &&
                 now - d->last_poll < (gint64) d->interval * G_USEC_PER_SEC))
              {
                if (d->forced_slow_downs > 0)
                  d->forced_slow_downs--;
                d->interval += 5;
                err = "slow_down", desc = "AADSTS70000: polling too fast";
              }
            else
              err = "authorization_pending", desc = "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.";
            d->last_poll = now;
            break;
          }
      }
  }
  if (tokens)
    return fake_respond_json (conn, server, 200, tokens, NULL);
  return fake_respond_oauth_error (conn, server, 400, err, desc);
}

static enum MHD_Result
token_refresh (FakeServer *server, struct MHD_Connection *conn, GHashTable *form)
{
  FakeAuth *auth = &server->auth;
  const char *rt = g_hash_table_lookup (form, "refresh_token");
  const char *scope = g_hash_table_lookup (form, "scope");
  g_autoptr(cJSON) tokens = NULL;
  gboolean unavailable = FALSE;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new (&auth->lock);
    char *old_key = NULL, *old_scope = NULL;
    if (auth->refresh_unavailable)
      unavailable = TRUE;
    else if (rt && g_hash_table_steal_extended (auth->refresh, rt, (gpointer *) &old_key,
                                                (gpointer *) &old_scope))
      {
        /* Rotation: the old refresh token is gone from the table before the new one exists. */
        g_autofree char *drop = old_key;
        g_autofree char *keep = old_scope;
        tokens = mint_locked (auth, auth->access_lifetime, scope ? scope : (*keep ? keep : NULL));
      }
  }
  if (unavailable)
    return fake_respond_oauth_error (conn, server, 503, "temporarily_unavailable",
                                     "AADSTS50196: the server is temporarily unavailable");
  if (tokens == NULL)
    {
      g_message ("token: refresh grant with an unknown or already used refresh token");
      return fake_respond_oauth_error (conn, server, 400, "invalid_grant",
                                       "AADSTS70000: The provided grant has expired due to it being revoked, "
                                       "a fresh auth token is needed.");
    }
  return fake_respond_json (conn, server, 200, tokens, NULL);
}

enum MHD_Result
fake_oauth_handle (FakeServer *server, struct MHD_Connection *conn, const char *tenant,
                   const char *endpoint, const GString *body)
{
  g_autoptr(GHashTable) form = fake_parse_form (body->str, body->len);
  if (strcmp (endpoint, "devicecode") == 0)
    return devicecode (server, conn, form);

  const char *client_id = g_hash_table_lookup (form, "client_id");
  if (client_id == NULL || *client_id == 0)
    return fake_respond_oauth_error (conn, server, 400, "invalid_request",
                                     "AADSTS900144: The request body must contain: client_id");
  if (server->auth.client_id && strcmp (client_id, server->auth.client_id) != 0)
    return fake_respond_oauth_error (conn, server, 400, "unauthorized_client",
                                     "AADSTS700016: Application not found");
  const char *grant = g_hash_table_lookup (form, "grant_type");
  if (g_strcmp0 (grant, "refresh_token") == 0)
    return token_refresh (server, conn, form);
  if (g_strcmp0 (grant, "urn:ietf:params:oauth:grant-type:device_code") == 0 ||
      g_strcmp0 (grant, "device_code") == 0)
    return token_device (server, conn, form);
  return fake_respond_oauth_error (conn, server, 400, "unsupported_grant_type",
                                   "AADSTS70003: the grant type is not supported");
}
