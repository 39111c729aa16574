/* The run state machine (see run-state.h for the idea).
 *
 * Lock order: rs->lock is a leaf. It is never held while calling out, in particular not
 * while firing the GCancellable: g_cancellable_cancel() runs handlers synchronously and a
 * handler (the Graph client's) must be free to take its own locks. The cancellable is fired
 * after the unlock, but before sync_run_state_cancel() returns, so "cancel returned" still
 * implies "every task checking the cancellable sees it".
 */
#define G_LOG_DOMAIN "odsf-sync"

#include "config.h"

#include <onedrive-syncfs/run-state.h>

#include <string.h>

struct _SyncRunState {
  GMutex        lock;
  GCond         idle_cond;            /* signalled when active becomes FALSE */
  SyncState     state;                /* protected by lock */
  gboolean      active;               /* protected by lock */
  guint64       run_seq;              /* protected by lock */
  GCancellable *cancel;               /* protected by lock; the current run's */
  gint64        started_at, finished_at;          /* protected by lock */
  gint64        last_rejected_at;                 /* protected by lock */
  char         *last_rejected_reason;             /* protected by lock */
};

static const char *const state_names[] = {
  [SYNC_STATE_IDLE] = "idle",
  [SYNC_STATE_SYNCING] = "syncing",
  [SYNC_STATE_COMPLETED] = "completed",
  [SYNC_STATE_COMPLETED_WITH_ERRORS] = "completed_with_errors",
  [SYNC_STATE_CANCELLED] = "cancelled",
  [SYNC_STATE_FAILED] = "failed",
  [SYNC_STATE_INTERRUPTED] = "interrupted",
};

const char *
sync_state_to_string (SyncState state)
{
  if ((guint) state < G_N_ELEMENTS (state_names))
    return state_names[state];
  return "unknown";
}

gboolean
sync_state_from_string (const char *text, SyncState *state)
{
  for (guint i = 0; text && i < G_N_ELEMENTS (state_names); i++)
    if (strcmp (text, state_names[i]) == 0)
      {
        *state = (SyncState) i;
        return TRUE;
      }
  return FALSE;
}

gboolean
sync_state_is_terminal (SyncState state)
{
  return state == SYNC_STATE_COMPLETED || state == SYNC_STATE_COMPLETED_WITH_ERRORS
         || state == SYNC_STATE_CANCELLED || state == SYNC_STATE_FAILED
         || state == SYNC_STATE_INTERRUPTED;
}

SyncRunState *
sync_run_state_new (SyncState initial)
{
  SyncRunState *rs = g_new0 (SyncRunState, 1);
  g_mutex_init (&rs->lock);
  g_cond_init (&rs->idle_cond);
  /* A restored "syncing" cannot be true: this process runs nothing yet. */
  rs->state = initial == SYNC_STATE_SYNCING ? SYNC_STATE_INTERRUPTED : initial;
  return rs;
}

void
sync_run_state_free (SyncRunState *rs)
{
  if (!rs)
    return;
  g_clear_object (&rs->cancel);
  g_free (rs->last_rejected_reason);
  g_cond_clear (&rs->idle_cond);
  g_mutex_clear (&rs->lock);
  g_free (rs);
}

/* Called with rs->lock held. Returns whether the transition happened and, for CANCEL, hands
 * the cancellable to fire after the unlock. */
static gboolean
transition_locked (SyncRunState *rs, SyncTransition transition, guint64 run_seq, SyncState next,
                   GCancellable **to_fire)
{
  switch (transition)
    {
    case SYNC_TRANSITION_START:
      if (rs->active)
        return FALSE;
      rs->active = TRUE;
      rs->state = SYNC_STATE_SYNCING;
      rs->run_seq++;
      rs->started_at = g_get_real_time ();
      rs->finished_at = 0;
      g_clear_object (&rs->cancel);
      rs->cancel = g_cancellable_new ();
      return TRUE;

    case SYNC_TRANSITION_CANCEL:
      if (rs->state != SYNC_STATE_SYNCING || (run_seq != 0 && run_seq != rs->run_seq))
        return FALSE;
      rs->state = SYNC_STATE_CANCELLED;
      rs->finished_at = g_get_real_time ();
      if (to_fire && rs->cancel)
        *to_fire = g_object_ref (rs->cancel);
      return TRUE;

    case SYNC_TRANSITION_FINISH:
      if (rs->state != SYNC_STATE_SYNCING || run_seq != rs->run_seq || !sync_state_is_terminal (next))
        return FALSE;
      rs->state = next;
      rs->finished_at = g_get_real_time ();
      /* Whatever is still running for this run must stop too. */
      if (to_fire && rs->cancel)
        *to_fire = g_object_ref (rs->cancel);
      return TRUE;

    case SYNC_TRANSITION_RELEASE:
      if (!rs->active || run_seq != rs->run_seq)
        return FALSE;
      /* A run thread that leaves without deciding has failed (should not happen). */
      if (rs->state == SYNC_STATE_SYNCING)
        {
          g_warning ("run %" G_GUINT64_FORMAT " released while syncing: marking failed", run_seq);
          rs->state = SYNC_STATE_FAILED;
          rs->finished_at = g_get_real_time ();
        }
      rs->active = FALSE;
      g_cond_broadcast (&rs->idle_cond);
      return TRUE;
    }
  return FALSE;
}

