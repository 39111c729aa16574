/* Sign-in: the token file, the refresh grant and the device-code flow.
 *
 * The refresh token is the one credential that outlives the process, and the service
 * rotates it: every refresh answers with a new one and invalidates the old. Losing the new
 * one (a crash between the answer and the write) would lock the user out, so the order is
 * fixed: the answer arrives → the token file is replaced atomically (temp file created 0600
 * in the same folder, written, fsync'd, renamed over the old, folder fsync'd) → only then
 * are the new tokens published to the other threads and used. Refreshes are serialised by
 * refresh_lock, and a thread whose token was already replaced while it waited for the lock
 * does not refresh again (that would spend the rotated token a second time for nothing).
 *
 * Tokens never reach a log line, an error message or a debug print.
 */
#define G_LOG_DOMAIN "odsf-graph"

#include "config.h"

#include "graph-private.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCOPES "Files.Read Files.Read.All offline_access"
#define MAX_TOKEN_FILE (256 * 1024)
#define MAX_TOKEN_LEN  (64 * 1024)

char *
graph_token_file_path (const char *profile)
{
  return g_build_filename (g_get_user_config_dir (), "onedrive-syncfs",
                           profile != NULL ? profile : "default", "token.json", NULL);
}

gboolean
graph_client_has_token (GraphClient *client)
{
  G_GNUC_UNUSED g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&client->token_lock);
  return client->refresh_token != NULL;
}

static void
clear_secret (char **s)
{
  if (*s != NULL)
    explicit_bzero (*s, strlen (*s));
  g_clear_pointer (s, g_free);
}

static const char *
token_string (const cJSON *obj, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  if (!cJSON_IsString (v) || v->valuestring[0] == '\0' || strlen (v->valuestring) > MAX_TOKEN_LEN)
    return NULL;
  /* Tokens go into an HTTP header: nothing that could split it. */
  for (const char *c = v->valuestring; *c; c++)
    if ((guchar) *c < 0x21 || (guchar) *c > 0x7e)
      return NULL;
  return v->valuestring;
}

gboolean
graph_auth_load (GraphClient *client, GError **error)
{
  const char *path = client->token_file;
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
  if (fd < 0)
    {
      if (errno == ENOENT)
        return TRUE;  /* not logged in yet: the first authenticated request says so */
      int errsv = errno;
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH, "Cannot open the token file %s: %s%s", path,
                   g_strerror (errsv), errsv == ELOOP ? " (a symbolic link is not accepted)" : "");
      return FALSE;
    }
  struct stat st;
  if (fstat (fd, &st) != 0 || !S_ISREG (st.st_mode))
    {
      close (fd);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH, "The token file %s is not a regular file", path);
      return FALSE;
    }
  if ((st.st_mode & 077) != 0)
    {
      close (fd);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                   "The token file %s can be accessed by other users (mode %04o); it holds your "
                   "OneDrive credentials. Fix it with: chmod 600 '%s' (and consider logging in again, "
                   "since others may have read it)", path, (guint) (st.st_mode & 07777), path);
      return FALSE;
    }
  if (st.st_uid != getuid ())
    {
      close (fd);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                   "The token file %s belongs to another user (uid %u); log in again as yourself (onedrive-syncctl login)",
                   path, (guint) st.st_uid);
      return FALSE;
    }
  if (st.st_size > MAX_TOKEN_FILE)
    {
      close (fd);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH, "The token file %s is too large to be one", path);
      return FALSE;
    }
  g_autofree char *text = g_malloc ((gsize) st.st_size + 1);
  gsize got = 0;
  while (got < (gsize) st.st_size)
    {
      ssize_t n = read (fd, text + got, (gsize) st.st_size - got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      got += (gsize) n;
    }
  close (fd);
  g_autoptr (cJSON) root = cJSON_ParseWithLength (text, got);
  explicit_bzero (text, got);
  const char *rt = cJSON_IsObject (root) ? token_string (root, "refresh_token") : NULL;
  if (rt == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                   "The token file %s holds no usable refresh_token; log in again (onedrive-syncctl login)", path);
      return FALSE;
    }
  const char *at = token_string (root, "access_token");
  const cJSON *exp = cJSON_GetObjectItemCaseSensitive (root, "expires_at");

  G_GNUC_UNUSED g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&client->token_lock);
  clear_secret (&client->refresh_token);
  clear_secret (&client->access_token);
  client->refresh_token = g_strdup (rt);
  client->access_token = g_strdup (at);
  client->expires_at = cJSON_IsNumber (exp) ? (gint64) exp->valuedouble : 0;
  client->token_generation++;
  return TRUE;
}

