/* test_conn.c: proves a connection's output side: a write sends what the kernel takes and
 * queues only the rest, in order; past the limit nothing is queued; the host's WRITE
 * interest is asked for exactly while bytes are pending; reads pause above high water
 * and resume below low water; shutdown("w") waits for the queue. The kernel is a
 * scripted net_io, so partial and refused sends happen when the test says. */
#include "conn.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "selector.h"

/* A kernel that takes at most `take` bytes per send and `room` in all before it would
 * block (SIZE_MAX: no end), recording all it took; or fails with `fail` when set. */
typedef struct scripted {
    net_io io; /* first: the conn's calls come here */
    size_t take;
    size_t room;
    int fail;
    char sent[1 << 20];
    size_t nsent;
    int calls;
} scripted;

static ssize_t scripted_send(const net_io *io, int fd, const void *data, size_t len)
{
    scripted *k = (scripted *)io;
    (void)fd;
    k->calls++;
    if (k->fail)
        return -k->fail;
    size_t n = len < k->take ? len : k->take;
    n = n < k->room ? n : k->room;
    if (n == 0)
        return -EAGAIN;
    memcpy(k->sent + k->nsent, data, n);
    k->nsent += n;
    if (k->room != SIZE_MAX)
        k->room -= n;
    return (ssize_t)n;
}

static scripted *new_scripted(size_t take)
{
    scripted *k = calloc(1, sizeof *k);
    k->io = net_io_kernel;
    k->io.send = scripted_send;
    k->take = take;
    k->room = SIZE_MAX;
    return k;
}

/* A connection on one end of a socketpair, registered for READ like a script's. */
typedef struct fixture {
    selector *sel;
    int sv[2];
    conn c;
} fixture;

static void setup(fixture *f, uint32_t limit)
{
    char err[128];
    f->sel = sel_new("poll", err, sizeof err);
    CHECK(f->sel != NULL);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, f->sv) == 0);
    conn_init(&f->c, f->sv[0], CONN_SOCKET, limit);
    CHECK(sel_register(f->sel, f->sv[0], SEL_READ) == 0);
}

static void teardown(fixture *f)
{
    conn_free(&f->c);
    sel_free(f->sel);
    close(f->sv[0]);
    close(f->sv[1]);
}

static int host_events(const fixture *f)
{
    const sel_key *k = sel_slot(f->sel, f->c.fd);
    return k ? k->host_events : 0;
}

static int paused(const fixture *f)
{
    const sel_key *k = sel_slot(f->sel, f->c.fd);
    return k ? k->paused : 0;
}

/* A write the kernel takes whole queues nothing and asks for no writability. */
static void test_write_through(void)
{
    fixture f;
    scripted *k = new_scripted(1000);
    setup(&f, 4096);
    CHECK(conn_write(&f.c, f.sel, &k->io, "hello", 5, NULL) == 0);
    CHECK(conn_pending(&f.c) == 0 && f.c.out == NULL);
    CHECK(host_events(&f) == 0);
    CHECK(k->nsent == 5 && memcmp(k->sent, "hello", 5) == 0);
    teardown(&f);
    free(k);
}

/* The rest of a partial send is queued, sent in order on flush, and the host's interest
 * lasts exactly until it is all gone. */
static void test_partial_then_flush(void)
{
    fixture f;
    scripted *k = new_scripted(3);
    setup(&f, 4096);
    CHECK(conn_write(&f.c, f.sel, &k->io, "abcdefgh", 8, NULL) == 5);
    CHECK(host_events(&f) == SEL_WRITE);
    /* While bytes are queued, a new write does not overtake them: it is queued too. */
    int calls = k->calls;
    CHECK(conn_write(&f.c, f.sel, &k->io, "ij", 2, NULL) == 7);
    CHECK(k->calls == calls);
    k->take = 4;
    CHECK(conn_flush(&f.c, f.sel, &k->io) == 0);
    CHECK(conn_pending(&f.c) == 0 && f.c.out == NULL);
    CHECK(host_events(&f) == 0);
    CHECK(k->nsent == 10 && memcmp(k->sent, "abcdefghij", 10) == 0);
    teardown(&f);
    free(k);
}

/* A flush the kernel refuses keeps everything; one that fails drops the queue and says
 * why. */
static void test_flush_blocked_and_failed(void)
{
    fixture f;
    scripted *k = new_scripted(0);
    setup(&f, 4096);
    CHECK(conn_write(&f.c, f.sel, &k->io, "queued", 6, NULL) == 6);
    CHECK(conn_flush(&f.c, f.sel, &k->io) == 6);
    CHECK(host_events(&f) == SEL_WRITE);
    k->fail = ECONNRESET;
    CHECK(conn_flush(&f.c, f.sel, &k->io) == -ECONNRESET);
    CHECK(conn_pending(&f.c) == 0 && host_events(&f) == 0);
    teardown(&f);
    free(k);
}

