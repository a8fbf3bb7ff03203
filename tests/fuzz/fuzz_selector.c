/* fuzz_selector.c: libFuzzer target proving the selector keeps Python selectors semantics
 * and stale-event safety on every backend, under random register/modify/unregister, host
 * interest, pausing, close/dup and zero-timeout selects over socketpairs.
 *
 * Every step is checked against a model: of the selector (a plain array of the expected
 * slot per fd number) and of the kernel (which socket each fd number refers to, what is
 * readable, and for epoll the interest list keyed by fd and socket, which outlives a
 * close while a dup keeps the socket open).
 *
 * Input: the first byte picks the backend from sel_backend_names(). Two socketpairs are
 * opened, then each byte starts one operation (see run_op; tests/fuzz/make_seeds.py
 * writes seeds in this encoding): its low 7 bits modulo 12 choose it, its high bit adds
 * a select after it; it takes fd numbers and events from the bytes that follow. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "selector.h"

#define MAX_OPEN    32                /* fds one input holds open at once */
#define MAX_KNOWN   64                /* distinct fd numbers one input may touch */
#define MAX_FILES   256               /* sockets one input may create */
#define MAX_EPOLL   256               /* modelled epoll interest entries */
#define MAX_BATCH   64                /* the selector's smallest batch */
#define HIGH_FD     (FD_SETSIZE + 5)  /* a number select(2) cannot watch */
#define MODEL_FDS   (FD_SETSIZE + 16) /* fd numbers the model covers */
#define TRACE_STEPS 48                /* operations shown when a check fails */
/* Unread one-byte writes a socket may hold. Each costs its sender far more than a byte
 * of send buffer (a whole skb), and an AF_UNIX socket stops being writable at a quarter
 * of SO_SNDBUF: a few keep every socket writable, as the model assumes. */
#define MAX_UNREAD 8

/* A socket: the references fds hold to it, its peer, and the bytes waiting in it. */
typedef struct mfile {
    int refs, peer, pending;
} mfile;

/* The slot the selector should hold for one fd number. */
typedef struct mslot {
    int registered, events, host, paused, armed;
    void *host_data;
    uint32_t gen;      /* the selector's generation for the current use, once seen */
    uint32_t prev_gen; /* the generation of the previous use */
    unsigned use;      /* counts the slot's uses; names the current one */
    int fresh;         /* came into use in this step: gen not yet read */
} mslot;

/* An epoll interest entry: the kernel keys them by fd number and socket. */
typedef struct mentry {
    int fd, file, events;
} mentry;

/* One entry of the current batch, with the use of its slot when it was taken. */
typedef struct mfired {
    int fd, mask, raw;
    uint32_t gen;
    unsigned use;
} mfired;

typedef struct trace_op {
    char op;
    int fd, arg, rc;
} trace_op;

static struct {
    selector *sel;
    const char *backend;
    int is_epoll, is_select;
    mslot slot[MODEL_FDS];
    int file_of[MODEL_FDS]; /* the socket an fd number refers to, -1 when closed */
    mfile files[MAX_FILES];
    int nfiles, nopen;
    int known[MAX_KNOWN]; /* fd numbers this input touched; [0] is -1, [1] HIGH_FD */
    int nknown;
    mentry ep[MAX_EPOLL];
    int nep;
    mfired batch[MAX_BATCH];
    int nbatch;
    int capacity;
    trace_op trace[TRACE_STEPS];
    int step;
    int tokens[4];  /* distinct host_data pointers */
    int show_trace; /* FUZZ_TRACE=1: print every input's operations, to read a repro */
} M;

static void dump_trace(void)
{
    int first = M.step > TRACE_STEPS ? M.step - TRACE_STEPS : 0;
    if (M.show_trace) /* already printed as they ran */
        return;
    fprintf(stderr, "fuzz_selector: backend %s, last operations (op fd arg -> rc):\n", M.backend);
    for (int i = first; i < M.step; i++) {
        const trace_op *t = &M.trace[i % TRACE_STEPS];
        fprintf(stderr, "  #%d %c fd=%d arg=%d -> %d\n", i, t->op, t->fd, t->arg, t->rc);
    }
}

