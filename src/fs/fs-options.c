/* Command line and config file: one validator for both.
 *
 * libfuse's fuse_opt fills a "raw" struct of strings (offsetof table, as sshfs does). Those
 * strings are malloc'd by libfuse and freed here with free(); nothing else in the daemon sees
 * them. Every setting is then resolved in one place: the command line's string if given,
 * else the config file's, else the default, and the chosen string goes through the same
 * parser whichever source it came from, so an error names the option and its origin.
 */
#define G_LOG_DOMAIN "odsf-options"

#include "config.h"

#define FUSE_USE_VERSION FUSE_MAKE_VERSION (3, 14)
#include <fuse_lowlevel.h>
#include <fuse_opt.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <onedrive-syncfs/fs-options.h>

G_DEFINE_QUARK (fs-options-error-quark, fs_options_error)

/* Strings straight from fuse_opt (malloc'd); NULL = not given on the command line. */
typedef struct {
  char *profile;
  char *workers;
  char *sync_interval;
  char *sync_on_mount;
  char *cache_dir;
  char *token_file;
  char *graph_url;
  char *login_url;
  char *tenant;
  char *client_id;
  char *ca_file;
  char *max_file_size;
  char *allow_other;
  char *verbose;
  /* Collected by the key callback, GLib-owned. */
  GPtrArray *sources;
  GPtrArray *include_globs;
  GPtrArray *exclude_globs;
  GPtrArray *positional;    /* MOUNTPOINT, or PROFILE MOUNTPOINT (mount(8), fstab) */
  GError *error;
} RawOptions;

enum {
  KEY_SOURCE,
  KEY_INCLUDE,
  KEY_EXCLUDE,
  KEY_ALLOW_OTHER,
  KEY_VERBOSE,
  KEY_SYNC_ON_MOUNT,
  KEY_MOUNT_WORD,
};

#define RAW_OPT(t, field) { t, offsetof (RawOptions, field), 0 }

