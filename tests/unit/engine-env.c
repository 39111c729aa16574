/* The engine tests' environment (see engine-env.h). */
#include "config.h"

#include "engine-env.h"

#include "fake-graph-fixture.h"

#include <onedrive-syncfs/qxhash.h>

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

gboolean
env_available (void)
{
  return TRUE;
}

static cJSON *
admin_call (Env *env, const char *method, const char *path, const char *json_body, long *status_out)
{
  g_autoptr (GError) error = NULL;
  guint status = 0;
  /* The fixture GETs without a body and POSTs with one. */
  const char *body = json_body ? json_body : (strcmp (method, "POST") == 0 ? "{}" : NULL);
  g_autofree char *text = fake_graph_admin (env->fake, path, body, &status, &error);
  if (!text)
    g_error ("admin %s %s: %s", method, path, error->message);
  *status_out = status;
  return cJSON_Parse (text);
}

cJSON *
env_admin (Env *env, const char *method, const char *path, const char *json_body)
{
  long status;
  cJSON *res = admin_call (env, method, path, json_body, &status);
  if (status < 200 || status > 299)
    {
      g_autofree char *text = res ? cJSON_PrintUnformatted (res) : g_strdup ("(no body)");
      g_error ("admin %s %s %s: HTTP %ld %s", method, path, json_body ? json_body : "", status, text);
    }
  return res;
}

void
env_do (Env *env, const char *method, const char *path, const char *json_body)
{
  g_autoptr (cJSON) r = env_admin (env, method, path, json_body);
}

void
env_faults (Env *env, const char *json)
{
  env_do (env, "POST", "faults", json);
}

static cJSON *
itemop (Env *env, const char *op, const char *json)
{
  g_autofree char *path = g_strdup_printf ("items/%s", op);
  return env_admin (env, "POST", path, json);
}

void
env_itemop (Env *env, const char *op, const char *json)
{
  g_autoptr (cJSON) r = itemop (env, op, json);
}

static char *
add_json (const char *path, const char *content, guint64 size, guint64 seed, gboolean folder)
{
  g_autoptr (cJSON) o = cJSON_CreateObject ();
  cJSON_AddStringToObject (o, "path", path);
  cJSON_AddBoolToObject (o, "parents", 1);
  if (folder)
    cJSON_AddBoolToObject (o, "folder", 1);
  else if (content)
    cJSON_AddStringToObject (o, "content", content);
  else
    {
      cJSON_AddNumberToObject (o, "size", (double) size);
      cJSON_AddNumberToObject (o, "seed", (double) seed);
    }
  char *t = cJSON_PrintUnformatted (o);
  char *out = g_strdup (t);
  cJSON_free (t);
  return out;
}

char *
env_add_file_id (Env *env, const char *path, const char *content)
{
  g_autofree char *body = add_json (path, content, 0, 0, FALSE);
  g_autoptr (cJSON) r = itemop (env, "add", body);
  return g_strdup (cJSON_GetObjectItem (r, "id")->valuestring);
}

void
env_add_file (Env *env, const char *path, const char *content)
{
  g_free (env_add_file_id (env, path, content));
}

gboolean
env_try_add_file (Env *env, const char *path, const char *content)
{
  g_autofree char *body = add_json (path, content, 0, 0, FALSE);
  long status;
  g_autoptr (cJSON) r = admin_call (env, "POST", "items/add", body, &status);
  return status == 200;
}

void
env_add_generated (Env *env, const char *path, guint64 size, guint64 seed)
{
  g_autofree char *body = add_json (path, NULL, size, seed, FALSE);
  g_autoptr (cJSON) r = itemop (env, "add", body);
}

void
env_add_folder (Env *env, const char *path)
{
  g_autofree char *body = add_json (path, NULL, 0, 0, TRUE);
  g_autoptr (cJSON) r = itemop (env, "add", body);
}

/* ---- the engine ---------------------------------------------------------------------- */