#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            dump_trace();                                                            \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static void trace(char op, int fd, int arg, int rc)
{
    if (M.show_trace)
        fprintf(stderr, "  #%d %c fd=%d arg=%d -> %d\n", M.step, op, fd, arg, rc);
    M.trace[M.step % TRACE_STEPS] = (trace_op){op, fd, arg, rc};
    M.step++;
}

/* ---- the kernel model ---- */

static int file_of(int fd)
{
    return fd >= 0 && fd < MODEL_FDS ? M.file_of[fd] : -1;
}

static int file_alive(int f)
{
    return f >= 0 && M.files[f].refs > 0;
}

/* What poll(2) would report for socket f: a dead peer is a hang-up (both directions). */
static int file_ready(int f)
{
    if (!file_alive(M.files[f].peer))
        return SEL_BOTH;
    return SEL_WRITE | (M.files[f].pending ? SEL_READ : 0);
}

static void remember_fd(int fd)
{
    for (int i = 0; i < M.nknown; i++)
        if (M.known[i] == fd)
            return;
    CHECK(M.nknown < MAX_KNOWN, "too many fd numbers");
    M.known[M.nknown++] = fd;
}

static void fd_bind(int fd, int f)
{
    M.file_of[fd] = f;
    M.files[f].refs++;
    M.nopen++;
    remember_fd(fd);
}

/* fd is closed: a socket whose last reference goes leaves epoll's interest list. */
static void fd_unbind(int fd)
{
    int f = M.file_of[fd];
    M.file_of[fd] = -1;
    M.nopen--;
    if (--M.files[f].refs > 0)
        return;
    for (int i = 0; i < M.nep;)
        if (M.ep[i].file == f)
            M.ep[i] = M.ep[--M.nep];
        else
            i++;
}

static int ep_find(int fd, int f)
{
    for (int i = 0; i < M.nep; i++)
        if (M.ep[i].fd == fd && M.ep[i].file == f)
            return i;
    return -1;
}

/* epoll_ctl as the kernel answers it, applied to the model on success. */
static int epoll_model_set(int fd, int old_mask, int new_mask)
{
    int f = file_of(fd), e;
    if (f < 0)
        return -EBADF;
    e = ep_find(fd, f);
    if (!old_mask) {
        if (e >= 0)
            return -EEXIST;
        CHECK(M.nep < MAX_EPOLL, "epoll model full");
        M.ep[M.nep++] = (mentry){fd, f, new_mask};
    } else if (e < 0) {
        return -ENOENT;
    } else if (!new_mask) {
        M.ep[e] = M.ep[--M.nep];
    } else {
        M.ep[e].events = new_mask;
    }
    return 0;
}

/* The backend's answer to a change of fd's armed mask. poll and select check only
 * that an fd they start watching is open. */
static int backend_model_set(int fd, int old_mask, int new_mask)
{
    if (old_mask == new_mask)
        return 0;
    if (M.is_epoll)
        return epoll_model_set(fd, old_mask, new_mask);
    return !old_mask && file_of(fd) < 0 ? -EBADF : 0;
}

/* ---- the selector model ---- */

static mslot *slot_of(int fd)
{
    static mslot none;
    if (fd >= 0 && fd < MODEL_FDS)
        return &M.slot[fd];
    memset(&none, 0, sizeof(none));
    return &none;
}

static int in_use(const mslot *m)
{
    return m->registered || m->host;
}

/* What sel_apply should do with fd's next state: the expected return code, with the
 * model updated exactly when the selector should update its slot. */
