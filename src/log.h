/* log.h: the host's log: one line an event on stderr (UTC time, level, message), or kept
 * in memory for a test to read. Knows nothing of Lua. */
#ifndef LUAHOST_LOG_H
#define LUAHOST_LOG_H

#include <stddef.h>

enum lh_log_level { LH_DEBUG, LH_INFO, LH_WARN, LH_ERROR };

/* What a captured log may keep; past it, lines are counted and dropped. */
#define LH_LOG_CAPTURE_MAX (1024 * 1024)

typedef struct lh_log_capture {
    char *text;
    size_t len, cap;
    size_t dropped; /* lines past LH_LOG_CAPTURE_MAX */
} lh_log_capture;

typedef struct lh_logger {
    int level;               /* lines below it are not written */
    lh_log_capture *capture; /* NULL: lines go to stderr */
} lh_logger;

void lh_log(lh_logger *log, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The level of "debug", "info", "warn" or "error", else -1; and back. */
int lh_log_level_from_name(const char *name);
const char *lh_log_level_name(int level);

/* Keeps lines in memory from now on; 0, or -ENOMEM. */
int lh_log_capture_start(lh_logger *log);
/* Frees what the capture holds; lines go to stderr again. */
void lh_log_capture_free(lh_logger *log);

#endif
