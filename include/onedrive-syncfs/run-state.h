/* The run state machine: which state the current run is in, and whether a run is active.
 *
 * Two facts are kept apart on purpose. The *state* (idle, syncing, and the terminal states)
 * is what the status reports; it leaves `syncing` exactly once per run, by compare-and-set,
 * and whoever gets there first decides: a cancel that lands before completion makes the run
 * `cancelled`, and the later "completed" attempt fails harmlessly. *Active* says a run thread
 * still owns the queue (it may be winding down after the terminal state was decided); a start
 * is refused while a run is active, so two runs never work the same queue.
 *
 * Every change of either goes through one function under one mutex (sync_run_state_transition),
 * so a check-then-act race between two starts cannot exist: the check and the act are one step.
 * Progress is not kept here at all, so no progress update can ever change the state.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  SYNC_STATE_IDLE,
  SYNC_STATE_SYNCING,
  SYNC_STATE_COMPLETED,
  SYNC_STATE_COMPLETED_WITH_ERRORS,
  SYNC_STATE_CANCELLED,
  SYNC_STATE_FAILED,
  SYNC_STATE_INTERRUPTED,      /* the store found a run whose process died */
} SyncState;

#define SYNC_BUSY_REASON "A sync is already in progress. Cancel it first or wait for it to complete."

/* "idle", "syncing", "completed", ... (static string). */
const char *sync_state_to_string (SyncState state);
/* The inverse; FALSE for an unknown word. */
gboolean sync_state_from_string (const char *text, SyncState *state);
gboolean sync_state_is_terminal (SyncState state);

typedef struct _SyncRunState SyncRunState;

/* A fresh machine: state @initial (idle, or a terminal state restored from the store), no run
 * active. */
SyncRunState *sync_run_state_new (SyncState initial);
void sync_run_state_free (SyncRunState *rs);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (SyncRunState, sync_run_state_free)

typedef enum {
  SYNC_TRANSITION_START,       /* !active → active, state := syncing, new cancellable */
  SYNC_TRANSITION_CANCEL,      /* syncing → cancelled, and the run's cancellable fires */
  SYNC_TRANSITION_FINISH,      /* syncing → the requested terminal state */
  SYNC_TRANSITION_RELEASE,     /* active → !active (the run thread is gone) */
} SyncTransition;

/* The one transition function. Compare-and-set: @run_seq must name the current run (0 for
 * START and CANCEL, which act on whatever is current) and the current state must be the one
 * the transition starts from; otherwise nothing changes and FALSE is returned. @next is the
 * terminal state for FINISH and ignored otherwise. *@observed (may be NULL) receives the state
 * after the call, whether or not it changed. */
gboolean sync_run_state_transition (SyncRunState *rs, SyncTransition transition, guint64 run_seq,
                                    SyncState next, SyncState *observed);

/* Starts a run: on success returns the new run's sequence number (>= 1) and its cancellable
 * (a new reference in *@cancel). When a run is active returns 0; unless @quiet the refusal is
 * recorded as the last rejected start (time and SYNC_BUSY_REASON). */
guint64 sync_run_state_try_start (SyncRunState *rs, gboolean quiet, GCancellable **cancel);
/* Decides `cancelled` for the current run if it is still syncing and fires its cancellable
 * before returning. FALSE when nothing was syncing. */
gboolean sync_run_state_cancel (SyncRunState *rs);
/* Decides the terminal state of run @run_seq. Returns the state the run actually ended in:
 * @state when this call decided it, or the earlier decision (e.g. cancelled) otherwise. */
SyncState sync_run_state_finish (SyncRunState *rs, guint64 run_seq, SyncState state);
/* The run thread of @run_seq is gone: a new start may win now. Wakes wait_idle. */
void sync_run_state_release (SyncRunState *rs, guint64 run_seq);
/* Blocks until no run is active or @timeout_us passes (-1: forever). TRUE when inactive. */
gboolean sync_run_state_wait_inactive (SyncRunState *rs, gint64 timeout_us);

typedef struct {
  SyncState state;
  gboolean  active;
  guint64   run_seq;            /* 0 before the first run of this process */
  gint64    started_at;         /* unix microseconds (g_get_real_time), 0 if never */
  gint64    finished_at;        /* when the terminal state was decided, 0 if not yet */
  gint64    last_rejected_at;   /* unix microseconds of the last busy refusal, 0 if none */
  char     *last_rejected_reason;
} SyncRunSnapshot;

void sync_run_snapshot_clear (SyncRunSnapshot *snap);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (SyncRunSnapshot, sync_run_snapshot_clear)

/* A consistent copy of everything above, taken under the mutex. */
void sync_run_state_snapshot (SyncRunState *rs, SyncRunSnapshot *out);
/* Records a refused start that was not a busy refusal (e.g. an unknown start word). */
void sync_run_state_record_rejection (SyncRunState *rs, const char *reason);

G_END_DECLS