static int model_apply(int fd, mslot next)
{
    mslot *cur = slot_of(fd);
    next.armed = ((next.events & ~next.paused) | next.host) & SEL_BOTH;
    int rc = backend_model_set(fd, cur->armed, next.armed);
    if (rc < 0 && next.armed)
        return rc;
    if (!in_use(&next)) {
        unsigned use = cur->use;
        uint32_t prev = cur->gen ? cur->gen : cur->prev_gen;
        memset(&next, 0, sizeof(next));
        next.use = use;
        next.prev_gen = prev;
    } else if (!in_use(cur)) {
        next.use = cur->use + 1;
        next.prev_gen = cur->gen ? cur->gen : cur->prev_gen;
        next.gen = 0;
        next.fresh = 1;
        if (fd + 1 > M.capacity)
            M.capacity = fd + 1;
    }
    *cur = next;
    return 0;
}

static int bad_events(int ev, int allow_zero)
{
    return (ev & ~SEL_BOTH) || (!ev && !allow_zero);
}

static int out_of_range(int fd)
{
    return M.is_select && fd >= FD_SETSIZE;
}

static int expect_register(int fd, int ev)
{
    mslot next = *slot_of(fd);
    if (fd < 0)
        return -EINVAL;
    if (out_of_range(fd))
        return -ERANGE;
    if (bad_events(ev, 0))
        return -EINVAL;
    if (next.registered)
        return -EEXIST;
    next.registered = 1;
    next.events = ev;
    return model_apply(fd, next);
}

static int expect_modify(int fd, int ev)
{
    mslot next = *slot_of(fd);
    if (fd < 0)
        return -EINVAL;
    if (out_of_range(fd))
        return -ERANGE;
    if (!next.registered)
        return -ENOENT;
    if (bad_events(ev, 0))
        return -EINVAL;
    next.events = ev;
    return model_apply(fd, next);
}

static int expect_unregister(int fd)
{
    mslot next = *slot_of(fd);
    if (fd < 0)
        return -EINVAL;
    if (!next.registered)
        return -ENOENT;
    next.registered = 0;
    next.events = 0;
    return model_apply(fd, next);
}

static int expect_host(int fd, int h, void *data)
{
    mslot next = *slot_of(fd);
    if (fd < 0 || bad_events(h, 1))
        return -EINVAL;
    if (h && out_of_range(fd))
        return -ERANGE;
    if (!in_use(&next) && !h)
        return 0;
    next.host = h;
    next.host_data = h ? data : NULL;
    return model_apply(fd, next);
}

static int expect_paused(int fd, int p)
{
    mslot next = *slot_of(fd);
    if (fd < 0 || bad_events(p, 1))
        return -EINVAL;
    if (!in_use(&next))
        return -ENOENT;
    next.paused = p;
    return model_apply(fd, next);
}

/* ---- checks ---- */

static int batch_has_gen(int fd, uint32_t gen)
{
    for (int i = 0; i < M.nbatch; i++)
        if (M.batch[i].fd == fd && M.batch[i].gen == gen)
            return 1;
    return 0;
}

/* A slot that came into use gets a generation no event still in the batch carries. */
static void check_fresh_gen(int fd, mslot *m, const sel_key *k)
{
    CHECK(k->gen != 0, "fd %d in use with generation 0", fd);
    CHECK(k->gen != m->prev_gen, "fd %d reused generation %u", fd, (unsigned)k->gen);
    CHECK(!batch_has_gen(fd, k->gen), "fd %d got generation %u of a batched event", fd,
          (unsigned)k->gen);
    m->gen = k->gen;
    m->fresh = 0;
}

