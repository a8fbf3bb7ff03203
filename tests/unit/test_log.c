/* test_log.c: proves the log's levels (names both ways, lines below the level left out)
 * and its capture for tests: "level message" lines, kept up to a bound, then counted as
 * dropped; freeing it sends lines to stderr again. */
#include "log.h"

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

int main(void)
{
    test_levels();
    test_capture();
    test_bound();
    if (failures) {
        printf("test_log: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_log: %lu checks passed\n", checks);
    return 0;
}
