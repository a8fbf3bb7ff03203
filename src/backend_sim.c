/* backend_sim.c: the "sim" backend for tests: poll(2) readiness over in-memory
 * socketpairs, with accepts, short writes, would-block and resets decided by the test. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "sim.h"

#define FIRST_PORT 40000 /* where the ports sim peers appear on start */

typedef struct sim_fd {
    int partner;                /* the other end of a sim pair, or -1 */
    int queue_head, queue_tail; /* a listener's connections waiting to be accepted */
    int next_waiting;           /* the next connection in the same listener's queue */
    int watched;                /* the mask the host watches the fd for */
    int accept_err, accept_fails;
    size_t max_write; /* 0: no cap */
    int would_block;  /* sends left to fail with EAGAIN */
    int reset;
    int port;  /* the port a host end's peer appears on, 0 for none */
    ino_t ino; /* the socket the record is about: fds are reused once closed */
} sim_fd;

struct sim_state {
    net_io io;    /* first: the host's socket calls on sim fds come here (sim_io) */
    void *poller; /* a poll backend state: the kernel still says what is ready */
    sim_fd *fds;
    int nfds;
    int next_port;
};

static const sim_fd fresh_fd = {
    .partner = -1, .queue_head = -1, .queue_tail = -1, .next_waiting = -1};

static ino_t inode_of(int fd)
{
    struct stat sb;
    return fstat(fd, &sb) == 0 ? sb.st_ino : 0;
}

/* The record of fd, made on first use; NULL if fd is negative or memory ran out. */
static sim_fd *sim_record(sim_state *st, int fd)
{
    if (fd < 0)
        return NULL;
    if (fd >= st->nfds) {
        int n = st->nfds ? st->nfds : 64;
        while (n <= fd)
            n *= 2;
        sim_fd *fds = realloc(st->fds, (size_t)n * sizeof *fds);
        if (!fds)
            return NULL;
        for (int i = st->nfds; i < n; i++)
            fds[i] = fresh_fd;
        st->fds = fds;
        st->nfds = n;
    }
    return &st->fds[fd];
}

/* Closes what waits in a listener's queue and forgets everything about fd. */
static void sim_forget(sim_state *st, int fd)
{
    for (int w = st->fds[fd].queue_head; w >= 0; w = st->fds[w].next_waiting)
        close(w);
    int watched = st->fds[fd].watched; /* the backend's, about the fd number */
    st->fds[fd] = fresh_fd;
    st->fds[fd].watched = watched;
}

/* fd's record, made for the socket fd now is; NULL if out of memory or fd is bad. */
static sim_fd *sim_claim(sim_state *st, int fd)
{
    sim_fd *rec = sim_record(st, fd);
    ino_t ino = rec ? inode_of(fd) : 0;
    if (!ino)
        return NULL;
    if (rec->ino != ino) {
        sim_forget(st, fd);
        rec->ino = ino;
    }
    return rec;
}

/* fd's record if it still describes the socket open on fd, else NULL. */
static sim_fd *sim_current(sim_state *st, int fd)
{
    if (fd < 0 || fd >= st->nfds || !st->fds[fd].ino)
        return NULL;
    if (st->fds[fd].ino == inode_of(fd))
        return &st->fds[fd];
    sim_forget(st, fd);
    return NULL;
}

static const net_io sim_io;

static void *sim_create(void)
{
    sim_state *st = calloc(1, sizeof *st);
    if (st)
        st->io = sim_io;
    if (st && !(st->poller = sel_backend_poll.create())) {
        free(st);
        return NULL;
    }
    if (st)
        st->next_port = FIRST_PORT;
    return st;
}

/* Connections never accepted are the sim's own to close. */
static void sim_destroy(void *state)
{
    sim_state *st = state;
    for (int fd = 0; fd < st->nfds; fd++)
        if (sim_current(st, fd))
            sim_forget(st, fd);
    sel_backend_poll.destroy(st->poller);
    free(st->fds);
    free(st);
}

static int sim_set(void *state, int fd, int old_mask, int new_mask)
{
    sim_state *st = state;
    sim_fd *rec = sim_record(st, fd);
    if (!rec)
        return -ENOMEM;
    int rc = sel_backend_poll.set(st->poller, fd, old_mask, new_mask);
    if (rc == 0)
        rec->watched = new_mask;
    return rc;
}

/* Adds READ to fd's entry in out[0..n), or a new entry if there is room. */
static int add_readable(sel_fired *out, int n, int max, int fd)
{
    for (int i = 0; i < n; i++)
        if (out[i].fd == fd) {
            out[i].mask |= SEL_READ;
            return n;
        }
    if (n < max)
        out[n++] = (sel_fired){.fd = fd, .mask = SEL_READ};
    return n;
}

/* Never waits: everything a sim peer does has happened by the time the test steps, and
 * time moves only when the test advances the host's clock. A listener with connections
 * waiting (or failures to report) is readable. */
static int sim_poll(void *state, int timeout_ms, sel_fired *out, int max)
{
    sim_state *st = state;
    (void)timeout_ms;
    int n = sel_backend_poll.poll(st->poller, 0, out, max);
    for (int fd = 0; n >= 0 && fd < st->nfds; fd++) {
        const sim_fd *rec = &st->fds[fd];
        if (!(rec->watched & SEL_READ) || (rec->queue_head < 0 && rec->accept_fails == 0))
            continue;
        if (sim_current(st, fd))
            n = add_readable(out, n, max, fd);
    }
    return n;
}

