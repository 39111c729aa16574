/* Internal surface of the fake Microsoft Graph server (tools/fake-graph/).
 *
 * One FakeServer per process. Lock order, outermost first:
 *   drive->lock (GRWLock)  >  faults->lock  >  auth->lock  >  stats->lock
 * No function takes an outer lock while holding an inner one. Per-item download
 * counters live in FakeItem under the stats lock; items are never freed before shutdown (a deleted
 * item stays as its own tombstone), so a pointer taken under the drive lock stays valid.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdint.h>

G_BEGIN_DECLS

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

/* ---------- content ---------- */

/* Bytes of one version of a file: a window [offset, offset+size) of an fd (a memfd or the
 * synthetic pool) or a path on disk opened per request. Reference counted because a
 * download in flight keeps serving the version it started with. */
typedef struct {
  gint     ref;
  int      fd;        /* -1 when @path is used */
  gboolean fd_borrowed; /* the synthetic pool's fd: owned by the drive, not closed here */
  char    *path;
  guint64  offset;
  guint64  size;
} FakeBlob;

FakeBlob *fake_blob_ref (FakeBlob *blob);
void      fake_blob_unref (FakeBlob *blob);
/* A new fd positioned nowhere (use pread / offsets) that the caller owns; -1 + errno. */
int       fake_blob_open (const FakeBlob *blob);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FakeBlob, fake_blob_unref)

/* ---------- the drive ---------- */

typedef struct _FakeItem FakeItem;
struct _FakeItem {
  guint64     num;          /* creation counter; ids are derived from it */
  char       *id;
  char       *name;         /* protected by drive lock */
  FakeItem   *parent;       /* kept on deletion: the tombstone's parentReference */
  GHashTable *children;     /* folders: casefolded name -> FakeItem*, live children only */
  gboolean    folder;
  gboolean    deleted;
  gboolean    hidden;       /* deleted silently with its folder: in no delta set */
  gboolean    remote;       /* a shared folder: a remoteItem shortcut whose contents live on
                             * the "remote" drive and appear only in deltas scoped to it */
  char       *package;      /* package type (e.g. "oneNote"): neither file nor folder; NULL */
  guint64     seq;          /* change-log position of the latest change */
  guint       version;      /* eTag version: any change */
  guint       cversion;     /* cTag version: content change */
  FakeBlob   *blob;         /* files */
  guint64     size;         /* files: bytes; folders: sum of live descendants */
  char       *quickxor;     /* base64 */
  char       *sha1;         /* hex, upper case */
  char       *sha256;
  gint64      created;      /* unix seconds */
  gint64      modified;
  /* stats, protected by FakeStats.lock */
  gint64      full_downloads;
  gint64      ranged_downloads;
  gint64      bytes_served;
};

typedef struct {
  FakeItem *item;
  gboolean  as_tombstone;   /* moved out of a folder scope: reported deleted there */
} FakeSetEntry;

typedef struct {
  guint     id;
  FakeItem *scope;
  GArray   *entries;        /* FakeSetEntry */
  guint64   to_seq;         /* the deltaLink of this set continues from here */
  guint     epoch;
  gint64    created;        /* monotonic µs */
} FakeDeltaSet;

typedef struct {
  GRWLock     lock;
  gboolean    business;
  char       *drive_id;
  char       *remote_drive_id;  /* the drive that shared (remote) folders live on */
  FakeItem   *root;
  GHashTable *by_id;        /* id -> FakeItem*, deleted ones too */
  GPtrArray  *all;          /* FakeItem*, owned, creation order */
  GArray     *log;          /* FakeLogEntry, seq ascending */
  GArray     *moves;        /* FakeMoveEntry, seq ascending */
  guint64     seq;
  guint64     next_num;
  guint       epoch;        /* protected by lock; bumping it makes every token answer 410 */
  GHashTable *sets;         /* set id -> FakeDeltaSet* */
  GQueue      set_order;    /* oldest first, for eviction */
  guint       next_set;
  int         pool_fd;      /* synthetic content pool, or -1 */
} FakeDrive;

