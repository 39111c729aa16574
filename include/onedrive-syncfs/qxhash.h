/* QuickXorHash: OneDrive's content hash, the one hash every account type carries.
 *
 * A 160-bit accumulator into which byte i of the stream is XORed at bit (11*i) mod 160;
 * the 64-bit little-endian stream length is XORed into bytes 12..19 at the end. The state
 * is a plain struct so callers can keep one on the stack per transfer; no allocation.
 */
#pragma once

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

G_BEGIN_DECLS

#define GRAPH_QXHASH_LEN 20          /* digest bytes */
#define GRAPH_QXHASH_B64_LEN 28      /* standard base64 with padding, without NUL */

typedef struct {
  guint8  acc[GRAPH_QXHASH_LEN];
  guint   bit;                       /* where the next byte goes, 0..159 */
  guint64 length;                    /* bytes hashed so far */
} GraphQxHash;

void graph_qxhash_init (GraphQxHash *h);
void graph_qxhash_update (GraphQxHash *h, const void *data, size_t len);
/* Writes the digest; @h may be updated further afterwards (finalising does not consume it). */
void graph_qxhash_final (const GraphQxHash *h, guint8 out[GRAPH_QXHASH_LEN]);
/* Returns a newly allocated base64 digest (28 characters). */
char *graph_qxhash_final_base64 (const GraphQxHash *h);

/* Decodes a digest given by the service as base64 (28 chars) or hex (40 chars, any case).
 * Returns FALSE for anything else: wrong length, bad characters. */
gboolean graph_qxhash_decode (const char *text, guint8 out[GRAPH_QXHASH_LEN]);

/* TRUE when @digest (base64 or hex) names the same 20 bytes as @raw. A digest that
 * cannot be decoded never matches. */
gboolean graph_qxhash_matches (const char *digest, const guint8 raw[GRAPH_QXHASH_LEN]);

/* Hashes a whole file descriptor from offset 0 with pread; FALSE and errno set on error. */
gboolean graph_qxhash_fd (int fd, GraphQxHash *h);

G_END_DECLS
