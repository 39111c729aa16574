/* The daemon's options: -o parsing, the config file, command line over config, defaults. */
#include <glib.h>
#include <glib/gstdio.h>

#include <onedrive-syncfs/fs-options.h>

typedef struct {
  char *dir;
  char *config;
} Fixture;

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  f->dir = g_dir_make_tmp ("odsf-options-XXXXXX", NULL);
  g_assert_nonnull (f->dir);
  g_autofree char *cache = g_build_filename (f->dir, "cache", NULL);
  g_autofree char *config = g_build_filename (f->dir, "config", NULL);
  g_setenv ("XDG_CACHE_HOME", cache, TRUE);
  g_setenv ("XDG_CONFIG_HOME", config, TRUE);
  f->config = g_build_filename (f->dir, "config.ini", NULL);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_unlink (f->config);
  g_rmdir (f->dir);
  g_free (f->config);
  g_free (f->dir);
}

static FsOptions *
parse (Fixture *f, GError **error, ...)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_ptr_array_add (argv, (char *) "onedrive-syncfs");
  va_list ap;
  va_start (ap, error);
  for (const char *a = va_arg (ap, const char *); a != NULL; a = va_arg (ap, const char *))
    g_ptr_array_add (argv, (char *) a);
  va_end (ap);
  g_ptr_array_add (argv, NULL);
  return fs_options_parse ((int) argv->len - 1, (char **) argv->pdata, f->config, error);
}

static void
write_config (Fixture *f, const char *text)
{
  g_assert_true (g_file_set_contents (f->config, text, -1, NULL));
}

static gboolean
fuse_argv_has (FsOptions *o, const char *needle)
{
  for (char **a = o->fuse_argv; *a != NULL; a++)
    if (strstr (*a, needle) != NULL)
      return TRUE;
  return FALSE;
}

static void
test_defaults (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "/mnt/x", NULL);
  g_assert_no_error (error);
  g_assert_cmpstr (o->profile, ==, "default");
  g_assert_cmpstr (o->mountpoint, ==, "/mnt/x");
  g_assert_cmpuint (o->sources->len, ==, 1);
  g_assert_cmpstr (o->sources->pdata[0], ==, "/");
  g_autofree char *cache = g_build_filename (f->dir, "cache", "onedrive-syncfs", "default", NULL);
  g_assert_cmpstr (o->cache_dir, ==, cache);
  g_autofree char *token = g_build_filename (f->dir, "config", "onedrive-syncfs", "default", "token.json", NULL);
  g_assert_cmpstr (o->token_file, ==, token);
  g_assert_false (o->foreground);
  g_assert_false (o->allow_other);
  g_assert_false (o->sync_on_mount);
  g_assert_cmpuint (o->workers, ==, 0);
  g_assert_null (o->config_file);   /* none written */
  /* The kernel mount: private, permission-checked, named after the profile. */
  g_assert_true (fuse_argv_has (o, "default_permissions"));
  g_assert_true (fuse_argv_has (o, "fsname=onedrive-syncfs:default"));
  g_assert_false (fuse_argv_has (o, "allow_other"));
  g_assert_false (fuse_argv_has (o, "/mnt/x"));
}

static void
test_command_line (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "-f", "-o", "profile=work,workers=8,sync_interval=600",
                                   "-o", "source=/Documents/Reports/,source=Photos//2024",
                                   "-o", "sync_on_mount,allow_other,max_file_size=100M",
                                   "-o", "graph_url=http://127.0.0.1:9/v1.0,ca_file=/etc/ca.pem",
                                   "-o", "cache_dir=/tmp/odsf-c", "mnt", NULL);
  g_assert_no_error (error);
  g_assert_true (o->foreground);
  g_assert_cmpstr (o->profile, ==, "work");
  g_assert_cmpuint (o->workers, ==, 8);
  g_assert_cmpuint (o->sync_interval, ==, 600);
  g_assert_true (o->sync_on_mount);
  g_assert_true (o->allow_other);
  g_assert_cmpint (o->max_file_size, ==, 100 * 1024 * 1024);
  g_assert_cmpstr (o->graph_url, ==, "http://127.0.0.1:9/v1.0");
  g_assert_cmpstr (o->ca_file, ==, "/etc/ca.pem");
  g_assert_cmpstr (o->cache_dir, ==, "/tmp/odsf-c");
  g_assert_cmpuint (o->sources->len, ==, 2);
  g_assert_cmpstr (o->sources->pdata[0], ==, "/Documents/Reports");
  g_assert_cmpstr (o->sources->pdata[1], ==, "/Photos/2024");
  g_assert_cmpuint (o->include_globs->len, ==, 0);
  g_assert_cmpuint (o->exclude_globs->len, ==, 0);
  g_assert_true (g_path_is_absolute (o->mountpoint));
  g_assert_true (g_str_has_suffix (o->mountpoint, "/mnt"));
  g_assert_true (fuse_argv_has (o, "allow_other"));
  g_assert_true (fuse_argv_has (o, "fsname=onedrive-syncfs:work"));
}

