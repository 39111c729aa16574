/* QuickXorHash against every vector in the protocol brief, fed whole, byte by byte and in
 * random chunks, plus the digest decoding the client uses to compare with the service. */
#include "config.h"

#include <onedrive-syncfs/qxhash.h>

#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  const char *name;
  GBytes     *input;
  const char *expected;
} Vector;

static GPtrArray *
make_vectors (void)
{
  GPtrArray *v = g_ptr_array_new ();
  static const char *texts[][2] = {
    { "", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=" },
    { "hello", "aCgDG9jwBgAAAAAABQAAAAAAAAA=" },
    { "hello world", "aCgDG9jwBhDc4Q1yawMZAAAAAAA=" },
    { "The quick brown fox jumps over the lazy dog", "bMSlbysmxJL6S75XwfMcQZOpcr4=" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (texts); i++)
    {
      Vector *t = g_new0 (Vector, 1);
      t->name = texts[i][0];
      t->input = g_bytes_new_static (texts[i][0], strlen (texts[i][0]));
      t->expected = texts[i][1];
      g_ptr_array_add (v, t);
    }

  Vector *zeros = g_new0 (Vector, 1);
  zeros->name = "1000 zero bytes";
  zeros->input = g_bytes_new_take (g_malloc0 (1000), 1000);
  zeros->expected = "AAAAAAAAAAAAAAAA6AMAAAAAAAA=";
  g_ptr_array_add (v, zeros);

  guint8 *ramp = g_malloc (256);
  for (int i = 0; i < 256; i++)
    ramp[i] = (guint8) i;
  Vector *all = g_new0 (Vector, 1);
  all->name = "bytes 0x00..0xff";
  all->input = g_bytes_new_take (ramp, 256);
  all->expected = "QkGEfSisZcA7k+FCh71r2dbCayY=";
  g_ptr_array_add (v, all);

  static const char *b64[][2] = {
    { "Sg==", "SgAAAAAAAAAAAAAAAQAAAAAAAAA=" },
    { "2fuxhBJXtpWFe8dOfdGeHw==", "O9tHLAghgSvYohKFyMMxnNCHaHg=" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (b64); i++)
    {
      gsize len = 0;
      guchar *raw = g_base64_decode (b64[i][0], &len);
      Vector *t = g_new0 (Vector, 1);
      t->name = b64[i][0];
      t->input = g_bytes_new_take (raw, len);
      t->expected = b64[i][1];
      g_ptr_array_add (v, t);
    }
  return v;
}

static void
free_vectors (GPtrArray *v)
{
  for (guint i = 0; i < v->len; i++)
    {
      Vector *t = v->pdata[i];
      g_bytes_unref (t->input);
      g_free (t);
    }
  g_ptr_array_unref (v);
}

static char *
hash_in_chunks (GBytes *input, GRand *rand, gsize fixed_chunk)
{
  gsize len = 0;
  const guint8 *p = g_bytes_get_data (input, &len);
  GraphQxHash h;
  graph_qxhash_init (&h);
  gsize pos = 0;
  while (pos < len)
    {
      gsize n = fixed_chunk ? fixed_chunk : (gsize) g_rand_int_range (rand, 0, 40);
      n = MIN (n, len - pos);
      graph_qxhash_update (&h, p + pos, n);
      pos += n;
    }
  return graph_qxhash_final_base64 (&h);
}

static void
test_vectors_whole (void)
{
  g_autoptr(GPtrArray) v = make_vectors ();
  for (guint i = 0; i < v->len; i++)
    {
      Vector *t = v->pdata[i];
      g_autofree char *got = hash_in_chunks (t->input, NULL, G_MAXSIZE);
      g_test_message ("vector %s", t->name);
      g_assert_cmpstr (got, ==, t->expected);
    }
  free_vectors (g_steal_pointer (&v));
}

static void
test_vectors_byte_at_a_time (void)
{
  g_autoptr(GPtrArray) v = make_vectors ();
  for (guint i = 0; i < v->len; i++)
    {
      Vector *t = v->pdata[i];
      g_autofree char *got = hash_in_chunks (t->input, NULL, 1);
      g_assert_cmpstr (got, ==, t->expected);
    }
  free_vectors (g_steal_pointer (&v));
}

static void
test_vectors_random_chunks (void)
{
  g_autoptr(GRand) rand = g_rand_new_with_seed (g_test_rand_int ());
  g_autoptr(GPtrArray) v = make_vectors ();
  for (int round = 0; round < 50; round++)
    for (guint i = 0; i < v->len; i++)
      {
        Vector *t = v->pdata[i];
        g_autofree char *got = hash_in_chunks (t->input, rand, 0);
        g_assert_cmpstr (got, ==, t->expected);
      }
  free_vectors (g_steal_pointer (&v));
}

/* Long streams cross the 160-bit wrap many times; chunking must not change the digest. */
static void
test_long_stream_chunking (void)
{
  g_autoptr(GRand) rand = g_rand_new_with_seed (42);
  gsize len = 1 << 20;
  g_autofree guint8 *buf = g_malloc (len);
  for (gsize i = 0; i < len; i++)
    buf[i] = (guint8) g_rand_int (rand);
  g_autoptr(GBytes) bytes = g_bytes_new_static (buf, len);

  g_autofree char *whole = hash_in_chunks (bytes, rand, G_MAXSIZE);
  g_autofree char *ones = hash_in_chunks (bytes, rand, 1);
  g_autofree char *odd = hash_in_chunks (bytes, rand, 161);
  g_autofree char *random = hash_in_chunks (bytes, rand, 0);
  g_assert_cmpstr (whole, ==, ones);
  g_assert_cmpstr (whole, ==, odd);
  g_assert_cmpstr (whole, ==, random);
  g_assert_cmpuint (strlen (whole), ==, GRAPH_QXHASH_B64_LEN);
}

static void
test_decode_and_match (void)
{
  GraphQxHash h;
  graph_qxhash_init (&h);
  graph_qxhash_update (&h, "hello world", 11);
  guint8 raw[GRAPH_QXHASH_LEN];
  graph_qxhash_final (&h, raw);

  g_assert_true (graph_qxhash_matches ("aCgDG9jwBhDc4Q1yawMZAAAAAAA=", raw));

  g_autofree char *hex = g_malloc0 (2 * GRAPH_QXHASH_LEN + 1);
  for (int i = 0; i < GRAPH_QXHASH_LEN; i++)
    g_snprintf (hex + 2 * i, 3, "%02X", raw[i]);
  g_assert_true (graph_qxhash_matches (hex, raw));
  g_autofree char *lower = g_ascii_strdown (hex, -1);
  g_assert_true (graph_qxhash_matches (lower, raw));

  /* a different digest, and things that are not digests at all */
  g_assert_false (graph_qxhash_matches ("aCgDG9jwBgAAAAAABQAAAAAAAAA=", raw));
  g_assert_false (graph_qxhash_matches (NULL, raw));
  g_assert_false (graph_qxhash_matches ("", raw));
  g_assert_false (graph_qxhash_matches ("aCgDG9jwBhDc4Q1yawMZAAAAAA==", raw));
  g_assert_false (graph_qxhash_matches ("aCgDG9jwBhDc4Q1yawMZAAAA*AA=", raw));
  g_assert_false (graph_qxhash_matches ("aCgDG9jwBhDc4Q1yawMZAAAAAAA", raw));
  hex[5] = 'g';
  g_assert_false (graph_qxhash_matches (hex, raw));
}

static void
test_fd (void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  int fd = g_file_open_tmp ("qxhash-XXXXXX", &path, &error);
  g_assert_no_error (error);
  const char *text = "The quick brown fox jumps over the lazy dog";
  g_assert_cmpint (write (fd, text, strlen (text)), ==, (gssize) strlen (text));

  GraphQxHash h;
  graph_qxhash_init (&h);
  g_assert_true (graph_qxhash_fd (fd, &h));
  g_autofree char *got = graph_qxhash_final_base64 (&h);
  g_assert_cmpstr (got, ==, "bMSlbysmxJL6S75XwfMcQZOpcr4=");

  graph_qxhash_init (&h);
  g_assert_false (graph_qxhash_fd (-1, &h));
  close (fd);
  g_unlink (path);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/qxhash/vectors-whole", test_vectors_whole);
  g_test_add_func ("/qxhash/vectors-byte-at-a-time", test_vectors_byte_at_a_time);
  g_test_add_func ("/qxhash/vectors-random-chunks", test_vectors_random_chunks);
  g_test_add_func ("/qxhash/long-stream-chunking", test_long_stream_chunking);
  g_test_add_func ("/qxhash/decode-and-match", test_decode_and_match);
  g_test_add_func ("/qxhash/fd", test_fd);
  return g_test_run ();
}
