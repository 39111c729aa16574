/* onedrive-syncctl: a thin client of a mount's control files.
 *
 * Everything but `login` goes through MOUNT/.sync/{start,cancel,status,events} and nothing
 * else: there is no second control channel, so what this tool can do a shell script can do
 * with echo and cat, and the daemon has one place to get right.
 *
 * Waiting for the end of a run reads the status again whenever poll() on an open status fd
 * says it changed (the mount wakes pollers on every status change). Because a file that does
 * not implement poll() is always "readable", re-reads are spaced at least WAIT_MIN_GAP_US
 * apart, and a poll() timeout bounds how long a missed wake-up can delay us.
 *
 * A run is "the one we started" once the status shows syncing or a run key (run id or start
 * time) different from the one before our start; a terminal state seen before that belongs to
 * the previous run and is not taken as our result.
 */
#define G_LOG_DOMAIN "odsf-ctl"

#include "config.h"

#include "ctl-format.h"
#include "ctl-login.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define WAIT_MIN_GAP_US   (100 * 1000)
#define WAIT_POLL_MS      1000
#define BAR_REFRESH_MS    250

static const char *prgname = "onedrive-syncctl";

static void
complain (const char *fmt, ...) G_GNUC_PRINTF (1, 2);

static void
complain (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  g_autofree char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  fprintf (stderr, "%s: %s\n", prgname, msg);
}

/* ---- control files ---------------------------------------------------------------------- */

static char *
control_path (const char *mount, const char *name)
{
  return g_build_filename (mount, ".sync", name, NULL);
}

/* Says what is wrong with @mount when its .sync/status cannot be reached. */
static gboolean
check_mount (const char *mount)
{
  g_autofree char *status = control_path (mount, "status");
  struct stat st;
  if (stat (status, &st) == 0)
    return TRUE;
  int e = errno;
  if (e == ENOTCONN)
    complain ("%s: the daemon is gone (transport endpoint is not connected); "
              "unmount it with fusermount3 -u %s", mount, mount);
  else if (e == ENOENT || e == ENOTDIR)
    {
      if (stat (mount, &st) != 0)
        complain ("%s: %s", mount, g_strerror (errno));
      else
        complain ("%s: not an onedrive-syncfs mount (no .sync/status)", mount);
    }
  else
    complain ("%s: %s", status, g_strerror (e));
  return FALSE;
}

static gboolean
read_fd_all (int fd, GString *out, int *err)
{
  char buf[16384];
  for (;;)
    {
      ssize_t n = read (fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          *err = errno;
          return FALSE;
        }
      if (n == 0)
        return TRUE;
      g_string_append_len (out, buf, n);
    }
}

/* Reads a control file to its end. Not g_file_get_contents: that stops at the size fstat()
 * reported, and a status snapshot taken at open may be longer than the one stat() saw. */
static char *
read_control (const char *mount, const char *name, gsize *len, int *err)
{
  g_autofree char *path = control_path (mount, name);
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    {
      *err = errno;
      return NULL;
    }
  GString *text = g_string_new (NULL);
  gboolean ok = read_fd_all (fd, text, err);
  close (fd);
  if (!ok)
    {
      g_string_free (text, TRUE);
      return NULL;
    }
  *len = text->len;
  return g_string_free (text, FALSE);
}

/* Reads and parses a fresh status snapshot. If @keep_fd is non-NULL the open fd is handed
 * back (for poll); otherwise it is closed. NULL with a message printed on failure. */
static cJSON *
read_status (const char *mount, int *keep_fd)
{
  g_autofree char *path = control_path (mount, "status");
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    {
      int e = errno;
      if (e == ENOTCONN || e == ENOENT)
        check_mount (mount);
      else
        complain ("open(%s): %s", path, g_strerror (e));
      return NULL;
    }
  g_autoptr (GString) text = g_string_new (NULL);
  int err = 0;
  if (!read_fd_all (fd, text, &err))
    {
      complain ("read(%s): %s", path, g_strerror (err));
      close (fd);
      return NULL;
    }
  g_autoptr (GError) error = NULL;
  cJSON *doc = ctl_status_parse (text->str, text->len, &error);
  if (!doc)
    complain ("%s: %s", path, error->message);
  if (keep_fd && doc)
    *keep_fd = fd;
  else
    close (fd);
  return doc;
}

/* Writes @content to a control file in one write(); returns 0 or the errno of the write (or
 * of the close, where a FUSE flush error would surface). */