static void
test_config_file (Fixture *f, gconstpointer data)
{
  write_config (f, "[default]\nworkers=3\nsource=/A;/B/C\nsync_on_mount=true\n"
                   "tenant=consumers\nmax_file_size=2G\n"
                   "[other]\nworkers=9\n");
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpstr (o->config_file, ==, f->config);
  g_assert_cmpuint (o->workers, ==, 3);
  g_assert_true (o->sync_on_mount);
  g_assert_cmpstr (o->tenant, ==, "consumers");
  g_assert_cmpint (o->max_file_size, ==, G_GINT64_CONSTANT (2) << 30);
  g_assert_cmpuint (o->sources->len, ==, 2);
  g_assert_cmpstr (o->sources->pdata[1], ==, "/B/C");

  /* The profile picks the group. */
  g_autoptr (FsOptions) other = parse (f, &error, "-o", "profile=other", "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (other->workers, ==, 9);
  g_assert_cmpstr (other->sources->pdata[0], ==, "/");
}

static void
test_filters (Fixture *f, gconstpointer data)
{
  write_config (f, "[default]\nexclude=*.tmp;~*\ninclude=/Docs/*\n");
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (o->exclude_globs->len, ==, 2);
  g_assert_cmpstr (o->exclude_globs->pdata[1], ==, "~*");
  g_assert_cmpuint (o->include_globs->len, ==, 1);

  /* The command line's list replaces the file's, per list. */
  g_autoptr (FsOptions) c = parse (f, &error, "-o", "exclude=*.iso,exclude=*.bak", "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (c->exclude_globs->len, ==, 2);
  g_assert_cmpstr (c->exclude_globs->pdata[0], ==, "*.iso");
  g_assert_cmpuint (c->include_globs->len, ==, 1);   /* still the file's */
}

static void
test_command_line_wins (Fixture *f, gconstpointer data)
{
  write_config (f, "[default]\nworkers=3\nsource=/A\nsync_on_mount=yes\n");
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "-o", "workers=5,source=/Z,sync_on_mount=no", "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (o->workers, ==, 5);
  g_assert_false (o->sync_on_mount);
  g_assert_cmpuint (o->sources->len, ==, 1);   /* the command line's list replaces the file's */
  g_assert_cmpstr (o->sources->pdata[0], ==, "/Z");
}

static void
test_overlapping_sources (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "-o", "source=/A/B,source=/A,source=/A/B/C,source=/AB",
                                   "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (o->sources->len, ==, 2);
  g_assert_cmpstr (o->sources->pdata[0], ==, "/A");
  g_assert_cmpstr (o->sources->pdata[1], ==, "/AB");

  g_autoptr (FsOptions) all = parse (f, &error, "-o", "source=/A,source=/", "/m", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (all->sources->len, ==, 1);
  g_assert_cmpstr (all->sources->pdata[0], ==, "/");
}

static void
test_invalid_values (Fixture *f, gconstpointer data)
{
  const char *bad[] = { "workers=0", "workers=abc", "workers=65", "sync_interval=-1",
                        "sync_on_mount=maybe", "max_file_size=12Q", "source=/a/../b", "profile=a/b" };
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (FsOptions) o = parse (f, &error, "-o", bad[i], "/m", NULL);
      g_assert_null (o);
      g_assert_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_INVALID);
      g_autofree char *key = g_strndup (bad[i], strchr (bad[i], '=') - bad[i]);
      g_assert_nonnull (strstr (error->message, key));
    }

  /* A bad value in the file names the file as its origin. */
  write_config (f, "[default]\nworkers=many\n");
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "/m", NULL);
  g_assert_null (o);
  g_assert_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "config file"));
}

