/* Unit tests for what onedrive-syncctl prints and the exit codes it chooses (TZ=UTC). */
#include "config.h"

#include "ctl-format.h"

#include <string.h>

static cJSON *
parse (const char *text)
{
  g_autoptr (GError) error = NULL;
  cJSON *doc = ctl_status_parse (text, strlen (text), &error);
  g_assert_no_error (error);
  g_assert_nonnull (doc);
  return doc;
}

static void
test_exit_codes (void)
{
  g_assert_cmpint (ctl_exit_for_state ("completed"), ==, CTL_EXIT_OK);
  g_assert_cmpint (ctl_exit_for_state ("completed_with_errors"), ==, CTL_EXIT_COMPLETED_WITH_ERRORS);
  g_assert_cmpint (ctl_exit_for_state ("cancelled"), ==, CTL_EXIT_CANCELLED);
  g_assert_cmpint (ctl_exit_for_state ("failed"), ==, CTL_EXIT_FAILED);
  g_assert_cmpint (ctl_exit_for_state ("interrupted"), ==, CTL_EXIT_FAILED);
  g_assert_cmpint (ctl_exit_for_state ("syncing"), ==, CTL_EXIT_ERROR);
  g_assert_cmpint (ctl_exit_for_state (NULL), ==, CTL_EXIT_ERROR);
  /* Every --wait outcome and every refusal is told apart. */
  int codes[] = { CTL_EXIT_OK, CTL_EXIT_ERROR, CTL_EXIT_USAGE, CTL_EXIT_BUSY,
                  CTL_EXIT_COMPLETED_WITH_ERRORS, CTL_EXIT_CANCELLED, CTL_EXIT_FAILED,
                  CTL_EXIT_INVALID, CTL_EXIT_LOGIN_DECLINED, CTL_EXIT_LOGIN_EXPIRED,
                  CTL_EXIT_NOT_CONFIGURED };
  for (gsize i = 0; i < G_N_ELEMENTS (codes); i++)
    for (gsize j = i + 1; j < G_N_ELEMENTS (codes); j++)
      g_assert_cmpint (codes[i], !=, codes[j]);
  g_assert_true (ctl_state_is_terminal ("cancelled"));
  g_assert_false (ctl_state_is_terminal ("syncing"));
  g_assert_false (ctl_state_is_terminal ("idle"));
}