static void
on_notify (SyncNotifyKind kind, guint64 ino, guint64 parent_ino, const char *name, gpointer user_data)
{
  Env *env = user_data;
  g_mutex_lock (&env->lock);
  env->notifications++;
  g_cond_broadcast (&env->cond);
  g_mutex_unlock (&env->lock);
}

static void
env_engine_close (Env *env)
{
  g_clear_pointer (&env->engine, sync_engine_free);
  g_clear_pointer (&env->client, graph_client_free);
  g_clear_pointer (&env->store, store_free);
}

static void
write_token_file (Env *env)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *access = NULL, *refresh = NULL;
  g_assert_true (fake_graph_mint_token (env->fake, 0, &access, &refresh, &error));
  g_autoptr (cJSON) file = cJSON_CreateObject ();
  cJSON_AddStringToObject (file, "refresh_token", refresh);
  cJSON_AddStringToObject (file, "access_token", access);
  cJSON_AddNumberToObject (file, "expires_at", (double) (g_get_real_time () / G_USEC_PER_SEC + 3000));
  char *text = cJSON_PrintUnformatted (file);
  int fd = open (env->token_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  g_assert_cmpint (fd, >=, 0);
  g_assert_cmpint (write (fd, text, strlen (text)), ==, (gssize) strlen (text));
  close (fd);
  cJSON_free (text);
}

void
env_engine (Env *env, const EnvOptions *opts)
{
  static const char *const default_sources[] = { "/Docs", NULL };
  EnvOptions none = { 0 };
  if (!opts)
    opts = &none;
  env_engine_close (env);

  g_autoptr (GError) error = NULL;
  env->store = store_open (env->db_path, &error);
  g_assert_no_error (error);
  if (!g_file_test (env->token_file, G_FILE_TEST_EXISTS))
    write_token_file (env);
  FakeGraph *f = env->fake;
  GraphConfig gc = {
    .graph_url = f->graph_url,
    .login_url = f->login_url,
    .client_id = "engine-tests",
    .token_file = env->token_file,
    .max_retries = 3,
    .retry_base_ms = 10,
    .retry_max_ms = 100,
    .stall_timeout_s = opts->stall_timeout_s ? opts->stall_timeout_s : 20,
  };
  env->client = graph_client_new (&gc, &error);
  g_assert_no_error (error);
  SyncConfig sc = {
    .workers = opts->workers,
    .cache_dir = env->cache_dir,
    .max_file_size = opts->max_file_size,
    .include_globs = opts->include_globs,
    .exclude_globs = opts->exclude_globs,
    .sources = opts->sources ? opts->sources : default_sources,
    .sync_interval = opts->sync_interval,
  };
  env->engine = sync_engine_new (&sc, env->store, env->client, &error);
  g_assert_no_error (error);
  sync_engine_set_notify (env->engine, on_notify, env);
}

cJSON *
env_status (Env *env)
{
  g_autofree char *text = sync_engine_status_json (env->engine);
  cJSON *st = cJSON_Parse (text);
  g_assert_nonnull (st);
  return st;
}

const char *
env_sync (Env *env, SyncStartFlags flags)
{
  g_autoptr (GError) error = NULL;
  g_assert_true (sync_engine_start (env->engine, flags, &error));
  g_assert_no_error (error);
  g_assert_true (sync_engine_wait_idle (env->engine, 120 * G_USEC_PER_SEC));
  g_autoptr (cJSON) st = env_status (env);
  g_free (env->last_state);
  env->last_state = g_strdup (cJSON_GetObjectItem (st, "state")->valuestring);
  if (g_test_verbose ())
    {
      g_autofree char *text = cJSON_Print (st);
      g_test_message ("status after run: %s", text);
    }
  return env->last_state;
}

