/* The event ring: sequence numbers, whole lines, bounded reads, and an explicit events_lost
 * line for a reader that fell behind (never a silent gap). */
#include "config.h"

#include <onedrive-syncfs/events.h>

#include <string.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

static cJSON *
path_fields (const char *path)
{
  cJSON *f = cJSON_CreateObject ();
  cJSON_AddStringToObject (f, "path", path);
  return f;
}

/* Splits @text into parsed lines, asserting each is one JSON object. */
static GPtrArray *
parse_lines (const char *text)
{
  GPtrArray *out = g_ptr_array_new_with_free_func ((GDestroyNotify) cJSON_Delete);
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);
  guint n = g_strv_length (lines);
  g_assert_cmpuint (n, >=, 1);
  g_assert_cmpstr (lines[n - 1], ==, "");   /* every line ends in a newline */
  for (guint i = 0; i + 1 < n; i++)
    {
      cJSON *obj = cJSON_Parse (lines[i]);
      g_assert_nonnull (obj);
      g_assert_true (cJSON_IsObject (obj));
      g_ptr_array_add (out, obj);
    }
  return out;
}

static gint64
num (const cJSON *obj, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  g_assert_true (cJSON_IsNumber (v));
  return (gint64) v->valuedouble;
}

static const char *
str (const cJSON *obj, const char *key)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, key);
  g_assert_true (cJSON_IsString (v));
  return v->valuestring;
}

static void
test_sequence (void)
{
  g_autoptr (SyncEvents) ev = sync_events_new (16);
  guint64 cursor = sync_events_head (ev);
  g_assert_cmpuint (cursor, ==, 0);

  g_assert_cmpuint (sync_events_append (ev, "run_started", NULL), ==, 0);
  g_assert_cmpuint (sync_events_append (ev, "file_published", path_fields ("/a \"quoted\"\n")), ==, 1);
  /* A field named like ours cannot forge the sequence. */
  cJSON *forged = cJSON_CreateObject ();
  cJSON_AddNumberToObject (forged, "seq", 999);
  g_assert_cmpuint (sync_events_append (ev, "progress", forged), ==, 2);
  g_assert_cmpuint (sync_events_head (ev), ==, 3);

  g_autoptr (GString) out = g_string_new (NULL);
  gsize n = sync_events_read (ev, &cursor, out, 1 << 20);
  g_assert_cmpuint (n, ==, out->len);
  g_assert_cmpuint (cursor, ==, 3);
  g_autoptr (GPtrArray) lines = parse_lines (out->str);
  g_assert_cmpuint (lines->len, ==, 3);
  for (guint i = 0; i < 3; i++)
    g_assert_cmpint (num (lines->pdata[i], "seq"), ==, i);
  g_assert_cmpstr (str (lines->pdata[0], "event"), ==, "run_started");
  g_assert_cmpstr (str (lines->pdata[1], "path"), ==, "/a \"quoted\"\n");

  /* Nothing new: nothing read, cursor stays. */
  g_string_truncate (out, 0);
  g_assert_cmpuint (sync_events_read (ev, &cursor, out, 1 << 20), ==, 0);
  g_assert_cmpuint (cursor, ==, 3);
  /* A cursor from the future is the head. */
  guint64 future = 1000;
  g_assert_cmpuint (sync_events_read (ev, &future, out, 1 << 20), ==, 0);
  g_assert_cmpuint (future, ==, 3);
}

static void
test_whole_lines (void)
{
  g_autoptr (SyncEvents) ev = sync_events_new (64);
  for (guint i = 0; i < 10; i++)
    sync_events_append (ev, "file_started", path_fields ("/some/path/of/reasonable/length.txt"));

  guint64 cursor = 0;
  guint64 seen = 0;
  g_autoptr (GString) all = g_string_new (NULL);
  for (;;)
    {
      g_autoptr (GString) out = g_string_new (NULL);
      gsize n = sync_events_read (ev, &cursor, out, 150);   /* room for one or two lines */
      if (n == 0)
        break;
      g_assert_cmpuint (n, <=, 150);
      g_assert_cmpint (out->str[out->len - 1], ==, '\n');
      g_string_append (all, out->str);
    }
  g_autoptr (GPtrArray) lines = parse_lines (all->str);
  g_assert_cmpuint (lines->len, ==, 10);
  for (guint i = 0; i < lines->len; i++, seen++)
    g_assert_cmpint (num (lines->pdata[i], "seq"), ==, seen);
  g_assert_cmpuint (cursor, ==, 10);

  /* A buffer too small for one line returns nothing and keeps the cursor. */
  sync_events_append (ev, "file_started", path_fields ("/x"));
  g_autoptr (GString) tiny = g_string_new (NULL);
  g_assert_cmpuint (sync_events_read (ev, &cursor, tiny, 5), ==, 0);
  g_assert_cmpuint (cursor, ==, 10);
}

