/* The Microsoft Graph client: one per process, shared by every worker thread.
 *
 * It owns the connection cache, the token (refreshing it shortly before expiry and on 401),
 * and the single retry/throttle policy: a Retry-After from 429/503 closes a gate that every
 * request of the process waits behind. Errors cross this boundary as GRAPH_ERROR GErrors.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>

#include <onedrive-syncfs/graph-item.h>

G_BEGIN_DECLS

#define GRAPH_ERROR (graph_error_quark ())
GQuark graph_error_quark (void);

typedef enum {
  GRAPH_ERROR_FAILED,            /* anything not below */
  GRAPH_ERROR_NETWORK,           /* connect, DNS, reset, TLS */
  GRAPH_ERROR_TIMEOUT,           /* connect timeout or stalled body */
  GRAPH_ERROR_HTTP,              /* an HTTP status we do not retry; see graph_error_status() */
  GRAPH_ERROR_NOT_FOUND,         /* 404 itemNotFound */
  GRAPH_ERROR_RESYNC_REQUIRED,   /* 410 on delta: drop the cursor, enumerate, reconcile */
  GRAPH_ERROR_NOT_SUPPORTED,     /* folder-scoped delta refused (notSupported) */
  GRAPH_ERROR_AUTH,              /* refresh failed or no usable token: the user must log in again */
  GRAPH_ERROR_THROTTLED,         /* retries exhausted under 429/503 */
  GRAPH_ERROR_PARSE,             /* the service sent something that is not what the protocol says */
  GRAPH_ERROR_HASH_MISMATCH,     /* downloaded bytes do not match quickXorHash */
  GRAPH_ERROR_TRUNCATED,         /* body shorter than announced */
  GRAPH_ERROR_CANCELLED,         /* the caller's GCancellable fired */
  GRAPH_ERROR_LOCAL_IO,          /* writing the caller's fd failed; errno kept (ENOSPC = disk full) */
  GRAPH_ERROR_BAD_LINK,          /* a nextLink/deltaLink not on the configured base */
} GraphErrorCode;

typedef struct {
  const char *graph_url;     /* NULL: ODSF_DEFAULT_GRAPH_URL */
  const char *login_url;     /* NULL: ODSF_DEFAULT_LOGIN_URL */
  const char *tenant;        /* NULL: "common" */
  const char *client_id;     /* needed for refresh and login */
  const char *ca_file;       /* extra CA bundle (tests); verification is always on */
  const char *token_file;    /* token.json; NULL only for clients that never authenticate */
  guint       max_connections; /* idle connection slots kept for reuse; 0: 8 */
  /* Retry policy knobs (tests make them small; 0 picks the default). */
  guint       max_retries;        /* 0: 5 tries after the first for 5xx/network errors */
  guint       retry_base_ms;      /* 0: 500; first backoff step, doubled each try */
  guint       retry_max_ms;       /* 0: 30000; backoff cap */
  guint       connect_timeout_ms; /* 0: 15000 */
  guint       stall_timeout_s;    /* 0: 60; a body that moves < 1 byte/s this long is aborted */
} GraphConfig;

typedef struct _GraphClient GraphClient;

/* Reads and checks the token file (mode must not be group/other readable). Does no network I/O. */
GraphClient *graph_client_new (const GraphConfig *config, GError **error);
void graph_client_free (GraphClient *client);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GraphClient, graph_client_free)

/* The id of the signed-in user's drive (GET /me/drive). */
char *graph_client_my_drive_id (GraphClient *client, GCancellable *cancel, GError **error);

/* Resolves a path like "/Documents/Reports" on @drive_id (NULL: /me/drive) to its item. */
GraphItem *graph_client_item_by_path (GraphClient *client, const char *drive_id,
                                      const char *path, GCancellable *cancel, GError **error);

/* One delta page. @link NULL starts a full enumeration of @item_id on @drive_id; otherwise
 * it is a nextLink or a saved deltaLink, followed exactly as given (after checking it is on
 * the configured base). GRAPH_ERROR_RESYNC_REQUIRED on 410. */
