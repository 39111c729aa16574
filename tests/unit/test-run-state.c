/* The run state machine: terminal state decided once, cancel wins, busy refusal is atomic —
 * each of the seed's state races (README items 3, 4, 5) is run here with real threads. */
#include "config.h"

#include <onedrive-syncfs/run-state.h>

#include <string.h>

/* A reusable barrier: every thread of a round leaves wait() together, so the calls that
 * follow really race. */
typedef struct {
  GMutex lock;
  GCond  cond;
  guint  parties, waiting, round;
} Barrier;

static void
barrier_init (Barrier *b, guint parties)
{
  g_mutex_init (&b->lock);
  g_cond_init (&b->cond);
  b->parties = parties;
  b->waiting = 0;
  b->round = 0;
}

static void
barrier_clear (Barrier *b)
{
  g_mutex_clear (&b->lock);
  g_cond_clear (&b->cond);
}

static void
barrier_wait (Barrier *b)
{
  g_mutex_lock (&b->lock);
  guint round = b->round;
  if (++b->waiting == b->parties)
    {
      b->waiting = 0;
      b->round++;
      g_cond_broadcast (&b->cond);
    }
  else
    while (round == b->round)
      g_cond_wait (&b->cond, &b->lock);
  g_mutex_unlock (&b->lock);
}

static void
test_names (void)
{
  for (SyncState s = SYNC_STATE_IDLE; s <= SYNC_STATE_INTERRUPTED; s++)
    {
      SyncState back;
      g_assert_true (sync_state_from_string (sync_state_to_string (s), &back));
      g_assert_cmpint (back, ==, s);
    }
  SyncState dummy;
  g_assert_false (sync_state_from_string ("bogus", &dummy));
  g_assert_cmpstr (sync_state_to_string (SYNC_STATE_COMPLETED_WITH_ERRORS), ==, "completed_with_errors");
  g_assert_false (sync_state_is_terminal (SYNC_STATE_SYNCING));
  g_assert_false (sync_state_is_terminal (SYNC_STATE_IDLE));
  g_assert_true (sync_state_is_terminal (SYNC_STATE_CANCELLED));
}

static void
test_busy_refusal (void)
{
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_IDLE);
  g_autoptr (GCancellable) c1 = NULL;
  g_autoptr (GCancellable) c2 = NULL;

  guint64 seq = sync_run_state_try_start (rs, FALSE, &c1);
  g_assert_cmpuint (seq, ==, 1);
  g_assert_nonnull (c1);

  /* A quiet (periodic) refusal is not news. */
  g_assert_cmpuint (sync_run_state_try_start (rs, TRUE, &c2), ==, 0);
  g_auto (SyncRunSnapshot) snap = { 0 };
  sync_run_state_snapshot (rs, &snap);
  g_assert_cmpint (snap.last_rejected_at, ==, 0);
  sync_run_snapshot_clear (&snap);

  gint64 before = g_get_real_time ();
  g_assert_cmpuint (sync_run_state_try_start (rs, FALSE, &c2), ==, 0);
  g_assert_null (c2);
  sync_run_state_snapshot (rs, &snap);
  g_assert_cmpint (snap.state, ==, SYNC_STATE_SYNCING);
  g_assert_true (snap.active);
  g_assert_cmpint (snap.last_rejected_at, >=, before);
  g_assert_cmpstr (snap.last_rejected_reason, ==,
                   "A sync is already in progress. Cancel it first or wait for it to complete.");

  g_assert_cmpint (sync_run_state_finish (rs, seq, SYNC_STATE_COMPLETED), ==, SYNC_STATE_COMPLETED);
  /* Decided but not released: the old run still owns the queue, so still busy. */
  g_assert_cmpuint (sync_run_state_try_start (rs, FALSE, &c2), ==, 0);
  sync_run_state_release (rs, seq);
  g_assert_cmpuint (sync_run_state_try_start (rs, FALSE, &c2), ==, 2);
  g_assert_nonnull (c2);
  g_assert_true (c1 != c2);
  g_assert_false (g_cancellable_is_cancelled (c2));
}

