/* onedrive-syncfs [options] MOUNTPOINT — the daemon.
 *
 * Order matters here. Everything that can fail in a way the user must hear about (options,
 * token file, mount point, cache directory, the state database) is checked while stderr is
 * still the terminal, before fuse_daemonize(). Everything that owns threads (the Graph client,
 * the engine, the invalidation thread) is created after it, because fork() keeps only the
 * calling thread. The state database is opened once to check it and again after the fork, so
 * SQLite never sees a connection cross a fork.
 *
 * Shutdown, in this order: cancel, save, unmount. SIGINT, SIGTERM and SIGHUP are blocked in
 * every thread and taken by one signal thread (sigwait), which cancels the active run and waits
 * for the engine to be idle while the FUSE loop still serves requests: a kernel notification
 * the engine's last publishes cause may wait for a request to be answered, so the loop must
 * outlive them. Only then is the loop asked to end, and the main thread, waiting inside
 * libfuse's loop, is woken with SIGUSR1. fusermount3 -u ends the loop from the kernel side;
 * then the run is cancelled and saved after the fact. Either way we exit 0.
 * Exit codes are documented in docs/daemon.md.
 */
#define G_LOG_DOMAIN "odsf-daemon"

#include "config.h"

#define FUSE_USE_VERSION FUSE_MAKE_VERSION (3, 14)
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/statvfs.h>
#include <syslog.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include <onedrive-syncfs/fs-options.h>
#include <onedrive-syncfs/fs.h>
#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/store.h>
#include <onedrive-syncfs/sync-engine.h>

enum {
  EXIT_OK = 0,
  EXIT_FAILURE_OTHER = 1,
  EXIT_USAGE = 2,
  EXIT_TOKEN = 3,
  EXIT_MOUNTPOINT = 4,
  EXIT_CACHE = 5,
  EXIT_STATE = 6,
};

/* Below this much free space the cache cannot even hold the database and a few files. */
#define MIN_FREE_BYTES (16 * 1024 * 1024)

#define STATE_DB_NAME "state.db"

static struct {
  gboolean debug;
  gboolean verbose;
  gboolean use_syslog;
} log_config;

static const char *
level_name (GLogLevelFlags level)
{
  if (level & G_LOG_LEVEL_ERROR) return "ERROR";
  if (level & G_LOG_LEVEL_CRITICAL) return "CRITICAL";
  if (level & G_LOG_LEVEL_WARNING) return "WARNING";
  if (level & G_LOG_LEVEL_MESSAGE) return "Message";
  if (level & G_LOG_LEVEL_INFO) return "INFO";
  return "DEBUG";
}

/* The one log path: every module's g_log, and libfuse's through fs_route_fuse_log(). */
static GLogWriterOutput
log_writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  if ((level & G_LOG_LEVEL_DEBUG) && !log_config.debug)
    return G_LOG_WRITER_HANDLED;
  if ((level & G_LOG_LEVEL_INFO) && !log_config.verbose && !log_config.debug)
    return G_LOG_WRITER_HANDLED;

  const char *domain = NULL, *message = NULL;
  for (gsize i = 0; i < n_fields; i++)
    {
      if (g_str_equal (fields[i].key, "GLIB_DOMAIN"))
        domain = fields[i].value;
      else if (g_str_equal (fields[i].key, "MESSAGE"))
        message = fields[i].value;
    }
  if (message == NULL)
    return G_LOG_WRITER_UNHANDLED;

  if (log_config.use_syslog)
    {
      int prio = (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)) ? LOG_ERR
                 : (level & G_LOG_LEVEL_WARNING) ? LOG_WARNING
                 : (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO)) ? LOG_INFO : LOG_DEBUG;
      syslog (prio, "%s %s: %s", domain ? domain : "odsf", level_name (level), message);
    }
  else
    {
      g_autoptr (GDateTime) now = g_date_time_new_now_local ();
      g_autofree char *stamp = g_date_time_format (now, "%H:%M:%S.%f");
      stamp[12] = '\0';   /* milliseconds */
      fprintf (stderr, "%s %s %s: %s\n", stamp, domain ? domain : "odsf", level_name (level), message);
      fflush (stderr);
    }
  return G_LOG_WRITER_HANDLED;
}

