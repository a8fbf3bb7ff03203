/* log.c: the host's log lines on stderr (UTC time, level, message; one line each, with
 * control characters escaped), or kept in memory up to a bound for a test to read. */
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

/* Which process of a --workers group writes ("master", "worker 2"): a process's
 * property, as its pid is, so one static; empty outside such a group. */
static char process_tag[32];

void lh_log_set_tag(const char *tag)
{
    snprintf(process_tag, sizeof process_tag, "%s", tag ? tag : "");
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

/* The escaped form of byte c in esc; its length. A backslash is doubled so that an
 * escape in the log always means the byte, never text that looked like one. */
static size_t escape_byte(unsigned char c, char esc[4])
{
    static const char hex[] = "0123456789abcdef";
    char named = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : c == '\\' ? '\\' : 0;
    if (named) {
        esc[0] = '\\';
        esc[1] = named;
        return 2;
    }
    if (c >= 0x20 && c != 0x7f) {
        esc[0] = (char)c;
        return 1;
    }
    esc[0] = '\\';
    esc[1] = 'x';
    esc[2] = hex[c >> 4];
    esc[3] = hex[c & 15];
    return 4;
}

size_t lh_log_escape(char *out, size_t outlen, const char *text, size_t len)
{
    size_t used = 0, i;
    for (i = 0; i < len; i++) {
        char esc[4];
        size_t n = escape_byte((unsigned char)text[i], esc);
        if (used + n + 1 > outlen)
            break;
        memcpy(out + used, esc, n);
        used += n;
    }
    if (outlen > 0)
        out[used] = '\0';
    return i;
}

/* Writes one event: head and text escaped onto one line, cut (and saying how much was
 * cut) past LH_LOG_LINE_MAX. */
static void emit(lh_logger *log, int level, const char *head, const char *text, size_t len)
{
    char msg[LH_LOG_LINE_MAX + 48], stamp[32];
    size_t head_len = head ? strlen(head) : 0, cut = 0;
    cut += head_len - lh_log_escape(msg, LH_LOG_LINE_MAX, head ? head : "", head_len);
    size_t used = strlen(msg);
    cut += len - lh_log_escape(msg + used, LH_LOG_LINE_MAX - used, text, len);
    if (cut)
        snprintf(msg + strlen(msg), 48, " [%zu bytes cut]", cut);
    if (log->capture) {
        capture(log->capture, level, msg);
        return;
    }
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    /* One fprintf per line keeps lines whole when several processes share stderr. */
    fprintf(stderr, "%s.%03dZ %-5s %s%s%s%s\n", stamp, (int)(tv.tv_usec / 1000), level_names[level],
            *process_tag ? "[" : "", process_tag, *process_tag ? "] " : "", msg);
}

void lh_log(lh_logger *log, int level, const char *fmt, ...)
{
    if (level < log->level)
        return;
    char line[LH_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    emit(log, level, NULL, line, len);
}

void lh_log_text(lh_logger *log, int level, const char *head, const char *text, size_t len)
{
    if (level >= log->level)
        emit(log, level, head, text, len);
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
