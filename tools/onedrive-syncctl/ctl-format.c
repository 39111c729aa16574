/* Formatting for onedrive-syncctl (see ctl-format.h). */
#define G_LOG_DOMAIN "odsf-ctl"

#include "config.h"

#include "ctl-format.h"

#include <math.h>
#include <string.h>

CtlExit
ctl_exit_for_state (const char *state)
{
  if (!state)
    return CTL_EXIT_ERROR;
  if (strcmp (state, "completed") == 0)
    return CTL_EXIT_OK;
  if (strcmp (state, "completed_with_errors") == 0)
    return CTL_EXIT_COMPLETED_WITH_ERRORS;
  if (strcmp (state, "cancelled") == 0)
    return CTL_EXIT_CANCELLED;
  /* interrupted = the daemon died in the run: for a script that is a failed run. */
  if (strcmp (state, "failed") == 0 || strcmp (state, "interrupted") == 0)
    return CTL_EXIT_FAILED;
  return CTL_EXIT_ERROR;
}

gboolean
ctl_state_is_terminal (const char *state)
{
  return state && (strcmp (state, "completed") == 0 || strcmp (state, "completed_with_errors") == 0
                   || strcmp (state, "cancelled") == 0 || strcmp (state, "failed") == 0
                   || strcmp (state, "interrupted") == 0);
}

/* ---- field access ----------------------------------------------------------------------- */

/* The status document may keep a field at the top or inside one of these objects; looking in
 * all of them keeps the tool working across small layout changes of docs/status.md. */
static const char *const nests[] = { NULL, "run", "progress", "counters", "current_run" };

static const cJSON *
field (const cJSON *obj, const char *name)
{
  if (!cJSON_IsObject (obj))
    return NULL;
  for (gsize i = 0; i < G_N_ELEMENTS (nests); i++)
    {
      const cJSON *o = nests[i] ? cJSON_GetObjectItemCaseSensitive (obj, nests[i]) : obj;
      if (!cJSON_IsObject (o))
        continue;
      const cJSON *v = cJSON_GetObjectItemCaseSensitive (o, name);
      if (v && !cJSON_IsNull (v))
        return v;
    }
  return NULL;
}

static gint64
num (const cJSON *obj, const char *name)
{
  const cJSON *v = field (obj, name);
  return cJSON_IsNumber (v) && v->valuedouble >= 0 ? (gint64) v->valuedouble : -1;
}

static const char *
str (const cJSON *obj, const char *name)
{
  const cJSON *v = cJSON_GetObjectItemCaseSensitive (obj, name);
  return cJSON_IsString (v) ? v->valuestring : NULL;
}

/* A time as unix seconds: a number is taken as seconds (or µs/ms when huge), a string as
 * ISO 8601. -1 when absent or unparseable. */
static gint64
time_value (const cJSON *v)
{
  if (cJSON_IsNumber (v))
    {
      double t = v->valuedouble;
      if (t <= 0)
        return -1;
      if (t > 1e14)        /* microseconds */
        return (gint64) (t / 1e6);
      if (t > 1e11)        /* milliseconds */
        return (gint64) (t / 1e3);
      return (gint64) t;
    }
  if (cJSON_IsString (v) && v->valuestring[0])
    {
      g_autoptr (GDateTime) dt = g_date_time_new_from_iso8601 (v->valuestring, NULL);
      if (!dt)
        {
          g_autoptr (GTimeZone) utc = g_time_zone_new_utc ();
          dt = g_date_time_new_from_iso8601 (v->valuestring, utc);
        }
      return dt ? g_date_time_to_unix (dt) : -1;
    }
  return -1;
}

static gint64
time_field (const cJSON *obj, const char *name)
{
  return time_value (field (obj, name));
}

cJSON *
ctl_status_parse (const char *text, gsize len, GError **error)
{
  cJSON *doc = cJSON_ParseWithLength (text, len);
  if (!cJSON_IsObject (doc))
    {
      cJSON_Delete (doc);
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                   "the status is not a JSON object (%" G_GSIZE_FORMAT " bytes)", len);
      return NULL;
    }
  return doc;
}