static int G_GNUC_PRINTF (2, 3)
fail (int code, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  g_autofree char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  fprintf (stderr, "onedrive-syncfs: %s\n", msg);
  return code;
}

static int
check_token_file (const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    {
      int saved = errno;
      if (saved == ENOENT)
        return fail (EXIT_TOKEN, "no token file at %s: sign in first (see docs/daemon.md), "
                     "or name another file with -o token_file=FILE", path);
      return fail (EXIT_TOKEN, "cannot read the token file %s: %s", path, g_strerror (saved));
    }
  char byte;
  ssize_t n = read (fd, &byte, 1);
  int saved = errno;
  close (fd);
  if (n < 0)
    return fail (EXIT_TOKEN, "cannot read the token file %s: %s", path, g_strerror (saved));
  if (n == 0)
    return fail (EXIT_TOKEN, "the token file %s is empty: sign in again", path);
  return EXIT_OK;
}

static int
prepare_cache_dir (const char *dir)
{
  g_autofree char *objects = g_build_filename (dir, "objects", NULL);
  if (g_mkdir_with_parents (objects, 0700) != 0)
    {
      int saved = errno;
      return fail (EXIT_CACHE, "cannot create the cache directory %s: %s", dir, g_strerror (saved));
    }
  struct statvfs st;
  if (statvfs (dir, &st) != 0)
    return fail (EXIT_CACHE, "statvfs(%s): %s", dir, g_strerror (errno));
  guint64 avail = (guint64) st.f_bavail * st.f_frsize;
  if (avail < MIN_FREE_BYTES)
    return fail (EXIT_CACHE, "the cache directory %s is on a full disk (%" G_GUINT64_FORMAT
                 " KiB free, at least %d MiB needed); free space or use -o cache_dir=DIR",
                 dir, avail / 1024, MIN_FREE_BYTES / (1024 * 1024));
  return EXIT_OK;
}

static int
exit_code_for_store (const GError *error)
{
  if (g_error_matches (error, STORE_ERROR, STORE_ERROR_FULL))
    return EXIT_CACHE;
  if (g_error_matches (error, STORE_ERROR, STORE_ERROR_FOREIGN)
      || g_error_matches (error, STORE_ERROR, STORE_ERROR_CORRUPT))
    return EXIT_STATE;
  return EXIT_CACHE;
}

static Store *
open_store (const char *cache_dir, int *code)
{
  g_autofree char *path = g_build_filename (cache_dir, STATE_DB_NAME, NULL);
  g_autoptr (GError) error = NULL;
  Store *store = store_open (path, &error);
  if (store == NULL)
    *code = fail (exit_code_for_store (error), "state database %s: %s", path, error->message);
  return store;
}

static void
stop_signals (sigset_t *set)
{
  sigemptyset (set);
  sigaddset (set, SIGINT);
  sigaddset (set, SIGTERM);
  sigaddset (set, SIGHUP);
}

/* The mount SIGUSR1 wakes; set once before the signal thread starts. */
static FsMount *wake_mount;

static void
on_wake (int sig)
{
  if (wake_mount != NULL)
    fs_mount_exit (wake_mount);   /* sets a flag: async-signal-safe */
}

typedef struct {
  SyncEngine *engine;
  FsMount    *mount;
  pthread_t   main_thread;
  gint        loop_done;   /* atomic: fs_mount_run() returned */
  gint        quit;        /* atomic: main is shutting down; the wake-up is not a signal */
} SignalContext;