/* Past the limit a write queues nothing (what the kernel took at once was sent), and
 * what was queued before stays. */
static void test_limit(void)
{
    fixture f;
    scripted *k = new_scripted(0);
    setup(&f, 100);
    char data[200];
    memset(data, 'x', sizeof data);
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 60, NULL) == 60);
    size_t refused = 0;
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 41, &refused) == -ENOBUFS);
    CHECK(refused == 41);
    CHECK(conn_pending(&f.c) == 60);
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 40, NULL) == 100);
    teardown(&f);
    free(k);

    /* Only what the kernel leaves counts against the limit. */
    setup(&f, 100);
    k = new_scripted(150);
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 200, NULL) == 50);
    k->take = 0;
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 51, NULL) == -ENOBUFS);
    CHECK(conn_pending(&f.c) == 50);
    teardown(&f);
    free(k);

    /* The kernel took part of a write that then passed the limit: the rest is refused,
     * which the caller must count as output lost (it resets the connection). */
    setup(&f, 100);
    k = new_scripted(30);
    refused = 0;
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 200, &refused) == -ENOBUFS);
    CHECK(refused == 170);
    CHECK(conn_pending(&f.c) == 0);
    teardown(&f);
    free(k);
}

/* Reads pause above a quarter of the limit and resume below a sixteenth; pausing is
 * about the script's READ only and never touches its registration. */
static void test_backpressure(void)
{
    fixture f;
    scripted *k = new_scripted(0);
    setup(&f, 1600); /* high water 400, low water 100 */
    CHECK(conn_high_water(&f.c) == 400 && conn_low_water(&f.c) == 100);
    char data[1600];
    memset(data, 'y', sizeof data);
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 400, NULL) == 400);
    CHECK(paused(&f) == 0);
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 1, NULL) == 401);
    CHECK(paused(&f) == SEL_READ && (f.c.flags & CONN_PAUSED));
    CHECK(sel_get(f.sel, f.c.fd)->events == SEL_READ);
    k->take = 1000;
    k->room = 300; /* 101 left: still at or above low water */
    CHECK(conn_flush(&f.c, f.sel, &k->io) == 101);
    CHECK(paused(&f) == SEL_READ);
    k->room = 2; /* 99 left: below low water */
    CHECK(conn_flush(&f.c, f.sel, &k->io) > 0);
    CHECK(paused(&f) == 0 && !(f.c.flags & CONN_PAUSED));
    teardown(&f);
    free(k);
}

/* shutdown("w") with bytes queued waits for them; nothing may be written after it. */
static void test_shutdown_write(void)
{
    fixture f;
    scripted *k = new_scripted(0);
    char got[16];
    setup(&f, 4096);
    CHECK(conn_write(&f.c, f.sel, &k->io, "tail", 4, NULL) == 4);
    CHECK(conn_shutdown_write(&f.c, f.sel) == 0);
    CHECK(conn_write(&f.c, f.sel, &k->io, "more", 4, NULL) == -EPIPE);
    /* The real kernel now: the queued bytes reach the peer, then its end of stream. */
    CHECK(conn_flush(&f.c, f.sel, &net_io_kernel) == 0);
    CHECK(read(f.sv[1], got, sizeof got) == 4 && memcmp(got, "tail", 4) == 0);
    CHECK(read(f.sv[1], got, sizeof got) == 0);
    teardown(&f);
    free(k);
}

/* Dropping discards the queue and withdraws the host's interest and the pause. */
static void test_drop(void)
{
    fixture f;
    scripted *k = new_scripted(0);
    setup(&f, 100);
    char data[50];
    memset(data, 'z', sizeof data);
    CHECK(conn_write(&f.c, f.sel, &k->io, data, 50, NULL) == 50);
    CHECK(paused(&f) == SEL_READ && host_events(&f) == SEL_WRITE);
    conn_drop(&f.c, f.sel);
    CHECK(conn_pending(&f.c) == 0 && f.c.out == NULL);
    CHECK(paused(&f) == 0 && host_events(&f) == 0);
    CHECK(sel_get(f.sel, f.c.fd) != NULL); /* the script's registration stays */
    teardown(&f);
    free(k);
}

int main(void)
{
    test_write_through();
    test_partial_then_flush();
    test_flush_blocked_and_failed();
    test_limit();
    test_backpressure();
    test_shutdown_write();
    test_drop();
    if (failures) {
        printf("test_conn: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_conn: %lu checks passed\n", checks);
    return 0;
}