static void check_slot(int fd)
{
    mslot *m = slot_of(fd);
    const sel_key *k = sel_slot(M.sel, fd), *g = sel_get(M.sel, fd);
    CHECK((k != NULL) == in_use(m), "fd %d: sel_slot %p, model in use %d", fd, (void *)k,
          in_use(m));
    CHECK((g != NULL) == (m->registered != 0), "fd %d: sel_get %p, model registered %d", fd,
          (void *)g, m->registered);
    if (!k)
        return;
    CHECK(!g || g == k, "fd %d: sel_get and sel_slot disagree", fd);
    if (m->fresh)
        check_fresh_gen(fd, m, k);
    CHECK(k->gen == m->gen, "fd %d: generation %u, model %u", fd, (unsigned)k->gen,
          (unsigned)m->gen);
    CHECK(k->registered == m->registered && k->events == m->events, "fd %d: events %d/%d", fd,
          k->events, m->events);
    CHECK(k->host_events == m->host && sel_host_data(M.sel, fd) == m->host_data,
          "fd %d: host %d/%d", fd, k->host_events, m->host);
    CHECK(k->paused == m->paused, "fd %d: paused %d, model %d", fd, k->paused, m->paused);
    CHECK(k->armed == m->armed, "fd %d: armed %d, model %d", fd, k->armed, m->armed);
}

/* Every batched event is still reported as taken, and deliverable exactly while its slot
 * is in the same use, within the slot's current interest. */
static void check_batch(void)
{
    for (int i = 0; i < M.nbatch; i++) {
        const mfired *b = &M.batch[i];
        const sel_fired *f = sel_fired_at(M.sel, i);
        CHECK(f && f->fd == b->fd && f->mask == b->mask && f->gen == b->gen,
              "batch entry %d changed", i);
        const mslot *m = slot_of(b->fd);
        int want = in_use(m) && m->use == b->use ? b->mask & (m->events | m->host) : 0;
        int got = sel_deliverable(M.sel, f);
        CHECK(got == want, "fd %d: deliverable %d, model %d (use %u, batched use %u)", b->fd, got,
              want, m->use, b->use);
    }
    CHECK(sel_fired_at(M.sel, M.nbatch) == NULL && sel_fired_at(M.sel, -1) == NULL,
          "batch longer than %d", M.nbatch);
}

static void check_all(void)
{
    size_t count = 0, host_count = 0;
    for (int i = 0; i < M.nknown; i++) {
        int fd = M.known[i];
        check_slot(fd);
        count += slot_of(fd)->registered != 0;
        host_count += slot_of(fd)->host != 0;
    }
    CHECK(sel_count(M.sel) == count, "sel_count %zu, model %zu", sel_count(M.sel), count);
    CHECK(sel_host_count(M.sel) == host_count, "sel_host_count %zu, model %zu",
          sel_host_count(M.sel), host_count);
    CHECK(sel_capacity(M.sel) == M.capacity, "sel_capacity %d, model %d", sel_capacity(M.sel),
          M.capacity);
    check_batch();
}

/* ---- the expected batch of a zero-timeout select ---- */

static int cmp_fired(const void *a, const void *b)
{
    const mfired *x = a, *y = b;
    return x->fd != y->fd ? (x->fd > y->fd) - (x->fd < y->fd) : x->mask - y->mask;
}

/* The mask the selector keeps of a kernel report: what the slot arms, plus SEL_HANGUP
 * for an error or hang-up (which select(2) cannot tell apart from readiness). */
static int kept_mask(int ready, int hangup, int armed)
{
    int mask = ready & armed;
    return mask && hangup && !M.is_select ? mask | SEL_HANGUP : mask;
}

/* epoll reports each interest entry whose socket is ready, under the fd number it was
 * added with; the selector then masks it by that number's slot. */
static int expect_epoll_batch(mfired *out)
{
    int n = 0;
    for (int i = 0; i < M.nep; i++) {
        const mentry *e = &M.ep[i];
        const mfile *f = &M.files[e->file];
        /* A hang-up is reported whatever the entry asked for. */
        int hangup = !file_alive(f->peer);
        int ready = hangup ? SEL_BOTH : (SEL_WRITE | (f->pending ? SEL_READ : 0)) & e->events;
        int mask = kept_mask(ready, hangup, slot_of(e->fd)->armed);
        if (mask && n < MAX_EPOLL)
            out[n++] = (mfired){.fd = e->fd, .mask = mask};
    }
    return n;
}

/* select(2) fails with EBADF when an armed fd number is closed; the backend then reports
 * only the closed ones, each as a hang-up. Returns their count (0: none closed). */