static void
test_cancel_wins (void)
{
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_IDLE);
  g_autoptr (GCancellable) cancel = NULL;
  guint64 seq = sync_run_state_try_start (rs, FALSE, &cancel);

  g_assert_true (sync_run_state_cancel (rs));
  /* The cancellable fired before cancel returned: a task checking it now must see it. */
  g_assert_true (g_cancellable_is_cancelled (cancel));
  /* Every later completion or failure path loses. */
  g_assert_cmpint (sync_run_state_finish (rs, seq, SYNC_STATE_COMPLETED), ==, SYNC_STATE_CANCELLED);
  g_assert_cmpint (sync_run_state_finish (rs, seq, SYNC_STATE_FAILED), ==, SYNC_STATE_CANCELLED);
  g_assert_cmpint (sync_run_state_finish (rs, seq, SYNC_STATE_COMPLETED_WITH_ERRORS), ==, SYNC_STATE_CANCELLED);
  /* A second cancel changes nothing and says so. */
  g_assert_false (sync_run_state_cancel (rs));
  SyncState observed;
  g_assert_false (sync_run_state_transition (rs, SYNC_TRANSITION_FINISH, seq, SYNC_STATE_COMPLETED, &observed));
  g_assert_cmpint (observed, ==, SYNC_STATE_CANCELLED);
  sync_run_state_release (rs, seq);

  g_auto (SyncRunSnapshot) snap = { 0 };
  sync_run_state_snapshot (rs, &snap);
  g_assert_cmpint (snap.state, ==, SYNC_STATE_CANCELLED);
  g_assert_false (snap.active);
  g_assert_cmpint (snap.finished_at, >=, snap.started_at);
}

static void
test_decided_once (void)
{
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_IDLE);
  guint64 seq = sync_run_state_try_start (rs, FALSE, NULL);

  /* Not terminal: refused. */
  g_assert_false (sync_run_state_transition (rs, SYNC_TRANSITION_FINISH, seq, SYNC_STATE_IDLE, NULL));
  /* A stale run number cannot decide this run. */
  g_assert_cmpint (sync_run_state_finish (rs, seq + 7, SYNC_STATE_FAILED), ==, SYNC_STATE_SYNCING);
  g_assert_cmpint (sync_run_state_finish (rs, seq, SYNC_STATE_FAILED), ==, SYNC_STATE_FAILED);
  /* Failure is decided; neither completion nor cancel can overwrite it. */
  g_assert_cmpint (sync_run_state_finish (rs, seq, SYNC_STATE_COMPLETED), ==, SYNC_STATE_FAILED);
  g_assert_false (sync_run_state_cancel (rs));
  sync_run_state_release (rs, seq);
  sync_run_state_release (rs, seq);   /* twice is harmless */
  g_assert_true (sync_run_state_wait_inactive (rs, 0));
}

static void
test_restored (void)
{
  /* Seed item 5: a "syncing" left by a dead process must not block every later start. */
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_SYNCING);
  g_auto (SyncRunSnapshot) snap = { 0 };
  sync_run_state_snapshot (rs, &snap);
  g_assert_cmpint (snap.state, ==, SYNC_STATE_INTERRUPTED);
  g_assert_false (snap.active);
  g_assert_false (sync_run_state_cancel (rs));
  g_assert_cmpuint (sync_run_state_try_start (rs, FALSE, NULL), ==, 1);
}

static gpointer
release_later (gpointer data)
{
  SyncRunState *rs = data;
  g_usleep (20 * 1000);   /* only delays the release; the assertion below does not depend on it */
  sync_run_state_finish (rs, 1, SYNC_STATE_COMPLETED);
  sync_run_state_release (rs, 1);
  return NULL;
}

static void
test_wait_inactive (void)
{
  g_autoptr (SyncRunState) rs = sync_run_state_new (SYNC_STATE_IDLE);
  sync_run_state_try_start (rs, FALSE, NULL);
  g_assert_false (sync_run_state_wait_inactive (rs, 1000));
  GThread *t = g_thread_new ("release", release_later, rs);
  g_assert_true (sync_run_state_wait_inactive (rs, -1));
  g_thread_join (t);
}

#define RACERS 4
#define ROUNDS 400

typedef struct {
  SyncRunState *rs;
  Barrier       start, done;
  gint          winners;
  guint64       won_seq[RACERS];
} StartRace;

typedef struct {
  StartRace *race;
  guint      index;
} Racer;

static gpointer
start_racer (gpointer data)
{
  Racer *r = data;
  for (guint round = 0; round < ROUNDS; round++)
    {
      barrier_wait (&r->race->start);
      guint64 seq = sync_run_state_try_start (r->race->rs, FALSE, NULL);
      r->race->won_seq[r->index] = seq;
      if (seq)
        g_atomic_int_inc (&r->race->winners);
      barrier_wait (&r->race->done);
      barrier_wait (&r->race->done);   /* the main thread checks and resets in between */
    }
  return NULL;
}

