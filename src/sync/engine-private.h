/* Test hooks of the engine: places where a test can act at an exact moment of a run, so races
 * that a real deployment meets by chance are met every time (no sleeps that hope). Not for
 * other layers. */
#pragma once

#include <onedrive-syncfs/sync-engine.h>

G_BEGIN_DECLS

typedef enum {
  SYNC_HOOK_TASK_ACQUIRED,   /* a task passed the post-acquire cancel check (@path: its file) */
  SYNC_HOOK_BEFORE_DECIDE,   /* every worker is idle; the terminal state is about to be decided */
  SYNC_HOOK_OBJECTS_DURABLE, /* the publish leader's syncfs() of the cache returned 0 and the
                              * batch is not committed yet: once per file with content in the
                              * batch (@path: its mount path). Lets a test see that the flush
                              * precedes the publish; a real deployment cannot observe it. */
  SYNC_HOOK_SET_COMMITTED,   /* a source's delta set was committed (cursor and work stored) and
                              * none of that work has been applied yet (@path: the source) */
  SYNC_HOOK_N
} SyncHookPoint;

typedef void (*SyncHookFunc) (SyncEngine *engine, const char *path, gpointer user_data);

/* Installs @func at @point (NULL removes it). Called from engine threads, no lock held. */
void sync_engine_set_hook (SyncEngine *engine, SyncHookPoint point, SyncHookFunc func, gpointer user_data);

G_END_DECLS