static gboolean
write_all (int fd, const char *data, gsize len)
{
  while (len > 0)
    {
      ssize_t n = write (fd, data, len);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE;
      data += n;
      len -= (gsize) n;
    }
  return TRUE;
}

gboolean
graph_auth_save (const char *path, const char *refresh_token, const char *access_token,
                 gint64 expires_at, GError **error)
{
  g_autofree char *dir = g_path_get_dirname (path);
  if (g_mkdir_with_parents (dir, 0700) != 0)
    {
      graph_set_io_error (error, errno, "Creating %s", dir);
      return FALSE;
    }
  g_autoptr (cJSON) root = cJSON_CreateObject ();
  cJSON_AddStringToObject (root, "refresh_token", refresh_token);
  if (access_token != NULL)
    cJSON_AddStringToObject (root, "access_token", access_token);
  cJSON_AddNumberToObject (root, "expires_at", (double) expires_at);
  char *text = cJSON_PrintUnformatted (root);
  if (text == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_FAILED, "Out of memory writing %s", path);
      return FALSE;
    }
  gsize len = strlen (text);

  g_autofree char *tmp = g_strconcat (path, ".XXXXXX", NULL);
  /* Created 0600 from the start: there is no moment where the tokens sit in a file that
   * others can open. */
  int fd = g_mkstemp_full (tmp, O_WRONLY | O_CLOEXEC, 0600);
  int errsv = 0;
  const char *step = NULL;
  if (fd < 0)
    {
      errsv = errno;
      step = "creating";
    }
  else if (!write_all (fd, text, len) || !write_all (fd, "\n", 1))
    step = "writing";
  else if (fsync (fd) != 0)
    step = "syncing";
  if (step != NULL && errsv == 0)
    errsv = errno;
  explicit_bzero (text, len);
  cJSON_free (text);
  if (fd >= 0 && close (fd) != 0 && step == NULL)
    {
      errsv = errno;
      step = "closing";
    }
  if (step == NULL && rename (tmp, path) != 0)
    {
      errsv = errno;
      step = "renaming";
    }
  if (step != NULL)
    {
      if (fd >= 0)
        unlink (tmp);
      graph_set_io_error (error, errsv, "Saving the token file %s (%s %s)", path, step, tmp);
      return FALSE;
    }
  /* The rename is durable only once the folder is. */
  int dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0)
    {
      fsync (dfd);
      close (dfd);
    }
  return TRUE;
}

/* ---- token endpoint ------------------------------------------------------------------- */

static char *
form_encode (const char *first_key, ...)
{
  GString *out = g_string_new (NULL);
  va_list args;
  va_start (args, first_key);
  for (const char *key = first_key; key != NULL; key = va_arg (args, const char *))
    {
      const char *value = va_arg (args, const char *);
      if (out->len > 0)
        g_string_append_c (out, '&');
      g_string_append_uri_escaped (out, key, NULL, FALSE);
      g_string_append_c (out, '=');
      g_string_append_uri_escaped (out, value != NULL ? value : "", NULL, FALSE);
    }
  va_end (args);
  return g_string_free (out, FALSE);
}