static void
test_broken_config (Fixture *f, gconstpointer data)
{
  write_config (f, "this is not a key file\n");
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "/m", NULL);
  g_assert_null (o);
  g_assert_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_CONFIG);
}

static void
test_usage (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) none = parse (f, &error, "-f", NULL);
  g_assert_null (none);
  g_assert_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_USAGE);
  g_clear_error (&error);

  g_autoptr (FsOptions) three = parse (f, &error, "p", "/a", "/b", NULL);
  g_assert_null (three);
  g_assert_error (error, FS_OPTIONS_ERROR, FS_OPTIONS_ERROR_USAGE);
  g_clear_error (&error);

  g_autoptr (FsOptions) help = parse (f, &error, "--help", NULL);
  g_assert_no_error (error);
  g_assert_true (help->show_help);

  g_autoptr (FsOptions) version = parse (f, &error, "--version", NULL);
  g_assert_no_error (error);
  g_assert_true (version->show_version);

  /* -d: debug and foreground, and libfuse keeps it for its request trace. */
  g_autoptr (FsOptions) debug = parse (f, &error, "-d", "/m", NULL);
  g_assert_no_error (error);
  g_assert_true (debug->debug);
  g_assert_true (debug->foreground);
  g_assert_true (fuse_argv_has (debug, "-d"));

  g_autoptr (FsOptions) verbose = parse (f, &error, "-o", "verbose", "/m", NULL);
  g_assert_no_error (error);
  g_assert_true (verbose->verbose);
}

/* mount(8) for an fstab line: onedrive-syncfs PROFILE MOUNTPOINT -o rw,nosuid,nodev,_netdev,... */
static void
test_fstab_form (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "work", "/home/a/OneDrive", "-o",
                                   "rw,nosuid,nodev,_netdev,noauto,user,nofail,x-systemd.automount,ro,sync_on_mount",
                                   NULL);
  g_assert_no_error (error);
  g_assert_cmpstr (o->profile, ==, "work");
  g_assert_cmpstr (o->mountpoint, ==, "/home/a/OneDrive");
  g_assert_true (o->sync_on_mount);
  g_assert_false (fuse_argv_has (o, "_netdev"));
  g_assert_false (fuse_argv_has (o, "x-systemd"));
  g_assert_false (fuse_argv_has (o, "noauto"));
  g_assert_false (fuse_argv_has (o, "ro,"));   /* exclusion by rm needs a writable mount */
  g_assert_true (fuse_argv_has (o, "nosuid"));  /* generic flags go on to libfuse */

  /* -o profile= wins over the positional profile. */
  g_autoptr (FsOptions) p = parse (f, &error, "work", "/m", "-o", "profile=home", NULL);
  g_assert_no_error (error);
  g_assert_cmpstr (p->profile, ==, "home");
}

/* The -o words fs_options_parse hands to libfuse, one per element (fuse_opt joins them into
 * "-oa,b,c" arguments). Exact words, so "user" is not found inside "nouser". */
static GPtrArray *
fuse_words (FsOptions *o)
{
  GPtrArray *words = g_ptr_array_new_with_free_func (g_free);
  for (char **a = o->fuse_argv; *a != NULL; a++)
    {
      const char *list = NULL;
      if (g_str_has_prefix (*a, "-o") && (*a)[2] != '\0')
        list = *a + 2;
      else if (g_str_equal (*a, "-o") && a[1] != NULL)
        list = *++a;
      if (list == NULL)
        continue;
      g_auto (GStrv) parts = g_strsplit (list, ",", -1);
      for (char **p = parts; *p != NULL; p++)
        g_ptr_array_add (words, g_strdup (*p));
    }
  return words;
}