static int expect_select_closed(mfired *out)
{
    int n = 0;
    for (int i = 0; i < M.nknown; i++) {
        int fd = M.known[i], armed = slot_of(fd)->armed;
        if (armed && file_of(fd) < 0)
            out[n++] = (mfired){.fd = fd, .mask = (SEL_BOTH & armed) | SEL_HANGUP};
    }
    return n;
}

/* poll and select watch whatever each armed fd number refers to now. poll reports a
 * closed one (POLLNVAL) as a hang-up; so does select, alone in its batch. */
static int expect_batch(mfired *out)
{
    int n = 0;
    if (M.is_epoll)
        return expect_epoll_batch(out);
    if (M.is_select && (n = expect_select_closed(out)) > 0)
        return n;
    for (int i = 0; i < M.nknown; i++) {
        int fd = M.known[i], f = file_of(fd), armed = slot_of(fd)->armed, mask;
        if (!armed)
            continue;
        if (f < 0) /* POLLNVAL */
            mask = kept_mask(SEL_BOTH, 1, armed);
        else
            mask = kept_mask(file_ready(f), !file_alive(M.files[f].peer), armed);
        if (mask)
            out[n++] = (mfired){.fd = fd, .mask = mask};
    }
    return n;
}

static void op_select(void)
{
    mfired want[MAX_EPOLL], got[MAX_BATCH];
    int nwant = expect_batch(want), n = sel_select(M.sel, 0);
    trace('S', -1, nwant, n);
    M.nbatch = 0;
    if (nwant < 0 || n < 0) {
        CHECK(n == nwant, "select returned %d, model %d: %s", n, nwant, sel_error(M.sel));
        return;
    }
    /* A batch larger than the selector's is cut short; the model cannot say where. */
    CHECK(n == nwant || (nwant > MAX_BATCH && n == MAX_BATCH), "select %d, model %d", n, nwant);
    for (int i = 0; i < n; i++) {
        const sel_fired *f = sel_fired_at(M.sel, i);
        const mslot *m = slot_of(f->fd);
        CHECK(f->fd >= 0 && f->fd < MODEL_FDS, "fired fd %d", f->fd);
        CHECK(in_use(m) && f->gen == m->gen, "fd %d fired with generation %u, slot's %u", f->fd,
              (unsigned)f->gen, (unsigned)m->gen);
        CHECK((f->mask & m->armed) && !(f->mask & SEL_BOTH & ~m->armed),
              "fd %d fired %d outside armed %d", f->fd, f->mask, m->armed);
        /* Flags beyond READ|WRITE|HANGUP (peer closed, say) are the backend's to give. */
        got[i] = (mfired){.fd = f->fd, .mask = f->mask & (SEL_BOTH | SEL_HANGUP), .raw = f->mask};
        M.batch[i] = (mfired){.fd = f->fd, .mask = f->mask, .gen = f->gen, .use = m->use};
    }
    M.nbatch = n;
    if (n != nwant)
        return;
    qsort(want, (size_t)n, sizeof(*want), cmp_fired);
    qsort(got, (size_t)n, sizeof(*got), cmp_fired);
    for (int i = 0; i < n; i++) {
        CHECK(want[i].fd == got[i].fd && want[i].mask == got[i].mask,
              "select reported fd %d mask %d where the model has fd %d mask %d", got[i].fd,
              got[i].mask, want[i].fd, want[i].mask);
        CHECK(!(got[i].raw & ~(SEL_BOTH | SEL_HANGUP)) || (got[i].mask & SEL_HANGUP),
              "fd %d fired flags %d without a hang-up", got[i].fd, got[i].raw);
    }
}

/* ---- operations ---- */

static const uint8_t *in_data;
static size_t in_len, in_pos;

static int next_byte(void)
{
    return in_pos < in_len ? in_data[in_pos++] : 0;
}

/* An fd number chosen by the input: -1 or HIGH_FD for a byte below 16, else one this
 * input has used. */
