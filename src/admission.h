/* admission.h: which connections the host takes on: at most max_connections at once, none
 * on an fd beyond what its selector can watch, a round's share of a connect storm, and,
 * when fds run out, the waiting ones shed and accepting paused a moment, so the loop
 * never spins on a listener it cannot serve. Knows nothing of Lua. */
#ifndef LUAHOST_ADMISSION_H
#define LUAHOST_ADMISSION_H

#include <stddef.h>

#include "conn.h"
#include "log.h"
#include "net.h"
#include "timer.h"

/* A connect storm gets this many accepts per round, so established clients are served. */
#define ADM_ACCEPTS_PER_ROUND 64
/* How long accepting pauses after the fds ran out (or a listener's callback failed). */
#define ADM_PAUSE_SECONDS 0.1
/* adm_accept's result for a connection accepted and closed at once, past a limit. */
#define ADM_REFUSED (-100000)

typedef struct admission {
    size_t connections;     /* accepted connections whose fd is still open */
    size_t max_connections; /* 0: no limit */
    size_t refused;         /* connections accepted and closed at once */
    size_t refused_unsaid;  /* refused since the last "refusing connections" line */
    const char *refusal;    /* why the last one was refused */
    long long fd_limit;     /* RLIMIT_NOFILE as the executable left it, for the log (0: unknown) */
    int watch_limit;        /* fds the selector can watch (select: FD_SETSIZE), 0: any */
    int spare_fd;           /* given up when fds run out, so waiting connections can be shed */
    int in_round;           /* the host is dispatching a round: its accepts are counted */
    int accepts_this_round;
    double resume_at; /* accepting is paused until then; 0: not paused */
    double last_warning;
    lh_logger *log;
    const timer_clock *clock;
    const net_io *io;
} admission;

/* Sets a up, with no connection limit; keeps a spare fd. */
void adm_init(admission *a, lh_logger *log, const timer_clock *clock, const net_io *io,
              int watch_limit);
/* Gives back the spare fd. */
void adm_free(admission *a);

/* Accepts one connection waiting on listen_fd. Returns its fd, counted as a connection
 * until adm_close; -EAGAIN when none is waiting or this round's share is used up;
 * ADM_REFUSED, with *refusal saying why, for one accepted and closed at once (past
 * max_connections or watch_limit); -EMFILE or -ENFILE when fds ran out, after the
 * connections waiting were shed and accepting paused (adm_paused); another -errno. */
int adm_accept(admission *a, int listen_fd, net_addr *peer, const char **refusal);

/* Closes c's fd (if open), counting an accepted connection as gone. */
void adm_close(admission *a, conn *c);
/* The same with a reset (net_reset_on_close), for a connection whose output was cut short
 * (a FIN would let the peer take the cut stream for a whole one), logging for whom
 * (peer), why, and the bytes dropped: those the host held, and those the kernel held
 * unacknowledged, which the reset discards too. */
void adm_close_reset(admission *a, conn *c, const char *peer, const char *why, size_t dropped);

/* Pauses accepting for ADM_PAUSE_SECONDS: the caller withholds its listeners' READ. */
void adm_pause(admission *a);
/* Whether accepting is paused now. */
int adm_paused(const admission *a);
/* 1 once, when a pause has run out: the caller gives its listeners' READ back. */
int adm_resume_due(admission *a);
/* Milliseconds until a pause runs out, or -1 when none is on. */
int adm_timeout_ms(const admission *a);

/* Accepts while the host dispatches a round are counted against its share. The end of a
 * round also says how many connections were refused since the last line, once a second
 * may pass (adm_timeout_ms wakes the loop for it). */
void adm_begin_round(admission *a);
void adm_end_round(admission *a);

/* The most connections the host can hold now: max_connections (0: no limit, SIZE_MAX
 * here), or fewer when the selector watches only fds below watch_limit and some of
 * those are taken. */
size_t adm_ceiling(const admission *a);

#endif