static gboolean
lookup_path (Env *env, const char *path, StoreEntry *out)
{
  g_auto (GStrv) parts = g_strsplit (path, "/", -1);
  guint64 ino = STORE_ROOT_INO;
  gboolean found = FALSE;
  for (guint i = 0; parts[i]; i++)
    {
      if (!*parts[i])
        continue;
      store_entry_clear (out);
      if (!store_lookup (env->store, ino, parts[i], out, NULL))
        return FALSE;
      ino = out->ino;
      found = TRUE;
    }
  return found;
}

gboolean
env_mount_has (Env *env, const char *path)
{
  g_auto (StoreEntry) e = { 0 };
  return lookup_path (env, path, &e);
}

static char *
object_hash (Env *env, const char *object)
{
  g_autofree char *p = g_build_filename (env->cache_dir, "objects", object, NULL);
  g_autofree char *data = NULL;
  gsize len = 0;
  if (!g_file_get_contents (p, &data, &len, NULL))
    return NULL;
  GraphQxHash h;
  graph_qxhash_init (&h);
  graph_qxhash_update (&h, data, len);
  return graph_qxhash_final_base64 (&h);
}

static void
walk (Env *env, guint64 ino, const char *path, GHashTable *out)
{
  g_autoptr (GPtrArray) kids = store_readdir (env->store, ino, NULL);
  g_assert_nonnull (kids);
  for (guint i = 0; i < kids->len; i++)
    {
      StoreEntry *e = kids->pdata[i];
      g_autofree char *p = g_strdup_printf ("%s/%s", path, e->name);
      if (e->kind == STORE_KIND_DIR)
        {
          g_hash_table_insert (out, g_strdup (p), g_strdup ("dir"));
          walk (env, e->ino, p, out);
        }
      else
        {
          char *hash = e->cache_object ? object_hash (env, e->cache_object) : NULL;
          g_hash_table_insert (out, g_strdup (p), hash ? hash : g_strdup ("(no object)"));
        }
    }
  g_ptr_array_set_free_func (kids, (GDestroyNotify) store_entry_free);
}

gboolean
env_mirror_equals_remote (Env *env, const char *source, char **why)
{
  g_autoptr (GHashTable) want = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_autoptr (cJSON) tree = env_admin (env, "GET", "tree", NULL);
  g_autofree char *prefix = g_strconcat (source, "/", NULL);
  const cJSON *it;
  cJSON_ArrayForEach (it, cJSON_GetObjectItem (tree, "items"))
    {
      const char *p = cJSON_GetObjectItem (it, "path")->valuestring;
      if (!g_str_has_prefix (p, prefix))
        continue;
      gboolean folder = cJSON_IsTrue (cJSON_GetObjectItem (it, "folder"));
      const cJSON *h = cJSON_GetObjectItem (it, "quickXorHash");
      double size = cJSON_GetObjectItem (it, "size")->valuedouble;
      const char *hash = folder ? "dir" : cJSON_IsString (h) ? h->valuestring
                                  : size == 0 ? "AAAAAAAAAAAAAAAAAAAAAAAAAAA=" : "(no hash)";
      g_hash_table_insert (want, g_strdup (p), g_strdup (hash));
    }

  g_autoptr (GHashTable) have = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_auto (StoreEntry) root = { 0 };
  if (!lookup_path (env, source, &root))
    {
      *why = g_strdup_printf ("%s is not in the mount", source);
      return FALSE;
    }
  walk (env, root.ino, source, have);

  GHashTableIter iter;
  gpointer k, v;
  g_hash_table_iter_init (&iter, want);
  while (g_hash_table_iter_next (&iter, &k, &v))
    {
      const char *got = g_hash_table_lookup (have, k);
      if (!got)
        {
          *why = g_strdup_printf ("%s missing from the mount", (char *) k);
          return FALSE;
        }
      if (strcmp (got, v) != 0)
        {
          *why = g_strdup_printf ("%s: mount has %s, remote %s", (char *) k, got, (char *) v);
          return FALSE;
        }
    }
  g_hash_table_iter_init (&iter, have);
  while (g_hash_table_iter_next (&iter, &k, &v))
    if (!g_hash_table_contains (want, k))
      {
        *why = g_strdup_printf ("%s in the mount but not remote", (char *) k);
        return FALSE;
      }
  return TRUE;
}

