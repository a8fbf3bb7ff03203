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

/* The most a line's message takes once escaped; past it the message is cut, saying so. */
#define LH_LOG_LINE_MAX 8192

/* One event, one line: every control character in the message (newline, NUL, ESC...) and
 * the backslash are written as escapes (\n, \t, \r, \\, \xHH), so that bytes a client
 * sent can neither start a line of their own nor hide what follows them. */
void lh_log(lh_logger *log, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The same for a message that may hold NULs: head (ours, NUL-terminated, may be NULL)
 * followed by the len bytes of text. */
void lh_log_text(lh_logger *log, int level, const char *head, const char *text, size_t len);
/* Escapes the len bytes of text into out (NUL-terminated, at most outlen bytes with the
 * NUL) as lh_log writes them; returns how many bytes of text fitted whole. */
size_t lh_log_escape(char *out, size_t outlen, const char *text, size_t len);

/* Names this process in every line written to stderr from now on ("[worker 2] ..."),
 * for a --workers group sharing one stderr; NULL or "" for none. */
void lh_log_set_tag(const char *tag);

/* The level of "debug", "info", "warn" or "error", else -1; and back. */
int lh_log_level_from_name(const char *name);
const char *lh_log_level_name(int level);

/* Keeps lines in memory from now on; 0, or -ENOMEM. */
int lh_log_capture_start(lh_logger *log);
/* Frees what the capture holds; lines go to stderr again. */
void lh_log_capture_free(lh_logger *log);

#endif
