/* test_log.c: proves the log's levels (names both ways, lines below the level left out),
 * its capture for tests: "level message" lines, kept up to a bound, then counted as
 * dropped; freeing it sends lines to stderr again; and one event, one line: control
 * characters and NUL escaped, a long message cut saying so. */
#include "log.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

static void test_levels(void)
{
    const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        CHECK(lh_log_level_from_name(names[i]) == i);
        CHECK(strcmp(lh_log_level_name(i), names[i]) == 0);
    }
    CHECK(lh_log_level_from_name("verbose") == -1);
    CHECK(strcmp(lh_log_level_name(7), "?") == 0);
}

static void test_capture(void)
{
    lh_logger log = {LH_INFO, NULL};
    CHECK(lh_log_capture_start(&log) == 0);
    lh_log(&log, LH_DEBUG, "hidden %d", 1);
    lh_log(&log, LH_INFO, "shown %d", 2);
    lh_log(&log, LH_ERROR, "%s", "bad");
    CHECK(log.capture->len == strlen("info shown 2\nerror bad\n"));
    CHECK(memcmp(log.capture->text, "info shown 2\nerror bad\n", log.capture->len) == 0);
    CHECK(log.capture->dropped == 0);
    lh_log_capture_free(&log);
    CHECK(log.capture == NULL);
}

static void test_bound(void)
{
    lh_logger log = {LH_DEBUG, NULL};
    char line[1000];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\0';
    CHECK(lh_log_capture_start(&log) == 0);
    size_t lines = 0;
    while (log.capture->dropped == 0) {
        lh_log(&log, LH_WARN, "%s", line);
        lines++;
    }
    CHECK(log.capture->len <= LH_LOG_CAPTURE_MAX);
    CHECK(log.capture->len == (lines - 1) * (strlen("warn ") + strlen(line) + 1));
    lh_log(&log, LH_WARN, "%s", line);
    CHECK(log.capture->dropped == 2);
    lh_log_capture_free(&log);
}

/* One event, one line: a newline a client sent cannot start a forged line, a NUL does
 * not hide what follows it, and a backslash is doubled so an escape is never ambiguous. */
static void test_escape(void)
{
    char out[64];
    const char forged[] = "bad\n2099-01-01T00:00:00.000Z error FORGED\0after";
    lh_logger log = {LH_DEBUG, NULL};
    CHECK(lh_log_capture_start(&log) == 0);
    lh_log_text(&log, LH_ERROR, "head\t: ", forged, sizeof forged - 1);
    const char *want = "error head\\t: bad\\n2099-01-01T00:00:00.000Z error FORGED\\x00after\n";
    CHECK(log.capture->len == strlen(want));
    CHECK(memcmp(log.capture->text, want, log.capture->len) == 0);
    log.capture->len = 0;
    lh_log(&log, LH_WARN, "a\r\nb %s", "c\\d\x1b[31m\x7f\xc3\xa9");
    want = "warn a\\r\\nb c\\\\d\\x1b[31m\\x7f\xc3\xa9\n"; /* UTF-8 stays as it is */
    CHECK(log.capture->len == strlen(want));
    CHECK(memcmp(log.capture->text, want, log.capture->len) == 0);
    lh_log_capture_free(&log);

    /* An escape is never split: what does not fit whole is left out and counted. */
    CHECK(lh_log_escape(out, 5, "ab\ncd", 5) == 3 && strcmp(out, "ab\\n") == 0);
    CHECK(lh_log_escape(out, 4, "ab\ncd", 5) == 2 && strcmp(out, "ab") == 0);
    CHECK(lh_log_escape(out, sizeof out, "", 0) == 0 && out[0] == '\0');
}

/* A message too long for a line is cut, saying by how much, and stays one line. */
static void test_cut(void)
{
    static char text[LH_LOG_LINE_MAX * 2];
    lh_logger log = {LH_DEBUG, NULL};
    memset(text, '\n', sizeof text);
    CHECK(lh_log_capture_start(&log) == 0);
    lh_log_text(&log, LH_INFO, NULL, text, sizeof text);
    const char *end = log.capture->text + log.capture->len;
    CHECK(memchr(log.capture->text, '\n', log.capture->len) == end - 1);
    char tail[64];
    snprintf(tail, sizeof tail, " [%zu bytes cut]\n", sizeof text - (LH_LOG_LINE_MAX - 1) / 2);
    CHECK(log.capture->len > strlen(tail) && strcmp(end - strlen(tail), tail) == 0);
    lh_log_capture_free(&log);
}

int main(void)
{
    test_levels();
    test_capture();
    test_bound();
    test_escape();
    test_cut();
    if (failures) {
        printf("test_log: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_log: %lu checks passed\n", checks);
    return 0;
}