static const struct fuse_opt raw_opts[] = {
  RAW_OPT ("profile=%s", profile),
  RAW_OPT ("workers=%s", workers),
  RAW_OPT ("sync_interval=%s", sync_interval),
  RAW_OPT ("sync_on_mount=%s", sync_on_mount),
  RAW_OPT ("cache_dir=%s", cache_dir),
  RAW_OPT ("token_file=%s", token_file),
  RAW_OPT ("graph_url=%s", graph_url),
  RAW_OPT ("login_url=%s", login_url),
  RAW_OPT ("tenant=%s", tenant),
  RAW_OPT ("client_id=%s", client_id),
  RAW_OPT ("ca_file=%s", ca_file),
  RAW_OPT ("max_file_size=%s", max_file_size),
  RAW_OPT ("allow_other=%s", allow_other),
  RAW_OPT ("verbose=%s", verbose),
  FUSE_OPT_KEY ("source=", KEY_SOURCE),
  FUSE_OPT_KEY ("include=", KEY_INCLUDE),
  FUSE_OPT_KEY ("exclude=", KEY_EXCLUDE),
  FUSE_OPT_KEY ("allow_other", KEY_ALLOW_OTHER),
  FUSE_OPT_KEY ("verbose", KEY_VERBOSE),
  FUSE_OPT_KEY ("-v", KEY_VERBOSE),
  FUSE_OPT_KEY ("sync_on_mount", KEY_SYNC_ON_MOUNT),
  /* Words mount(8) passes on from an fstab entry that mean nothing to a FUSE mount. */
  FUSE_OPT_KEY ("_netdev", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("noauto", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("defaults", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("auto", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("nofail", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("user", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("users", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("nouser", FUSE_OPT_KEY_DISCARD),
  /* fstab(5)'s free-text annotation ("comment=systemd.automount" and the like); a template
   * ending in '=' matches any value, so every comment= is dropped, whatever it says. */
  FUSE_OPT_KEY ("comment=", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("comment", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY ("ro", KEY_MOUNT_WORD),
  FUSE_OPT_END,
};

static void
raw_options_clear (RawOptions *raw)
{
  char **fields[] = {
    &raw->profile, &raw->workers, &raw->sync_interval, &raw->sync_on_mount, &raw->cache_dir,
    &raw->token_file, &raw->graph_url, &raw->login_url, &raw->tenant, &raw->client_id,
    &raw->ca_file, &raw->max_file_size, &raw->allow_other, &raw->verbose,
  };
  for (gsize i = 0; i < G_N_ELEMENTS (fields); i++)
    {
      free (*fields[i]);   /* allocated by fuse_opt with malloc */
      *fields[i] = NULL;
    }
  g_clear_pointer (&raw->sources, g_ptr_array_unref);
  g_clear_pointer (&raw->include_globs, g_ptr_array_unref);
  g_clear_pointer (&raw->exclude_globs, g_ptr_array_unref);
  g_clear_pointer (&raw->positional, g_ptr_array_unref);
  g_clear_error (&raw->error);
}

/* Replaces a malloc'd raw field with a malloc'd copy of @value. */
static int
raw_set (char **field, const char *value)
{
  free (*field);
  *field = strdup (value);
  return *field ? 0 : -1;
}

static int
raw_opt_proc (void *data, const char *arg, int key, struct fuse_args *outargs)
{
  RawOptions *raw = data;

  switch (key)
    {
    case KEY_SOURCE:
      g_ptr_array_add (raw->sources, g_strdup (arg + strlen ("source=")));
      return 0;
    case KEY_INCLUDE:
      g_ptr_array_add (raw->include_globs, g_strdup (arg + strlen ("include=")));
      return 0;
    case KEY_EXCLUDE:
      g_ptr_array_add (raw->exclude_globs, g_strdup (arg + strlen ("exclude=")));
      return 0;
    case KEY_ALLOW_OTHER:
      return raw_set (&raw->allow_other, "yes");
    case KEY_VERBOSE:
      return raw_set (&raw->verbose, "yes");
    case KEY_SYNC_ON_MOUNT:
      return raw_set (&raw->sync_on_mount, "yes");
    case KEY_MOUNT_WORD:
      /* "ro" would make the kernel refuse rm before we see it: exclusion needs a writable
       * mount, and the tree is read-only anyway. */
      g_message ("ignoring the mount option 'ro': the tree is always read-only");
      return 0;
    case FUSE_OPT_KEY_OPT:
      if (g_str_has_prefix (arg, "x-"))
        return 0;   /* x-systemd.* and friends: for mount(8) and systemd, not for us */
      return 1;
    case FUSE_OPT_KEY_NONOPT:
      /* The mount point is ours to check (a missing one gets its own message and exit code),
       * so it never reaches fuse_parse_cmdline, which would only say "bad mount point". */
      if (raw->positional->len == 2)
        {
          if (raw->error == NULL)
            g_set_error (&raw->error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_USAGE,
                         "unexpected argument '%s' (usage: [PROFILE] MOUNTPOINT)", arg);
          return -1;
        }
      g_ptr_array_add (raw->positional, g_strdup (arg));
      return 0;
    default:
      return 1;   /* keep for libfuse */
    }
}

static gboolean
parse_bool (const char *text, gboolean *out)
{
  static const char *yes[] = { "1", "yes", "true", "on" };
  static const char *no[] = { "0", "no", "false", "off" };
  for (gsize i = 0; i < G_N_ELEMENTS (yes); i++)
    {
      if (g_ascii_strcasecmp (text, yes[i]) == 0)
        return (*out = TRUE);
      if (g_ascii_strcasecmp (text, no[i]) == 0)
        return !(*out = FALSE);
    }
  return FALSE;
}

gboolean
fs_options_parse_size (const char *text, gint64 *bytes)
{
  if (text == NULL || !g_ascii_isdigit (text[0]))
    return FALSE;
  char *end = NULL;
  errno = 0;
  guint64 value = g_ascii_strtoull (text, &end, 10);
  if (errno != 0)
    return FALSE;
  guint shift = 0;
  switch (g_ascii_toupper (*end))
    {
    case '\0': break;
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: return FALSE;
    }
  /* Accept "10M", "10MiB" and "10MB" alike: all binary. */
  if (shift != 0 && (g_ascii_strcasecmp (end, "iB") == 0 || g_ascii_strcasecmp (end, "B") == 0))
    end += strlen (end);
  if (*end != '\0')
    return FALSE;
  if (value > ((guint64) G_MAXINT64 >> shift))
    return FALSE;
  *bytes = (gint64) (value << shift);
  return TRUE;
}

static gboolean
parse_uint (const char *text, guint max, guint *out)
{
  guint64 value = 0;
  if (!g_ascii_string_to_unsigned (text, 10, 0, max, &value, NULL))
    return FALSE;
  *out = (guint) value;
  return TRUE;
}

/* "/Documents//Reports/" → "/Documents/Reports"; "" or "/" → "/". NULL for ".." segments
 * or names that cannot be a path on the drive. */
static char *
normalise_source (const char *text)
{
  g_auto (GStrv) parts = g_strsplit (text, "/", -1);
  g_autoptr (GString) out = g_string_new (NULL);
  for (char **p = parts; *p != NULL; p++)
    {
      if (**p == '\0' || g_str_equal (*p, "."))
        continue;
      if (g_str_equal (*p, ".."))
        return NULL;
      g_string_append_c (out, '/');
      g_string_append (out, *p);
    }
  if (out->len == 0)
    g_string_append_c (out, '/');
  return g_string_free (g_steal_pointer (&out), FALSE);
}

static char *
absolute_path (const char *path)
{
  if (g_path_is_absolute (path))
    return g_canonicalize_filename (path, NULL);
  if (path[0] == '~' && (path[1] == '/' || path[1] == '\0'))
    return g_build_filename (g_get_home_dir (), path + 1, NULL);
  return g_canonicalize_filename (path, NULL);
}

/* XDG base dirs read from the environment each time (g_get_user_*_dir caches the first answer,
 * which tests that change the environment cannot use). */
static char *
xdg_dir (const char *variable, const char *fallback)
{
  const char *value = g_getenv (variable);
  if (value != NULL && g_path_is_absolute (value))
    return g_strdup (value);
  return g_build_filename (g_get_home_dir (), fallback, NULL);
}

void
fs_options_free (FsOptions *options)
{
  if (options == NULL)
    return;
  g_free (options->profile);
  g_clear_pointer (&options->sources, g_ptr_array_unref);
  g_clear_pointer (&options->include_globs, g_ptr_array_unref);
  g_clear_pointer (&options->exclude_globs, g_ptr_array_unref);
  g_free (options->cache_dir);
  g_free (options->token_file);
  g_free (options->graph_url);
  g_free (options->login_url);
  g_free (options->tenant);
  g_free (options->client_id);
  g_free (options->ca_file);
  g_free (options->mountpoint);
  g_free (options->config_file);
  g_strfreev (options->fuse_argv);
  g_free (options);
}

/* The value of one setting: the command line's, else the config file's (kept in @origin). */
static const char *
pick (const char *cmdline, GKeyFile *keyfile, const char *group, const char *key,
      char **keyfile_value, const char **origin)
{
  if (cmdline != NULL)
    {
      *origin = "command line";
      return cmdline;
    }
  if (keyfile != NULL)
    {
      g_free (*keyfile_value);
      *keyfile_value = g_key_file_get_string (keyfile, group, key, NULL);
      if (*keyfile_value != NULL)
        {
          g_strstrip (*keyfile_value);
          *origin = "config file";
          return *keyfile_value;
        }
    }
  return NULL;
}

static gboolean
invalid (GError **error, const char *key, const char *value, const char *origin, const char *expected)
{
  g_set_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_INVALID,
               "invalid value '%s' for %s (%s): expected %s", value, key, origin, expected);
  return FALSE;
}

static gboolean
resolve (FsOptions *o, RawOptions *raw, GKeyFile *kf, GError **error)
{
  g_autofree char *kv = NULL;     /* the current config-file value, reused per key */
  const char *origin = NULL;
  const char *v;
  const char *group = o->profile;

#define STRING_SETTING(field)                                                       \
  if ((v = pick (raw->field, kf, group, #field, &kv, &origin)) != NULL && *v != '\0') \
    o->field = g_strdup (v);

  STRING_SETTING (graph_url);
  STRING_SETTING (login_url);
  STRING_SETTING (tenant);
  STRING_SETTING (client_id);
#undef STRING_SETTING

  if ((v = pick (raw->ca_file, kf, group, "ca_file", &kv, &origin)) != NULL && *v != '\0')
    o->ca_file = absolute_path (v);

  if ((v = pick (raw->workers, kf, group, "workers", &kv, &origin)) != NULL
      && (!parse_uint (v, 64, &o->workers) || o->workers == 0))
    return invalid (error, "workers", v, origin, "a number from 1 to 64");

  if ((v = pick (raw->sync_interval, kf, group, "sync_interval", &kv, &origin)) != NULL
      && !parse_uint (v, 7 * 24 * 3600, &o->sync_interval))
    return invalid (error, "sync_interval", v, origin, "seconds (0 disables periodic sync)");

  if ((v = pick (raw->sync_on_mount, kf, group, "sync_on_mount", &kv, &origin)) != NULL
      && !parse_bool (v, &o->sync_on_mount))
    return invalid (error, "sync_on_mount", v, origin, "yes or no");

  if ((v = pick (raw->allow_other, kf, group, "allow_other", &kv, &origin)) != NULL
      && !parse_bool (v, &o->allow_other))
    return invalid (error, "allow_other", v, origin, "yes or no");

  if ((v = pick (raw->verbose, kf, group, "verbose", &kv, &origin)) != NULL
      && !parse_bool (v, &o->verbose))
    return invalid (error, "verbose", v, origin, "yes or no");

  if ((v = pick (raw->max_file_size, kf, group, "max_file_size", &kv, &origin)) != NULL
      && !fs_options_parse_size (v, &o->max_file_size))
    return invalid (error, "max_file_size", v, origin, "bytes, optionally with K, M, G or T");

  if ((v = pick (raw->cache_dir, kf, group, "cache_dir", &kv, &origin)) != NULL && *v != '\0')
    o->cache_dir = absolute_path (v);
  else
    {
      g_autofree char *base = xdg_dir ("XDG_CACHE_HOME", ".cache");
      o->cache_dir = g_build_filename (base, "onedrive-syncfs", o->profile, NULL);
    }

  if ((v = pick (raw->token_file, kf, group, "token_file", &kv, &origin)) != NULL && *v != '\0')
    o->token_file = absolute_path (v);
  else
    {
      g_autofree char *base = xdg_dir ("XDG_CONFIG_HOME", ".config");
      o->token_file = g_build_filename (base, "onedrive-syncfs", o->profile, "token.json", NULL);
    }

  /* Sources: all from the command line if it names any, else the config file's list. */
  g_autoptr (GPtrArray) given = g_ptr_array_new_with_free_func (g_free);
  if (raw->sources->len > 0)
    {
      for (guint i = 0; i < raw->sources->len; i++)
        g_ptr_array_add (given, g_strdup (raw->sources->pdata[i]));
      origin = "command line";
    }
  else if (kf != NULL)
    {
      g_auto (GStrv) list = g_key_file_get_string_list (kf, group, "source", NULL, NULL);
      for (char **s = list; s != NULL && *s != NULL; s++)
        g_ptr_array_add (given, g_strdup (g_strstrip (*s)));
      origin = "config file";
    }
  for (guint i = 0; i < given->len; i++)
    {
      g_autofree char *norm = normalise_source (given->pdata[i]);
      if (norm == NULL)
        return invalid (error, "source", given->pdata[i], origin, "a path on the drive like /Documents/Reports");
      /* A source inside another one would be mirrored twice: keep the outer one. */
      gboolean covered = FALSE;
      for (guint j = 0; j < o->sources->len && !covered; j++)
        {
          const char *have = o->sources->pdata[j];
          covered = g_str_equal (have, "/") || g_str_equal (have, norm)
                    || (g_str_has_prefix (norm, have) && norm[strlen (have)] == '/');
        }
      if (covered)
        continue;
      for (guint j = o->sources->len; j > 0; j--)
        {
          const char *have = o->sources->pdata[j - 1];
          if (g_str_equal (norm, "/") || (g_str_has_prefix (have, norm) && have[strlen (norm)] == '/'))
            g_ptr_array_remove_index (o->sources, j - 1);
        }
      g_ptr_array_add (o->sources, g_steal_pointer (&norm));
    }
  if (o->sources->len == 0)
    g_ptr_array_add (o->sources, g_strdup ("/"));

  /* Filters: like sources, the command line's list replaces the file's. */
  struct { GPtrArray *given; GPtrArray *out; const char *key; } lists[] = {
    { raw->include_globs, o->include_globs, "include" },
    { raw->exclude_globs, o->exclude_globs, "exclude" },
  };
  for (gsize k = 0; k < G_N_ELEMENTS (lists); k++)
    {
      if (lists[k].given->len > 0)
        {
          for (guint i = 0; i < lists[k].given->len; i++)
            if (*(const char *) lists[k].given->pdata[i] != '\0')
              g_ptr_array_add (lists[k].out, g_strdup (lists[k].given->pdata[i]));
        }
      else if (kf != NULL)
        {
          g_auto (GStrv) list = g_key_file_get_string_list (kf, group, lists[k].key, NULL, NULL);
          for (char **s = list; s != NULL && *s != NULL; s++)
            if (*g_strstrip (*s) != '\0')
              g_ptr_array_add (lists[k].out, g_strdup (*s));
        }
    }
  return TRUE;
}

static GKeyFile *
load_config (const char *path, GError **error)
{
  g_autoptr (GKeyFile) kf = g_key_file_new ();
  g_autoptr (GError) local = NULL;
  if (!g_key_file_load_from_file (kf, path, G_KEY_FILE_NONE, &local))
    {
      if (g_error_matches (local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
        return NULL;
      g_set_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_CONFIG,
                   "config file %s: %s", path, local->message);
      return NULL;
    }
  return g_steal_pointer (&kf);
}

FsOptions *
fs_options_parse (int argc, char **argv, const char *config_path, GError **error)
{
  g_autoptr (FsOptions) o = g_new0 (FsOptions, 1);
  RawOptions raw = {
    .sources = g_ptr_array_new_with_free_func (g_free),
    .include_globs = g_ptr_array_new_with_free_func (g_free),
    .exclude_globs = g_ptr_array_new_with_free_func (g_free),
    .positional = g_ptr_array_new_with_free_func (g_free),
  };
  struct fuse_args args = FUSE_ARGS_INIT (0, NULL);
  struct fuse_cmdline_opts cmd = { 0 };
  g_autoptr (GKeyFile) kf = NULL;
  g_autofree char *fsname = NULL;
  gboolean ok = FALSE;

  /* fuse_opt_parse may rearrange argv; work on a copy that libfuse owns. */
  for (int i = 0; i < argc; i++)
    if (fuse_opt_add_arg (&args, argv[i]) != 0)
      goto out;

  if (fuse_opt_parse (&args, &raw, raw_opts, raw_opt_proc) != 0)
    {
      if (raw.error != NULL)
        g_propagate_error (error, g_steal_pointer (&raw.error));
      else
        g_set_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_INVALID, "invalid command line");
      goto out;
    }
  if (fuse_parse_cmdline (&args, &cmd) != 0)
    {
      g_set_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_INVALID,
                   "invalid command line (see --help)");
      goto out;
    }
  o->foreground = cmd.foreground;
  o->debug = cmd.debug;
  o->singlethread = cmd.singlethread;
  o->show_help = cmd.show_help;
  o->show_version = cmd.show_version;
  o->sources = g_ptr_array_new_with_free_func (g_free);
  o->include_globs = g_ptr_array_new_with_free_func (g_free);
  o->exclude_globs = g_ptr_array_new_with_free_func (g_free);

  /* "PROFILE MOUNTPOINT" is how mount(8) runs us for an fstab line; -o profile= still wins. */
  const char *positional_profile = raw.positional->len == 2 ? raw.positional->pdata[0] : NULL;
  const char *mountpoint = raw.positional->len > 0 ? raw.positional->pdata[raw.positional->len - 1] : NULL;
  o->profile = g_strdup (raw.profile != NULL ? raw.profile
                         : positional_profile != NULL ? positional_profile : "default");
  if (*o->profile == '\0' || strchr (o->profile, '/') != NULL || o->profile[0] == '.')
    {
      invalid (error, "profile", o->profile, "command line", "a name without '/'");
      goto out;
    }

  if (config_path != NULL)
    o->config_file = g_strdup (config_path);
  else
    {
      g_autofree char *base = xdg_dir ("XDG_CONFIG_HOME", ".config");
      o->config_file = g_build_filename (base, "onedrive-syncfs", "config", NULL);
    }
  kf = load_config (o->config_file, error);
  if (kf == NULL)
    {
      if (error != NULL && *error != NULL)
        goto out;
      g_clear_pointer (&o->config_file, g_free);
    }

  if (!resolve (o, &raw, kf, error))
    goto out;

  if (mountpoint != NULL)
    o->mountpoint = absolute_path (mountpoint);
  else if (!o->show_help && !o->show_version)
    {
      g_set_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_USAGE, "no mount point given");
      goto out;
    }

  /* What the kernel mount gets: a private, permission-checked mount unless allow_other. */
  fsname = g_strdup_printf ("-ofsname=onedrive-syncfs:%s,subtype=onedrive-syncfs,default_permissions",
                                             o->profile);
  if (fuse_opt_add_arg (&args, fsname) != 0
      || (o->allow_other && fuse_opt_add_arg (&args, "-oallow_other") != 0))
    goto out;

  o->fuse_argv = g_new0 (char *, args.argc + 1);
  for (int i = 0; i < args.argc; i++)
    o->fuse_argv[i] = g_strdup (args.argv[i]);
  ok = TRUE;

out:
  if (!ok && error != NULL && *error == NULL)
    g_set_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_INVALID, "out of memory parsing options");
  free (cmd.mountpoint);
  fuse_opt_free_args (&args);
  raw_options_clear (&raw);
  return ok ? g_steal_pointer (&o) : NULL;
}

void
fs_options_print_help (const char *progname)
{
  printf ("usage: %s [options] MOUNTPOINT\n\n", progname);
  printf ("Mirrors OneDrive folders into a read-only FUSE mount. Control it through MOUNTPOINT/.sync/.\n\n"
          "onedrive-syncfs options (also keys of $XDG_CONFIG_HOME/onedrive-syncfs/config, group [PROFILE]):\n"
          "    -o profile=NAME         settings, token and cache of this profile (default: default)\n"
          "    -o source=PATH          a drive folder to mirror, repeatable (default: the whole drive)\n"
          "    -o include=GLOB         mirror only files whose path or name matches, repeatable\n"
          "    -o exclude=GLOB         do not mirror files whose path or name matches, repeatable\n"
          "    -o workers=N            parallel downloads (1-64, default 4)\n"
          "    -o sync_interval=SECS   start a sync every SECS seconds (default 0: only on request)\n"
          "    -o sync_on_mount[=yes|no]  start a sync once the mount is up (default no)\n"
          "    -o cache_dir=DIR        default $XDG_CACHE_HOME/onedrive-syncfs/PROFILE\n"
          "    -o token_file=FILE      default $XDG_CONFIG_HOME/onedrive-syncfs/PROFILE/token.json\n"
          "    -o graph_url=URL        default " ODSF_DEFAULT_GRAPH_URL "\n"
          "    -o login_url=URL        default " ODSF_DEFAULT_LOGIN_URL "\n"
          "    -o tenant=TENANT        default " ODSF_DEFAULT_TENANT "\n"
          "    -o client_id=ID         application (client) id used to refresh the token\n"
          "    -o ca_file=FILE         extra CA certificates to trust (verification stays on)\n"
          "    -o max_file_size=SIZE   skip (and report) larger files; K, M, G suffixes (default: no limit)\n"
          "    -o allow_other          let other users read the tree and .sync/status\n"
          "    -o verbose, -v          log informational messages\n"
          "    -o debug, -d            log debug messages and libfuse's request trace (implies -f)\n"
          "\n");
}