static char *
login_endpoint (GraphClient *client, const char *what)
{
  g_autofree char *tenant = g_uri_escape_string (client->tenant, NULL, FALSE);
  return g_strdup_printf ("%s/%s/oauth2/v2.0/%s", client->login_url, tenant, what);
}

/* POSTs @form to the token endpoint. TRUE + @root on 200; else FALSE with the mapped error
 * (the OAuth "error" string becomes graph_error_code (error, 0)). */
static gboolean
post_token (GraphClient *client, const char *endpoint, char *form, const char *what,
            cJSON **root, GCancellable *cancel, GError **error)
{
  g_autofree char *url = login_endpoint (client, endpoint);
  GraphCall call = { .http = { .method = "POST", .url = url, .what = what, .form = form, .json = TRUE } };
  GraphHttpResponse response = { 0 };
  gboolean ok = graph_client_call (client, &call, &response, cancel, error);
  explicit_bzero (form, strlen (form));
  if (ok)
    {
      *root = response.body != NULL
                ? graph_json_parse ((const char *) response.body->data, response.body->len) : NULL;
      if (!cJSON_IsObject (*root))
        {
          g_clear_pointer (root, cJSON_Delete);
          g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: the answer is not a JSON object", what);
          ok = FALSE;
        }
    }
  if (response.body != NULL)
    explicit_bzero (response.body->data, response.body->len);
  graph_http_response_clear (&response);
  return ok;
}

/* Takes a successful token answer: saves it (rotation: before anything uses it), then
 * publishes it. Caller holds refresh_lock. */
static gboolean
accept_tokens (GraphClient *client, const cJSON *root, const char *what, GError **error)
{
  const char *at = token_string (root, "access_token");
  const char *rt = token_string (root, "refresh_token");
  const cJSON *expires_in = cJSON_GetObjectItemCaseSensitive (root, "expires_in");
  if (at == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE, "%s: the answer holds no access_token", what);
      return FALSE;
    }
  gint64 lifetime = 3600;
  if (cJSON_IsNumber (expires_in) && expires_in->valuedouble > 0 && expires_in->valuedouble < 1e7)
    lifetime = (gint64) expires_in->valuedouble;
  else if (cJSON_IsString (expires_in))
    lifetime = CLAMP (g_ascii_strtoll (expires_in->valuestring, NULL, 10), 1, 10000000);
  gint64 expires_at = g_get_real_time () / G_USEC_PER_SEC + lifetime;

  g_autofree char *old_rt = NULL;
  g_mutex_lock (&client->token_lock);
  old_rt = g_strdup (client->refresh_token);
  g_mutex_unlock (&client->token_lock);
  /* No new refresh token: the old one stays valid and is kept. */
  const char *keep_rt = rt != NULL ? rt : old_rt;
  if (keep_rt == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                   "%s: the service sent no refresh token; was offline_access granted?", what);
      return FALSE;
    }
  if (client->token_file != NULL && !graph_auth_save (client->token_file, keep_rt, at, expires_at, error))
    {
      /* The service has already invalidated the old refresh token; keep the new one in
       * memory so a later refresh (and save) can still succeed, but do not use the access
       * token whose refresh token is not on disk. */
      g_mutex_lock (&client->token_lock);
      clear_secret (&client->refresh_token);
      client->refresh_token = g_strdup (keep_rt);
      g_mutex_unlock (&client->token_lock);
      clear_secret (&old_rt);
      return FALSE;
    }

  g_mutex_lock (&client->token_lock);
  clear_secret (&client->refresh_token);
  clear_secret (&client->access_token);
  client->refresh_token = g_strdup (keep_rt);
  client->access_token = g_strdup (at);
  client->expires_at = expires_at;
  /* Refresh a tenth of the lifetime early (at most 5 minutes): real tokens live an hour,
   * test tokens seconds. */
  client->refresh_margin_s = MIN (lifetime / 10, 300);
  client->token_generation++;
  g_mutex_unlock (&client->token_lock);
  clear_secret (&old_rt);
  return TRUE;
}