const char *
ctl_status_state (const cJSON *status)
{
  const cJSON *v = field (status, "state");
  return cJSON_IsString (v) ? v->valuestring : "unknown";
}

char *
ctl_status_run_key (const cJSON *status)
{
  static const char *const ids[] = { "run_id", "run_seq", "id" };
  for (gsize i = 0; i < G_N_ELEMENTS (ids); i++)
    {
      const cJSON *v = field (status, ids[i]);
      if (cJSON_IsNumber (v))
        return g_strdup_printf ("%.0f", v->valuedouble);
      if (cJSON_IsString (v))
        return g_strdup (v->valuestring);
    }
  gint64 t = time_field (status, "started_at");
  return t > 0 ? g_strdup_printf ("t%" G_GINT64_FORMAT, t) : NULL;
}

const char *
ctl_status_rejected_reason (const cJSON *status)
{
  const cJSON *v = field (status, "last_rejected_start");
  if (cJSON_IsString (v))
    return v->valuestring;
  if (cJSON_IsObject (v))
    {
      const char *r = str (v, "reason");
      return r ? r : str (v, "message");
    }
  return NULL;
}

void
ctl_status_progress (const cJSON *status, CtlProgress *out)
{
  out->items_total = num (status, "files_total");
  if (out->items_total < 0)
    out->items_total = num (status, "total");
  out->files_failed = num (status, "files_failed");

  /* Every file the run has finished with, whatever the outcome, counts as done: that is what
   * makes done reach total. */
  static const char *const parts[] = { "files_processed", "files_unchanged", "files_failed",
                                       "files_filtered" };
  /* "current" (docs/status.md) is exactly that count; the sum is for older documents. */
  gint64 done = num (status, "current");
  for (gsize i = 0; done < 0 && i < G_N_ELEMENTS (parts); i++)
    {
      gint64 n = num (status, parts[i]);
      if (n >= 0)
        done = (done < 0 ? 0 : done) + n;
    }
  /* The loop above stops at the first part once it has a value: sum all of them. */
  if (num (status, "current") < 0 && done >= 0)
    {
      done = 0;
      for (gsize i = 0; i < G_N_ELEMENTS (parts); i++)
        done += MAX (0, num (status, parts[i]));
    }
  if (done < 0)
    done = num (status, "files_done");
  out->items_done = done;

  out->bytes_done = num (status, "bytes_downloaded");
  if (out->bytes_done < 0)
    out->bytes_done = num (status, "bytes_done");
  out->bytes_total = num (status, "bytes_total");
}

/* ---- small formatters ------------------------------------------------------------------- */

char *
ctl_format_bytes (gint64 bytes)
{
  static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
  if (bytes < 1024)
    return g_strdup_printf ("%" G_GINT64_FORMAT " B", bytes < 0 ? 0 : bytes);
  double v = (double) bytes / 1024.0;
  gsize u = 0;
  while (v >= 1024.0 && u + 1 < G_N_ELEMENTS (units))
    {
      v /= 1024.0;
      u++;
    }
  /* One decimal below 100, none above: "1.5 KiB", "123 MiB". */
  return v < 99.95 ? g_strdup_printf ("%.1f %s", v, units[u]) : g_strdup_printf ("%.0f %s", v, units[u]);
}

char *
ctl_format_duration (gint64 s)
{
  if (s < 0)
    s = 0;
  if (s < 60)
    return g_strdup_printf ("%" G_GINT64_FORMAT "s", s);
  if (s < 3600)
    return g_strdup_printf ("%" G_GINT64_FORMAT "m%02" G_GINT64_FORMAT "s", s / 60, s % 60);
  if (s < 86400)
    return g_strdup_printf ("%" G_GINT64_FORMAT "h%02" G_GINT64_FORMAT "m", s / 3600, (s % 3600) / 60);
  return g_strdup_printf ("%" G_GINT64_FORMAT "d%02" G_GINT64_FORMAT "h", s / 86400, (s % 86400) / 3600);
}

