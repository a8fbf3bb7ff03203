/* log.c: the host's log lines on stderr (UTC time, level, message; one line each), or
 * kept in memory up to a bound for a test to read. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};

int lh_log_level_from_name(const char *name)
{
    for (int i = 0; level_names[i]; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

/* A host run in process by a test keeps its lines for the test to read, up to a bound;
 * past it, lines are counted and dropped. */
static void capture(lh_log_capture *c, int level, const char *line)
{
    size_t need = strlen(level_names[level]) + 1 + strlen(line) + 1;
    if (c->len + need > LH_LOG_CAPTURE_MAX) {
        c->dropped++;
        return;
    }
    if (c->len + need + 1 > c->cap) { /* and the NUL snprintf writes */
        size_t cap = c->cap ? c->cap * 2 : 4096;
        while (cap < c->len + need + 1)
            cap *= 2;
        char *text = realloc(c->text, cap);
        if (!text) {
            c->dropped++;
            return;
        }
        c->text = text;
        c->cap = cap;
    }
    c->len +=
        (size_t)snprintf(c->text + c->len, c->cap - c->len, "%s %s\n", level_names[level], line);
}

void lh_log(lh_logger *log, int level, const char *fmt, ...)
{
    if (level < log->level)
        return;
    char stamp[32], line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (log->capture) {
        capture(log->capture, level, line);
        return;
    }
    /* One fprintf per line keeps lines whole when several processes share stderr. */
    fprintf(stderr, "%s.%03dZ %-5s %s\n", stamp, (int)(tv.tv_usec / 1000), level_names[level],
            line);
}

const char *lh_log_level_name(int level)
{
    return level >= LH_DEBUG && level <= LH_ERROR ? level_names[level] : "?";
}

int lh_log_capture_start(lh_logger *log)
{
    if (!log->capture && !(log->capture = calloc(1, sizeof *log->capture)))
        return -ENOMEM;
    return 0;
}

void lh_log_capture_free(lh_logger *log)
{
    if (log->capture)
        free(log->capture->text);
    free(log->capture);
    log->capture = NULL;
}