/* An empty drive (just the root) in the Personal or Business style. Never fails. */
FakeDrive *fake_drive_new (gboolean business);
/* Frees every item, set and blob. No request may be running. */
void       fake_drive_free (FakeDrive *drive);
/* Adds the tree under @dir (sorted, so ids repeat across runs; symlinks and special files
 * skipped), hashing every file. FALSE with @error on an unreadable entry. */
gboolean   fake_drive_load_dir (FakeDrive *drive, const char *dir, GError **error);
/* Adds @n files of @size bytes in @folders folders (0: in the root), content generated from
 * @seed into one memfd. FALSE with @error when memory cannot be had. */
gboolean   fake_drive_load_synthetic (FakeDrive *drive, guint n, guint64 size, guint folders,
                                      guint64 seed, GError **error);

/* All below: caller holds drive->lock (read for lookups, write for mutations). */
FakeItem  *fake_drive_lookup_id (FakeDrive *drive, const char *id);        /* live only */
FakeItem  *fake_drive_lookup_child (FakeItem *folder, const char *name);
/* @path: decoded, '/'-separated, relative to @base; NULL when any segment is missing. */
FakeItem  *fake_drive_lookup_path (FakeDrive *drive, FakeItem *base, const char *path);
char      *fake_drive_item_path (FakeItem *item);                           /* "/a/b" */
/* Live children sorted by casefolded name; a new array of borrowed pointers. */
GPtrArray *fake_drive_sorted_children (FakeItem *folder);
/* Any item by id, tombstones included. */
FakeItem  *fake_drive_lookup_any (FakeDrive *drive, const char *id);
gboolean   fake_item_is_under (FakeItem *item, FakeItem *ancestor);
/* The drive an item lives on: the remote drive inside a shared folder, else the drive. */
const char *fake_item_drive_id (FakeDrive *drive, FakeItem *item);

/* Mutations: write lock held. Each records a change with a new sequence number and returns
 * FALSE/NULL with a G_IO_ERROR (NOT_FOUND, EXISTS, INVALID_ARGUMENT) leaving the drive as it
 * was. fake_drive_add and fake_drive_modify take their own reference to @blob and hash it. */
FakeItem  *fake_drive_add (FakeDrive *drive, FakeItem *parent, const char *name, gboolean folder,
                           FakeBlob *blob, gint64 mtime, GError **error);
gboolean   fake_drive_modify (FakeDrive *drive, FakeItem *item, FakeBlob *blob, gint64 mtime,
                              GError **error);
gboolean   fake_drive_delete (FakeDrive *drive, FakeItem *item, gboolean child_tombstones,
                              GError **error);
gboolean   fake_drive_move (FakeDrive *drive, FakeItem *item, FakeItem *new_parent,
                            const char *new_name, GError **error);
/* Records a change of @item without altering it (e.g. to make it reappear in delta). */
void       fake_drive_touch (FakeDrive *drive, FakeItem *item);

/* New blob from bytes or generated from a seed; hashes are computed by fake_drive_* on use. */
FakeBlob  *fake_blob_new_bytes (const void *data, gsize len, GError **error);
FakeBlob  *fake_blob_new_generated (guint64 size, guint64 seed, GError **error);

/* Delta sets. Caller holds the write lock (sets are created and evicted). A full set lists
 * the live items under @scope (tombstones too with @include_tombstones_in_full); an
 * incremental one the items changed after @from_seq and their ancestors. The drive owns the
 * set; it stays valid until 64 newer sets exist. fake_drive_get_set: NULL once evicted. */
FakeDeltaSet *fake_drive_new_set (FakeDrive *drive, FakeItem *scope, gboolean full,
                                  guint64 from_seq, gboolean include_tombstones_in_full,
                                  gboolean duplicates, gboolean shuffle);
