#include "config.h"

#include <onedrive-syncfs/qxhash.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define QX_WIDTH_BITS 160
#define QX_SHIFT 11

void
graph_qxhash_init (GraphQxHash *h)
{
  memset (h, 0, sizeof *h);
}

/* Applies @len bytes one by one from bit offset *@bitp (the definition, and the path for short
 * inputs). */
static void
apply_bytes (guint8 acc[GRAPH_QXHASH_LEN], guint *bitp, const guint8 *p, size_t len)
{
  guint bit = *bitp;

  /* Each byte lands at a bit offset that advances by 11 modulo 160. When the offset is
   * not byte-aligned the byte straddles two accumulator bytes; byte 19 wraps to byte 0. */
  for (size_t i = 0; i < len; i++)
    {
      guint idx = bit >> 3, off = bit & 7;
      acc[idx] ^= (guint8) (p[i] << off);
      if (off != 0)
        acc[idx == GRAPH_QXHASH_LEN - 1 ? 0 : idx + 1] ^= (guint8) (p[i] >> (8 - off));
      bit += QX_SHIFT;
      if (bit >= QX_WIDTH_BITS)
        bit -= QX_WIDTH_BITS;
    }
  *bitp = bit;
}

/* Bytes 160 apart land on the same bit offset (11 * 160 is a multiple of 160), and XOR is
 * linear, so a long input is first folded into 160 bytes — block by block, 64 bits at a time,
 * at memory speed — and each folded byte is then applied once. Applying 160 bytes advances the
 * offset by a whole turn, so the tail continues from the offset the call started at. */
#define QX_FOLD 160

void
graph_qxhash_update (GraphQxHash *h, const void *data, size_t len)
{
  const guint8 *p = data;
  guint bit = h->bit;

  if (len >= 2 * QX_FOLD)
    {
      guint64 fold[QX_FOLD / 8] = { 0 };
      size_t blocks = len / QX_FOLD;
      for (size_t b = 0; b < blocks; b++)
        {
          const guint8 *blk = p + b * QX_FOLD;
          for (guint w = 0; w < QX_FOLD / 8; w++)
            {
              guint64 v;
              memcpy (&v, blk + 8 * w, sizeof v);
              fold[w] ^= v;
            }
        }
      apply_bytes (h->acc, &bit, (const guint8 *) fold, QX_FOLD);
      p += blocks * QX_FOLD;
      len -= blocks * QX_FOLD;
      h->length += blocks * QX_FOLD;
    }
  apply_bytes (h->acc, &bit, p, len);
  h->bit = bit;
  h->length += len;
}

void
graph_qxhash_final (const GraphQxHash *h, guint8 out[GRAPH_QXHASH_LEN])
{
  memcpy (out, h->acc, GRAPH_QXHASH_LEN);
  for (int i = 0; i < 8; i++)
    out[GRAPH_QXHASH_LEN - 8 + i] ^= (guint8) (h->length >> (8 * i));
}

char *
graph_qxhash_final_base64 (const GraphQxHash *h)
{
  guint8 raw[GRAPH_QXHASH_LEN];
  graph_qxhash_final (h, raw);
  return g_base64_encode (raw, sizeof raw);
}

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static gboolean
is_base64_char (char c)
{
  return g_ascii_isalnum (c) || c == '+' || c == '/';
}

gboolean
graph_qxhash_decode (const char *text, guint8 out[GRAPH_QXHASH_LEN])
{
  if (text == NULL)
    return FALSE;
  size_t n = strlen (text);

  if (n == 2 * GRAPH_QXHASH_LEN)
    {
      for (size_t i = 0; i < GRAPH_QXHASH_LEN; i++)
        {
          int hi = hex_value (text[2 * i]), lo = hex_value (text[2 * i + 1]);
          if (hi < 0 || lo < 0)
            return FALSE;
          out[i] = (guint8) (hi << 4 | lo);
        }
      return TRUE;
    }

  /* g_base64_decode silently skips invalid characters, so validate first:
   * 27 alphabet characters and one '=' is the only shape a 20-byte digest has. */
  if (n != GRAPH_QXHASH_B64_LEN || text[27] != '=')
    return FALSE;
  for (size_t i = 0; i < 27; i++)
    if (!is_base64_char (text[i]))
      return FALSE;

  gsize got = 0;
  g_autofree guchar *raw = g_base64_decode (text, &got);
  if (got != GRAPH_QXHASH_LEN)
    return FALSE;
  memcpy (out, raw, GRAPH_QXHASH_LEN);
  return TRUE;
}

gboolean
graph_qxhash_matches (const char *digest, const guint8 raw[GRAPH_QXHASH_LEN])
{
  guint8 want[GRAPH_QXHASH_LEN];
  return graph_qxhash_decode (digest, want) && memcmp (want, raw, GRAPH_QXHASH_LEN) == 0;
}

gboolean
graph_qxhash_fd (int fd, GraphQxHash *h)
{
  guint8 buf[64 * 1024];
  off_t pos = 0;

  for (;;)
    {
      ssize_t got = pread (fd, buf, sizeof buf, pos);
      if (got < 0 && errno == EINTR)
        continue;
      if (got < 0)
        return FALSE;
      if (got == 0)
        return TRUE;
      graph_qxhash_update (h, buf, (size_t) got);
      pos += got;
    }
}
