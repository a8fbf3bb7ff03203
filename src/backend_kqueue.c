/* backend_kqueue.c: the BSD/macOS kqueue readiness backend, level-triggered; READ and
 * WRITE are separate filters, merged back into one sel_fired entry per fd. */
#ifdef HAVE_KQUEUE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/event.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include "backend.h"

typedef struct kq_state {
    int kq;
    struct kevent *events; /* grown to the largest batch asked for */
    int cap;
    int *slot; /* slot[fd] is fd's index in the batch being built plus one */
    int nslot;
} kq_state;

static void *kq_create_state(void)
{
    kq_state *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->kq = kqueue();
    if (st->kq < 0) {
        int saved = errno;
        free(st);
        errno = saved;
        return NULL;
    }
    /* kqueue() has no CLOEXEC flag on every system. */
    fcntl(st->kq, F_SETFD, FD_CLOEXEC);
    return st;
}

static void kq_destroy_state(void *state)
{
    kq_state *st = state;
    close(st->kq);
    free(st->events);
    free(st->slot);
    free(st);
}

static int kq_change(int kq, int fd, int filter, int add)
{
    struct kevent ev;
    EV_SET(&ev, fd, filter, add ? EV_ADD : EV_DELETE, 0, 0, NULL);
    return kevent(kq, &ev, 1, NULL, 0, NULL) < 0 ? -errno : 0;
}

/* Sizes the merge map so that poll never has to allocate for an fd it reports. */
static int kq_reserve(kq_state *st, int fd)
{
    if (fd < st->nslot)
        return 0;
    int n = st->nslot ? st->nslot : 64;
    while (n <= fd)
        n = n > 0x3fffffff ? fd + 1 : n * 2;
    int *slot = realloc(st->slot, (size_t)n * sizeof(*slot));
    if (!slot)
        return -ENOMEM;
    memset(slot + st->nslot, 0, (size_t)(n - st->nslot) * sizeof(*slot));
    st->slot = slot;
    st->nslot = n;
    return 0;
}

/* Adds or deletes one filter per changed bit, one call each, so that a failure on
 * WRITE can undo READ and leave the fd exactly as it was. */
static int kq_set(void *state, int fd, int old_mask, int new_mask)
{
    kq_state *st = state;
    int diff = old_mask ^ new_mask, rc;
    if (new_mask && (rc = kq_reserve(st, fd)) < 0)
        return rc;
    if ((diff & SEL_READ) && (rc = kq_change(st->kq, fd, EVFILT_READ, new_mask & SEL_READ)) < 0)
        return rc;
    if ((diff & SEL_WRITE) &&
        (rc = kq_change(st->kq, fd, EVFILT_WRITE, new_mask & SEL_WRITE)) < 0) {
        if (diff & SEL_READ)
            kq_change(st->kq, fd, EVFILT_READ, old_mask & SEL_READ);
        return rc;
    }
    return 0;
}

/* EOF and error wake both directions, as with epoll's ERR and HUP. */
static int kq_mask(const struct kevent *ev)
{
    int mask = ev->filter == EVFILT_READ ? SEL_READ : ev->filter == EVFILT_WRITE ? SEL_WRITE : 0;
    if (ev->flags & (EV_EOF | EV_ERROR))
        mask |= SEL_BOTH | SEL_HANGUP;
    return mask;
}

static int kq_poll(void *state, int timeout_ms, sel_fired *out, int max)
{
    kq_state *st = state;
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000};
    if (max > st->cap) {
        struct kevent *ev = realloc(st->events, (size_t)max * sizeof(*ev));
        if (!ev)
            return -ENOMEM;
        st->events = ev;
        st->cap = max;
    }
    int got = kevent(st->kq, NULL, 0, st->events, max, timeout_ms < 0 ? NULL : &ts), n = 0;
    if (got < 0)
        return -errno;
    for (int i = 0; i < got; i++) {
        int fd = (int)st->events[i].ident, mask = kq_mask(&st->events[i]);
        if (fd < 0 || fd >= st->nslot || !mask)
            continue;
        if (st->slot[fd]) {
            out[st->slot[fd] - 1].mask |= mask;
            continue;
        }
        out[n] = (sel_fired){.fd = fd, .mask = mask};
        st->slot[fd] = ++n;
    }
    for (int i = 0; i < n; i++)
        st->slot[out[i].fd] = 0;
    return n;
}

const sel_backend sel_backend_kqueue = {
    .name = "kqueue",
    .flags_ends = 1,
    .create = kq_create_state,
    .destroy = kq_destroy_state,
    .fd_limit = 0,
    .set = kq_set,
    .poll = kq_poll,
};
#endif