FakeDeltaSet *fake_drive_get_set (FakeDrive *drive, guint id);

/* ---------- rendering ---------- */

typedef struct {
  gboolean    in_delta;          /* delta pages: no downloadUrl, no parentReference.path */
  gboolean    delta_paths;       /* switch: keep parentReference.path in delta */
  gboolean    no_hash_empty;
  gboolean    no_hash;
  gboolean    no_sha;
  gboolean    mixed_case_drive_id;
  gboolean    as_tombstone;
  const char *download_url;      /* NULL: none */
  char      **select;            /* NULL: everything */
} FakeRenderOpts;

/* The item as Graph shows it, in the drive's flavour; a new object. Drive lock held. */
cJSON *fake_render_item (FakeDrive *drive, FakeItem *item, const FakeRenderOpts *opts);
char  *fake_render_etag (FakeDrive *drive, FakeItem *item);
/* ISO 8601 UTC, with ".000" when @fraction. */
char  *fake_format_time (gint64 unix_seconds, gboolean fraction);

/* ---------- auth ---------- */

typedef enum {
  FAKE_DEVICE_PENDING,
  FAKE_DEVICE_APPROVED,
  FAKE_DEVICE_DECLINED,
  FAKE_DEVICE_EXPIRED,
  FAKE_DEVICE_CONSUMED,
} FakeDeviceState;

typedef struct {
  char           *device_code;
  char           *user_code;
  FakeDeviceState state;
  gint64          expires;     /* monotonic µs */
  gint64          last_poll;   /* monotonic µs, 0 = never */
  guint           interval;    /* seconds, grows by 5 on slow_down */
  guint           forced_slow_downs;
  char           *scope;
} FakeDeviceCode;

typedef struct {
  GMutex      lock;
  GHashTable *access;          /* token -> gint64* expiry (monotonic µs) */
  GHashTable *refresh;         /* token -> TRUE; a used refresh token is removed */
  GHashTable *devices;         /* device_code -> FakeDeviceCode* */
  GPtrArray  *device_order;    /* FakeDeviceCode*, borrowed, newest last */
  double      access_lifetime; /* seconds */
  guint       device_interval;
  guint       device_lifetime;
  char       *static_token;    /* never expires (benchmarks); NULL: none */
  char       *client_id;       /* NULL: any */
  guint64     counter;
  gboolean    refresh_unavailable; /* switch: refresh grant answers temporarily_unavailable */
} FakeAuth;

/* Defaults: access tokens live 3599 s, device codes 900 s with a 5 s interval. */
void  fake_auth_init (FakeAuth *auth);
void  fake_auth_clear (FakeAuth *auth);
/* Mints a pair; returns a JSON object in the token-endpoint shape. Takes auth->lock. */
cJSON *fake_auth_mint (FakeAuth *auth, double lifetime, const char *scope);
/* 0 valid; 1 unknown; 2 expired. Takes auth->lock. */
int   fake_auth_check (FakeAuth *auth, const char *token);

/* ---------- faults and stats ---------- */

typedef enum {
  FAKE_ROUTE_ME_DRIVE,
  FAKE_ROUTE_DRIVE,
  FAKE_ROUTE_ITEM,
  FAKE_ROUTE_CHILDREN,
  FAKE_ROUTE_DELTA,
  FAKE_ROUTE_CONTENT,
  FAKE_ROUTE_DOWNLOAD,
  FAKE_ROUTE_TOKEN,
  FAKE_ROUTE_DEVICECODE,
  FAKE_ROUTE_ADMIN,
  FAKE_ROUTE_OTHER,
  FAKE_ROUTE_COUNT,
} FakeRoute;

const char *fake_route_name (FakeRoute route);