gboolean
graph_auth_refresh (GraphClient *client, guint64 failed_generation, GCancellable *cancel, GError **error)
{
  G_GNUC_UNUSED g_autoptr (GMutexLocker) refresh = g_mutex_locker_new (&client->refresh_lock);

  g_mutex_lock (&client->token_lock);
  gint64 now = g_get_real_time () / G_USEC_PER_SEC;
  gboolean replaced = client->token_generation != failed_generation && client->access_token != NULL
                      && client->expires_at - client->refresh_margin_s > now;
  g_autofree char *rt = replaced ? NULL : g_strdup (client->refresh_token);
  g_mutex_unlock (&client->token_lock);
  if (replaced)
    return TRUE;  /* another thread refreshed while this one waited */
  if (rt == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                   "Not logged in to OneDrive (no token in %s): log in first (onedrive-syncctl login)",
                   client->token_file != NULL ? client->token_file : "memory");
      return FALSE;
    }
  if (client->client_id == NULL)
    {
      clear_secret (&rt);
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH, "No client_id is configured (see docs/auth.md)");
      return FALSE;
    }

  g_autoptr (GError) local = NULL;
  g_autoptr (cJSON) root = NULL;
  char *form = form_encode ("grant_type", "refresh_token", "client_id", client->client_id,
                            "refresh_token", rt, "scope", SCOPES, NULL);
  clear_secret (&rt);
  gboolean ok = post_token (client, "token", form, "POST token (refresh)", &root, cancel, &local);
  g_free (form);
  if (!ok)
    {
      if (graph_error_has_code (local, "invalid_grant") || graph_error_has_code (local, "interaction_required")
          || graph_error_has_code (local, "invalid_client") || graph_error_has_code (local, "unauthorized_client"))
        {
          g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                       "The OneDrive sign-in is no longer valid (%s): log in again (onedrive-syncctl login)",
                       graph_error_code (local, 0));
          GraphErrorPrivate *p = graph_error_private (*error), *lp = graph_error_private (local);
          p->status = lp->status;
          p->codes = g_strdupv (lp->codes);
          return FALSE;
        }
      g_propagate_error (error, g_steal_pointer (&local));
      return FALSE;
    }
  if (!accept_tokens (client, root, "POST token (refresh)", error))
    return FALSE;
  g_debug ("Access token refreshed");
  return TRUE;
}

char *
graph_auth_access_token (GraphClient *client, guint64 *generation, GCancellable *cancel, GError **error)
{
  for (guint i = 0; i < 2; i++)
    {
      g_mutex_lock (&client->token_lock);
      gint64 now = g_get_real_time () / G_USEC_PER_SEC;
      char *token = NULL;
      if (client->access_token != NULL && client->expires_at - client->refresh_margin_s > now)
        token = g_strdup (client->access_token);
      *generation = client->token_generation;
      g_mutex_unlock (&client->token_lock);
      if (token != NULL)
        return token;
      if (i == 0 && !graph_auth_refresh (client, *generation, cancel, error))
        return NULL;
    }
  g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH, "No valid access token after a refresh: log in again (onedrive-syncctl login)");
  return NULL;
}

/* ---- device code ---------------------------------------------------------------------- */

static gint64
json_int (const cJSON *obj, const char *key, gint64 fallback)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  if (cJSON_IsNumber (v) && v->valuedouble >= 0 && v->valuedouble < 1e7)
    return (gint64) v->valuedouble;
  if (cJSON_IsString (v))
    {
      char *end = NULL;
      gint64 n = g_ascii_strtoll (v->valuestring, &end, 10);
      if (end != v->valuestring && *end == '\0' && n >= 0 && n < 10000000)
        return n;
    }
  return fallback;
}