static gboolean
words_have (GPtrArray *words, const char *word)
{
  for (guint i = 0; i < words->len; i++)
    if (g_str_equal (words->pdata[i], word))
      return TRUE;
  return FALSE;
}

/* fstab(5) and mount(8) words must never reach fuse_session_new (it rejects unknown options):
 * mount.fuse3 run by hand or by a systemd mount unit passes defaults, comment= and x-* on. */
static void
test_fstab_words_dropped (Fixture *f, gconstpointer data)
{
  static const char *noise[] = {
    "defaults", "comment=x", "comment=", "comment", "comment=systemd.automount", "_netdev",
    "noauto", "auto", "nofail", "user", "users", "nouser", "x-systemd.automount",
    "x-systemd.after=network-online.target", "x-gvfs-show", NULL,
  };
  g_autofree char *joined = g_strjoinv (",", (char **) noise);

  g_autoptr (GError) error = NULL;
  g_autoptr (FsOptions) o = parse (f, &error, "work", "/m", "-o", joined, "-o",
                                   "rw,nosuid,nodev,noexec,workers=2", NULL);
  g_assert_no_error (error);
  g_assert_cmpuint (o->workers, ==, 2);
  g_autoptr (GPtrArray) words = fuse_words (o);
  for (gsize i = 0; noise[i] != NULL; i++)
    if (words_have (words, noise[i]))
      g_error ("'%s' reached libfuse", noise[i]);
  for (guint i = 0; i < words->len; i++)
    {
      g_assert_false (g_str_has_prefix (words->pdata[i], "x-"));
      g_assert_false (g_str_has_prefix (words->pdata[i], "comment"));
    }
  /* Generic flags stay for libfuse, which knows them. */
  g_assert_true (words_have (words, "rw"));
  g_assert_true (words_have (words, "nosuid"));
  g_assert_true (words_have (words, "noexec"));

  /* Only those words: something merely like them is still left to libfuse (which rejects it),
   * so a typo is an error and not silently ignored. */
  g_autoptr (FsOptions) near = parse (f, &error, "/m", "-o", "commentary=x,userx,defaults", NULL);
  g_assert_no_error (error);
  g_autoptr (GPtrArray) near_words = fuse_words (near);
  g_assert_true (words_have (near_words, "commentary=x"));
  g_assert_true (words_have (near_words, "userx"));
  g_assert_false (words_have (near_words, "defaults"));
}

static void
test_sizes (void)
{
  struct { const char *text; gint64 bytes; gboolean ok; } cases[] = {
    { "0", 0, TRUE }, { "1024", 1024, TRUE }, { "64K", 65536, TRUE }, { "10M", 10485760, TRUE },
    { "10MiB", 10485760, TRUE }, { "1g", 1073741824, TRUE }, { "2T", G_GINT64_CONSTANT (2) << 40, TRUE },
    { "", 0, FALSE }, { "-1", 0, FALSE }, { "1.5G", 0, FALSE }, { "10 M", 0, FALSE },
    { "99999999999T", 0, FALSE }, { "M", 0, FALSE },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      gint64 bytes = -7;
      g_assert_cmpint (fs_options_parse_size (cases[i].text, &bytes), ==, cases[i].ok);
      if (cases[i].ok)
        g_assert_cmpint (bytes, ==, cases[i].bytes);
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(path, fn) g_test_add (path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  ADD ("/fs-options/defaults", test_defaults);
  ADD ("/fs-options/command-line", test_command_line);
  ADD ("/fs-options/config-file", test_config_file);
  ADD ("/fs-options/command-line-wins", test_command_line_wins);
  ADD ("/fs-options/filters", test_filters);
  ADD ("/fs-options/overlapping-sources", test_overlapping_sources);
  ADD ("/fs-options/invalid-values", test_invalid_values);
  ADD ("/fs-options/broken-config", test_broken_config);
  ADD ("/fs-options/usage", test_usage);
  ADD ("/fs-options/fstab-form", test_fstab_form);
  ADD ("/fs-options/fstab-words-dropped", test_fstab_words_dropped);
  g_test_add_func ("/fs-options/sizes", test_sizes);
  return g_test_run ();
}