typedef struct {
  guint   status;
  char   *route;            /* "any" (Graph + download), "graph", or a route name */
  char   *code;             /* NULL: the usual code for the status */
  char   *inner_code;
  int     count;            /* remaining triggers; -1 unlimited */
  guint   every;            /* trigger on every Nth matching request (1 = each) */
  double  probability;      /* 0: not random */
  int     retry_after;      /* seconds; -1: no header */
  char   *item_id;          /* NULL: any item */
  guint   seen;             /* matching requests so far */
} FakeErrorRule;

typedef struct {
  char    *kind;            /* "reset" or "truncate" */
  guint64  after_bytes;
  int      count;
  char    *item_id;
} FakeDownloadRule;

typedef struct {
  GMutex     lock;
  guint      latency_ms;
  guint      download_latency_ms;
  guint64    bandwidth_bps;       /* per download; 0 = unlimited */
  gboolean   ignore_range;
  gboolean   no_hash_empty;
  gboolean   no_hash;
  gboolean   no_sha;
  gboolean   delta_duplicates;
  gboolean   delta_shuffle;
  gboolean   delta_empty_pages;
  gboolean   delta_short_pages;
  gboolean   delta_paths;
  gboolean   initial_tombstones;
  gboolean   mixed_case_drive_id;
  guint      folder_delta_not_supported; /* 0 off, else the status (501 or 400) */
  gboolean   child_tombstones;     /* folder delete: tombstones for descendants too */
  double     token_max_age;        /* seconds; 0 = tokens never age out */
  double     download_url_ttl;     /* seconds */
  double     throttle_grace;       /* seconds after a Retry-After during which in-flight calls are forgiven */
  char      *link_base;            /* NULL: links on the Graph listener; else this base (foreign links) */
  GPtrArray *errors;               /* FakeErrorRule* */
  GPtrArray *download_errors;      /* FakeDownloadRule* */
  GRand     *rand;
} FakeFaults;

/* Everything off, child tombstones on, download URLs live an hour. */
void     fake_faults_init (FakeFaults *faults);
void     fake_faults_clear (FakeFaults *faults);
/* Applies a JSON object of settings (the POST /_admin/faults body). Takes faults->lock. */
gboolean fake_faults_apply (FakeFaults *faults, const cJSON *json, GError **error);
cJSON   *fake_faults_to_json (FakeFaults *faults);
/* A copy of the rule that fires for this request, or NULL. Takes faults->lock. */
FakeErrorRule *fake_faults_match (FakeFaults *faults, FakeRoute route, const char *item_id);
/* The matching download rule (a copy; the rule's count goes down by one), or NULL. */
FakeDownloadRule *fake_faults_match_download (FakeFaults *faults, const char *item_id);
void     fake_error_rule_free (FakeErrorRule *rule);
void     fake_download_rule_free (FakeDownloadRule *rule);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FakeErrorRule, fake_error_rule_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FakeDownloadRule, fake_download_rule_free)

typedef struct {
  GMutex   lock;
  gint64   requests[FAKE_ROUTE_COUNT];   /* protected by lock */
  GHashTable *statuses;                  /* "%u" -> gint64*; protected by lock */
  gint64   bytes_served;                 /* download bodies */
  gint64   throttled;                    /* 429/503 sent with Retry-After */
  gint64   throttle_violations;
  gint64   download_throttle_violations;
  gint64   window_start;                 /* monotonic µs of the latest Retry-After */
  gint64   window_end;                   /* no Graph call expected before this */
  gint64   auth_failures;
  gint64   resyncs;                      /* 410 sent */
  gint64   faults_injected;
} FakeStats;