static int
write_control (const char *mount, const char *name, const char *content)
{
  g_autofree char *path = control_path (mount, name);
  int fd = open (path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  gsize len = strlen (content);
  ssize_t n;
  do
    n = write (fd, content, len);
  while (n < 0 && errno == EINTR);
  int e = n < 0 ? errno : ((gsize) n != len ? EIO : 0);
  if (close (fd) != 0 && e == 0 && errno != EINTR)
    e = errno;
  return e;
}

static void
print_run_summary (const cJSON *status)
{
  CtlProgress p;
  ctl_status_progress (status, &p);
  g_autoptr (GString) s = g_string_new (ctl_status_state (status));
  if (p.items_done >= 0)
    {
      g_string_append_printf (s, ": %" G_GINT64_FORMAT, p.items_done);
      if (p.items_total >= 0)
        g_string_append_printf (s, "/%" G_GINT64_FORMAT, p.items_total);
      g_string_append (s, " items");
    }
  if (p.bytes_done >= 0)
    {
      g_autofree char *b = ctl_format_bytes (p.bytes_done);
      g_string_append_printf (s, ", %s", b);
    }
  if (p.files_failed > 0)
    g_string_append_printf (s, ", %" G_GINT64_FORMAT " failed", p.files_failed);
  printf ("%s\n", s->str);
  fflush (stdout);
}

/* Waits until the run that is (or was just) active has ended; returns its exit code. The
 * status document describes the current run, or the last one when none is active
 * (docs/status.md), so the top-level state is the result once it is not "syncing".
 * @before_key: the run key read before our start; with @require_new_run a terminal state is
 * only taken once the document shows a run other than that one (see the essay on top). */
static int
wait_for_end (const char *mount, const char *before_key, gboolean require_new_run)
{
  gboolean saw_new = !require_new_run;
  gint64 last_read = 0;
  for (;;)
    {
      gint64 now = g_get_monotonic_time ();
      if (last_read && now - last_read < WAIT_MIN_GAP_US)
        g_usleep (WAIT_MIN_GAP_US - (now - last_read));
      last_read = g_get_monotonic_time ();

      int fd = -1;
      g_autoptr (cJSON) status = read_status (mount, &fd);
      if (!status)
        return CTL_EXIT_ERROR;
      const char *state = ctl_status_state (status);
      g_autofree char *key = ctl_status_run_key (status);
      if (strcmp (state, "syncing") == 0 || (key && g_strcmp0 (key, before_key) != 0))
        saw_new = TRUE;
      if (saw_new && strcmp (state, "syncing") != 0)
        {
          close (fd);
          print_run_summary (status);
          return ctl_exit_for_state (state);
        }
      struct pollfd pfd = { .fd = fd, .events = POLLIN | POLLPRI };
      while (poll (&pfd, 1, WAIT_POLL_MS) < 0 && errno == EINTR)
        ;
      close (fd);
    }
}

/* ---- commands --------------------------------------------------------------------------- */

typedef int (*CommandFunc) (int argc, char **argv);

static gboolean
parse_options (const char *usage, const char *summary, GOptionEntry *entries,
               int *argc, char ***argv, guint min_args, guint max_args)
{
  g_autoptr (GOptionContext) ctx = g_option_context_new (usage);
  g_option_context_set_summary (ctx, summary);
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, argc, argv, &error))
    {
      complain ("%s", error->message);
      return FALSE;
    }
  /* argv[0] is the command name. */
  guint n = (guint) *argc - 1;
  if (n < min_args || n > max_args)
    {
      complain ("%s: expected %s", (*argv)[0], usage);
      return FALSE;
    }
  return TRUE;
}

