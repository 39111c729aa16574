/* The engine tests' environment: a fake Graph server with an empty drive, the real store and
 * Graph client in a fresh temp dir, and the engine under test. */
#pragma once

#include <onedrive-syncfs/graph-client.h>
#include <onedrive-syncfs/store.h>
#include <onedrive-syncfs/sync-engine.h>

#include <cjson/cJSON.h>
#include <glib.h>

G_BEGIN_DECLS

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

typedef struct {
  char        *dir;
  char        *cache_dir;
  char        *db_path;
  char        *token_file;
  gpointer     fake;          /* FakeGraph* (tests/common/fake-graph-fixture.h) */
  Store       *store;
  GraphClient *client;
  SyncEngine  *engine;
  char        *last_state;
  gboolean     hook_fired;      /* for tests' hooks */
  GMutex       lock;
  GCond        cond;
  guint64      notifications;   /* protected by lock */
} Env;

typedef struct {
  guint               workers;
  const char *const  *sources;        /* NULL: { "/Docs" } */
  gint64              max_file_size;
  const char *const  *include_globs;
  const char *const  *exclude_globs;
  guint               sync_interval;
  guint               stall_timeout_s;   /* 0: 20 */
} EnvOptions;

/* FALSE when the fake server cannot be run here (the test then skips). */
gboolean env_available (void);
/* g_test_add with the Env fixture. */
void env_add (const char *test_path, void (*fn) (Env *env, gconstpointer data));

/* Calls the fake's admin API (/_admin/@path); aborts the test on an HTTP error. */
cJSON *env_admin (Env *env, const char *method, const char *path, const char *json_body);
void env_do (Env *env, const char *method, const char *path, const char *json_body);
void env_faults (Env *env, const char *json);
/* POST /_admin/items/@op. */
void env_itemop (Env *env, const char *op, const char *json);
void env_add_file (Env *env, const char *path, const char *content);
char *env_add_file_id (Env *env, const char *path, const char *content);
gboolean env_try_add_file (Env *env, const char *path, const char *content);
void env_add_generated (Env *env, const char *path, guint64 size, guint64 seed);
void env_add_folder (Env *env, const char *path);

/* (Re)creates store, client and engine over the same directory (a restart). */
void env_engine (Env *env, const EnvOptions *opts);
/* Starts a run with @flags, waits until it is over, returns its final state. */
const char *env_sync (Env *env, SyncStartFlags flags);
cJSON *env_status (Env *env);
/* Whether @path is visible in the mount (the store's published tree). */
gboolean env_mount_has (Env *env, const char *path);
/* Published tree under @source == the fake's live tree, bytes verified by quickXorHash. */
gboolean env_mirror_equals_remote (Env *env, const char *source, char **why);
guint env_cache_objects (Env *env);
gboolean env_exclude (Env *env, const char *path);
/* Waits for the next engine notification (or 100 ms). */
void env_wait_notify (Env *env);
void env_wait_a_little (Env *env);

G_END_DECLS