static void
test_start_race (void)
{
  /* Seed item 4: check-then-act let two starts win. Here RACERS threads start at once, many
   * times over: exactly one wins each round. */
  StartRace race = { .rs = sync_run_state_new (SYNC_STATE_IDLE) };
  barrier_init (&race.start, RACERS);
  barrier_init (&race.done, RACERS + 1);
  Racer racers[RACERS];
  GThread *threads[RACERS];
  for (guint i = 0; i < RACERS; i++)
    {
      racers[i] = (Racer) { &race, i };
      threads[i] = g_thread_new ("racer", start_racer, &racers[i]);
    }
  for (guint round = 0; round < ROUNDS; round++)
    {
      barrier_wait (&race.done);
      g_assert_cmpint (g_atomic_int_get (&race.winners), ==, 1);
      guint64 seq = 0;
      for (guint i = 0; i < RACERS; i++)
        seq = MAX (seq, race.won_seq[i]);
      g_assert_cmpuint (seq, ==, round + 1);
      g_assert_cmpint (sync_run_state_finish (race.rs, seq, SYNC_STATE_COMPLETED), ==, SYNC_STATE_COMPLETED);
      sync_run_state_release (race.rs, seq);
      g_atomic_int_set (&race.winners, 0);
      barrier_wait (&race.done);
    }
  for (guint i = 0; i < RACERS; i++)
    g_thread_join (threads[i]);
  g_auto (SyncRunSnapshot) snap = { 0 };
  sync_run_state_snapshot (race.rs, &snap);
  g_assert_cmpstr (snap.last_rejected_reason, ==, SYNC_BUSY_REASON);
  sync_run_state_free (race.rs);
  barrier_clear (&race.start);
  barrier_clear (&race.done);
}

typedef struct {
  SyncRunState *rs;
  Barrier       go;
  guint64       seq;
  gboolean      cancelled;
  SyncState     finished_as;
} CancelRace;

static gpointer
cancel_racer (gpointer data)
{
  CancelRace *r = data;
  barrier_wait (&r->go);
  r->cancelled = sync_run_state_cancel (r->rs);
  return NULL;
}

static gpointer
finish_racer (gpointer data)
{
  CancelRace *r = data;
  barrier_wait (&r->go);
  r->finished_as = sync_run_state_finish (r->rs, r->seq, SYNC_STATE_COMPLETED);
  return NULL;
}

static void
test_cancel_finish_race (void)
{
  /* Seed item 3: a cancel racing the last file. Whichever lands first decides; a cancel that
   * reported success is never overwritten by "completed". */
  guint cancel_won = 0, finish_won = 0;
  for (guint i = 0; i < ROUNDS; i++)
    {
      CancelRace r = { .rs = sync_run_state_new (SYNC_STATE_IDLE) };
      barrier_init (&r.go, 2);
      r.seq = sync_run_state_try_start (r.rs, FALSE, NULL);
      GThread *a = g_thread_new ("cancel", cancel_racer, &r);
      GThread *b = g_thread_new ("finish", finish_racer, &r);
      g_thread_join (a);
      g_thread_join (b);
      g_auto (SyncRunSnapshot) snap = { 0 };
      sync_run_state_snapshot (r.rs, &snap);
      if (r.cancelled)
        {
          g_assert_cmpint (snap.state, ==, SYNC_STATE_CANCELLED);
          g_assert_cmpint (r.finished_as, ==, SYNC_STATE_CANCELLED);
          cancel_won++;
        }
      else
        {
          g_assert_cmpint (snap.state, ==, SYNC_STATE_COMPLETED);
          g_assert_cmpint (r.finished_as, ==, SYNC_STATE_COMPLETED);
          finish_won++;
        }
      sync_run_state_free (r.rs);
      barrier_clear (&r.go);
    }
  g_test_message ("cancel won %u, finish won %u", cancel_won, finish_won);
  g_assert_cmpuint (cancel_won + finish_won, ==, ROUNDS);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/run-state/names", test_names);
  g_test_add_func ("/run-state/busy-refusal", test_busy_refusal);
  g_test_add_func ("/run-state/cancel-wins", test_cancel_wins);
  g_test_add_func ("/run-state/decided-once", test_decided_once);
  g_test_add_func ("/run-state/restored-syncing-is-interrupted", test_restored);
  g_test_add_func ("/run-state/wait-inactive", test_wait_inactive);
  g_test_add_func ("/run-state/start-race", test_start_race);
  g_test_add_func ("/run-state/cancel-finish-race", test_cancel_finish_race);
  return g_test_run ();
}
