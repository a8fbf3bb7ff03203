/* admission.c: connection limits, the round's share of accepts, and running out of fds:
 * shed what waits with the spare fd, pause, and say so at most once a second. */
#include "admission.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static int open_spare(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void adm_init(admission *a, lh_logger *log, const timer_clock *clock, const net_io *io,
              int watch_limit)
{
    memset(a, 0, sizeof *a);
    a->log = log;
    a->clock = clock;
    a->io = io;
    a->watch_limit = watch_limit;
    a->spare_fd = open_spare();
}

void adm_free(admission *a)
{
    if (a->spare_fd >= 0)
        close(a->spare_fd);
    a->spare_fd = -1;
}

/* At most once a second, so a flood of refusals cannot flood the log. */
static int may_warn(admission *a)
{
    double now = timer_clock_now(a->clock);
    if (now - a->last_warning < 1.0)
        return 0;
    a->last_warning = now;
    return 1;
}

void adm_pause(admission *a)
{
    a->resume_at = timer_clock_now(a->clock) + ADM_PAUSE_SECONDS;
}

int adm_paused(const admission *a)
{
    return a->resume_at > 0;
}

int adm_resume_due(admission *a)
{
    if (a->resume_at <= 0 || timer_clock_now(a->clock) < a->resume_at)
        return 0;
    a->resume_at = 0;
    return 1;
}

/* Milliseconds until at, at least 0. */
static int ms_until(const admission *a, double at)
{
    double left = at - timer_clock_now(a->clock);
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

int adm_timeout_ms(const admission *a)
{
    int pause = a->resume_at > 0 ? ms_until(a, a->resume_at) : -1;
    if (a->refused_unsaid == 0)
        return pause;
    int say = ms_until(a, a->last_warning + 1.0);
    return pause >= 0 && pause < say ? pause : say;
}

/* Says how many were refused since the last such line, at most once a second: a flood of
 * refusals is counted whole without flooding the log. */
static void say_refused(admission *a)
{
    if (a->refused_unsaid == 0 || !may_warn(a))
        return;
    lh_log(a->log, LH_WARN,
           "refusing connections: %s (%zu refused since the last such line, %zu "
           "in all)",
           a->refusal, a->refused_unsaid, a->refused);
    a->refused_unsaid = 0;
}

void adm_begin_round(admission *a)
{
    a->in_round = 1;
    a->accepts_this_round = 0;
}

void adm_end_round(admission *a)
{
    a->in_round = 0;
    say_refused(a);
}

size_t adm_ceiling(const admission *a)
{
    size_t most = a->max_connections ? a->max_connections : SIZE_MAX;
    if (a->watch_limit <= 0)
        return most;
    size_t free_fds = 0;
    for (int fd = 0; fd < a->watch_limit; fd++)
        free_fds += fcntl(fd, F_GETFD) < 0 && errno == EBADF;
    return free_fds < most ? free_fds : most;
}

/* Out of fds with connections waiting: give up the spare fd so they can be accepted and
 * closed (otherwise the listener stays readable and the loop spins), take the spare
 * back, and pause. Clients already connected go on being served. */
static void shed(admission *a, int listen_fd, int err)
{
    net_addr peer;
    int fd, shed = 0;
    if (a->spare_fd >= 0)
        close(a->spare_fd);
    a->spare_fd = -1;
    while (shed < ADM_ACCEPTS_PER_ROUND && (fd = a->io->accept(a->io, listen_fd, &peer)) >= 0) {
        close(fd);
        shed++;
    }
    a->spare_fd = open_spare();
    a->refused += (size_t)shed;
    adm_pause(a);
    if (may_warn(a)) {
        lh_log(a->log, LH_WARN,
               "out of file descriptors (%s) with %zu connections open: "
               "closed %d waiting connections, accepting again in %.1f s",
               strerror(err), a->connections, shed, ADM_PAUSE_SECONDS);
        return;
    }
    /* Within the second after such a line: counted with the refusals, which are said
     * once the second has passed, so a storm's sheds are all told. */
    a->refused_unsaid += (size_t)shed;
    a->refusal = "out of file descriptors, waiting connections closed";
}

/* Why a just-accepted fd must be closed at once, or NULL. An fd beyond what the selector
 * can watch is refused here, where the script expects accept to fail, not later in
 * register, where it would raise. */
static const char *refusal_of(const admission *a, int fd)
{
    if (a->max_connections && a->connections >= a->max_connections)
        return "too many connections (--max-connections)";
    if (a->watch_limit > 0 && fd >= a->watch_limit)
        return "fd beyond what the selector backend can watch";
    return NULL;
}

int adm_accept(admission *a, int listen_fd, net_addr *peer, const char **refusal)
{
    if (a->in_round && a->accepts_this_round >= ADM_ACCEPTS_PER_ROUND)
        return -EAGAIN; /* the rest of a connect storm waits: established clients first */
    int fd = a->io->accept(a->io, listen_fd, peer);
    if (fd == -EMFILE || fd == -ENFILE)
        shed(a, listen_fd, -fd);
    if (fd < 0)
        return fd;
    if (a->in_round)
        a->accepts_this_round++;
    *refusal = refusal_of(a, fd);
    if (*refusal) {
        close(fd);
        a->refused++;
        a->refused_unsaid++;
        a->refusal = *refusal;
        say_refused(a);
        return ADM_REFUSED;
    }
    a->connections++;
    return fd;
}

void adm_close_reset(admission *a, conn *c, const char *peer, const char *why, size_t dropped)
{
    if (c->fd < 0)
        return;
    int unacked = net_unacked(c->fd);
    lh_log(a->log, LH_WARN,
           "closing %s: %s; reset, %zu bytes of output dropped (and %d "
           "unacknowledged in the kernel)",
           peer, why, dropped, unacked > 0 ? unacked : 0);
    net_reset_on_close(c->fd); /* a pipe cannot be reset, and is closed all the same */
    adm_close(a, c);
}

void adm_close(admission *a, conn *c)
{
    if (c->fd < 0)
        return;
    close(c->fd);
    c->fd = -1;
    if ((c->flags & CONN_ACCEPTED) && a->connections > 0)
        a->connections--;
    c->flags &= ~CONN_ACCEPTED;
}