static void
test_parse_rejects (void)
{
  g_autoptr (GError) error = NULL;
  g_assert_null (ctl_status_parse ("[1,2]", 5, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA);
  g_clear_error (&error);
  g_assert_null (ctl_status_parse ("{\"state\":", 9, &error));
  g_assert_nonnull (error);
}

static void
test_progress (void)
{
  g_autoptr (cJSON) st = parse ("{\"state\":\"syncing\",\"run_id\":7,\"total\":300,"
                                "\"files_processed\":100,\"files_unchanged\":15,\"files_failed\":2,"
                                "\"files_filtered\":3,\"bytes_downloaded\":1048576}");
  CtlProgress p;
  ctl_status_progress (st, &p);
  g_assert_cmpint (p.items_done, ==, 120);
  g_assert_cmpint (p.items_total, ==, 300);
  g_assert_cmpint (p.files_failed, ==, 2);
  g_assert_cmpint (p.bytes_done, ==, 1048576);
  g_assert_cmpint (p.bytes_total, ==, -1);
  g_assert_cmpstr (ctl_status_state (st), ==, "syncing");
  g_autofree char *key = ctl_status_run_key (st);
  g_assert_cmpstr (key, ==, "7");

  g_autoptr (cJSON) empty = parse ("{}");
  ctl_status_progress (empty, &p);
  g_assert_cmpint (p.items_done, ==, -1);
  g_assert_cmpint (p.items_total, ==, -1);
  g_assert_cmpstr (ctl_status_state (empty), ==, "unknown");

  /* "current" (docs/status.md) wins over the sum of the parts. */
  g_autoptr (cJSON) cur = parse ("{\"current\":9,\"total\":10,\"files_processed\":1}");
  ctl_status_progress (cur, &p);
  g_assert_cmpint (p.items_done, ==, 9);
  g_assert_null (ctl_status_run_key (empty));
}

static void
test_rejected_reason (void)
{
  g_autoptr (cJSON) a = parse ("{\"last_rejected_start\":{\"time\":\"2026-12-03T10:00:00Z\","
                               "\"reason\":\"A sync is already in progress.\"}}");
  g_assert_cmpstr (ctl_status_rejected_reason (a), ==, "A sync is already in progress.");
  g_autoptr (cJSON) b = parse ("{\"last_rejected_start\":null}");
  g_assert_null (ctl_status_rejected_reason (b));
}

static void
test_status_table (void)
{
  g_autoptr (cJSON) st = parse (
      "{\"state\":\"completed_with_errors\",\"started_at\":\"2026-12-03T10:00:00Z\","
      "\"finished_at\":\"2026-12-03T10:03:05Z\",\"total\":3,\"files_processed\":2,"
      "\"files_failed\":1,\"bytes_downloaded\":1536,"
      "\"failed_files\":[{\"path\":\"/Docs/bad.bin\",\"error_type\":\"hash_mismatch\","
      "\"message\":\"content does not match quickXorHash\",\"attempts\":3}],"
      "\"filtered_files\":[{\"path\":\"/Docs/huge.iso\",\"reason\":\"too_large\"}],"
      "\"sources\":[{\"path\":\"/Docs\",\"state\":\"completed\","
      "\"last_completed\":\"2026-12-03T10:03:05Z\"}]}");
  /* "now" is 10:05:05 UTC, two minutes after the end. */
  gint64 now = (gint64) 1796292305 * G_USEC_PER_SEC;
  g_autoptr (GDateTime) end = g_date_time_new_from_iso8601 ("2026-12-03T10:03:05Z", NULL);
  now = (g_date_time_to_unix (end) + 120) * G_USEC_PER_SEC;
  g_autofree char *t = ctl_format_status (st, now);
  g_assert_nonnull (strstr (t, "State:     completed_with_errors, ended 2026-12-03 10:03:05 (2m00s ago), took 3m05s\n"));
  g_assert_nonnull (strstr (t, "Progress:  3/3 items (100%), 1.5 KiB downloaded, 1 failed\n"));
  g_assert_nonnull (strstr (t, "Items:     2 downloaded, 1 failed\n"));
  g_assert_nonnull (strstr (t, "Not mirrored (1):\n  /Docs/huge.iso: too_large\n"));
  g_assert_nonnull (strstr (t, "Failed files (1):\n  /Docs/bad.bin: hash_mismatch: content does not match quickXorHash (3 attempts)\n"));
  g_assert_nonnull (strstr (t, "Sources:\n  /Docs"));
  g_assert_nonnull (strstr (t, "completed, last synced 2026-12-03 10:03:05 (2m00s ago)"));
}

static void
test_status_table_sparse (void)
{
  /* A document with nothing but a state still gives a table, never a crash. */
  g_autoptr (cJSON) st = parse ("{\"state\":\"idle\",\"failed_files\":\"oops\",\"sources\":[1,{}]}");
  g_autofree char *t = ctl_format_status (st, 0);
  g_assert_true (g_str_has_prefix (t, "State:     idle\nProgress:  -\n"));
  g_assert_nonnull (strstr (t, "Sources:\n  ?"));
}

static void
test_event_lines (void)
{
  const char *line = "{\"seq\":4,\"time\":1796292000,\"event\":\"file_failed\",\"path\":\"/Docs/a b.txt\","
                     "\"attempts\":2,\"error\":\"timeout\",\"partial\":false}\n";
  g_autofree char *out = ctl_format_event (line, strlen (line));
  g_autoptr (GDateTime) dt = g_date_time_new_from_unix_local (1796292000);
  g_autofree char *hms = g_date_time_format (dt, "%H:%M:%S");
  g_autofree char *want = g_strdup_printf ("%s file_failed path=\"/Docs/a b.txt\" attempts=2 error=timeout partial=false", hms);
  g_assert_cmpstr (out, ==, want);
  g_assert_true (ctl_event_is_notable (line, strlen (line)));

  const char *done = "{\"seq\":5,\"time\":1796292001,\"event\":\"file_published\",\"path\":\"/x\"}";
  g_assert_false (ctl_event_is_notable (done, strlen (done)));

  g_autofree char *raw = ctl_format_event ("not json\n", 9);
  g_assert_cmpstr (raw, ==, "not json");

  const char *lost = "{\"event\":\"events_lost\",\"count\":12}";
  g_autofree char *l = ctl_format_event (lost, strlen (lost));
  g_assert_cmpstr (l, ==, "events_lost count=12");
  g_assert_true (ctl_event_is_notable (lost, strlen (lost)));
}

static void
test_bytes_duration (void)
{
  struct { gint64 b; const char *s; } bytes[] = {
    { 0, "0 B" }, { 1023, "1023 B" }, { 1024, "1.0 KiB" }, { 1536, "1.5 KiB" },
    { 150 * 1024 * 1024LL, "150 MiB" }, { 3650722201LL, "3.4 GiB" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (bytes); i++)
    {
      g_autofree char *s = ctl_format_bytes (bytes[i].b);
      g_assert_cmpstr (s, ==, bytes[i].s);
    }
  struct { gint64 d; const char *s; } durs[] = {
    { 0, "0s" }, { 59, "59s" }, { 60, "1m00s" }, { 185, "3m05s" }, { 7620, "2h07m" }, { 273600, "3d04h" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (durs); i++)
    {
      g_autofree char *s = ctl_format_duration (durs[i].d);
      g_assert_cmpstr (s, ==, durs[i].s);
    }
}

static void
test_rate (void)
{
  CtlRate r = { 0 };
  g_assert_cmpfloat (ctl_rate_get (&r, G_USEC_PER_SEC), <, 0);
  ctl_rate_add (&r, 0, 0);
  g_assert_cmpfloat (ctl_rate_get (&r, G_USEC_PER_SEC), <, 0);
  /* 1 MiB per second for 20 s: more samples than the ring holds. */
  for (int i = 1; i <= 20; i++)
    ctl_rate_add (&r, (gint64) i * G_USEC_PER_SEC, (gint64) i * 1048576);
  g_assert_cmpfloat_with_epsilon (ctl_rate_get (&r, 5 * G_USEC_PER_SEC), 1048576.0, 1.0);
  /* Then a stall: the window sees only the last samples. */
  ctl_rate_add (&r, 21 * G_USEC_PER_SEC, 20 * 1048576);
  ctl_rate_add (&r, 22 * G_USEC_PER_SEC, 20 * 1048576);
  g_assert_cmpfloat_with_epsilon (ctl_rate_get (&r, 2 * G_USEC_PER_SEC), 0.0, 0.001);
  g_assert_cmpfloat_with_epsilon (ctl_rate_get (&r, 3 * G_USEC_PER_SEC), 1048576.0 / 3, 1.0);
}

static void
test_bar (void)
{
  CtlProgress p = { .items_done = 120, .items_total = 300, .files_failed = 0,
                    .bytes_done = 1048576, .bytes_total = 4 * 1048576 };
  g_autofree char *b = ctl_format_bar (&p, 1048576.0, -1, 100);
  g_assert_true (g_str_has_prefix (b, "[##########"));
  g_assert_nonnull (strstr (b, "]  25%  120/300 items  1.0 MiB/4.0 MiB  1.0 MiB/s  ETA 3s"));
  g_assert_cmpuint (strlen (b), <=, 100);

  /* Unknown byte total: the fraction comes from files, no ETA figure. */
  CtlProgress q = { .items_done = 1, .items_total = 4, .files_failed = 1, .bytes_done = 10, .bytes_total = -1 };
  g_autofree char *c = ctl_format_bar (&q, -1, -1, 80);
  g_assert_nonnull (strstr (c, "  25%  1/4 items (1 failed)  10 B"));
  g_assert_null (strstr (c, "ETA"));
  /* ...unless files move: 3 files left at 0.5 files/s. */
  g_autofree char *e = ctl_format_bar (&q, 100.0, 0.5, 100);
  g_assert_nonnull (strstr (e, "  100 B/s  ETA 6s"));

  /* A narrow terminal drops the bar, never overflows. */
  g_autofree char *d = ctl_format_bar (&p, 1048576.0, -1, 30);
  g_assert_cmpuint (strlen (d), <=, 30);
  g_assert_false (g_str_has_prefix (d, "["));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/ctl/exit-codes", test_exit_codes);
  g_test_add_func ("/ctl/parse-rejects", test_parse_rejects);
  g_test_add_func ("/ctl/progress", test_progress);
  g_test_add_func ("/ctl/rejected-reason", test_rejected_reason);
  g_test_add_func ("/ctl/status-table", test_status_table);
  g_test_add_func ("/ctl/status-table-sparse", test_status_table_sparse);
  g_test_add_func ("/ctl/event-lines", test_event_lines);
  g_test_add_func ("/ctl/bytes-duration", test_bytes_duration);
  g_test_add_func ("/ctl/rate", test_rate);
  g_test_add_func ("/ctl/bar", test_bar);
  return g_test_run ();
}
