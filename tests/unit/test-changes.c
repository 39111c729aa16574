/* The durable change feed: lines in append order, kept across reopen, a torn tail cut, a
 * foreign file refused, and a bounded size whose trimming a resuming reader can detect. */
#include "config.h"

#include <onedrive-syncfs/changes.h>

#include <cjson/cJSON.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

typedef struct {
  char *dir;
} Fixture;

static void
setup (Fixture *fx, gconstpointer data)
{
  fx->dir = g_dir_make_tmp ("odsf-changes-XXXXXX", NULL);
  g_assert_nonnull (fx->dir);
}

static void
teardown (Fixture *fx, gconstpointer data)
{
  g_autofree char *feed = g_build_filename (fx->dir, SYNC_CHANGES_FILE, NULL);
  g_unlink (feed);
  g_rmdir (fx->dir);
  g_free (fx->dir);
}

static char *
read_feed (Fixture *fx)
{
  g_autofree char *feed = g_build_filename (fx->dir, SYNC_CHANGES_FILE, NULL);
  char *text = NULL;
  g_assert_true (g_file_get_contents (feed, &text, NULL, NULL));
  return text;
}

static GPtrArray *
lines_of (const char *text)
{
  GPtrArray *out = g_ptr_array_new_with_free_func ((GDestroyNotify) cJSON_Delete);
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);
  guint n = g_strv_length (lines);
  g_assert_cmpstr (lines[n - 1], ==, "");
  for (guint i = 0; i + 1 < n; i++)
    {
      cJSON *obj = cJSON_Parse (lines[i]);
      g_assert_nonnull (obj);
      g_ptr_array_add (out, obj);
    }
  return out;
}

static double
num (const cJSON *o, const char *k)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (o, k);
  g_assert_true (cJSON_IsNumber (v));
  return v->valuedouble;
}

