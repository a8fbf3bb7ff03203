/* backend_poll.c: the portable poll(2) readiness backend, level-triggered: a packed
 * pollfd array plus an fd -> position map, so every change is O(1). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

typedef struct poll_state {
    struct pollfd *pfds; /* packed: removal moves the last entry into the hole */
    int n, cap;
    int *pos; /* pos[fd] is the fd's index in pfds plus one, 0 if absent */
    int npos;
} poll_state;

static void *poll_create_state(void)
{
    return calloc(1, sizeof(poll_state));
}

static void poll_destroy_state(void *state)
{
    poll_state *st = state;
    free(st->pfds);
    free(st->pos);
    free(st);
}

/* Makes room for one more fd; -ENOMEM leaves the state unchanged. */
static int poll_reserve(poll_state *st, int fd)
{
    if (fd >= st->npos) {
        int n = st->npos ? st->npos : 64;
        while (n <= fd)
            n = n > 0x3fffffff ? fd + 1 : n * 2;
        int *pos = realloc(st->pos, (size_t)n * sizeof(*pos));
        if (!pos)
            return -ENOMEM;
        memset(pos + st->npos, 0, (size_t)(n - st->npos) * sizeof(*pos));
        st->pos = pos;
        st->npos = n;
    }
    if (st->n == st->cap) {
        int cap = st->cap ? st->cap * 2 : 64;
        struct pollfd *p = realloc(st->pfds, (size_t)cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        st->pfds = p;
        st->cap = cap;
    }
    return 0;
}

static void poll_remove(poll_state *st, int fd)
{
    int i = st->pos[fd] - 1;
    st->pfds[i] = st->pfds[--st->n];
    st->pos[st->pfds[i].fd] = i + 1;
    st->pos[fd] = 0;
}

/* poll(2) would only report a closed fd later as POLLNVAL; refusing it now gives the
 * same -EBADF as the other backends. */
static int poll_set(void *state, int fd, int old_mask, int new_mask)
{
    poll_state *st = state;
    int rc, i = fd < st->npos ? st->pos[fd] - 1 : -1;
    short events = (short)(((new_mask & SEL_READ) ? POLLIN | POLLRDHUP : 0) |
                           ((new_mask & SEL_WRITE) ? POLLOUT : 0));
    (void)old_mask;
    if (i >= 0 && !new_mask) {
        poll_remove(st, fd);
    } else if (i >= 0) {
        st->pfds[i].events = events;
    } else if (new_mask) {
        if (fcntl(fd, F_GETFD) < 0)
            return -errno;
        if ((rc = poll_reserve(st, fd)) < 0)
            return rc;
        st->pfds[st->n] = (struct pollfd){.fd = fd, .events = events};
        st->pos[fd] = ++st->n;
    }
    return 0;
}

static int poll_mask(short revents)
{
    int mask = 0;
    if (revents & POLLIN)
        mask |= SEL_READ;
    if (revents & POLLOUT)
        mask |= SEL_WRITE;
    if (revents & (POLLERR | POLLHUP | POLLNVAL))
        mask |= SEL_BOTH | SEL_HANGUP;
    if (revents & POLLRDHUP)
        mask |= SEL_READ | SEL_PEER_CLOSED;
    return mask;
}

static int poll_poll(void *state, int timeout_ms, sel_fired *out, int max)
{
    poll_state *st = state;
    int ready = poll(st->pfds, (nfds_t)st->n, timeout_ms), n = 0;
    if (ready < 0)
        return -errno;
    for (int i = 0; i < st->n && n < ready && n < max; i++) {
        if (!st->pfds[i].revents)
            continue;
        out[n++] = (sel_fired){.fd = st->pfds[i].fd, .mask = poll_mask(st->pfds[i].revents)};
    }
    return n;
}

const sel_backend sel_backend_poll = {
    .name = "poll",
    .flags_ends = 1,
    .create = poll_create_state,
    .destroy = poll_destroy_state,
    .fd_limit = 0,
    .set = poll_set,
    .poll = poll_poll,
};