static void
test_lost (void)
{
  g_autoptr (SyncEvents) ev = sync_events_new (8);
  guint64 slow = 0, fast = 0;
  for (guint i = 0; i < 20; i++)
    sync_events_append (ev, "progress", NULL);
  g_autoptr (GString) out = g_string_new (NULL);
  sync_events_read (ev, &slow, out, 1 << 20);
  g_autoptr (GPtrArray) lines = parse_lines (out->str);
  g_assert_cmpuint (lines->len, ==, 1 + 8);
  g_assert_cmpstr (str (lines->pdata[0], "event"), ==, "events_lost");
  g_assert_cmpint (num (lines->pdata[0], "count"), ==, 12);
  g_assert_cmpint (num (lines->pdata[1], "seq"), ==, 12);
  g_assert_cmpint (num (lines->pdata[8], "seq"), ==, 19);
  g_assert_cmpuint (slow, ==, 20);

  /* A reader that kept up loses nothing. */
  fast = 20;
  for (guint i = 0; i < 8; i++)
    sync_events_append (ev, "progress", NULL);
  g_string_truncate (out, 0);
  sync_events_read (ev, &fast, out, 1 << 20);
  g_autoptr (GPtrArray) more = parse_lines (out->str);
  g_assert_cmpuint (more->len, ==, 8);
  g_assert_cmpint (num (more->pdata[0], "seq"), ==, 20);
}

static void
test_oversize (void)
{
  g_autoptr (SyncEvents) ev = sync_events_new (4);
  g_autofree char *huge = g_strnfill (SYNC_EVENT_LINE_MAX * 2, 'x');
  sync_events_append (ev, "file_published", path_fields (huge));
  guint64 cursor = 0;
  g_autoptr (GString) out = g_string_new (NULL);
  gsize n = sync_events_read (ev, &cursor, out, SYNC_EVENT_LINE_MAX);
  g_assert_cmpuint (n, >, 0);
  g_assert_cmpuint (n, <=, SYNC_EVENT_LINE_MAX);
  g_autoptr (GPtrArray) lines = parse_lines (out->str);
  g_assert_true (cJSON_IsTrue (cJSON_GetObjectItemCaseSensitive (lines->pdata[0], "oversize")));
  g_assert_cmpstr (str (lines->pdata[0], "event"), ==, "file_published");
}

#define WRITERS 2
#define PER_WRITER 3000

static gpointer
writer (gpointer data)
{
  for (guint i = 0; i < PER_WRITER; i++)
    sync_events_append (data, "progress", NULL);
  return NULL;
}

static void
test_concurrent (void)
{
  /* Writers and a reader at once: the reader sees strictly increasing seqs, and every seq is
   * either read or reported lost. */
  g_autoptr (SyncEvents) ev = sync_events_new (256);
  GThread *w[WRITERS];
  for (guint i = 0; i < WRITERS; i++)
    w[i] = g_thread_new ("writer", writer, ev);
  guint64 cursor = 0, accounted = 0;
  gint64 last = -1;
  for (;;)
    {
      g_autoptr (GString) out = g_string_new (NULL);
      sync_events_read (ev, &cursor, out, 4096);
      if (out->len)
        {
          g_autoptr (GPtrArray) lines = parse_lines (out->str);
          for (guint i = 0; i < lines->len; i++)
            {
              const char *event = str (lines->pdata[i], "event");
              if (strcmp (event, "events_lost") == 0)
                {
                  accounted += (guint64) num (lines->pdata[i], "count");
                  last += num (lines->pdata[i], "count");
                  continue;
                }
              gint64 seq = num (lines->pdata[i], "seq");
              g_assert_cmpint (seq, ==, last + 1);
              last = seq;
              accounted++;
            }
        }
      if (accounted == WRITERS * PER_WRITER)
        break;
    }
  for (guint i = 0; i < WRITERS; i++)
    g_thread_join (w[i]);
  g_assert_cmpuint (cursor, ==, WRITERS * PER_WRITER);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/events/sequence", test_sequence);
  g_test_add_func ("/events/whole-lines", test_whole_lines);
  g_test_add_func ("/events/lost", test_lost);
  g_test_add_func ("/events/oversize", test_oversize);
  g_test_add_func ("/events/concurrent", test_concurrent);
  return g_test_run ();
}