/* A plain pthread, not a GThread: main must be able to pthread_kill() it from the start. */
static void *
signal_thread (void *data)
{
  SignalContext *c = data;
  sigset_t set;
  int sig = 0;
  stop_signals (&set);
  if (sigwait (&set, &sig) != 0 || g_atomic_int_get (&c->quit))
    return NULL;
  g_info ("%s: cancelling, saving, unmounting", g_strsignal (sig));
  if (sync_engine_cancel (c->engine))
    g_info ("cancelled the active run");
  if (!sync_engine_wait_idle (c->engine, 60 * G_USEC_PER_SEC))
    g_warning ("the engine did not stop within 60 s; unmounting anyway");
  /* Readers of .sync/events get end-of-file while requests are still answered. */
  fs_mount_end_event_streams (c->mount, 2 * G_USEC_PER_SEC);
  fs_mount_exit (c->mount);
  /* Until the loop has really returned: a wake-up that lands just before the loop's wait
   * would be lost, so knock again. */
  while (!g_atomic_int_get (&c->loop_done))
    {
      pthread_kill (c->main_thread, SIGUSR1);
      g_usleep (50 * 1000);
    }
  return NULL;
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int code = EXIT_OK;

  setlocale (LC_ALL, "");
  /* Before any thread exists, so that every thread inherits the mask (see the top). */
  sigset_t stop_set;
  stop_signals (&stop_set);
  pthread_sigmask (SIG_BLOCK, &stop_set, NULL);
  signal (SIGPIPE, SIG_IGN);
  struct sigaction wake = { .sa_handler = on_wake };   /* no SA_RESTART: interrupt the wait */
  sigemptyset (&wake.sa_mask);
  sigaction (SIGUSR1, &wake, NULL);
  g_log_set_writer_func (log_writer, NULL, NULL);
  fs_route_fuse_log ();

  g_autoptr (FsOptions) opts = fs_options_parse (argc, argv, g_getenv ("ONEDRIVE_SYNCFS_CONFIG"), &error);
  if (opts == NULL)
    return fail (EXIT_USAGE, "%s (try --help)", error->message);
  if (opts->show_help)
    {
      fs_options_print_help (g_get_prgname () ? g_get_prgname () : "onedrive-syncfs");
      printf ("FUSE options:\n");
      fuse_cmdline_help ();
      fuse_lowlevel_help ();
      return EXIT_OK;
    }
  if (opts->show_version)
    {
      printf ("onedrive-syncfs %s\n", PACKAGE_VERSION);
      printf ("libfuse %s\n", fuse_pkgversion ());
      fflush (stdout);   /* fusermount3 --version, run by libfuse, writes to the same fd */
      fuse_lowlevel_version ();
      return EXIT_OK;
    }
  log_config.debug = opts->debug;
  log_config.verbose = opts->verbose;
  if (opts->config_file != NULL)
    g_debug ("config file %s, profile %s", opts->config_file, opts->profile);

  if ((code = check_token_file (opts->token_file)) != EXIT_OK)
    return code;
  if ((code = prepare_cache_dir (opts->cache_dir)) != EXIT_OK)
    return code;
  {
    /* Checked now, while the user still sees stderr; reopened after the fork. */
    g_autoptr (Store) probe = open_store (opts->cache_dir, &code);
    if (probe == NULL)
      return code;
  }
  g_autoptr (Store) store = NULL;

  g_autofree char *changes_file = g_build_filename (opts->cache_dir, "changes.jsonl", NULL);
  FsConfig fs_config = {
    .store = NULL,              /* set after the fork: requests are read only by fs_mount_run() */
    .cache_dir = opts->cache_dir,
    .changes_file = changes_file,
    .owner_uid = getuid (),
    .owner_gid = getgid (),
    .allow_other = opts->allow_other,
  };

  g_autoptr (FsMount) mount = fs_mount_new (&fs_config, opts->fuse_argv, opts->mountpoint, &error);
  if (mount == NULL)
    return fail (g_error_matches (error, FS_ERROR, FS_ERROR_OPTIONS) ? EXIT_USAGE
                 : g_error_matches (error, FS_ERROR, FS_ERROR_FAILED) ? EXIT_FAILURE_OTHER : EXIT_MOUNTPOINT,
                 "%s", error->message);

  if (fuse_daemonize (opts->foreground) != 0)
    return fail (EXIT_FAILURE_OTHER, "cannot go to the background");
  if (!opts->foreground)
    {
      openlog ("onedrive-syncfs", LOG_PID, LOG_DAEMON);
      log_config.use_syslog = TRUE;
    }
  if ((store = open_store (opts->cache_dir, &code)) == NULL)
    return code;
  fs_mount_set_store (mount, store);

  GraphConfig graph_config = {
    .graph_url = opts->graph_url,
    .login_url = opts->login_url,
    .tenant = opts->tenant,
    .client_id = opts->client_id,
    .ca_file = opts->ca_file,
    .token_file = opts->token_file,
    .max_connections = opts->workers > 0 ? opts->workers + 2 : 0,
  };
  g_autoptr (GraphClient) client = graph_client_new (&graph_config, &error);
  if (client == NULL)
    {
      return fail (EXIT_TOKEN, "token file %s: %s", opts->token_file, error->message);
    }

  /* NULL-terminated views of the lists for the engine, which copies what it keeps. */
  g_ptr_array_add (opts->sources, NULL);
  g_ptr_array_add (opts->include_globs, NULL);
  g_ptr_array_add (opts->exclude_globs, NULL);
  SyncConfig sync_config = {
    .workers = opts->workers,
    .cache_dir = opts->cache_dir,
    .max_file_size = opts->max_file_size,
    .sources = (const char * const *) opts->sources->pdata,
    .include_globs = opts->include_globs->len > 1 ? (const char * const *) opts->include_globs->pdata : NULL,
    .exclude_globs = opts->exclude_globs->len > 1 ? (const char * const *) opts->exclude_globs->pdata : NULL,
    .sync_interval = opts->sync_interval,
  };
  g_autoptr (SyncEngine) engine = sync_engine_new (&sync_config, store, client, &error);
  g_ptr_array_remove_index (opts->sources, opts->sources->len - 1);
  g_ptr_array_remove_index (opts->include_globs, opts->include_globs->len - 1);
  g_ptr_array_remove_index (opts->exclude_globs, opts->exclude_globs->len - 1);
  if (engine == NULL)
    {
      return fail (EXIT_FAILURE_OTHER, "cannot start the sync engine: %s", error->message);
    }

  fs_mount_attach (mount, engine);
  sync_engine_set_notify (engine, fs_mount_notify, mount);

  wake_mount = mount;
  SignalContext signals = { .engine = engine, .mount = mount, .main_thread = pthread_self () };
  pthread_t signal_tid;
  if (pthread_create (&signal_tid, NULL, signal_thread, &signals) != 0)
    return fail (EXIT_FAILURE_OTHER, "cannot start the signal thread");

  g_info ("mounted %s at %s (profile %s, cache %s)", opts->sources->len == 1 ? (char *) opts->sources->pdata[0] : "sources",
          opts->mountpoint, opts->profile, opts->cache_dir);

  if (opts->sync_on_mount && !sync_engine_start (engine, 0, &error))
    {
      g_info ("sync on mount not started: %s", error->message);
      g_clear_error (&error);
    }

  int rc = fs_mount_run (mount, opts->singlethread);
  if (rc < 0)
    g_warning ("the FUSE loop ended with %s", g_strerror (-rc));
  g_atomic_int_set (&signals.loop_done, 1);
  g_atomic_int_set (&signals.quit, 1);
  pthread_kill (signal_tid, SIGTERM);   /* ends its sigwait, or it is already on its way out */
  pthread_join (signal_tid, NULL);
  wake_mount = NULL;

  /* Cancel, save, unmount. The engine stops calling us before it is freed. */
  if (sync_engine_cancel (engine))
    g_info ("cancelled the active run");
  fs_mount_detach (mount);
  sync_engine_set_notify (engine, NULL, NULL);
  g_clear_pointer (&engine, sync_engine_free);
  g_clear_pointer (&mount, fs_mount_free);
  g_clear_pointer (&client, graph_client_free);
  g_clear_pointer (&store, store_free);
  if (log_config.use_syslog)
    closelog ();
  return rc < 0 ? EXIT_FAILURE_OTHER : EXIT_OK;
}
