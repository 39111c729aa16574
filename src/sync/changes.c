/* The durable change feed (see changes.h and docs/changes.md).
 *
 * Appends are plain write()s on an O_APPEND descriptor, each one whole line, so a crash of the
 * process leaves the file ending in a complete line or a torn one that the next open cuts off.
 * Trimming never edits the file in place: the kept tail goes to a temporary file that is
 * fsynced and renamed over the feed, so a reader sees either the old or the new generation,
 * never a mix. Lock order: changes->lock is a leaf.
 */
#define G_LOG_DOMAIN "odsf-sync"

#include "config.h"

#include <onedrive-syncfs/changes.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC (cJSON, cJSON_Delete)

struct _SyncChanges {
  GMutex   lock;
  char    *path;
  char    *tmp_path;
  int      fd;             /* protected by lock */
  gsize    max_bytes;
  gsize    size;           /* protected by lock: bytes in the file */
  guint64  generation;     /* protected by lock */
  guint64  first_seq;      /* protected by lock */
  guint64  next_seq;       /* protected by lock */
};

static char *
header_line (guint64 generation, guint64 first_seq)
{
  return g_strdup_printf ("{\"format\":\"odsf-changes\",\"version\":1,\"generation\":%" G_GUINT64_FORMAT
                          ",\"first_seq\":%" G_GUINT64_FORMAT "}\n",
                          generation, first_seq);
}

static gboolean
write_all (int fd, const char *buf, gsize len, const char *what, GError **error)
{
  while (len > 0)
    {
      ssize_t n = write (fd, buf, len);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          int e = errno;
          g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "write(%s): %s", what, g_strerror (e));
          return FALSE;
        }
      buf += n;
      len -= (gsize) n;
    }
  return TRUE;
}

/* Parses a header line; FALSE when it is not ours. */
static gboolean
parse_header (const char *line, gsize len, guint64 *generation, guint64 *first_seq)
{
  g_autoptr (cJSON) h = cJSON_ParseWithLength (line, len);
  if (!h || !cJSON_IsObject (h))
    return FALSE;
  const cJSON *format = cJSON_GetObjectItemCaseSensitive (h, "format");
  const cJSON *gen = cJSON_GetObjectItemCaseSensitive (h, "generation");
  const cJSON *first = cJSON_GetObjectItemCaseSensitive (h, "first_seq");
  if (!cJSON_IsString (format) || strcmp (format->valuestring, "odsf-changes") != 0
      || !cJSON_IsNumber (gen) || !cJSON_IsNumber (first) || gen->valuedouble < 1 || first->valuedouble < 0)
    return FALSE;
  *generation = (guint64) gen->valuedouble;
  *first_seq = (guint64) first->valuedouble;
  return TRUE;
}

/* Writes @content (header included) to the temporary file, syncs it and renames it over the
 * feed; then reopens the descriptor for appending. */
static gboolean
replace_file_locked (SyncChanges *ch, const char *content, gsize len, GError **error)
{
  int fd = open (ch->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "open(%s): %s", ch->tmp_path, g_strerror (e));
      return FALSE;
    }
  if (!write_all (fd, content, len, ch->tmp_path, error))
    {
      close (fd);
      g_unlink (ch->tmp_path);
      return FALSE;
    }
  if (fsync (fd) != 0 || close (fd) != 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "fsync(%s): %s", ch->tmp_path, g_strerror (e));
      g_unlink (ch->tmp_path);
      return FALSE;
    }
  if (rename (ch->tmp_path, ch->path) != 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "rename(%s): %s", ch->path, g_strerror (e));
      g_unlink (ch->tmp_path);
      return FALSE;
    }
  if (ch->fd >= 0)
    close (ch->fd);
  ch->fd = open (ch->path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (ch->fd < 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "open(%s): %s", ch->path, g_strerror (e));
      return FALSE;
    }
  ch->size = len;
  return TRUE;
}

SyncChanges *
sync_changes_open (const char *dir, gsize max_bytes, GError **error)
{
  g_autoptr (SyncChanges) ch = g_new0 (SyncChanges, 1);
  g_mutex_init (&ch->lock);
  ch->fd = -1;
  ch->max_bytes = max_bytes ? MAX (max_bytes, 4096) : SYNC_CHANGES_DEFAULT_MAX_BYTES;
  ch->path = g_build_filename (dir, SYNC_CHANGES_FILE, NULL);
  ch->tmp_path = g_strconcat (ch->path, ".tmp", NULL);

  if (g_mkdir_with_parents (dir, 0700) != 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "mkdir(%s): %s", dir, g_strerror (e));
      return NULL;
    }
  g_unlink (ch->tmp_path);   /* a trim that died before its rename */

  g_autofree char *content = NULL;
  gsize len = 0;
  g_autoptr (GError) local = NULL;
  if (!g_file_get_contents (ch->path, &content, &len, &local))
    {
      if (!g_error_matches (local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
        {
          g_propagate_error (error, g_steal_pointer (&local));
          return NULL;
        }
      ch->generation = 1;
      g_autofree char *header = header_line (1, 0);
      if (!replace_file_locked (ch, header, strlen (header), error))
        return NULL;
      return g_steal_pointer (&ch);
    }

  const char *nl = memchr (content, '\n', len);
  if (!nl || !parse_header (content, (gsize) (nl - content), &ch->generation, &ch->first_seq))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s is not a change feed: refusing to touch it",
                   ch->path);
      return NULL;
    }

  /* Cut a torn last line, then find the last seq. */
  gsize good = len;
  while (good > 0 && content[good - 1] != '\n')
    good--;
  ch->next_seq = ch->first_seq;
  gsize header_len = (gsize) (nl - content) + 1;
  if (good > header_len)
    {
      gsize start = good - 1;
      while (start > header_len && content[start - 1] != '\n')
        start--;
      g_autoptr (cJSON) last = cJSON_ParseWithLength (content + start, good - 1 - start);
      const cJSON *seq = last ? cJSON_GetObjectItemCaseSensitive (last, "seq") : NULL;
      if (!cJSON_IsNumber (seq))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "%s: last line has no seq", ch->path);
          return NULL;
        }
      ch->next_seq = (guint64) seq->valuedouble + 1;
    }
  if (good != len)
    {
      g_info ("%s: cutting a torn last line (%zu bytes)", ch->path, len - good);
      if (truncate (ch->path, (off_t) good) != 0)
        {
          int e = errno;
          g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "truncate(%s): %s", ch->path, g_strerror (e));
          return NULL;
        }
    }
  ch->size = good;
  ch->fd = open (ch->path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (ch->fd < 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "open(%s): %s", ch->path, g_strerror (e));
      return NULL;
    }
  return g_steal_pointer (&ch);
}