gboolean
sync_run_state_transition (SyncRunState *rs, SyncTransition transition, guint64 run_seq,
                           SyncState next, SyncState *observed)
{
  g_autoptr (GCancellable) fire = NULL;
  gboolean done;

  g_mutex_lock (&rs->lock);
  done = transition_locked (rs, transition, run_seq, next, &fire);
  if (observed)
    *observed = rs->state;
  g_mutex_unlock (&rs->lock);

  if (fire)
    g_cancellable_cancel (fire);
  return done;
}

guint64
sync_run_state_try_start (SyncRunState *rs, gboolean quiet, GCancellable **cancel)
{
  guint64 seq = 0;

  g_mutex_lock (&rs->lock);
  if (transition_locked (rs, SYNC_TRANSITION_START, 0, SYNC_STATE_SYNCING, NULL))
    {
      seq = rs->run_seq;
      if (cancel)
        *cancel = g_object_ref (rs->cancel);
    }
  else if (!quiet)
    {
      rs->last_rejected_at = g_get_real_time ();
      g_free (rs->last_rejected_reason);
      rs->last_rejected_reason = g_strdup (SYNC_BUSY_REASON);
    }
  g_mutex_unlock (&rs->lock);
  return seq;
}

gboolean
sync_run_state_cancel (SyncRunState *rs)
{
  return sync_run_state_transition (rs, SYNC_TRANSITION_CANCEL, 0, SYNC_STATE_CANCELLED, NULL);
}

SyncState
sync_run_state_finish (SyncRunState *rs, guint64 run_seq, SyncState state)
{
  SyncState observed;
  sync_run_state_transition (rs, SYNC_TRANSITION_FINISH, run_seq, state, &observed);
  return observed;
}

void
sync_run_state_release (SyncRunState *rs, guint64 run_seq)
{
  sync_run_state_transition (rs, SYNC_TRANSITION_RELEASE, run_seq, SYNC_STATE_IDLE, NULL);
}

gboolean
sync_run_state_wait_inactive (SyncRunState *rs, gint64 timeout_us)
{
  gint64 end = timeout_us < 0 ? G_MAXINT64 : g_get_monotonic_time () + timeout_us;
  gboolean inactive;

  g_mutex_lock (&rs->lock);
  while (rs->active)
    {
      if (timeout_us < 0)
        g_cond_wait (&rs->idle_cond, &rs->lock);
      else if (!g_cond_wait_until (&rs->idle_cond, &rs->lock, end))
        break;
    }
  inactive = !rs->active;
  g_mutex_unlock (&rs->lock);
  return inactive;
}

void
sync_run_snapshot_clear (SyncRunSnapshot *snap)
{
  g_clear_pointer (&snap->last_rejected_reason, g_free);
}

void
sync_run_state_snapshot (SyncRunState *rs, SyncRunSnapshot *out)
{
  g_mutex_lock (&rs->lock);
  out->state = rs->state;
  out->active = rs->active;
  out->run_seq = rs->run_seq;
  out->started_at = rs->started_at;
  out->finished_at = rs->finished_at;
  out->last_rejected_at = rs->last_rejected_at;
  out->last_rejected_reason = g_strdup (rs->last_rejected_reason);
  g_mutex_unlock (&rs->lock);
}

void
sync_run_state_record_rejection (SyncRunState *rs, const char *reason)
{
  g_mutex_lock (&rs->lock);
  rs->last_rejected_at = g_get_real_time ();
  g_free (rs->last_rejected_reason);
  rs->last_rejected_reason = g_strdup (reason);
  g_mutex_unlock (&rs->lock);
}
