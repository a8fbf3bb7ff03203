/* test_linger.c: proves lingering closes: a closed connection's queued output is still
 * sent, in order, and its fd closed once all has gone; past the deadline what is left is
 * dropped, said in the log, and the fd closed with a reset (a TCP peer reads
 * ECONNRESET, not an end of stream); an accepted connection counts until then.
 * The kernel is real (a socketpair with small buffers); time is a virtual clock. */
#include "linger.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

typedef struct fixture {
    selector *sel;
    timer_clock clock;
    lh_logger log;
    admission adm;
    linger_list linger;
    int sv[2];
    conn c;
} fixture;

static void setup(fixture *f)
{
    char err[128];
    int small = 4096;
    memset(f, 0, sizeof *f);
    f->sel = sel_new("poll", err, sizeof err);
    CHECK(f->sel != NULL);
    f->clock.is_virtual = 1;
    f->clock.virtual_now = 1000;
    CHECK(lh_log_capture_start(&f->log) == 0);
    adm_init(&f->adm, &f->log, &f->clock, &net_io_kernel, 0);
    linger_init(&f->linger, f->sel, &f->adm, &f->log, &f->clock);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, f->sv) == 0);
    CHECK(fcntl(f->sv[0], F_SETFL, O_NONBLOCK) == 0);
    CHECK(setsockopt(f->sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    conn_init(&f->c, f->sv[0], CONN_SOCKET, 1 << 20);
    f->c.flags |= CONN_ACCEPTED;
    f->adm.connections = 1;
}

static void teardown(fixture *f)
{
    linger_close_all(&f->linger);
    adm_free(&f->adm);
    sel_free(f->sel);
    close(f->sv[1]);
    lh_log_capture_free(&f->log);
}

/* Queues `len` bytes of a pattern on the connection (the kernel takes only some). */
static size_t queue_output(fixture *f, char *data, size_t len)
{
    for (size_t i = 0; i < len; i++)
        data[i] = (char)('a' + i % 26);
    ssize_t pending = conn_write(&f->c, f->sel, &net_io_kernel, data, len, NULL);
    CHECK(pending > 0);
    return (size_t)pending;
}

/* Runs the selector once and flushes what it says is writable. */
static void step(fixture *f)
{
    int n = sel_select(f->sel, 100);
    for (int i = 0; i < n; i++) {
        const sel_fired *fired = sel_fired_at(f->sel, i);
        const sel_key *k = sel_slot(f->sel, fired->fd);
        conn *owner = (conn *)sel_host_data(f->sel, fired->fd);
        if (k && owner && owner->kind == CONN_LINGER)
            linger_flush(&f->linger, (linger_rec *)owner);
    }
}

static void test_sends_the_rest_then_closes(void)
{
    fixture f;
    static char data[256 * 1024], got[256 * 1024];
    size_t received = 0;
    setup(&f);
    queue_output(&f, data, sizeof data);
    int fd = f.c.fd;
    linger_add(&f.linger, &f.c);
    CHECK(f.c.fd == -1 && f.c.out == NULL); /* the record has taken both */
    CHECK(f.linger.count == 1 && f.adm.connections == 1);
    for (int rounds = 0; rounds < 10000 && f.linger.count > 0; rounds++) {
        ssize_t n = read(f.sv[1], got + received, sizeof got - received);
        if (n > 0)
            received += (size_t)n;
        step(&f);
    }
    while (received < sizeof got) {
        ssize_t n = read(f.sv[1], got + received, sizeof got - received);
        if (n <= 0)
            break;
        received += (size_t)n;
    }
    CHECK(f.linger.count == 0 && f.adm.connections == 0);
    CHECK(fcntl(fd, F_GETFD) < 0 || sel_slot(f.sel, fd) == NULL);
    CHECK(received == sizeof data && memcmp(got, data, sizeof data) == 0);
    CHECK(read(f.sv[1], got, 1) == 0); /* then the end of the stream */
    teardown(&f);
}

static void test_deadline_drops(void)
{
    fixture f;
    static char data[256 * 1024];
    setup(&f);
    size_t pending = queue_output(&f, data, sizeof data);
    linger_add(&f.linger, &f.c);
    CHECK(linger_timeout_ms(&f.linger) == (int)(LINGER_SECONDS * 1000) + 1);
    f.clock.virtual_now += LINGER_SECONDS - 0.001;
    linger_expire(&f.linger);
    CHECK(f.linger.count == 1);
    f.clock.virtual_now += 0.002;
    CHECK(linger_timeout_ms(&f.linger) == 0);
    linger_expire(&f.linger);
    CHECK(f.linger.count == 0 && f.adm.connections == 0 && linger_timeout_ms(&f.linger) == -1);
    char want[128];
    snprintf(want, sizeof want,
             "closing fd %d: output not taken within 5 s of closing; reset, %zu bytes of "
             "output dropped",
             f.sv[0], pending);
    CHECK(strstr(f.log.capture->text, want) != NULL);
    CHECK(sel_host_count(f.sel) == 0);
    teardown(&f);
}

/* A TCP peer that never read: past the deadline, and when the host stops with output
 * still lingering, the peer reads what arrived and then a reset, not an end of stream
 * that would pass the cut output off as whole; the log names the peer and the count. */
static void test_reset_over_tcp(int at_stop)
{
    fixture f;
    static char data[1024 * 1024], got[65536];
    setup(&f);
    int ls = net_socket(AF_INET, SOCK_STREAM, 0), cl = net_socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    net_addr addr, client;
    char err[64], want[160], peer[NET_ADDRSTRLEN];
    CHECK(net_resolve("127.0.0.1", 0, 1, &addr, err, sizeof err) == 0);
    CHECK(net_bind_listen(ls, &addr, 4, 0) == 0 && net_sockname(ls, &addr) == 0);
    CHECK(setsockopt(cl, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    CHECK(net_connect(cl, &addr) == 0);
    close(f.c.fd);
    f.c.fd = net_accept(ls, &client);
    CHECK(f.c.fd >= 0 && net_sockname(cl, &client) == 0);
    CHECK(setsockopt(f.c.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    net_addr_format(&client, peer, sizeof peer);
    size_t pending = queue_output(&f, data, sizeof data);
    linger_add(&f.linger, &f.c);
    if (at_stop) {
        linger_close_all(&f.linger);
        snprintf(want, sizeof want, "closing %s: the host is stopping; reset, %zu bytes", peer,
                 pending);
    } else {
        f.clock.virtual_now += LINGER_SECONDS + 1;
        linger_expire(&f.linger);
        snprintf(want, sizeof want,
                 "closing %s: output not taken within 5 s of closing; reset, "
                 "%zu bytes",
                 peer, pending);
    }
    CHECK(f.linger.count == 0 && f.adm.connections == 0);
    CHECK(strstr(f.log.capture->text, want) != NULL);
    ssize_t n;
    size_t received = 0;
    while ((n = net_recv(cl, got, sizeof got)) > 0)
        received += (size_t)n;
    CHECK(n == -ECONNRESET);
    CHECK(received < sizeof data - pending + 1);
    close(cl);
    close(ls);
    teardown(&f);
}

/* Without a selector to flush through, the output is dropped and the fd closed now. */
static void test_no_selector(void)
{
    fixture f;
    static char data[256 * 1024];
    setup(&f);
    queue_output(&f, data, sizeof data);
    int fd = f.c.fd;
    conn_drop(&f.c, f.sel);
    f.linger.sel = NULL;
    CHECK(conn_write(&f.c, f.sel, &net_io_kernel, "x", 1, NULL) >= 0);
    linger_add(&f.linger, &f.c);
    CHECK(f.c.fd == -1 && f.linger.count == 0 && f.adm.connections == 0);
    CHECK(fcntl(fd, F_GETFD) < 0);
    teardown(&f);
}

int main(void)
{
    test_sends_the_rest_then_closes();
    test_deadline_drops();
    test_reset_over_tcp(0);
    test_reset_over_tcp(1);
    test_no_selector();
    if (failures) {
        printf("test_linger: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_linger: %lu checks passed\n", checks);
    return 0;
}