guint
env_cache_objects (Env *env)
{
  g_autofree char *objects = g_build_filename (env->cache_dir, "objects", NULL);
  g_autoptr (GDir) d = g_dir_open (objects, 0, NULL);
  guint n = 0;
  while (d && g_dir_read_name (d))
    n++;
  return n;
}

gboolean
env_exclude (Env *env, const char *path)
{
  g_auto (StoreEntry) e = { 0 };
  if (!lookup_path (env, path, &e))
    return FALSE;
  g_autoptr (GPtrArray) objects = NULL;
  g_autoptr (GError) error = NULL;
  gboolean ok = store_exclude (env->store, e.ino, &objects, &error);
  g_assert_no_error (error);
  for (guint i = 0; objects && i < objects->len; i++)
    {
      g_autofree char *p = g_build_filename (env->cache_dir, "objects", (char *) objects->pdata[i], NULL);
      g_unlink (p);
    }
  return ok;
}

void
env_wait_notify (Env *env)
{
  g_mutex_lock (&env->lock);
  guint64 seen = env->notifications;
  gint64 until = g_get_monotonic_time () + 100 * 1000;
  while (env->notifications == seen && g_cond_wait_until (&env->cond, &env->lock, until))
    ;
  g_mutex_unlock (&env->lock);
}

void
env_wait_a_little (Env *env)
{
  g_usleep (10 * 1000);
}

/* ---- fixture ---------------------------------------------------------------------------- */

static void
rm_rf (const char *path)
{
  g_autoptr (GDir) d = g_dir_open (path, 0, NULL);
  if (d)
    {
      const char *name;
      while ((name = g_dir_read_name (d)))
        {
          g_autofree char *p = g_build_filename (path, name, NULL);
          if (g_file_test (p, G_FILE_TEST_IS_DIR) && !g_file_test (p, G_FILE_TEST_IS_SYMLINK))
            rm_rf (p);
          else
            g_unlink (p);
        }
      g_rmdir (path);
    }
  else
    g_unlink (path);
}

static void
env_setup (Env *env, gconstpointer data)
{
  memset (env, 0, sizeof *env);
  g_mutex_init (&env->lock);
  g_cond_init (&env->cond);
  env->dir = g_dir_make_tmp ("odsf-engine-XXXXXX", NULL);
  g_assert_nonnull (env->dir);
  env->cache_dir = g_build_filename (env->dir, "cache", NULL);
  env->db_path = g_build_filename (env->dir, "state.db", NULL);
  env->token_file = g_build_filename (env->dir, "token.json", NULL);
  g_autofree char *data_dir = g_build_filename (env->dir, "drive", NULL);
  g_mkdir_with_parents (data_dir, 0700);
  g_autoptr (GError) error = NULL;
  const char *args[] = { "--data", data_dir, NULL };
  env->fake = fake_graph_start (args, &error);
  g_assert_no_error (error);
  env_add_folder (env, "/Docs");
}

static void
env_teardown (Env *env, gconstpointer data)
{
  env_engine_close (env);
  g_autoptr (GError) error = NULL;
  gboolean clean = fake_graph_stop (env->fake, &error);
  g_clear_pointer (&env->fake, fake_graph_free);
  g_assert_no_error (error);
  g_assert_true (clean);
  rm_rf (env->dir);
  g_free (env->dir);
  g_free (env->cache_dir);
  g_free (env->db_path);
  g_free (env->token_file);
  g_free (env->last_state);
  g_mutex_clear (&env->lock);
  g_cond_clear (&env->cond);
}

void
env_add (const char *test_path, void (*fn) (Env *env, gconstpointer data))
{
  g_test_add (test_path, Env, NULL, env_setup, fn, env_teardown);
}
