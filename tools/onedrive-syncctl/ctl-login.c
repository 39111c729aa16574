/* `onedrive-syncctl login` (see ctl-login.h).
 *
 * The settings come from the same place as the daemon's: the group [PROFILE] of the config
 * file, overridden by command-line flags; the token goes where the daemon will look for it,
 * $XDG_CONFIG_HOME/onedrive-syncfs/PROFILE/token.json (or the profile's token_file), mode 0600.
 * The config file is chosen by the daemon's rule plus our flag: --config, else
 * $ONEDRIVE_SYNCFS_CONFIG, else $XDG_CONFIG_HOME/onedrive-syncfs/config. A login that read
 * another file than the daemon would store the token where the daemon never looks.
 */
#define G_LOG_DOMAIN "odsf-ctl"

#include "config.h"

#include "ctl-format.h"
#include "ctl-login.h"

#include <onedrive-syncfs/graph-client.h>

#include <stdio.h>
#include <string.h>

typedef struct {
  char *profile, *client_id, *tenant, *login_url, *graph_url, *ca_file, *token_file, *config;
} LoginSettings;

static void
login_settings_clear (LoginSettings *s)
{
  g_free (s->profile);
  g_free (s->client_id);
  g_free (s->tenant);
  g_free (s->login_url);
  g_free (s->graph_url);
  g_free (s->ca_file);
  g_free (s->token_file);
  g_free (s->config);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (LoginSettings, login_settings_clear)

/* $XDG_*_HOME read from the environment each time, like the daemon does. */
static char *
xdg_dir (const char *var, const char *fallback)
{
  const char *v = g_getenv (var);
  if (v && g_path_is_absolute (v))
    return g_strdup (v);
  return g_build_filename (g_get_home_dir (), fallback, NULL);
}

/* Fills what the command line left unset from the config file's [profile] group. */
static gboolean
load_settings (LoginSettings *s, GError **error)
{
  if (!s->profile)
    s->profile = g_strdup ("default");
  if (!s->profile[0] || strchr (s->profile, '/') || s->profile[0] == '.')
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   "profile '%s': a name without '/' is needed", s->profile);
      return FALSE;
    }
  g_autofree char *base = xdg_dir ("XDG_CONFIG_HOME", ".config");
  /* As src/main.c: the variable, when set, names the file (a missing one reads as empty). */
  if (!s->config && g_getenv ("ONEDRIVE_SYNCFS_CONFIG") != NULL)
    s->config = g_strdup (g_getenv ("ONEDRIVE_SYNCFS_CONFIG"));
  if (!s->config)
    s->config = g_build_filename (base, "onedrive-syncfs", "config", NULL);
  g_autoptr (GKeyFile) kf = g_key_file_new ();
  g_autoptr (GError) local = NULL;
  if (!g_key_file_load_from_file (kf, s->config, G_KEY_FILE_NONE, &local))
    {
      if (!g_error_matches (local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
        {
          g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "config file %s: %s", s->config,
                       local->message);
          return FALSE;
        }
    }
  struct { char **field; const char *key; } keys[] = {
    { &s->client_id, "client_id" }, { &s->tenant, "tenant" }, { &s->login_url, "login_url" },
    { &s->graph_url, "graph_url" }, { &s->ca_file, "ca_file" }, { &s->token_file, "token_file" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++)
    if (!*keys[i].field)
      {
        char *v = g_key_file_get_string (kf, s->profile, keys[i].key, NULL);
        if (v && !v[0])
          g_clear_pointer (&v, g_free);
        *keys[i].field = v;
      }
  if (!s->token_file)
    s->token_file = g_build_filename (base, "onedrive-syncfs", s->profile, "token.json", NULL);
  return TRUE;
}

static void
show_code (const char *uri, const char *user_code, const char *message, gpointer user_data)
{
  /* stdout, flushed: a script or a test reads the URL and the code while we wait. */
  printf ("To sign in, open %s and enter the code %s\n", uri, user_code);
  fflush (stdout);
  fprintf (stderr, "Waiting for the sign-in to be approved (Ctrl-C to give up)...\n");
}

/* The exit code for a failed sign-in, from the OAuth error codes the Graph client keeps:
 * declined and expired are told apart because a script reacts differently (ask the user
 * again vs. start over). An AUTH error without a code is the client's own deadline: the code
 * expired while we polled. */
static CtlExit
login_failure_code (const GError *error)
{
  if (!g_error_matches (error, GRAPH_ERROR, GRAPH_ERROR_AUTH))
    return CTL_EXIT_ERROR;
  if (graph_error_has_code (error, "authorization_declined") || graph_error_has_code (error, "access_denied"))
    return CTL_EXIT_LOGIN_DECLINED;
  if (graph_error_has_code (error, "expired_token") || graph_error_has_code (error, "code_expired")
      || graph_error_code (error, 0) == NULL)
    return CTL_EXIT_LOGIN_EXPIRED;
  return CTL_EXIT_ERROR;
}

int
ctl_login_main (int argc, char **argv)
{
  g_auto (LoginSettings) s = { 0 };
  GOptionEntry entries[] = {
    { "profile", 'p', 0, G_OPTION_ARG_STRING, &s.profile, "Profile to sign in (default: default)", "P" },
    { "client-id", 0, 0, G_OPTION_ARG_STRING, &s.client_id, "Application (client) id (default: client_id of the profile)", "ID" },
    { "tenant", 0, 0, G_OPTION_ARG_STRING, &s.tenant, "common, consumers, organizations or a tenant id", "T" },
    { "login-url", 0, 0, G_OPTION_ARG_STRING, &s.login_url, "Identity platform base URL", "URL" },
    { "ca-file", 0, 0, G_OPTION_ARG_FILENAME, &s.ca_file, "Extra CA bundle to trust", "FILE" },
    { "token-file", 0, 0, G_OPTION_ARG_FILENAME, &s.token_file, "Where to store the token", "FILE" },
    { "config", 0, 0, G_OPTION_ARG_FILENAME, &s.config, "Config file (default: $ONEDRIVE_SYNCFS_CONFIG, else $XDG_CONFIG_HOME/onedrive-syncfs/config)", "FILE" },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new (NULL);
  g_option_context_set_summary (ctx, "Sign in with a device code and store the token for the daemon.");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, &argc, &argv, &error) || argc != 1)
    {
      fprintf (stderr, "onedrive-syncctl: %s\n", error ? error->message : "login takes no arguments");
      return CTL_EXIT_USAGE;
    }
  if (!load_settings (&s, &error))
    {
      fprintf (stderr, "onedrive-syncctl: %s\n", error->message);
      return CTL_EXIT_ERROR;
    }
  if (!s.client_id)
    {
      fprintf (stderr,
               "onedrive-syncctl: no client id for profile '%s'.\n"
               "Register an application (public client, device code flow) and set client_id=ID in\n"
               "the [%s] group of %s, or pass --client-id ID.\n",
               s.profile, s.profile, s.config);
      return CTL_EXIT_NOT_CONFIGURED;
    }

  GraphConfig config = {
    .graph_url = s.graph_url,
    .login_url = s.login_url,
    .tenant = s.tenant,
    .client_id = s.client_id,
    .ca_file = s.ca_file,
    .token_file = s.token_file,
  };
  g_autoptr (GraphClient) client = graph_client_new (&config, &error);
  if (!client)
    {
      fprintf (stderr, "onedrive-syncctl: %s\n", error->message);
      return CTL_EXIT_ERROR;
    }
  if (!graph_client_login_device_code (client, show_code, NULL, NULL, &error))
    {
      CtlExit code = login_failure_code (error);
      fprintf (stderr, "onedrive-syncctl: sign-in failed: %s\n", error->message);
      return code;
    }
  printf ("Signed in. The token is stored in %s (mode 0600).\n", s.token_file);
  return CTL_EXIT_OK;
}