static int
cmd_start (int argc, char **argv)
{
  gboolean full = FALSE, clear = FALSE, wait = FALSE;
  GOptionEntry entries[] = {
    { "full", 0, 0, G_OPTION_ARG_NONE, &full, "Enumerate everything again and make the local tree equal to the server", NULL },
    { "clear-exclusions", 0, 0, G_OPTION_ARG_NONE, &clear, "Download again what was removed with rm", NULL },
    { "wait", 'w', 0, G_OPTION_ARG_NONE, &wait, "Return when the run ends; the exit code tells how it ended", NULL },
    { NULL }
  };
  if (!parse_options ("MOUNT", "Start a sync by writing MOUNT/.sync/start.", entries, &argc, &argv, 1, 1))
    return CTL_EXIT_USAGE;
  const char *mount = argv[1];
  if (!check_mount (mount))
    return CTL_EXIT_ERROR;

  g_autofree char *before_key = NULL;
  if (wait)
    {
      g_autoptr (cJSON) before = read_status (mount, NULL);
      if (!before)
        return CTL_EXIT_ERROR;
      before_key = ctl_status_run_key (before);
    }

  /* Never an empty write: the kernel does not pass a zero-length write to the filesystem. */
  g_autofree char *words = g_strdup_printf ("%s%s%s\n", full ? "full" : "",
                                            full && clear ? " " : "", clear ? "clear-exclusions" : "");
  int e = write_control (mount, "start", words);
  if (e == EBUSY || e == EINVAL)
    {
      g_autoptr (cJSON) status = read_status (mount, NULL);
      const char *reason = status ? ctl_status_rejected_reason (status) : NULL;
      if (e == EBUSY)
        {
          complain ("start refused: %s",
                    reason ? reason : "A sync is already in progress. Cancel it first or wait for it to complete.");
          return CTL_EXIT_BUSY;
        }
      complain ("start refused: %s", reason ? reason : g_strerror (e));
      return CTL_EXIT_INVALID;
    }
  if (e == EACCES || e == EPERM)
    {
      complain ("%s: only the owner of the mount may start a sync (%s)", mount, g_strerror (e));
      return CTL_EXIT_ERROR;
    }
  if (e != 0)
    {
      complain ("write(%s/.sync/start): %s", mount, g_strerror (e));
      return CTL_EXIT_ERROR;
    }
  if (!wait)
    {
      printf ("sync started\n");
      return CTL_EXIT_OK;
    }
  return wait_for_end (mount, before_key, TRUE);
}

static int
cmd_cancel (int argc, char **argv)
{
  gboolean wait = FALSE;
  GOptionEntry entries[] = {
    { "wait", 'w', 0, G_OPTION_ARG_NONE, &wait, "Return when the run has ended; the exit code tells how it ended", NULL },
    { NULL }
  };
  if (!parse_options ("MOUNT", "Cancel the running sync by writing MOUNT/.sync/cancel.", entries, &argc, &argv, 1, 1))
    return CTL_EXIT_USAGE;
  const char *mount = argv[1];
  if (!check_mount (mount))
    return CTL_EXIT_ERROR;
  g_autoptr (cJSON) before = read_status (mount, NULL);
  if (!before)
    return CTL_EXIT_ERROR;
  gboolean was_syncing = strcmp (ctl_status_state (before), "syncing") == 0;

  int e = write_control (mount, "cancel", "\n");
  if (e == EACCES || e == EPERM)
    {
      complain ("%s: only the owner of the mount may cancel a sync (%s)", mount, g_strerror (e));
      return CTL_EXIT_ERROR;
    }
  if (e != 0)
    {
      complain ("write(%s/.sync/cancel): %s", mount, g_strerror (e));
      return CTL_EXIT_ERROR;
    }
  if (!was_syncing)
    {
      printf ("no sync was running\n");
      return CTL_EXIT_OK;
    }
  if (!wait)
    {
      printf ("cancel requested\n");
      return CTL_EXIT_OK;
    }
  return wait_for_end (mount, NULL, FALSE);
}

static int
cmd_status (int argc, char **argv)
{
  gboolean json = FALSE;
  GOptionEntry entries[] = {
    { "json", 'j', 0, G_OPTION_ARG_NONE, &json, "Print the status document as the mount gives it", NULL },
    { NULL }
  };
  if (!parse_options ("MOUNT", "Show the state of the mount's syncs.", entries, &argc, &argv, 1, 1))
    return CTL_EXIT_USAGE;
  const char *mount = argv[1];
  if (!check_mount (mount))
    return CTL_EXIT_ERROR;
  if (json)
    {
      /* Pass-through: the bytes as the mount gives them, checked to be JSON so a script's
       * `jq` never sees half a document without the exit code saying so. */
      g_autofree char *path = control_path (mount, "status");
      gsize len = 0;
      int err = 0;
      g_autofree char *text = read_control (mount, "status", &len, &err);
      g_autoptr (GError) error = NULL;
      if (!text)
        {
          complain ("%s: %s", path, g_strerror (err));
          return CTL_EXIT_ERROR;
        }
      g_autoptr (cJSON) doc = ctl_status_parse (text, len, &error);
      if (!doc)
        {
          complain ("%s: %s", path, error->message);
          return CTL_EXIT_ERROR;
        }
      fwrite (text, 1, len, stdout);
      if (len == 0 || text[len - 1] != '\n')
        putchar ('\n');
      return CTL_EXIT_OK;
    }
  g_autoptr (cJSON) status = read_status (mount, NULL);
  if (!status)
    return CTL_EXIT_ERROR;
  g_autofree char *table = ctl_format_status (status, g_get_real_time ());
  fputs (table, stdout);
  return CTL_EXIT_OK;
}

/* ---- follow ----------------------------------------------------------------------------- */

