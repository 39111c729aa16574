/* The daemon's settings: the -o options of the command line merged over a GKeyFile config.
 *
 * Every setting has one name, used both as `-o name=value` and as a key in the config file
 * ($XDG_CONFIG_HOME/onedrive-syncfs/config, group [<profile>]). Both sources go through the
 * same validator, so a value means the same wherever it is written; the command line wins.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define FS_OPTIONS_ERROR (fs_options_error_quark ())
GQuark fs_options_error_quark (void);

typedef enum {
  FS_OPTIONS_ERROR_INVALID,    /* a value that does not parse, or an unknown option */
  FS_OPTIONS_ERROR_CONFIG,     /* the config file exists but cannot be read or parsed */
  FS_OPTIONS_ERROR_USAGE,      /* no mount point, or more than one */
} FsOptionsErrorCode;

typedef struct {
  char      *profile;         /* "default" unless given */
  GPtrArray *sources;         /* char*, remote paths normalised to "/A/B"; empty = "/" */
  GPtrArray *include_globs;   /* char*, GLib glob patterns on the mount path or the name */
  GPtrArray *exclude_globs;   /* char*; empty arrays: no filter */
  guint      workers;         /* 0 when unset: the engine's default */
  guint      sync_interval;   /* seconds; 0: no periodic sync */
  gboolean   sync_on_mount;
  char      *cache_dir;       /* absolute */
  char      *token_file;      /* absolute */
  char      *graph_url;       /* NULL: built-in default */
  char      *login_url;
  char      *tenant;
  char      *client_id;
  char      *ca_file;
  gint64     max_file_size;   /* bytes; 0: no limit */
  gboolean   allow_other;
  gboolean   debug;           /* -d or -o debug: g_debug output, libfuse request trace */
  gboolean   verbose;         /* -o verbose: g_info output */

  /* From the FUSE command line (fuse_parse_cmdline). */
  char      *mountpoint;      /* absolute, as libfuse resolved it */
  gboolean   foreground;
  gboolean   singlethread;
  gboolean   show_help;
  gboolean   show_version;

  char      *config_file;     /* the file that was read, NULL when there was none */
  char     **fuse_argv;       /* what remains for fuse_session_new (argv[0] first), NULL-terminated */
} FsOptions;

void fs_options_free (FsOptions *options);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FsOptions, fs_options_free)

/* Parses the command line (argv is not modified), reads the config file of the chosen profile
 * (@config_path, or NULL for $XDG_CONFIG_HOME/onedrive-syncfs/config; a missing file is not an
 * error) and fills the defaults that depend on the environment. Returns NULL with
 * FS_OPTIONS_ERROR on a bad value, naming the option and where it came from. With --help or
 * --version the result has show_help / show_version set and may lack a mount point. */
FsOptions *fs_options_parse (int argc, char **argv, const char *config_path, GError **error);

/* Prints the daemon's own options (after libfuse's usage line) to stdout. */
void fs_options_print_help (const char *progname);

/* "1024", "64K", "10M", "2G" (binary units) → bytes. FALSE for anything else or overflow. */
gboolean fs_options_parse_size (const char *text, gint64 *bytes);

G_END_DECLS