void  fake_stats_init (FakeStats *stats);
void  fake_stats_clear (FakeStats *stats);
/* Zeroes every counter, per-item ones too. Takes the drive's read lock, then stats->lock. */
void  fake_stats_reset (FakeStats *stats, FakeDrive *drive);
/* Counts the request, checks it against the Retry-After window. */
void  fake_stats_request (FakeStats *stats, FakeRoute route, double grace);
void  fake_stats_status (FakeStats *stats, guint status);
/* A throttling answer went out with Retry-After (seconds; <= 0: no window). */
void  fake_stats_window (FakeStats *stats, int retry_after);
/* A download of @item started (ranged or not), or @n body bytes of it went out. */
void  fake_stats_download (FakeStats *stats, FakeItem *item, gboolean ranged);
void  fake_stats_bytes (FakeStats *stats, FakeItem *item, gint64 n);
/* Bumps one of the plain counters below under the lock. */
void  fake_stats_add (FakeStats *stats, gint64 *counter, gint64 n);
/* The GET /_admin/stats answer; same locking as fake_stats_reset. */
cJSON *fake_stats_to_json (FakeStats *stats, FakeDrive *drive);

/* ---------- the server ---------- */

typedef struct {
  FakeDrive  *drive;
  FakeAuth    auth;
  FakeFaults  faults;
  FakeStats   stats;
  char       *graph_base;      /* "http://127.0.0.1:P" */
  char       *download_base;
  char       *secret;          /* signs download URLs */
  struct MHD_Daemon *graph_daemon;
  struct MHD_Daemon *download_daemon;
  gboolean    tls;
} FakeServer;

/* Per-request state kept in MHD's con_cls. */
typedef struct {
  GString  *body;
  FakeRoute route;
  guint64   planned_bytes;    /* sendfile bodies: counted when queued, taken back if they fail */
  FakeItem *item;             /* download target, for per-item byte counts */
} FakeRequest;

void fake_request_free (FakeRequest *req);

/* HTTP helpers (http.c). */
enum MHD_Result fake_respond (struct MHD_Connection *conn, FakeServer *server, guint status,
                              const char *content_type, char *body /* owned */,
                              const char *const *headers /* name, value, ..., NULL */);
enum MHD_Result fake_respond_json (struct MHD_Connection *conn, FakeServer *server, guint status,
                                   const cJSON *json, const char *const *headers);
enum MHD_Result fake_respond_graph_error (struct MHD_Connection *conn, FakeServer *server,
                                          guint status, const char *code, const char *message,
                                          const char *inner_code, const char *const *headers);
enum MHD_Result fake_respond_oauth_error (struct MHD_Connection *conn, FakeServer *server,
                                          guint status, const char *error, const char *description);
/* Decodes %XX; with @plus_is_space also '+'. NULL for malformed escapes or embedded NUL. */
char      *fake_percent_decode (const char *s, gsize len, gboolean plus_is_space);
/* Parses application/x-www-form-urlencoded. */
GHashTable *fake_parse_form (const char *body, gsize len);
/* A query argument, percent-decoded; NULL when absent. */
char      *fake_query_arg (struct MHD_Connection *conn, const char *name);
gboolean   fake_peer_is_loopback (struct MHD_Connection *conn);
char      *fake_random_token (gsize bytes);
/* base64url without padding, and back (NULL when @text is not base64url). */
char      *fake_b64url_encode (const void *data, gsize len);
char      *fake_b64url_decode (const char *text);

/* Listeners: libmicrohttpd access handlers, cls = the FakeServer. fake_admin_handle and
 * fake_oauth_handle answer one complete request (@path after "/_admin/"); the download URL
 * is signed and expires after faults.download_url_ttl (drive lock held by the caller). */
enum MHD_Result fake_graph_handler (void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls);
enum MHD_Result fake_download_handler (void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **con_cls);
enum MHD_Result fake_admin_handle (FakeServer *server, struct MHD_Connection *conn,
                                   const char *path, const char *method, const GString *body);
enum MHD_Result fake_oauth_handle (FakeServer *server, struct MHD_Connection *conn,
                                   const char *tenant, const char *endpoint, const GString *body);
char *fake_download_url (FakeServer *server, FakeItem *item);
/* Picks this process's token nonce; call once before serving. */
void  fake_graph_init_nonce (void);

G_END_DECLS
