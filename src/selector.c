/* selector.c: the fd-indexed registration table over a pluggable backend, with
 * Python selectors semantics; tells the backend only when an fd's armed mask changes. */
#include "selector.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"

/* A batch holds at most this many ready fds: more come with the next wait, so a batch's
 * buffers (here and in the backend) stay small however many connections there are. */
#define SEL_FIRED_MIN 64
#define SEL_FIRED_MAX 1024

_Static_assert(sizeof(sel_key) == 8, "a slot per fd: keep it small");

struct selector {
    const sel_backend *be;
    void *state;
    sel_key *keys;
    int nkeys;         /* slots allocated */
    int capacity;      /* highest fd ever given a slot plus one */
    size_t count;      /* script registrations */
    size_t in_use;     /* slots in use by the script or the host */
    size_t host_count; /* slots with host interest */
    uint32_t next_gen;
    void **host_data; /* by fd, for slots with host interest: kept apart from the slots, so
                         that a connection the host never flushes for costs 8 bytes less */
    int host_cap;     /* entries of host_data */
    sel_fired *fired; /* the current batch */
    int fired_cap;
    int nfired;
    sel_fired *posted; /* sel_post'ed fds, with their slots' generations */
    int posted_cap;
    int nposted;
    char err[160];
};

/* Records why the call failed and returns rc, so callers can `return sel_fail(...)`. */
static int sel_fail(selector *sel, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int sel_fail(selector *sel, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sel->err, sizeof(sel->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* Returns NULL with a message in err (when given) if the backend is unknown, not
 * compiled in, or cannot be created. */
selector *sel_new(const char *backend_name, char *err, size_t errlen)
{
    char dummy[1], names[64];
    const sel_backend *be = sel_find_backend(backend_name);
    if (!err || !errlen)
        err = dummy, errlen = sizeof(dummy);
    if (!be) {
        sel_backend_names_list(names, sizeof(names));
        snprintf(err, errlen, "unknown selector backend \"%s\" (available: %s)", backend_name,
                 names);
        errno = EINVAL;
        return NULL;
    }
    selector *sel = calloc(1, sizeof(*sel));
    if (!sel)
        goto error;
    sel->be = be;
    sel->next_gen = 1;
    sel->state = be->create();
    if (!sel->state)
        goto error;
    return sel;
error:;
    int saved = errno; /* the caller may retry on EMFILE, once it has freed fds */
    snprintf(err, errlen, "cannot create %s selector: %s", be->name, strerror(saved));
    free(sel);
    errno = saved;
    return NULL;
}

void sel_free(selector *sel)
{
    if (!sel)
        return;
    sel->be->destroy(sel->state);
    free(sel->keys);
    free(sel->host_data);
    free(sel->fired);
    free(sel->posted);
    free(sel);
}

const char *sel_backend_name(const selector *sel)
{
    return sel->be->name;
}

int sel_flags_ends(const selector *sel)
{
    return sel->be->flags_ends;
}

void *sel_backend_state(const selector *sel, const sel_backend *be)
{
    return sel->be == be ? sel->state : NULL;
}

const net_io *sel_io(const selector *sel)
{
    return sel->be->io ? sel->be->io(sel->state) : &net_io_kernel;
}

const char *sel_error(const selector *sel)
{
    return sel->err;
}

/* The state of fd's slot, zero when no slot was ever allocated for it. */
static sel_key sel_load(const selector *sel, int fd)
{
    return fd < sel->nkeys ? sel->keys[fd] : (sel_key){0};
}

static int sel_armed_of(const sel_key *k)
{
    return ((k->events & ~k->paused) | k->host_events) & SEL_BOTH;
}

/* Makes room for slot fd, zeroing new slots; -ENOMEM leaves the table as it was. */
static int sel_grow(selector *sel, int fd)
{
    size_t n = sel->nkeys ? (size_t)sel->nkeys : 64;
    while (n <= (size_t)fd)
        n *= 2;
    if (n > (size_t)INT_MAX)
        n = (size_t)fd + 1;
    if (n > SIZE_MAX / sizeof(sel_key))
        return -ENOMEM;
    sel_key *keys = realloc(sel->keys, n * sizeof(sel_key));
    if (!keys)
        return -ENOMEM;
    memset(keys + sel->nkeys, 0, (n - (size_t)sel->nkeys) * sizeof(sel_key));
    sel->keys = keys;
    sel->nkeys = (int)n;
    return 0;
}

/* Writes next into fd's slot, keeping the counts, generation and capacity in step. */
static void sel_store(selector *sel, int fd, sel_key next)
{
    sel_key *k = &sel->keys[fd];
    int was_used = k->gen != 0, now_used = next.registered || next.host_events;
    if (next.registered && !k->registered)
        sel->count++;
    if (!next.registered && k->registered)
        sel->count--;
    if (next.host_events && !k->host_events)
        sel->host_count++;
    if (!next.host_events && k->host_events)
        sel->host_count--;
    if (!now_used) {
        memset(&next, 0, sizeof(next));
        if (was_used)
            sel->in_use--;
    } else if (!was_used) {
        next.gen = sel->next_gen++;
        if (sel->next_gen == 0)
            sel->next_gen = 1;
        sel->in_use++;
        if (fd >= sel->capacity)
            sel->capacity = fd + 1;
    }
    *k = next;
}

/* Applies a new script/host state to fd: the one place the armed mask is recomputed
 * and the backend told. A backend failure leaves the slot unchanged, except when the
 * fd is being dropped altogether: the kernel already forgets a closed fd, and refusing
 * would leave a slot that can never be released (Python ignores it too). */
static int sel_apply(selector *sel, int fd, sel_key next)
{
    sel_key cur = sel_load(sel, fd);
    int rc = 0;
    next.armed = (uint8_t)sel_armed_of(&next);
    if (next.armed != cur.armed)
        rc = sel->be->set(sel->state, fd, cur.armed, next.armed);
    if (rc < 0 && next.armed != 0)
        return sel_fail(sel, rc, "%s cannot watch fd %d: %s", sel->be->name, fd, strerror(-rc));
    if (fd >= sel->nkeys && sel_grow(sel, fd) < 0) {
        if (next.armed != cur.armed)
            sel->be->set(sel->state, fd, next.armed, cur.armed);
        return sel_fail(sel, -ENOMEM, "no memory for fd %d", fd);
    }
    sel_store(sel, fd, next);
    return 0;
}

static int sel_check_fd(selector *sel, int fd)
{
    if (fd < 0)
        return sel_fail(sel, -EINVAL, "invalid fd %d", fd);
    if (sel->be->fd_limit && fd >= sel->be->fd_limit)
        return sel_fail(sel, -ERANGE, "fd %d is beyond %s (%d) for the %s backend", fd,
                        strcmp(sel->be->name, "select") == 0 ? "FD_SETSIZE" : "the limit",
                        sel->be->fd_limit, sel->be->name);
    return 0;
}

static int sel_check_events(selector *sel, int events, int allow_zero)
{
    if ((events & ~SEL_BOTH) || (!events && !allow_zero))
        return sel_fail(sel, -EINVAL, "invalid events %d (expected READ, WRITE or both)", events);
    return 0;
}

static int sel_not_registered(selector *sel, int fd)
{
    return sel_fail(sel, -ENOENT, "fd %d is not registered", fd);
}

int sel_register(selector *sel, int fd, int events)
{
    int rc;
    if ((rc = sel_check_fd(sel, fd)) < 0 || (rc = sel_check_events(sel, events, 0)) < 0)
        return rc;
    sel_key next = sel_load(sel, fd);
    if (next.registered)
        return sel_fail(sel, -EEXIST, "fd %d is already registered", fd);
    next.registered = 1;
    next.events = (uint8_t)events;
    return sel_apply(sel, fd, next);
}

int sel_modify(selector *sel, int fd, int events)
{
    int rc;
    if ((rc = sel_check_fd(sel, fd)) < 0)
        return rc;
    sel_key next = sel_load(sel, fd);
    if (!next.registered)
        return sel_not_registered(sel, fd);
    if ((rc = sel_check_events(sel, events, 0)) < 0)
        return rc;
    next.events = (uint8_t)events;
    return sel_apply(sel, fd, next);
}

int sel_unregister(selector *sel, int fd)
{
    if (fd < 0)
        return sel_fail(sel, -EINVAL, "invalid fd %d", fd);
    sel_key next = sel_load(sel, fd);
    if (!next.registered)
        return sel_not_registered(sel, fd);
    next.registered = 0;
    next.events = 0;
    return sel_apply(sel, fd, next);
}

/* Makes room for fd in host_data, zeroing new entries; -ENOMEM leaves it as it was. */
static int sel_grow_host_data(selector *sel, int fd)
{
    if (fd < sel->host_cap)
        return 0;
    size_t n = sel->host_cap ? (size_t)sel->host_cap : 64;
    while (n <= (size_t)fd)
        n *= 2;
    void **data = realloc(sel->host_data, n * sizeof *data);
    if (!data)
        return sel_fail(sel, -ENOMEM, "no memory for fd %d", fd);
    memset(data + sel->host_cap, 0, (n - (size_t)sel->host_cap) * sizeof *data);
    sel->host_data = data;
    sel->host_cap = (int)n;
    return 0;
}

/* Host interest keeps the slot (and its generation) alive after the script lets go. */
int sel_set_host_events(selector *sel, int fd, int host_events, void *host_data)
{
    int rc;
    if (fd < 0)
        return sel_fail(sel, -EINVAL, "invalid fd %d", fd);
    if ((rc = sel_check_events(sel, host_events, 1)) < 0)
        return rc;
    if (host_events && ((rc = sel_check_fd(sel, fd)) < 0 || (rc = sel_grow_host_data(sel, fd)) < 0))
        return rc;
    sel_key next = sel_load(sel, fd);
    if (!next.gen && !host_events)
        return 0;
    next.host_events = (uint8_t)host_events;
    if ((rc = sel_apply(sel, fd, next)) < 0)
        return rc;
    if (fd < sel->host_cap)
        sel->host_data[fd] = host_events ? host_data : NULL;
    return 0;
}

void *sel_host_data(const selector *sel, int fd)
{
    const sel_key *k = sel_slot(sel, fd);
    return k && k->host_events && fd < sel->host_cap ? sel->host_data[fd] : NULL;
}

/* Pausing belongs to the slot, not to one registration: it lasts until the host lifts
 * it or the slot is released, so that a script re-registering cannot undo backpressure. */
int sel_set_paused(selector *sel, int fd, int paused)
{
    int rc;
    if (fd < 0)
        return sel_fail(sel, -EINVAL, "invalid fd %d", fd);
    if ((rc = sel_check_events(sel, paused, 1)) < 0)
        return rc;
    sel_key next = sel_load(sel, fd);
    if (!next.gen)
        return sel_fail(sel, -ENOENT, "fd %d is not in use", fd);
    next.paused = (uint8_t)paused;
    return sel_apply(sel, fd, next);
}

const sel_key *sel_slot(const selector *sel, int fd)
{
    if (fd < 0 || fd >= sel->nkeys || !sel->keys[fd].gen)
        return NULL;
    return &sel->keys[fd];
}

const sel_key *sel_get(const selector *sel, int fd)
{
    const sel_key *k = sel_slot(sel, fd);
    return k && k->registered ? k : NULL;
}

size_t sel_count(const selector *sel)
{
    return sel->count;
}

int sel_fd_limit(const selector *sel)
{
    return sel->be->fd_limit;
}

size_t sel_host_count(const selector *sel)
{
    return sel->host_count;
}

int sel_capacity(const selector *sel)
{
    return sel->capacity;
}

/* Sizes the batch to the slots in use, so that one call usually drains all readiness. */
static int sel_fit_fired(selector *sel)
{
    size_t want = sel->in_use;
    if (want < SEL_FIRED_MIN)
        want = SEL_FIRED_MIN;
    if (want > SEL_FIRED_MAX)
        want = SEL_FIRED_MAX;
    if ((int)want <= sel->fired_cap)
        return 0;
    sel_fired *f = realloc(sel->fired, want * sizeof(*f));
    if (!f)
        return sel_fail(sel, -ENOMEM, "no memory for %zu ready events", want);
    sel->fired = f;
    sel->fired_cap = (int)want;
    return 0;
}

static int64_t sel_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls the backend, retrying EINTR with what is left of the timeout. */
static int sel_poll(selector *sel, int timeout_ms)
{
    int64_t deadline = timeout_ms > 0 ? sel_now_ms() + timeout_ms : 0;
    for (;;) {
        int n = sel->be->poll(sel->state, timeout_ms, sel->fired, sel->fired_cap);
        if (n != -EINTR)
            return n;
        if (timeout_ms > 0) {
            /* Rounds up, so that a late signal never ends the wait early. */
            int64_t left = deadline - sel_now_ms() + 1;
            timeout_ms = left > 0 ? (int)left : 0;
        }
    }
}

/* Keeps only what the slots still watch, stamped with their generation. */
static int sel_filter(selector *sel, int n)
{
    int kept = 0;
    for (int i = 0; i < n; i++) {
        sel_fired f = sel->fired[i];
        const sel_key *k = sel_slot(sel, f.fd);
        int hangup = f.mask & (SEL_HANGUP | SEL_PEER_CLOSED);
        if (!k || !(f.mask &= k->armed))
            continue;
        f.mask |= hangup;
        f.gen = k->gen;
        sel->fired[kept++] = f;
    }
    return kept;
}

int sel_post(selector *sel, int fd)
{
    if (fd < 0 || fd >= sel->nkeys || !sel->keys[fd].gen || sel->keys[fd].posted)
        return 0;
    if (sel->nposted == sel->posted_cap) {
        int cap = sel->posted_cap ? sel->posted_cap * 2 : 16;
        sel_fired *p = realloc(sel->posted, (size_t)cap * sizeof *p);
        if (!p)
            return sel_fail(sel, -ENOMEM, "no memory to post fd %d", fd);
        sel->posted = p;
        sel->posted_cap = cap;
    }
    sel->posted[sel->nposted++] = (sel_fired){fd, SEL_READ, sel->keys[fd].gen};
    sel->keys[fd].posted = 1;
    return 0;
}

/* Whether a posted fd's registration may be told it is readable now. */
static int sel_post_due(sel_key *k)
{
    k->posted = 0;
    return k->registered && (k->events & ~k->paused & SEL_READ);
}

/* Adds the posted fds to the batch: READ joins an fd's own entry, or makes one. */
static int sel_take_posted(selector *sel)
{
    for (int i = 0; i < sel->nfired; i++) {
        sel_key *k = &sel->keys[sel->fired[i].fd];
        if (k->posted && sel_post_due(k))
            sel->fired[i].mask |= SEL_READ;
    }
    for (int i = 0; i < sel->nposted; i++) {
        sel_fired p = sel->posted[i];
        sel_key *k = p.fd < sel->nkeys ? &sel->keys[p.fd] : NULL;
        if (!k || k->gen != p.gen || !k->posted || !sel_post_due(k))
            continue;
        if (sel->nfired == sel->fired_cap) {
            sel_fired *f = realloc(sel->fired, (size_t)(sel->fired_cap + 64) * sizeof *f);
            if (!f)
                return sel_fail(sel, -ENOMEM, "no memory for posted events");
            sel->fired = f;
            sel->fired_cap += 64;
        }
        sel->fired[sel->nfired++] = p;
    }
    sel->nposted = 0;
    return 0;
}

int sel_select(selector *sel, int timeout_ms)
{
    int n;
    sel->nfired = 0;
    if ((n = sel_fit_fired(sel)) < 0)
        return n;
    if (sel->nposted > 0)
        timeout_ms = 0; /* what was posted is ready now */
    if ((n = sel_poll(sel, timeout_ms < 0 ? -1 : timeout_ms)) < 0)
        return sel_fail(sel, n, "%s wait failed: %s", sel->be->name, strerror(-n));
    sel->nfired = sel_filter(sel, n);
    if (sel->nposted > 0 && (n = sel_take_posted(sel)) < 0)
        return n;
    return sel->nfired;
}

const sel_fired *sel_fired_at(const selector *sel, int i)
{
    return i >= 0 && i < sel->nfired ? &sel->fired[i] : NULL;
}

int sel_deliverable(const selector *sel, const sel_fired *fired)
{
    return sel_deliverable_in(sel_slot(sel, fired->fd), fired);
}