static void fake_peer(const sim_fd *rec, net_addr *out)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&out->ss;
    memset(out, 0, sizeof *out);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    in->sin_port = htons((uint16_t)rec->port);
    out->len = sizeof *in;
}

static int sim_accept(const net_io *io, int listen_fd, net_addr *peer)
{
    sim_state *st = (sim_state *)io;
    sim_fd *lrec = sim_current(st, listen_fd);
    if (lrec && lrec->accept_fails > 0) {
        lrec->accept_fails--;
        return -lrec->accept_err;
    }
    if (!lrec || lrec->queue_head < 0) /* a real client, if any */
        return net_accept(listen_fd, peer);
    int fd = lrec->queue_head;
    lrec->queue_head = st->fds[fd].next_waiting;
    if (lrec->queue_head < 0)
        lrec->queue_tail = -1;
    st->fds[fd].next_waiting = -1;
    fake_peer(&st->fds[fd], peer);
    return fd;
}

static int sim_peername(const net_io *io, int fd, net_addr *out)
{
    const sim_fd *rec = sim_current((sim_state *)io, fd);
    if (rec && rec->port) {
        fake_peer(rec, out);
        return 0;
    }
    return net_peername(fd, out);
}

/* Whether the other end of fd is closed: a send would fail, so none is refused as
 * would-block (the host must learn the client is gone). */
static int peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR));
}

static ssize_t sim_send(const net_io *io, int fd, const void *data, size_t len)
{
    sim_fd *rec = sim_current((sim_state *)io, fd);
    if (rec && rec->reset)
        return -ECONNRESET;
    if (rec && rec->would_block > 0 && !peer_gone(fd)) {
        rec->would_block--;
        return -EAGAIN;
    }
    if (rec && rec->max_write && len > rec->max_write)
        len = rec->max_write;
    return net_send(fd, data, len);
}

static ssize_t sim_recv(const net_io *io, int fd, void *data, size_t len)
{
    const sim_fd *rec = sim_current((sim_state *)io, fd);
    if (rec && rec->reset)
        return -ECONNRESET;
    return net_recv(fd, data, len);
}

int sim_connect(sim_state *st, int listen_fd)
{
    int pair[2];
    if (!sim_claim(st, listen_fd))
        return errno == EBADF ? -EBADF : -ENOMEM;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) < 0)
        return -errno;
    int host_end = pair[0], test_end = pair[1];
    if (!sim_claim(st, host_end) || !sim_claim(st, test_end)) {
        close(host_end);
        close(test_end);
        return -ENOMEM;
    }
    /* Taken only now: each claim may have moved the records (the second one the first's). */
    sim_fd *hrec = &st->fds[host_end], *trec = &st->fds[test_end], *lrec = &st->fds[listen_fd];
    hrec->partner = test_end;
    trec->partner = host_end;
    hrec->port = st->next_port;
    st->next_port = st->next_port < 65535 ? st->next_port + 1 : FIRST_PORT;
    if (lrec->queue_tail >= 0)
        st->fds[lrec->queue_tail].next_waiting = host_end;
    else
        lrec->queue_head = host_end;
    lrec->queue_tail = host_end;
    return test_end;
}

int sim_fail_accepts(sim_state *st, int listen_fd, int err, int count)
{
    sim_fd *rec = sim_claim(st, listen_fd);
    if (!rec)
        return errno == EBADF ? -EBADF : -ENOMEM;
    rec->accept_err = err;
    rec->accept_fails = count;
    return 0;
}

/* The host's end of the sim connection fd is either end of, or NULL. */
static sim_fd *host_end_of(sim_state *st, int fd)
{
    sim_fd *rec = sim_current(st, fd);
    if (!rec || rec->partner < 0)
        return NULL;
    return rec->port ? rec : sim_current(st, rec->partner);
}

int sim_shape_sends(sim_state *st, int fd, size_t max_write, int would_block)
{
    sim_fd *rec = host_end_of(st, fd);
    if (!rec)
        return -ENOTCONN;
    rec->max_write = max_write;
    rec->would_block = would_block;
    return 0;
}

int sim_reset(sim_state *st, int peer_fd)
{
    sim_fd *rec = host_end_of(st, peer_fd);
    if (!rec)
        return -ENOTCONN;
    rec->reset = 1;
    return 0;
}

int sim_waiting(sim_state *st, int listen_fd)
{
    const sim_fd *rec = sim_current(st, listen_fd);
    int n = 0;
    for (int w = rec ? rec->queue_head : -1; w >= 0; w = st->fds[w].next_waiting)
        n++;
    return n;
}

/* A sim connection is a socketpair, which has no TCP options: setting one (nodelay, say)
 * succeeds and does nothing, so a script runs on sim as it does over TCP. */
static int sim_setsockopt(const net_io *io, int fd, int level, int name, int value)
{
    if (level == IPPROTO_TCP && host_end_of((sim_state *)io, fd))
        return 0;
    return net_io_kernel.setsockopt(io, fd, level, name, value);
}

static const net_io sim_io = {
    .send = sim_send,
    .recv = sim_recv,
    .accept = sim_accept,
    .peername = sim_peername,
    .setsockopt = sim_setsockopt,
};

static const net_io *sim_io_of(void *state)
{
    return &((sim_state *)state)->io;
}

const sel_backend sel_backend_sim = {
    .name = "sim",
    .flags_ends = 1,
    .create = sim_create,
    .destroy = sim_destroy,
    .fd_limit = 0,
    .set = sim_set,
    .poll = sim_poll,
    .io = sim_io_of,
};
