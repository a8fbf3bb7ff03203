/* backend_epoll.c: the Linux epoll readiness backend, level-triggered; it only
 * translates epoll events into sel_fired entries. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "backend.h"

typedef struct epoll_state {
    int epfd;
    struct epoll_event *events; /* grown to the largest batch asked for */
    int cap;
} epoll_state;

static void *epoll_create_state(void)
{
    epoll_state *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st->epfd < 0) {
        int saved = errno;
        free(st);
        errno = saved;
        return NULL;
    }
    return st;
}

static void epoll_destroy_state(void *state)
{
    epoll_state *st = state;
    close(st->epfd);
    free(st->events);
    free(st);
}

/* The old and new masks choose ADD, MOD or DEL; returns 0 or -errno from epoll_ctl. */
static int epoll_set(void *state, int fd, int old_mask, int new_mask)
{
    epoll_state *st = state;
    struct epoll_event ev = {0};
    int op = !old_mask ? EPOLL_CTL_ADD : !new_mask ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (!old_mask && !new_mask)
        return 0;
    if (new_mask & SEL_READ)
        ev.events |= EPOLLIN | EPOLLRDHUP;
    if (new_mask & SEL_WRITE)
        ev.events |= EPOLLOUT;
    ev.data.fd = fd;
    return epoll_ctl(st->epfd, op, fd, &ev) < 0 ? -errno : 0;
}

/* Error and hang-up wake both directions, as Python does, so whichever the owner
 * watches sees the failure on its next read or write. */
static int epoll_mask(uint32_t events)
{
    int mask = 0;
    if (events & EPOLLIN)
        mask |= SEL_READ;
    if (events & EPOLLOUT)
        mask |= SEL_WRITE;
    if (events & (EPOLLERR | EPOLLHUP))
        mask |= SEL_BOTH | SEL_HANGUP;
    if (events & EPOLLRDHUP)
        mask |= SEL_READ | SEL_PEER_CLOSED;
    return mask;
}

static int epoll_poll(void *state, int timeout_ms, sel_fired *out, int max)
{
    epoll_state *st = state;
    if (max > st->cap) {
        struct epoll_event *ev = realloc(st->events, (size_t)max * sizeof(*ev));
        if (!ev)
            return -ENOMEM;
        st->events = ev;
        st->cap = max;
    }
    int n = epoll_wait(st->epfd, st->events, max, timeout_ms);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        out[i].fd = st->events[i].data.fd;
        out[i].mask = epoll_mask(st->events[i].events);
        out[i].gen = 0;
    }
    return n;
}

const sel_backend sel_backend_epoll = {
    .name = "epoll",
    .flags_ends = 1,
    .create = epoll_create_state,
    .destroy = epoll_destroy_state,
    .fd_limit = 0,
    .set = epoll_set,
    .poll = epoll_poll,
};