void
sync_changes_free (SyncChanges *ch)
{
  if (!ch)
    return;
  if (ch->fd >= 0)
    close (ch->fd);
  g_free (ch->path);
  g_free (ch->tmp_path);
  g_mutex_clear (&ch->lock);
  g_free (ch);
}

/* Rewrites the feed as a new generation holding the newest lines that fit in half the bound,
 * followed by @line (the one being appended, seq = next_seq). */
static gboolean
trim_locked (SyncChanges *ch, const char *line, gsize line_len, GError **error)
{
  g_autofree char *content = NULL;
  gsize len = 0;
  if (!g_file_get_contents (ch->path, &content, &len, error))
    return FALSE;

  const char *nl = memchr (content, '\n', len);
  gsize body_start = nl ? (gsize) (nl - content) + 1 : len;
  gsize budget = ch->max_bytes / 2 > line_len ? ch->max_bytes / 2 - line_len : 0;

  /* Walk back over whole lines while they fit in the budget. */
  gsize keep_from = len;
  while (keep_from > body_start)
    {
      gsize start = keep_from - 1;
      while (start > body_start && content[start - 1] != '\n')
        start--;
      if (len - start > budget)
        break;
      keep_from = start;
    }
  guint64 kept_lines = 0;
  for (gsize i = keep_from; i < len; i++)
    kept_lines += content[i] == '\n';
  guint64 first_seq = ch->next_seq - kept_lines;

  g_autofree char *header = header_line (ch->generation + 1, first_seq);
  g_autoptr (GString) out = g_string_sized_new (strlen (header) + (len - keep_from) + line_len);
  g_string_append (out, header);
  g_string_append_len (out, content + keep_from, (gssize) (len - keep_from));
  g_string_append_len (out, line, (gssize) line_len);
  if (!replace_file_locked (ch, out->str, out->len, error))
    return FALSE;
  ch->generation++;
  ch->first_seq = first_seq;
  g_debug ("%s: trimmed to generation %" G_GUINT64_FORMAT ", first seq %" G_GUINT64_FORMAT, ch->path,
           ch->generation, first_seq);
  return TRUE;
}

gboolean
sync_changes_append (SyncChanges *ch, const char *action, const char *path, const char *old_path,
                     const char *id, gint64 size, const char *hash, gboolean folder, guint64 *seq_out,
                     GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&ch->lock);
  guint64 seq = ch->next_seq;

  g_autoptr (cJSON) obj = cJSON_CreateObject ();
  cJSON_AddNumberToObject (obj, "seq", (double) seq);
  cJSON_AddNumberToObject (obj, "time", (double) (g_get_real_time () / G_USEC_PER_SEC));
  cJSON_AddStringToObject (obj, "action", action);
  cJSON_AddStringToObject (obj, "path", path ? path : "");
  if (old_path)
    cJSON_AddStringToObject (obj, "old_path", old_path);
  if (id)
    cJSON_AddStringToObject (obj, "id", id);
  else
    cJSON_AddNullToObject (obj, "id");
  if (size >= 0)
    cJSON_AddNumberToObject (obj, "size", (double) size);
  else
    cJSON_AddNullToObject (obj, "size");
  if (hash)
    cJSON_AddStringToObject (obj, "hash", hash);
  else
    cJSON_AddNullToObject (obj, "hash");
  if (folder)
    cJSON_AddBoolToObject (obj, "folder", 1);
  char *text = cJSON_PrintUnformatted (obj);
  g_autofree char *line = g_strconcat (text, "\n", NULL);
  cJSON_free (text);
  gsize line_len = strlen (line);

  if (ch->size + line_len > ch->max_bytes)
    {
      if (!trim_locked (ch, line, line_len, error))
        return FALSE;
    }
  else
    {
      if (!write_all (ch->fd, line, line_len, ch->path, error))
        return FALSE;
      ch->size += line_len;
    }
  ch->next_seq = seq + 1;
  if (seq_out)
    *seq_out = seq;
  return TRUE;
}

gboolean
sync_changes_flush (SyncChanges *ch, GError **error)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&ch->lock);
  if (fdatasync (ch->fd) != 0)
    {
      int e = errno;
      g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "fdatasync(%s): %s", ch->path, g_strerror (e));
      return FALSE;
    }
  return TRUE;
}

guint64
sync_changes_next_seq (SyncChanges *ch)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&ch->lock);
  return ch->next_seq;
}

guint64
sync_changes_generation (SyncChanges *ch)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&ch->lock);
  return ch->generation;
}

guint64
sync_changes_first_seq (SyncChanges *ch)
{
  g_autoptr (GMutexLocker) locker = g_mutex_locker_new (&ch->lock);
  return ch->first_seq;
}

const char *
sync_changes_path (SyncChanges *ch)
{
  return ch->path;
}