static int pick_fd(void)
{
    int b = next_byte();
    return b < 16 || M.nknown == 2 ? M.known[b & 1] : M.known[2 + (b - 16) % (M.nknown - 2)];
}

static void op_open(void)
{
    int sv[2];
    if (M.nopen + 2 > MAX_OPEN || M.nfiles + 2 > MAX_FILES)
        return;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
          "socketpair: %s", strerror(errno));
    CHECK(sv[0] < MODEL_FDS && sv[1] < MODEL_FDS, "fd %d beyond the model", sv[1]);
    int f = M.nfiles;
    M.nfiles += 2;
    M.files[f] = (mfile){.peer = f + 1};
    M.files[f + 1] = (mfile){.peer = f};
    fd_bind(sv[0], f);
    fd_bind(sv[1], f + 1);
    trace('O', sv[0], sv[1], 0);
}

static void op_close(int fd)
{
    if (file_of(fd) < 0)
        return;
    CHECK(close(fd) == 0, "close %d: %s", fd, strerror(errno));
    fd_unbind(fd);
    trace('C', fd, 0, 0);
}

/* dup(2) takes the lowest free number, which may be a closed one the selector still has. */
static void op_dup(int fd)
{
    if (file_of(fd) < 0 || M.nopen >= MAX_OPEN)
        return;
    int nfd = dup(fd);
    CHECK(nfd >= 0 && nfd < MODEL_FDS, "dup %d gave %d: %s", fd, nfd, strerror(errno));
    fd_bind(nfd, M.file_of[fd]);
    trace('D', fd, nfd, 0);
}

/* dup2(2) onto a number the selector may hold: the socket there is replaced at once. */
static void op_dup2(int fd, int to)
{
    if (file_of(fd) < 0 || to < 0 || to == fd || (file_of(to) < 0 && M.nopen >= MAX_OPEN))
        return;
    int rc = dup2(fd, to);
    trace('2', fd, to, rc);
    if (rc < 0) /* beyond RLIMIT_NOFILE: nothing changed */
        return;
    CHECK(rc == to, "dup2 %d %d gave %d", fd, to, rc);
    if (file_of(to) >= 0)
        fd_unbind(to);
    fd_bind(to, M.file_of[fd]);
}

static void op_write(int fd)
{
    int f = file_of(fd);
    if (f < 0 || M.files[M.files[f].peer].pending >= MAX_UNREAD)
        return;
    ssize_t n = send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    trace('W', fd, 0, (int)n);
    if (file_alive(M.files[f].peer)) {
        CHECK(n == 1, "send on %d: %s", fd, strerror(errno));
        M.files[M.files[f].peer].pending++;
    } else {
        CHECK(n < 0 && errno == EPIPE, "send to a closed peer gave %zd", n);
    }
}

static void op_drain(int fd)
{
    char buf[256];
    ssize_t n, total = 0;
    int f = file_of(fd);
    if (f < 0)
        return;
    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        total += n;
    trace('R', fd, 0, (int)total);
    CHECK(total == M.files[f].pending, "drained %zd bytes from %d, model %d", total, fd,
          M.files[f].pending);
    M.files[f].pending = 0;
}

static void op_selector(int op, int fd, int arg)
{
    int want, rc;
    switch (op) {
    case 0:
        want = expect_register(fd, arg);
        rc = sel_register(M.sel, fd, arg);
        break;
    case 1:
        want = expect_modify(fd, arg);
        rc = sel_modify(M.sel, fd, arg);
        break;
    case 2:
        want = expect_unregister(fd);
        rc = sel_unregister(M.sel, fd);
        break;
    case 3: {
        void *data = &M.tokens[(arg >> 3) & 3];
        arg &= 7;
        want = expect_host(fd, arg, data);
        rc = sel_set_host_events(M.sel, fd, arg, data);
        break;
    }
    default:
        want = expect_paused(fd, arg);
        rc = sel_set_paused(M.sel, fd, arg);
    }
    trace("rmuhp"[op], fd, arg, rc);
    CHECK(rc == want, "returned %d (%s), model %d", rc, sel_error(M.sel), want);
}