static char *
format_local_time (gint64 unix_s)
{
  g_autoptr (GDateTime) dt = g_date_time_new_from_unix_local (unix_s);
  return dt ? g_date_time_format (dt, "%Y-%m-%d %H:%M:%S") : g_strdup ("?");
}

/* "2026-12-03 10:20:01 (3m05s ago)" */
static char *
format_when (gint64 unix_s, gint64 now_us)
{
  g_autofree char *t = format_local_time (unix_s);
  g_autofree char *ago = ctl_format_duration (now_us / G_USEC_PER_SEC - unix_s);
  return g_strdup_printf ("%s (%s ago)", t, ago);
}

/* "120/300 files, 1.2 GiB/3.4 GiB, 2 failed" — only the parts that are known. */
static void
append_progress (GString *s, const CtlProgress *p)
{
  gboolean any = FALSE;
  if (p->items_done >= 0)
    {
      if (p->items_total >= 0)
        g_string_append_printf (s, "%" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " items", p->items_done,
                                p->items_total);
      else
        g_string_append_printf (s, "%" G_GINT64_FORMAT " items", p->items_done);
      if (p->items_total > 0)
        g_string_append_printf (s, " (%d%%)",
                                (int) MIN (100, p->items_done * 100 / p->items_total));
      any = TRUE;
    }
  if (p->bytes_done >= 0)
    {
      g_autofree char *b = ctl_format_bytes (p->bytes_done);
      g_string_append_printf (s, "%s%s", any ? ", " : "", b);
      if (p->bytes_total >= 0)
        {
          g_autofree char *bt = ctl_format_bytes (p->bytes_total);
          g_string_append_printf (s, "/%s", bt);
        }
      g_string_append (s, p->bytes_total >= 0 ? "" : " downloaded");
      any = TRUE;
    }
  if (p->files_failed > 0)
    {
      g_string_append_printf (s, "%s%" G_GINT64_FORMAT " failed", any ? ", " : "", p->files_failed);
      any = TRUE;
    }
  if (!any)
    g_string_append (s, "-");
}

/* The run the document describes (the current one, or the last) as one line. */
static void
append_run_line (GString *s, const cJSON *run, gint64 now_us)
{
  const char *state = ctl_status_state (run);
  g_string_append (s, state);
  gint64 started = time_field (run, "started_at");
  gint64 finished = time_field (run, "finished_at");
  if (finished > 0)
    {
      g_autofree char *when = format_when (finished, now_us);
      g_string_append_printf (s, ", ended %s", when);
      if (started > 0 && finished >= started)
        {
          g_autofree char *took = ctl_format_duration (finished - started);
          g_string_append_printf (s, ", took %s", took);
        }
    }
  else if (started > 0)
    {
      g_autofree char *when = format_when (started, now_us);
      g_string_append_printf (s, ", started %s", when);
    }
}

static const char *
first_str (const cJSON *obj, const char *const *names, gsize n)
{
  for (gsize i = 0; i < n; i++)
    {
      const char *v = str (obj, names[i]);
      if (v && v[0])
        return v;
    }
  return NULL;
}

