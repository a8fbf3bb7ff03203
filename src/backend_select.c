/* backend_select.c: the select(2) readiness backend, the portable fallback; it can
 * watch only fds below FD_SETSIZE. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include "backend.h"

typedef struct select_state {
    fd_set rfds, wfds;   /* what is watched */
    fd_set _rfds, _wfds; /* copies for select() to overwrite */
    int maxfd;           /* highest fd in either set, -1 when empty */
} select_state;

static void *select_create_state(void)
{
    select_state *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    FD_ZERO(&st->rfds);
    FD_ZERO(&st->wfds);
    st->maxfd = -1;
    return st;
}

static void select_destroy_state(void *state)
{
    free(state);
}

/* A closed fd would make every later select() fail with EBADF, so it is refused here;
 * an fd beyond FD_SETSIZE cannot be represented at all (-ERANGE). */
static int select_set(void *state, int fd, int old_mask, int new_mask)
{
    select_state *st = state;
    if (fd < 0 || fd >= FD_SETSIZE)
        return -ERANGE;
    if (!old_mask && new_mask && fcntl(fd, F_GETFD) < 0)
        return -errno;
    if (new_mask & SEL_READ)
        FD_SET(fd, &st->rfds);
    else
        FD_CLR(fd, &st->rfds);
    if (new_mask & SEL_WRITE)
        FD_SET(fd, &st->wfds);
    else
        FD_CLR(fd, &st->wfds);
    if (new_mask && fd > st->maxfd)
        st->maxfd = fd;
    while (st->maxfd >= 0 && !FD_ISSET(st->maxfd, &st->rfds) && !FD_ISSET(st->maxfd, &st->wfds))
        st->maxfd--;
    return 0;
}

/* select(2) fails the whole set with EBADF when a watched fd was closed behind the
 * selector's back; each such fd is reported as a hang-up instead (as poll's POLLNVAL),
 * so its owner hears of it once and the loop goes on. */
static int select_report_closed(const select_state *st, sel_fired *out, int max)
{
    int n = 0;
    for (int fd = 0; fd <= st->maxfd && n < max; fd++)
        if ((FD_ISSET(fd, &st->rfds) || FD_ISSET(fd, &st->wfds)) && fcntl(fd, F_GETFD) < 0)
            out[n++] = (sel_fired){.fd = fd, .mask = SEL_BOTH | SEL_HANGUP};
    return n ? n : -EBADF;
}

static int select_poll(void *state, int timeout_ms, sel_fired *out, int max)
{
    select_state *st = state;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    memcpy(&st->_rfds, &st->rfds, sizeof(fd_set));
    memcpy(&st->_wfds, &st->wfds, sizeof(fd_set));
    int ready = select(st->maxfd + 1, &st->_rfds, &st->_wfds, NULL, timeout_ms < 0 ? NULL : &tv);
    if (ready < 0)
        return errno == EBADF ? select_report_closed(st, out, max) : -errno;
    int n = 0;
    for (int fd = 0; fd <= st->maxfd && n < max; fd++) {
        int mask =
            (FD_ISSET(fd, &st->_rfds) ? SEL_READ : 0) | (FD_ISSET(fd, &st->_wfds) ? SEL_WRITE : 0);
        if (!mask)
            continue;
        out[n++] = (sel_fired){.fd = fd, .mask = mask};
    }
    return n;
}

const sel_backend sel_backend_select = {
    .name = "select",
    .create = select_create_state,
    .destroy = select_destroy_state,
    .fd_limit = FD_SETSIZE,
    .set = select_set,
    .poll = select_poll,
};
