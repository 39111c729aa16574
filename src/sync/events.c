/* The event ring (see events.h). Lines are stored rendered, with their trailing newline, in a
 * circular array indexed by seq % capacity; `head` is the next seq, so the ring holds seqs
 * [max(0, head - capacity), head). */
#define G_LOG_DOMAIN "odsf-sync"

#include "config.h"

#include <onedrive-syncfs/events.h>

#include <string.h>

struct _SyncEvents {
  GMutex   lock;
  guint    capacity;
  char   **lines;         /* protected by lock; lines[seq % capacity] */
  gsize   *lens;          /* protected by lock */
  guint64  head;          /* protected by lock */
};

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

SyncEvents *
sync_events_new (guint capacity)
{
  SyncEvents *ev = g_new0 (SyncEvents, 1);
  g_mutex_init (&ev->lock);
  ev->capacity = capacity ? capacity : 4096;
  ev->lines = g_new0 (char *, ev->capacity);
  ev->lens = g_new0 (gsize, ev->capacity);
  return ev;
}

void
sync_events_free (SyncEvents *ev)
{
  if (!ev)
    return;
  for (guint i = 0; i < ev->capacity; i++)
    g_free (ev->lines[i]);
  g_free (ev->lines);
  g_free (ev->lens);
  g_mutex_clear (&ev->lock);
  g_free (ev);
}

static char *
render (guint64 seq, gint64 time_us, const char *event, cJSON *fields)
{
  g_autoptr (cJSON) obj = cJSON_CreateObject ();
  cJSON_AddNumberToObject (obj, "seq", (double) seq);
  cJSON_AddNumberToObject (obj, "time", (double) (time_us / G_USEC_PER_SEC));
  cJSON_AddStringToObject (obj, "event", event);
  if (fields)
    {
      cJSON *child;
      while ((child = fields->child) != NULL)
        {
          cJSON_DetachItemViaPointer (fields, child);
          /* seq/time/event are ours; a field with those names would make the line ambiguous. */
          if (child->string && (strcmp (child->string, "seq") == 0 || strcmp (child->string, "time") == 0
                                || strcmp (child->string, "event") == 0))
            {
              cJSON_Delete (child);
              continue;
            }
          cJSON_AddItemToObject (obj, child->string, child);
        }
    }
  char *text = cJSON_PrintUnformatted (obj);
  if (!text)
    return NULL;
  if (strlen (text) + 1 > SYNC_EVENT_LINE_MAX)
    {
      cJSON_free (text);
      g_autoptr (cJSON) small = cJSON_CreateObject ();
      cJSON_AddNumberToObject (small, "seq", (double) seq);
      cJSON_AddNumberToObject (small, "time", (double) (time_us / G_USEC_PER_SEC));
      cJSON_AddStringToObject (small, "event", event);
      cJSON_AddBoolToObject (small, "oversize", 1);
      text = cJSON_PrintUnformatted (small);
    }
  char *line = g_strconcat (text, "\n", NULL);
  cJSON_free (text);
  return line;
}

guint64
sync_events_append (SyncEvents *ev, const char *event, cJSON *fields)
{
  g_autoptr (cJSON) owned = fields;
  gint64 now = g_get_real_time ();

  /* The seq is taken and the line stored in one critical section so lines sit in seq order;
   * rendering happens inside too, which keeps the code simple and costs microseconds. */
  g_mutex_lock (&ev->lock);
  guint64 seq = ev->head++;
  char *line = render (seq, now, event, owned);
  guint slot = (guint) (seq % ev->capacity);
  g_free (ev->lines[slot]);
  ev->lines[slot] = line;
  ev->lens[slot] = line ? strlen (line) : 0;
  g_mutex_unlock (&ev->lock);
  return seq;
}

guint64
sync_events_head (SyncEvents *ev)
{
  g_mutex_lock (&ev->lock);
  guint64 head = ev->head;
  g_mutex_unlock (&ev->lock);
  return head;
}

gsize
sync_events_read (SyncEvents *ev, guint64 *cursor, GString *out, gsize max_bytes)
{
  gsize appended = 0;

  g_mutex_lock (&ev->lock);
  guint64 oldest = ev->head > ev->capacity ? ev->head - ev->capacity : 0;
  guint64 pos = MIN (*cursor, ev->head);

  if (pos < oldest)
    {
      g_autofree char *lost = g_strdup_printf ("{\"event\":\"events_lost\",\"count\":%" G_GUINT64_FORMAT "}\n",
                                               oldest - pos);
      gsize n = strlen (lost);
      if (n > max_bytes)
        goto out;   /* cannot even say it; the cursor stays so the next read says it */
      g_string_append_len (out, lost, (gssize) n);
      appended += n;
      pos = oldest;
    }

  while (pos < ev->head)
    {
      guint slot = (guint) (pos % ev->capacity);
      gsize n = ev->lens[slot];
      if (appended + n > max_bytes)
        break;
      if (ev->lines[slot])
        g_string_append_len (out, ev->lines[slot], (gssize) n);
      appended += n;
      pos++;
    }

out:
  *cursor = pos;
  g_mutex_unlock (&ev->lock);
  return appended;
}