char *
ctl_format_status (const cJSON *status, gint64 now_us)
{
  GString *s = g_string_new (NULL);
  const char *state = ctl_status_state (status);
  CtlProgress p;
  ctl_status_progress (status, &p);

  g_string_append (s, "State:     ");
  append_run_line (s, status, now_us);
  g_string_append_c (s, '\n');

  g_string_append (s, "Progress:  ");
  if (strcmp (state, "idle") == 0 && p.items_total <= 0 && p.items_done <= 0)
    g_string_append (s, "-");   /* nothing has run yet: no "0/0 items, 0 B" noise */
  else
    append_progress (s, &p);
  g_string_append_c (s, '\n');

  /* What the finished items were, in the status document's own words; zeros left out. */
  static const struct { const char *field, *label; } kinds[] = {
    { "files_processed", "downloaded" }, { "files_unchanged", "unchanged" },
    { "files_failed", "failed" }, { "files_filtered", "not mirrored" },
    { "files_unverified", "without a hash" }, { "folders_processed", "folders" },
    { "renamed_count", "renamed" }, { "deleted_count", "deleted" },
  };
  g_autoptr (GString) detail = g_string_new (NULL);
  for (gsize i = 0; i < G_N_ELEMENTS (kinds); i++)
    {
      gint64 n = num (status, kinds[i].field);
      if (n > 0)
        g_string_append_printf (detail, "%s%" G_GINT64_FORMAT " %s", detail->len ? ", " : "", n,
                                kinds[i].label);
    }
  if (detail->len)
    g_string_append_printf (s, "Items:     %s\n", detail->str);

  const cJSON *cur = cJSON_GetObjectItemCaseSensitive (status, "current_files");
  if (strcmp (state, "syncing") == 0 && cJSON_IsArray (cur) && cJSON_GetArraySize (cur) > 0)
    {
      g_string_append (s, "Working:   ");
      int n = 0;
      const cJSON *c;
      cJSON_ArrayForEach (c, cur)
        {
          const char *path = cJSON_IsString (c) ? c->valuestring : str (c, "path");
          if (!path)
            continue;
          if (n == 3)
            {
              g_string_append_printf (s, " and %d more", cJSON_GetArraySize (cur) - 3);
              break;
            }
          g_string_append_printf (s, "%s%s", n ? ", " : "", path);
          n++;
        }
      g_string_append_c (s, '\n');
    }

  const char *err = str (status, "last_error");
  if (err && err[0])
    g_string_append_printf (s, "Error:     %s\n", err);

  const char *rejected = ctl_status_rejected_reason (status);
  if (rejected)
    g_string_append_printf (s, "Rejected:  %s\n", rejected);

  const cJSON *failed = cJSON_GetObjectItemCaseSensitive (status, "failed_files");
  if (cJSON_IsArray (failed) && cJSON_GetArraySize (failed) > 0)
    {
      g_string_append_printf (s, "Failed files (%d):\n", cJSON_GetArraySize (failed));
      static const char *const reasons[] = { "message", "reason", "error" };
      const cJSON *f;
      cJSON_ArrayForEach (f, failed)
        {
          const char *path = cJSON_IsString (f) ? f->valuestring : str (f, "path");
          const char *why = first_str (f, reasons, G_N_ELEMENTS (reasons));
          const char *type = str (f, "error_type");
          gint64 attempts = num (f, "attempts");
          g_string_append_printf (s, "  %s", path ? path : "?");
          if (type || why)
            g_string_append_printf (s, ": %s%s%s", type ? type : "", type && why ? ": " : "",
                                    why ? why : "");
          if (attempts > 1)
            g_string_append_printf (s, " (%" G_GINT64_FORMAT " attempts)", attempts);
          g_string_append_c (s, '\n');
        }
    }

  const cJSON *filtered = cJSON_GetObjectItemCaseSensitive (status, "filtered_files");
  if (cJSON_IsArray (filtered) && cJSON_GetArraySize (filtered) > 0)
    {
      g_string_append_printf (s, "Not mirrored (%d):\n", cJSON_GetArraySize (filtered));
      const cJSON *f;
      cJSON_ArrayForEach (f, filtered)
        {
          const char *path = cJSON_IsString (f) ? f->valuestring : str (f, "path");
          const char *why = str (f, "reason");
          g_string_append_printf (s, "  %s%s%s\n", path ? path : "?", why ? ": " : "", why ? why : "");
        }
    }

  const cJSON *sources = cJSON_GetObjectItemCaseSensitive (status, "sources");
  if (cJSON_IsArray (sources) && cJSON_GetArraySize (sources) > 0)
    {
      g_string_append (s, "Sources:\n");
      const cJSON *src;
      cJSON_ArrayForEach (src, sources)
        {
          const char *path = cJSON_IsString (src) ? src->valuestring : str (src, "path");
          const char *sstate = str (src, "state");
          g_string_append_printf (s, "  %-30s", path ? path : "?");
          if (sstate)
            g_string_append_printf (s, " %s", sstate);
          gint64 t = time_value (cJSON_GetObjectItemCaseSensitive (src, "last_completed"));
          if (t > 0)
            {
              g_autofree char *when = format_when (t, now_us);
              g_string_append_printf (s, ", last synced %s", when);
            }
          const char *serr = str (src, "error");
          if (serr && serr[0])
            g_string_append_printf (s, ", error: %s", serr);
          g_string_append_c (s, '\n');
        }
    }
  return g_string_free (s, FALSE);
}