static const char *
json_text (const cJSON *obj, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  if (!cJSON_IsString (v) || v->valuestring[0] == '\0' || strlen (v->valuestring) > 4096
      || !g_utf8_validate (v->valuestring, -1, NULL))
    return NULL;
  return v->valuestring;
}

gboolean
graph_client_login_device_code (GraphClient *client, GraphDeviceCodeFunc show, gpointer user_data,
                                GCancellable *cancel, GError **error)
{
  if (client->client_id == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                   "No client_id is configured: register an application first (see docs/auth.md)");
      return FALSE;
    }
  g_autoptr (cJSON) code = NULL;
  char *form = form_encode ("client_id", client->client_id, "scope", SCOPES, NULL);
  gboolean ok = post_token (client, "devicecode", form, "POST devicecode", &code, cancel, error);
  g_free (form);
  if (!ok)
    return FALSE;

  const char *device_code = token_string (code, "device_code");
  const char *user_code = json_text (code, "user_code");
  const char *uri = json_text (code, "verification_uri");
  if (uri == NULL)
    uri = json_text (code, "verification_url");
  if (device_code == NULL || user_code == NULL || uri == NULL)
    {
      g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_PARSE,
                   "POST devicecode: the answer lacks device_code, user_code or verification_uri");
      return FALSE;
    }
  gint64 interval = json_int (code, "interval", 5);
  gint64 expires_in = json_int (code, "expires_in", 900);
  gint64 deadline = g_get_monotonic_time () + expires_in * G_USEC_PER_SEC;
  if (show != NULL)
    show (uri, user_code, json_text (code, "message"), user_data);

  for (;;)
    {
      if (!graph_client_sleep (client, interval * 1000, cancel, error))
        return FALSE;
      if (g_get_monotonic_time () > deadline)
        {
          g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                       "The sign-in code %s expired before it was used: log in again", user_code);
          return FALSE;
        }
      g_autoptr (GError) local = NULL;
      g_autoptr (cJSON) root = NULL;
      char *poll = form_encode ("grant_type", "urn:ietf:params:oauth:grant-type:device_code",
                                "client_id", client->client_id, "device_code", device_code, NULL);
      ok = post_token (client, "token", poll, "POST token (device code)", &root, cancel, &local);
      g_free (poll);
      if (ok)
        {
          G_GNUC_UNUSED g_autoptr (GMutexLocker) refresh = g_mutex_locker_new (&client->refresh_lock);
          return accept_tokens (client, root, "POST token (device code)", error);
        }
      const char *oauth = graph_error_code (local, 0);
      if (g_error_matches (local, GRAPH_ERROR, GRAPH_ERROR_CANCELLED) || oauth == NULL)
        {
          g_propagate_error (error, g_steal_pointer (&local));
          return FALSE;
        }
      if (strcmp (oauth, "authorization_pending") == 0)
        continue;
      if (strcmp (oauth, "slow_down") == 0)
        {
          interval += 5;
          g_debug ("Device code: slow_down, polling every %" G_GINT64_FORMAT " s", interval);
          continue;
        }
      if (strcmp (oauth, "authorization_declined") == 0 || strcmp (oauth, "access_denied") == 0)
        g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                     "The sign-in was declined in the browser: nothing was saved; log in again to retry");
      else if (strcmp (oauth, "expired_token") == 0 || strcmp (oauth, "code_expired") == 0)
        g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                     "The sign-in code %s expired before it was used: log in again", user_code);
      else if (strcmp (oauth, "bad_verification_code") == 0)
        g_set_error (error, GRAPH_ERROR, GRAPH_ERROR_AUTH,
                     "The service does not know this sign-in code (bad_verification_code): log in again");
      else
        {
          g_propagate_error (error, g_steal_pointer (&local));
          return FALSE;
        }
      GraphErrorPrivate *p = graph_error_private (*error);
      if (p != NULL)
        {
          p->status = graph_error_status (local);
          p->codes = g_strdupv (graph_error_private (local)->codes);
        }
      return FALSE;
    }
}
