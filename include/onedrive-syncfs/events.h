/* The event ring: a bounded, in-memory sequence of JSON Lines events with sequence numbers.
 *
 * Every event gets the next sequence number (the first is 0) and is rendered once, at append
 * time, as one line: {"seq":N,"time":T,"event":"...",...}. The ring keeps the newest
 * @capacity lines. A reader keeps its own cursor (the seq it wants next); a reader whose
 * cursor points before the oldest kept line has lost events, and is told so explicitly with
 * an {"event":"events_lost","count":K} line before the lines it can still get — never a
 * silent gap. Thread-safe: one mutex, held only to copy strings.
 */
#pragma once

#include <cjson/cJSON.h>
#include <glib.h>

G_BEGIN_DECLS

/* A rendered line never exceeds this (an event with longer fields is replaced by a marker
 * line {"seq":N,"event":...,"oversize":true}); a reader offering at least this many bytes
 * always makes progress. */
#define SYNC_EVENT_LINE_MAX 16384

typedef struct _SyncEvents SyncEvents;

/* @capacity: lines kept (0: 4096). */
SyncEvents *sync_events_new (guint capacity);
void sync_events_free (SyncEvents *events);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (SyncEvents, sync_events_free)

/* Appends an event named @event with the members of @fields (consumed; may be NULL).
 * Returns its sequence number. */
guint64 sync_events_append (SyncEvents *events, const char *event, cJSON *fields);
/* The sequence number the next event will get. */
guint64 sync_events_head (SyncEvents *events);
/* Appends to @out the lines with seq >= *@cursor, whole lines only, at most @max_bytes in total,
 * and advances *@cursor past them. When events before the oldest kept one were never read, an
 * events_lost line comes first (counted in the bytes) and the cursor jumps to the oldest kept.
 * A cursor beyond the head is treated as the head. Returns the bytes appended. */
gsize sync_events_read (SyncEvents *events, guint64 *cursor, GString *out, gsize max_bytes);

G_END_DECLS