/* ---- events ----------------------------------------------------------------------------- */

static gboolean
needs_quotes (const char *v)
{
  if (!v[0])
    return TRUE;
  for (const char *p = v; *p; p++)
    if (g_ascii_isspace (*p) || *p == '"' || *p == '=')
      return TRUE;
  return FALSE;
}

char *
ctl_format_event (const char *line, gsize len)
{
  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
    len--;
  g_autoptr (cJSON) ev = cJSON_ParseWithLength (line, len);
  if (!cJSON_IsObject (ev))
    return g_strndup (line, len);

  GString *s = g_string_new (NULL);
  gint64 t = time_value (cJSON_GetObjectItemCaseSensitive (ev, "time"));
  if (t > 0)
    {
      g_autoptr (GDateTime) dt = g_date_time_new_from_unix_local (t);
      g_autofree char *hms = dt ? g_date_time_format (dt, "%H:%M:%S") : g_strdup ("?");
      g_string_append_printf (s, "%s ", hms);
    }
  const char *name = str (ev, "event");
  g_string_append (s, name ? name : "event");

  const cJSON *f;
  cJSON_ArrayForEach (f, ev)
    {
      if (!f->string || strcmp (f->string, "seq") == 0 || strcmp (f->string, "time") == 0
          || strcmp (f->string, "event") == 0)
        continue;
      g_string_append_printf (s, " %s=", f->string);
      if (cJSON_IsString (f))
        {
          if (needs_quotes (f->valuestring))
            {
              g_autofree char *q = g_strescape (f->valuestring, NULL);
              g_string_append_printf (s, "\"%s\"", q);
            }
          else
            g_string_append (s, f->valuestring);
        }
      else if (cJSON_IsNumber (f) && f->valuedouble == floor (f->valuedouble)
               && fabs (f->valuedouble) < 9.0e15)
        g_string_append_printf (s, "%.0f", f->valuedouble);
      else
        {
          char *j = cJSON_PrintUnformatted (f);
          g_string_append (s, j ? j : "?");
          cJSON_free (j);
        }
    }
  return g_string_free (s, FALSE);
}

gboolean
ctl_event_is_notable (const char *line, gsize len)
{
  g_autoptr (cJSON) ev = cJSON_ParseWithLength (line, len);
  const char *name = cJSON_IsObject (ev) ? str (ev, "event") : NULL;
  if (!name)
    return TRUE;   /* something we do not understand: show it rather than hide it */
  /* Per-file and progress events (docs/status.md's engine emits these); everything else —
   * file_failed, run_started, run_finished, cancel_requested, source_resync, events_lost and
   * any event this tool does not know — is shown. */
  static const char *const routine[] = { "file_started", "file_published", "file_cancelled",
                                         "file_filtered", "progress", "file_done" };
  for (gsize i = 0; i < G_N_ELEMENTS (routine); i++)
    if (strcmp (name, routine[i]) == 0)
      return FALSE;
  return TRUE;
}

/* ---- the progress bar ------------------------------------------------------------------- */

void
ctl_rate_add (CtlRate *rate, gint64 t_us, gint64 bytes)
{
  rate->t_us[rate->head] = t_us;
  rate->bytes[rate->head] = bytes;
  rate->head = (rate->head + 1) % G_N_ELEMENTS (rate->t_us);
  if (rate->n < G_N_ELEMENTS (rate->t_us))
    rate->n++;
}

