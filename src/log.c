/* log.c: the host's log lines on stderr: UTC time, level, message; one line each. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "lh.h"

static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};

int lh_log_level_from_name(const char *name)
{
    for (int i = 0; level_names[i]; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void lh_log(lh_host *host, int level, const char *fmt, ...)
{
    if (level < host->log_level)
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
    /* One fprintf per line keeps lines whole when several processes share stderr. */
    fprintf(stderr, "%s.%03dZ %-5s %s\n", stamp, (int)(tv.tv_usec / 1000), level_names[level],
            line);
}