/* Events mostly valid, sometimes 0 or out of range, to reach the EINVAL paths. */
static int pick_events(void)
{
    int b = next_byte();
    return b < 224 ? 1 + b % 3 : b % 8;
}

/* The low 7 bits choose the operation; the high bit adds a select after it, so that the
 * backend's state is seen often, while half the operations still change a pending batch. */
static void run_op(int b)
{
    int fd;
    switch ((b & 0x7f) % 12) {
    case 0:
        op_open();
        break;
    case 1:
        op_close(pick_fd());
        break;
    case 2:
        op_dup(pick_fd());
        break;
    case 3:
        fd = pick_fd();
        op_dup2(fd, pick_fd());
        break;
    case 4:
        op_write(pick_fd());
        break;
    case 5:
        op_drain(pick_fd());
        break;
    case 6:
        op_select();
        break;
    case 7:
        fd = pick_fd();
        op_selector(3, fd, pick_events() | (b & 0x18));
        break;
    default: /* register, modify, unregister, set_paused */
        fd = pick_fd();
        op_selector("\0\1\2\4"[(b & 0x7f) % 12 - 8], fd, pick_events());
    }
    if (b & 0x80) {
        check_all();
        op_select();
    }
}

/* ---- one input ---- */

static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd;
}

static void reset_model(const char *backend)
{
    for (int i = 0; i < M.nknown; i++)
        if (M.known[i] >= 0)
            memset(&M.slot[M.known[i]], 0, sizeof(mslot));
    memset(&M.slot[HIGH_FD], 0, sizeof(mslot));
    for (int fd = 0; fd < MODEL_FDS; fd++)
        M.file_of[fd] = -1;
    M.backend = backend;
    M.is_epoll = strcmp(backend, "epoll") == 0;
    M.is_select = strcmp(backend, "select") == 0;
    M.nfiles = M.nopen = M.nep = M.nbatch = M.capacity = M.step = 0;
    M.known[0] = -1;
    M.known[1] = HIGH_FD;
    M.nknown = 2;
}

/* Closes every fd the input left open, and frees the selector (and its epoll fd). */
static void cleanup(void)
{
    for (int fd = 0; fd < MODEL_FDS; fd++)
        if (M.file_of[fd] >= 0)
            close(fd);
    sel_free(M.sel);
    M.sel = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct rlimit rl;
    (void)argc;
    (void)argv;
    M.show_trace = getenv("FUZZ_TRACE") && strcmp(getenv("FUZZ_TRACE"), "1") == 0;
    /* HIGH_FD is opened by dup2 when the limit allows, to reach select's FD_SETSIZE. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)MODEL_FDS &&
        rl.rlim_max >= (rlim_t)MODEL_FDS) {
        rl.rlim_cur = MODEL_FDS;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *const *names = sel_backend_names();
    int nnames = 0;
    char err[160];
    if (size < 1)
        return 0;
    while (names[nnames])
        nnames++;
    int base = lowest_free_fd();
    reset_model(names[data[0] % nnames]);
    CHECK(fcntl(HIGH_FD, F_GETFD) < 0, "fd %d is open before the input", HIGH_FD);
    M.sel = sel_new(M.backend, err, sizeof(err));
    CHECK(M.sel != NULL, "%s", err);
    if (M.show_trace)
        fprintf(stderr, "fuzz_selector: backend %s\n", M.backend);
    in_data = data;
    in_len = size;
    in_pos = 1;
    op_open(); /* two socketpairs to start with: known[2..5] */
    op_open();
    while (in_pos < in_len) {
        run_op(next_byte());
        check_all();
    }
    op_select();
    check_all();
    cleanup();
    CHECK(lowest_free_fd() == base, "an fd was left open (lowest free %d, was %d)",
          lowest_free_fd(), base);
    return 0;
}
