/* What onedrive-syncctl knows about the mount's documents, and how it shows them.
 *
 * Pure functions, no I/O: the status document (docs/status.md) and the event lines of
 * .sync/events go in, text and exit codes come out. Kept apart from main.c so the unit test
 * can check every format and every exit code without a mount.
 *
 * The status document is read defensively: a field that is missing or of the wrong type
 * reads as "unknown" and is left out of the output, never a crash — the tool may be older or
 * newer than the daemon it talks to.
 */
#pragma once

#include <cjson/cJSON.h>
#include <gio/gio.h>

G_BEGIN_DECLS

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

/* Exit codes of onedrive-syncctl (documented in onedrive-syncctl(1)). */
typedef enum {
  CTL_EXIT_OK                    = 0,  /* done; with --wait: the run completed */
  CTL_EXIT_ERROR                 = 1,  /* not a mount, I/O error, malformed status, ... */
  CTL_EXIT_USAGE                 = 2,  /* bad command line */
  CTL_EXIT_BUSY                  = 3,  /* start refused: a run is already active */
  CTL_EXIT_COMPLETED_WITH_ERRORS = 4,  /* --wait: the run ended, some files failed */
  CTL_EXIT_CANCELLED             = 5,  /* --wait: the run was cancelled */
  CTL_EXIT_FAILED                = 6,  /* --wait: the run failed (or was interrupted) */
  CTL_EXIT_INVALID               = 7,  /* start refused: the daemon rejected the start words */
  CTL_EXIT_LOGIN_DECLINED        = 8,  /* login: the user declined */
  CTL_EXIT_LOGIN_EXPIRED         = 9,  /* login: the code expired before approval */
  CTL_EXIT_NOT_CONFIGURED        = 10, /* login: no client id configured */
} CtlExit;

/* The exit code that tells a run's final state apart: "completed" → 0, ... Unknown → 1. */
CtlExit ctl_exit_for_state (const char *state);

/* TRUE for the states a run ends in (completed, completed_with_errors, cancelled, failed,
 * interrupted). */
gboolean ctl_state_is_terminal (const char *state);

/* ---- reading the status document ------------------------------------------------------ */

/* Parses @text; NULL with @error set when it is not a JSON object. */
cJSON *ctl_status_parse (const char *text, gsize len, GError **error);
/* "syncing", "idle", ...; "unknown" when missing. Borrowed from @status. */
const char *ctl_status_state (const cJSON *status);
/* The run's identity as text (run id, else start time), or NULL when the document has none.
 * Newly allocated. Used to tell "the run I started" from the one before it. */
char *ctl_status_run_key (const cJSON *status);
/* The reason of the last refused start, or NULL. Borrowed. */
const char *ctl_status_rejected_reason (const cJSON *status);

typedef struct {
  gint64 items_done;     /* "current": work items (files and folders) finished, whatever the outcome; -1 unknown */
  gint64 items_total;    /* "total": work items this run will process; -1 unknown */
  gint64 files_failed;   /* -1 unknown */
  gint64 bytes_done;     /* -1 unknown */
  gint64 bytes_total;    /* -1 unknown */
} CtlProgress;

void ctl_status_progress (const cJSON *status, CtlProgress *out);

/* The human table of `status` (state, progress, last run, failed files, sources).
 * @now_us: the current time (unix µs) so "ago" is testable. Newly allocated. */
char *ctl_format_status (const cJSON *status, gint64 now_us);

/* ---- events ----------------------------------------------------------------------------- */

/* One event line as a plain log line: "HH:MM:SS event key=value ..." (the time in local
 * time; the event's own fields in their order; strings quoted when they hold blanks).
 * A line that is not a JSON object is returned as it is. Newly allocated, no newline. */
char *ctl_format_event (const char *line, gsize len);

/* TRUE when an event line is worth a line above the progress bar (failures, run
 * boundaries, lost events), FALSE for routine per-file progress. */
gboolean ctl_event_is_notable (const char *line, gsize len);

/* ---- the progress bar ------------------------------------------------------------------- */

/* Rate over a sliding window of (time, bytes) samples. */
typedef struct {
  gint64  t_us[16];
  gint64  bytes[16];
  guint   n, head;
} CtlRate;

void ctl_rate_add (CtlRate *rate, gint64 t_us, gint64 bytes);
/* Bytes per second over the samples of the last @window_us, or -1 when too few samples. */
double ctl_rate_get (const CtlRate *rate, gint64 window_us);

/* One line, at most @width columns:
 *   "[#####.....]  42%  120/300 items  1.2 MiB/3.4 GiB  12.3 MiB/s  ETA 3m05s"
 * Parts that are unknown are left out. @rate (bytes/s) < 0 shows no rate; the ETA comes from
 * the bytes left and @rate when the byte total is known, else from the work items left and
 * @items_rate (items/s); "ETA --" when neither can say. Newly allocated. */
char *ctl_format_bar (const CtlProgress *p, double rate, double items_rate, guint width);

/* ---- small formatters --------------------------------------------------------------------- */

/* "0 B", "512 B", "1.5 KiB", "3.4 GiB". Newly allocated. */
char *ctl_format_bytes (gint64 bytes);
/* "45s", "3m05s", "2h07m", "3d04h". Newly allocated. */
char *ctl_format_duration (gint64 seconds);

G_END_DECLS