/* Lines of .sync/events, read by a thread so the progress bar keeps moving (and Ctrl-C is
 * noticed) while a read blocks. A NULL-data item (the sentinel) means the stream ended. */
typedef struct {
  int          fd;
  GAsyncQueue *lines;   /* of GString*; an empty GString with len 0 and no data: the end */
  int          err;     /* errno of a failed read; set before the sentinel */
} Follower;

static gpointer
follow_reader (gpointer data)
{
  Follower *f = data;
  g_autoptr (GString) partial = g_string_new (NULL);
  char buf[16384];
  for (;;)
    {
      ssize_t n = read (f->fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        {
          /* ECONNABORTED: the daemon closed its FUSE connection while this read was queued
           * in the kernel (an unmount racing with our next read); the kernel gives no
           * end-of-file then, but for a reader the stream has ended all the same. A dead
           * daemon is told apart at the next open (ENOTCONN, see check_mount). */
          if (n < 0 && errno != ECONNABORTED)
            f->err = errno;
          break;
        }
      for (ssize_t i = 0; i < n; i++)
        {
          g_string_append_c (partial, buf[i]);
          if (buf[i] == '\n')
            {
              g_async_queue_push (f->lines, g_string_new_len (partial->str, partial->len));
              g_string_truncate (partial, 0);
            }
        }
    }
  if (partial->len)
    g_async_queue_push (f->lines, g_string_new_len (partial->str, partial->len));
  g_async_queue_push (f->lines, g_string_new (""));   /* the end: a zero-length line */
  return NULL;
}

static volatile sig_atomic_t interrupted;

static void
on_interrupt (int sig)
{
  interrupted = sig;
}

static guint
terminal_width (void)
{
  struct winsize ws;
  if (ioctl (STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

static void
draw_bar (const char *mount, CtlRate *rate, CtlRate *items_rate)
{
  gsize len = 0;
  int err = 0;
  g_autofree char *text = read_control (mount, "status", &len, &err);
  CtlProgress p = { -1, -1, -1, -1, -1 };
  const char *state = NULL;
  g_autoptr (cJSON) status = NULL;
  if (text)
    status = ctl_status_parse (text, len, NULL);
  if (status)
    {
      ctl_status_progress (status, &p);
      state = ctl_status_state (status);
      gint64 now = g_get_monotonic_time ();
      if (p.bytes_done >= 0)
        ctl_rate_add (rate, now, p.bytes_done);
      if (p.items_done >= 0)
        ctl_rate_add (items_rate, now, p.items_done);
    }
  gboolean syncing = state && strcmp (state, "syncing") == 0;
  guint width = terminal_width ();
  g_autofree char *bar = NULL;
  if (syncing)
    bar = ctl_format_bar (&p, ctl_rate_get (rate, 5 * G_USEC_PER_SEC),
                          ctl_rate_get (items_rate, 10 * G_USEC_PER_SEC), width - 1);
  else
    bar = g_strdup_printf ("%s — waiting for a sync to start", state ? state : "status unreadable");
  printf ("\r\033[K%s", bar);
  fflush (stdout);
}

static int
cmd_follow (int argc, char **argv)
{
  gboolean plain = FALSE;
  GOptionEntry entries[] = {
    { "plain", 'p', 0, G_OPTION_ARG_NONE, &plain, "One line per event even on a terminal", NULL },
    { NULL }
  };
  if (!parse_options ("MOUNT", "Show live progress from MOUNT/.sync/events until the mount goes away "
                      "or Ctrl-C.\nOn a terminal: a progress bar; otherwise one line per event.",
                      entries, &argc, &argv, 1, 1))
    return CTL_EXIT_USAGE;
  const char *mount = argv[1];
  if (!check_mount (mount))
    return CTL_EXIT_ERROR;
  /* Before the open, which blocks on a FIFO: Ctrl-C must always end with a clean line. */
  struct sigaction sa = { .sa_handler = on_interrupt };
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);

  g_autofree char *path = control_path (mount, "events");
  int fd;
  do
    fd = open (path, O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR && !interrupted);
  if (fd < 0)
    {
      if (interrupted)
        return 128 + interrupted;
      complain ("open(%s): %s", path, g_strerror (errno));
      return CTL_EXIT_ERROR;
    }

  gboolean bar = !plain && isatty (STDOUT_FILENO);

  /* The reader may still be blocked in read() when Ctrl-C makes us return, and a blocked read
   * on a FUSE file cannot be reliably interrupted; exit() takes the thread down. So the
   * follower lives on the heap, owned by this static pointer: it stays valid for the thread
   * until the process ends. */
  static Follower *follower;
  follower = g_new0 (Follower, 1);
  follower->fd = fd;
  follower->lines = g_async_queue_new ();
  Follower *f = follower;
  GThread *reader = g_thread_new ("events", follow_reader, f);

  CtlRate rate = { 0 }, items_rate = { 0 };
  gint64 last_draw = 0;
  int rc = CTL_EXIT_OK;
  if (bar)
    draw_bar (mount, &rate, &items_rate);
  while (!interrupted)
    {
      GString *line = g_async_queue_timeout_pop (f->lines, BAR_REFRESH_MS * 1000);
      if (line && line->len == 0)
        {
          g_string_free (line, TRUE);
          if (f->err)
            {
              if (bar)
                putchar ('\n');
              complain ("read(%s): %s", path, g_strerror (f->err));
              rc = CTL_EXIT_ERROR;
            }
          break;
        }
      if (line)
        {
          if (!bar)
            {
              g_autofree char *out = ctl_format_event (line->str, line->len);
              printf ("%s\n", out);
              fflush (stdout);
            }
          else if (ctl_event_is_notable (line->str, line->len))
            {
              g_autofree char *out = ctl_format_event (line->str, line->len);
              printf ("\r\033[K%s\n", out);
              last_draw = 0;   /* redraw the bar below it at once */
            }
          g_string_free (line, TRUE);
        }
      gint64 now = g_get_monotonic_time ();
      if (bar && now - last_draw >= BAR_REFRESH_MS * 1000)
        {
          draw_bar (mount, &rate, &items_rate);
          last_draw = now;
        }
    }
  if (bar)
    {
      draw_bar (mount, &rate, &items_rate);
      putchar ('\n');
    }
  fflush (stdout);
  if (interrupted)
    {
      g_thread_unref (reader);
      return 128 + interrupted;
    }
  /* The reader has pushed its sentinel: once joined, the follower is ours alone. */
  g_thread_join (reader);
  GString *rest;
  while ((rest = g_async_queue_try_pop (f->lines)) != NULL)
    g_string_free (rest, TRUE);
  g_async_queue_unref (f->lines);
  close (fd);
  g_clear_pointer (&follower, g_free);
  return rc;
}

/* ---- dispatch --------------------------------------------------------------------------- */

static const struct {
  const char *name;
  CommandFunc func;
  const char *summary;
} commands[] = {
  { "start",  cmd_start,  "MOUNT [--full] [--clear-exclusions] [--wait]  start a sync" },
  { "cancel", cmd_cancel, "MOUNT [--wait]                               cancel the running sync" },
  { "status", cmd_status, "MOUNT [--json]                               show state, progress, failures" },
  { "follow", cmd_follow, "MOUNT [--plain]                              live progress from the event stream" },
  { "login",  ctl_login_main, "[--profile P]                                sign in with a device code" },
};

static void
usage (FILE *out)
{
  fprintf (out, "Usage: %s COMMAND [OPTIONS]\n\nControl onedrive-syncfs mounts through their .sync/ files.\n\nCommands:\n",
           prgname);
  for (gsize i = 0; i < G_N_ELEMENTS (commands); i++)
    fprintf (out, "  %-7s %s\n", commands[i].name, commands[i].summary);
  fprintf (out, "\n  %s COMMAND --help    options of a command\n"
                "  %s --version         print the version\n\n"
                "Exit codes: 0 ok/completed, 1 error, 2 usage, 3 busy, 4 completed with errors,\n"
                "5 cancelled, 6 failed, 7 start words rejected, 8 login declined,\n"
                "9 login code expired, 10 no client id configured. See onedrive-syncctl(1).\n",
           prgname, prgname);
}

int
main (int argc, char **argv)
{
  setlocale (LC_ALL, "");
  g_set_prgname (prgname);
  if (argc < 2)
    {
      usage (stderr);
      return CTL_EXIT_USAGE;
    }
  const char *cmd = argv[1];
  if (strcmp (cmd, "--help") == 0 || strcmp (cmd, "-h") == 0 || strcmp (cmd, "help") == 0)
    {
      usage (stdout);
      return CTL_EXIT_OK;
    }
  if (strcmp (cmd, "--version") == 0 || strcmp (cmd, "-V") == 0)
    {
      printf ("%s %s\n", prgname, PACKAGE_VERSION);
      return CTL_EXIT_OK;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (commands); i++)
    if (strcmp (cmd, commands[i].name) == 0)
      return commands[i].func (argc - 1, argv + 1);
  complain ("unknown command '%s' (try --help)", cmd);
  return CTL_EXIT_USAGE;
}