GraphDeltaPage *graph_client_delta (GraphClient *client, const char *link,
                                    const char *drive_id, const char *item_id,
                                    GCancellable *cancel, GError **error);

/* Progress callback for downloads; called from the transfer thread with bytes so far. */
typedef void (*GraphProgressFunc) (guint64 bytes_done, guint64 bytes_total, gpointer user_data);

/* Downloads the item's content into @fd. If @fd already holds k bytes, asks for the rest with
 * Range and hashes prefix + rest; a 200 instead of 206 starts over (the fd is truncated). When
 * @expected_quickxor is non-NULL a mismatch is GRAPH_ERROR_HASH_MISMATCH. Cancelling @cancel
 * aborts an in-flight transfer within milliseconds: GRAPH_ERROR_CANCELLED.
 *
 * @fd should be a regular file opened for writing (read access too, to hash a prefix); bytes
 * go in with pwrite at their own offsets, so the fd's file position is neither used nor moved.
 * A pipe or device works without resume. On CANCELLED and network errors the bytes that did
 * arrive stay in @fd (the next call resumes after them); on HASH_MISMATCH the fd is truncated
 * to 0, because a resume must not build on wrong bytes. Disk full is GRAPH_ERROR_LOCAL_IO with
 * graph_error_errno() == ENOSPC. A 4xx from the download host (an expired URL) makes the
 * client ask /content once more. @bytes_downloaded (may be NULL) gets the bytes this call
 * wrote, not counting a resumed prefix. @progress is called from the calling thread with
 * bytes so far (prefix included) and the total when known (else 0). */
gboolean graph_client_download (GraphClient *client, const char *drive_id, const char *item_id,
                                const char *expected_quickxor, int fd,
                                GCancellable *cancel, GraphProgressFunc progress, gpointer user_data,
                                guint64 *bytes_downloaded, GError **error);

/* ---- sign-in ------------------------------------------------------------------------ */

/* Where a profile's token file lives: $XDG_CONFIG_HOME/onedrive-syncfs/<profile>/token.json. */
char *graph_token_file_path (const char *profile);

/* TRUE when the client holds a refresh token (from the token file or a login). */
gboolean graph_client_has_token (GraphClient *client);

/* Shows the user what to do: open @verification_uri and enter @user_code. @message is the
 * service's own sentence saying the same (may be NULL). Called once per code. */
typedef void (*GraphDeviceCodeFunc) (const char *verification_uri, const char *user_code,
                                     const char *message, gpointer user_data);

/* Device-code sign-in (OAuth 2 device authorization grant) for the control tool: requests a
 * code, hands it to @show, polls the token endpoint every `interval` seconds (5 s more after
 * each slow_down) until the user approves, then writes the token file (0600, atomically) and
 * keeps the tokens. GRAPH_ERROR_AUTH with a message saying what happened when the user
 * declines or the code expires; GRAPH_ERROR_CANCELLED when @cancel fires while waiting. */
gboolean graph_client_login_device_code (GraphClient *client, GraphDeviceCodeFunc show,
                                         gpointer user_data, GCancellable *cancel, GError **error);

/* ---- errors --------------------------------------------------------------------------- */

/* HTTP status carried by a GRAPH_ERROR, or 0. */
guint graph_error_status (const GError *error);
/* The Graph (or OAuth) error code of the answer, outermost first: @index 0 is the outer
 * "code", 1 its innerError's, and so on. NULL past the end or for errors without a body. */
const char *graph_error_code (const GError *error, guint index);
/* TRUE when @code appears at any nesting level (e.g. "cannotSnapshotTree"). */
gboolean graph_error_has_code (const GError *error, const char *code);
/* The Location header of a 410 (a fresh link from the service), or NULL. */
const char *graph_error_location (const GError *error);
/* errno kept by GRAPH_ERROR_LOCAL_IO (ENOSPC when the disk is full), or 0. */
int graph_error_errno (const GError *error);

G_END_DECLS