double
ctl_rate_get (const CtlRate *rate, gint64 window_us)
{
  if (rate->n < 2)
    return -1;
  guint cap = G_N_ELEMENTS (rate->t_us);
  guint newest = (rate->head + cap - 1) % cap;
  /* The oldest sample still inside the window. */
  guint oldest = newest;
  for (guint k = 1; k < rate->n; k++)
    {
      guint i = (newest + cap - k) % cap;
      if (rate->t_us[newest] - rate->t_us[i] > window_us)
        break;
      oldest = i;
    }
  gint64 dt = rate->t_us[newest] - rate->t_us[oldest];
  gint64 db = rate->bytes[newest] - rate->bytes[oldest];
  if (dt <= 0 || db < 0)
    return -1;
  return (double) db * G_USEC_PER_SEC / (double) dt;
}

char *
ctl_format_bar (const CtlProgress *p, double rate, double items_rate, guint width)
{
  /* The fraction: by bytes when both byte figures are known (what takes time), else by files. */
  double frac = -1;
  if (p->bytes_total > 0 && p->bytes_done >= 0)
    frac = (double) p->bytes_done / (double) p->bytes_total;
  else if (p->items_total > 0 && p->items_done >= 0)
    frac = (double) p->items_done / (double) p->items_total;
  if (frac > 1)
    frac = 1;

  GString *tail = g_string_new (NULL);
  if (frac >= 0)
    g_string_append_printf (tail, " %3d%%", (int) floor (frac * 100));
  if (p->items_done >= 0)
    {
      if (p->items_total >= 0)
        g_string_append_printf (tail, "  %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " items",
                                p->items_done, p->items_total);
      else
        g_string_append_printf (tail, "  %" G_GINT64_FORMAT " items", p->items_done);
    }
  if (p->files_failed > 0)
    g_string_append_printf (tail, " (%" G_GINT64_FORMAT " failed)", p->files_failed);
  if (p->bytes_done >= 0)
    {
      g_autofree char *b = ctl_format_bytes (p->bytes_done);
      g_string_append_printf (tail, "  %s", b);
      if (p->bytes_total >= 0)
        {
          g_autofree char *bt = ctl_format_bytes (p->bytes_total);
          g_string_append_printf (tail, "/%s", bt);
        }
    }
  if (rate >= 0 || items_rate >= 0)
    {
      if (rate >= 0)
        {
          g_autofree char *r = ctl_format_bytes ((gint64) rate);
          g_string_append_printf (tail, "  %s/s", r);
        }
      /* ETA from bytes when the total is known (it is what takes time), else from files. */
      gint64 eta = -1;
      if (p->bytes_total > 0 && p->bytes_done >= 0 && rate > 0)
        eta = (gint64) ceil ((double) MAX (0, p->bytes_total - p->bytes_done) / rate);
      else if (p->items_total > 0 && p->items_done >= 0 && items_rate > 0)
        eta = (gint64) ceil ((double) MAX (0, p->items_total - p->items_done) / items_rate);
      if (eta >= 0)
        {
          g_autofree char *e = ctl_format_duration (eta);
          g_string_append_printf (tail, "  ETA %s", e);
        }
      else
        g_string_append (tail, "  ETA --");
    }

  /* The bar takes what the figures leave, between 10 and 40 columns; none on a tiny terminal. */
  GString *s = g_string_new (NULL);
  gssize room = (gssize) width - (gssize) tail->len - 2;
  if (room >= 10)
    {
      guint cells = (guint) MIN (room, 40);
      guint filled = frac >= 0 ? (guint) floor (frac * cells) : 0;
      g_string_append_c (s, '[');
      for (guint i = 0; i < cells; i++)
        g_string_append_c (s, i < filled ? '#' : (frac >= 0 ? '.' : '?'));
      g_string_append_c (s, ']');
    }
  g_string_append (s, tail->str);
  g_string_free (tail, TRUE);
  if (s->len > width && width > 0)
    g_string_truncate (s, width);
  return g_string_free (s, FALSE);
}