static void
test_append_reopen (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  {
    g_autoptr (SyncChanges) ch = sync_changes_open (fx->dir, 0, &error);
    g_assert_no_error (error);
    guint64 seq = 99;
    g_assert_true (sync_changes_append (ch, "added", "/D/a.txt", NULL, "ID1", 5, "aCgDG9jwBgAAAAAABQAAAAAAAAA=", FALSE, &seq, &error));
    g_assert_cmpuint (seq, ==, 0);
    g_assert_true (sync_changes_append (ch, "moved", "/D/b.txt", "/D/a.txt", "ID1", 5, NULL, TRUE, &seq, &error));
    g_assert_true (sync_changes_append (ch, "deleted", "/D/b.txt", NULL, "ID1", -1, NULL, FALSE, &seq, &error));
    g_assert_cmpuint (seq, ==, 2);
    g_assert_true (sync_changes_flush (ch, &error));
  }
  g_autofree char *text = read_feed (fx);
  g_autoptr (GPtrArray) lines = lines_of (text);
  g_assert_cmpuint (lines->len, ==, 4);
  g_assert_cmpstr (cJSON_GetObjectItem (lines->pdata[0], "format")->valuestring, ==, "odsf-changes");
  g_assert_cmpfloat (num (lines->pdata[0], "generation"), ==, 1);
  g_assert_cmpfloat (num (lines->pdata[0], "first_seq"), ==, 0);
  const cJSON *moved = lines->pdata[2];
  g_assert_cmpstr (cJSON_GetObjectItem (moved, "action")->valuestring, ==, "moved");
  g_assert_cmpstr (cJSON_GetObjectItem (moved, "old_path")->valuestring, ==, "/D/a.txt");
  g_assert_cmpstr (cJSON_GetObjectItem (moved, "id")->valuestring, ==, "ID1");
  g_assert_true (cJSON_IsNull (cJSON_GetObjectItem (moved, "hash")));
  g_assert_true (cJSON_IsTrue (cJSON_GetObjectItem (moved, "folder")));
  g_assert_null (cJSON_GetObjectItem (lines->pdata[1], "folder"));
  g_assert_true (cJSON_IsNull (cJSON_GetObjectItem (lines->pdata[3], "size")));
  g_assert_cmpstr (cJSON_GetObjectItem (lines->pdata[1], "hash")->valuestring, ==, "aCgDG9jwBgAAAAAABQAAAAAAAAA=");

  /* A restart continues the sequence in the same file. */
  g_autoptr (SyncChanges) again = sync_changes_open (fx->dir, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (sync_changes_next_seq (again), ==, 3);
  guint64 seq;
  g_assert_true (sync_changes_append (again, "added", "/D/c.txt", NULL, "ID2", 0, NULL, FALSE, &seq, &error));
  g_assert_cmpuint (seq, ==, 3);
  g_autofree char *text2 = read_feed (fx);
  g_assert_true (g_str_has_prefix (text2, text));
}

static void
test_torn_tail (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  {
    g_autoptr (SyncChanges) ch = sync_changes_open (fx->dir, 0, &error);
    sync_changes_append (ch, "added", "/a", NULL, "1", 1, NULL, FALSE, NULL, &error);
    g_assert_no_error (error);
  }
  /* What a crash in the middle of a write leaves. */
  g_autofree char *feed = g_build_filename (fx->dir, SYNC_CHANGES_FILE, NULL);
  g_autofree char *good = read_feed (fx);
  g_autofree char *torn = g_strconcat (good, "{\"seq\":1,\"act", NULL);
  g_assert_true (g_file_set_contents (feed, torn, -1, NULL));

  g_autoptr (SyncChanges) ch = sync_changes_open (fx->dir, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (sync_changes_next_seq (ch), ==, 1);
  g_autofree char *cut = read_feed (fx);
  g_assert_cmpstr (cut, ==, good);
  g_assert_true (sync_changes_append (ch, "added", "/b", NULL, "2", 1, NULL, FALSE, NULL, &error));
  g_autofree char *after = read_feed (fx);
  g_autoptr (GPtrArray) lines = lines_of (after);
  g_assert_cmpuint (lines->len, ==, 3);
  g_assert_cmpfloat (num (lines->pdata[2], "seq"), ==, 1);
}

static void
test_foreign (Fixture *fx, gconstpointer data)
{
  g_autofree char *feed = g_build_filename (fx->dir, SYNC_CHANGES_FILE, NULL);
  g_assert_true (g_file_set_contents (feed, "precious user data\n", -1, NULL));
  g_autoptr (GError) error = NULL;
  g_autoptr (SyncChanges) ch = sync_changes_open (fx->dir, 0, &error);
  g_assert_null (ch);
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA);
  g_autofree char *text = read_feed (fx);
  g_assert_cmpstr (text, ==, "precious user data\n");
}

/* What the docs tell a reader to do: given the (generation, offset, last seq) it kept, say
 * where to continue and whether lines were lost. */
static gboolean
reader_resume (const char *text, guint64 generation, gsize offset, gint64 last_seq, gint64 *next_seq_found,
               gboolean *lost)
{
  g_autoptr (GPtrArray) lines = lines_of (text);
  guint64 gen = (guint64) num (lines->pdata[0], "generation");
  gint64 first = (gint64) num (lines->pdata[0], "first_seq");
  *lost = FALSE;
  if (gen == generation)
    {
      /* The offset is valid: the line there is last_seq + 1. */
      const char *at = text + offset;
      if (*at == '\0')
        {
          *next_seq_found = -1;
          return TRUE;
        }
      const char *nl = strchr (at, '\n');
      g_autoptr (cJSON) l = cJSON_ParseWithLength (at, (gsize) (nl - at));
      *next_seq_found = (gint64) num (l, "seq");
      return TRUE;
    }
  *lost = first > last_seq + 1;
  *next_seq_found = *lost ? first : last_seq + 1;
  return FALSE;
}

static void
test_trim (Fixture *fx, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  const gsize bound = 8192;
  g_autoptr (SyncChanges) ch = sync_changes_open (fx->dir, bound, &error);
  g_assert_no_error (error);

  /* A reader reads everything so far and remembers where it was. */
  for (guint i = 0; i < 10; i++)
    {
      g_autofree char *path = g_strdup_printf ("/Documents/file-%04u.txt", i);
      g_assert_true (sync_changes_append (ch, "added", path, NULL, "ID", 100, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", FALSE, NULL, &error));
    }
  g_autofree char *early = read_feed (fx);
  gsize reader_offset = strlen (early);
  guint64 reader_gen = sync_changes_generation (ch);
  gint64 reader_seq = 9;

  gint64 found;
  gboolean lost;
  g_assert_true (reader_resume (early, reader_gen, reader_offset, reader_seq, &found, &lost));
  g_assert_cmpint (found, ==, -1);   /* nothing new yet */

  /* Enough appends to trim, more than once. */
  for (guint i = 10; i < 500; i++)
    {
      g_autofree char *path = g_strdup_printf ("/Documents/file-%04u.txt", i);
      g_assert_true (sync_changes_append (ch, "added", path, NULL, "ID", 100, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", FALSE, NULL, &error));
      g_autofree char *text = read_feed (fx);
      g_assert_cmpuint (strlen (text), <=, bound);
    }
  g_assert_cmpuint (sync_changes_generation (ch), >, 2);
  g_autofree char *text = read_feed (fx);
  g_autoptr (GPtrArray) lines = lines_of (text);
  guint64 first = (guint64) num (lines->pdata[0], "first_seq");
  g_assert_cmpuint (first, ==, sync_changes_first_seq (ch));
  g_assert_cmpfloat (num (lines->pdata[0], "generation"), ==, sync_changes_generation (ch));
  /* The kept lines are consecutive, start at first_seq, end at the last append. */
  for (guint i = 1; i < lines->len; i++)
    g_assert_cmpfloat (num (lines->pdata[i], "seq"), ==, first + i - 1);
  g_assert_cmpfloat (num (lines->pdata[lines->len - 1], "seq"), ==, 499);
  g_assert_cmpuint (strlen (text), >=, bound / 4);   /* trimming keeps about half, not nothing */

  /* The old reader learns its offset is stale and that lines are gone. */
  g_assert_false (reader_resume (text, reader_gen, reader_offset, reader_seq, &found, &lost));
  g_assert_true (lost);
  g_assert_cmpint (found, ==, first);
  /* A reader that was at the newest line loses nothing across a trim. */
  g_assert_false (reader_resume (text, reader_gen, 0, 498, &found, &lost));
  g_assert_false (lost);

  /* And the trimmed feed reopens where it was. */
  sync_changes_free (g_steal_pointer (&ch));
  g_autoptr (SyncChanges) again = sync_changes_open (fx->dir, bound, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (sync_changes_next_seq (again), ==, 500);
  g_assert_cmpuint (sync_changes_first_seq (again), ==, first);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add ("/changes/append-reopen", Fixture, NULL, setup, test_append_reopen, teardown);
  g_test_add ("/changes/torn-tail", Fixture, NULL, setup, test_torn_tail, teardown);
  g_test_add ("/changes/foreign-refused", Fixture, NULL, setup, test_foreign, teardown);
  g_test_add ("/changes/trim", Fixture, NULL, setup, test_trim, teardown);
  return g_test_run ();
}
