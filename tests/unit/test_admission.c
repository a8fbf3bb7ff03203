/* test_admission.c: proves which connections the host takes on: none past
 * max_connections or beyond what the selector can watch (accepted and closed at once,
 * counted and logged), a round's share of a connect storm, and, when fds run out, the
 * waiting connections shed and accepting paused until the pause is over. The kernel's
 * accept is scripted; time is a virtual clock. */
#include "admission.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

/* An accept that fails with `fail` the next `fails` times, then hands out new fds (one
 * end of a socketpair each; the other end is closed) while `waiting` lasts. */
typedef struct scripted {
    net_io io;
    int fail, fails;
    int waiting;
} scripted;

static int scripted_accept(const net_io *io, int listen_fd, net_addr *peer)
{
    scripted *k = (scripted *)io;
    int sv[2];
    (void)listen_fd;
    memset(peer, 0, sizeof *peer);
    if (k->fails > 0) {
        k->fails--;
        return -k->fail;
    }
    if (k->waiting == 0)
        return -EAGAIN;
    k->waiting--;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return -errno;
    close(sv[1]);
    return sv[0];
}

static int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

typedef struct fixture {
    scripted k;
    timer_clock clock;
    lh_logger log;
    admission a;
} fixture;

static void setup(fixture *f, int watch_limit)
{
    memset(f, 0, sizeof *f);
    f->k.io = net_io_kernel;
    f->k.io.accept = scripted_accept;
    f->clock.is_virtual = 1;
    f->clock.virtual_now = 1000;
    f->log.level = LH_DEBUG;
    CHECK(lh_log_capture_start(&f->log) == 0);
    adm_init(&f->a, &f->log, &f->clock, &f->k.io, watch_limit);
    CHECK(f->a.spare_fd >= 0);
}

static void teardown(fixture *f)
{
    adm_free(&f->a);
    lh_log_capture_free(&f->log);
}

static const char *logged(const fixture *f)
{
    return f->log.capture->text ? f->log.capture->text : "";
}

/* Accepted connections are counted until closed; closing what was not accepted
 * changes no count. */
static void test_counts(void)
{
    fixture f;
    net_addr peer;
    const char *why = NULL;
    setup(&f, 0);
    f.k.waiting = 2;
    conn a, b, other;
    conn_init(&a, adm_accept(&f.a, 3, &peer, &why), CONN_SOCKET, 10);
    conn_init(&b, adm_accept(&f.a, 3, &peer, &why), CONN_SOCKET, 10);
    CHECK(a.fd >= 0 && b.fd >= 0 && f.a.connections == 2);
    CHECK(adm_accept(&f.a, 3, &peer, &why) == -EAGAIN);
    a.flags |= CONN_ACCEPTED;
    b.flags |= CONN_ACCEPTED;
    int fd = a.fd;
    adm_close(&f.a, &a);
    CHECK(a.fd == -1 && !fd_is_open(fd) && f.a.connections == 1);
    adm_close(&f.a, &a); /* twice: harmless */
    CHECK(f.a.connections == 1);
    conn_init(&other, dup(0), CONN_SOCKET, 10);
    adm_close(&f.a, &other);
    CHECK(f.a.connections == 1);
    adm_close(&f.a, &b);
    CHECK(f.a.connections == 0);
    teardown(&f);
}

/* Past max_connections, or on an fd the selector cannot watch, a connection is
 * accepted and closed at once, counted, and logged at most once a second. */
static void test_refusals(void)
{
    fixture f;
    net_addr peer;
    const char *why = NULL;
    setup(&f, 0);
    f.a.max_connections = 1;
    f.k.waiting = 3;
    int fd = adm_accept(&f.a, 3, &peer, &why);
    CHECK(fd >= 0);
    CHECK(adm_accept(&f.a, 3, &peer, &why) == ADM_REFUSED);
    CHECK(why && strstr(why, "--max-connections"));
    CHECK(adm_accept(&f.a, 3, &peer, &why) == ADM_REFUSED);
    CHECK(f.a.refused == 2 && f.a.connections == 1);
    CHECK(strstr(logged(&f), "refusing connections: too many connections") != NULL);
    CHECK(strstr(strstr(logged(&f), "refusing") + 1, "refusing") == NULL); /* once a second */
    close(fd);
    teardown(&f);

    setup(&f, 1); /* every fd is beyond a limit of 1 */
    f.k.waiting = 1;
    CHECK(adm_accept(&f.a, 3, &peer, &why) == ADM_REFUSED);
    CHECK(why && strstr(why, "beyond what the selector backend can watch"));
    CHECK(f.a.connections == 0 && f.a.refused == 1);
    teardown(&f);
}

/* While the host dispatches a round, a connect storm gets its share and then waits. */
static void test_round_share(void)
{
    fixture f;
    net_addr peer;
    const char *why = NULL;
    int fds[ADM_ACCEPTS_PER_ROUND];
    setup(&f, 0);
    f.k.waiting = ADM_ACCEPTS_PER_ROUND + 10;
    adm_begin_round(&f.a);
    for (int i = 0; i < ADM_ACCEPTS_PER_ROUND; i++)
        CHECK((fds[i] = adm_accept(&f.a, 3, &peer, &why)) >= 0);
    CHECK(adm_accept(&f.a, 3, &peer, &why) == -EAGAIN);
    adm_end_round(&f.a);
    int more = adm_accept(&f.a, 3, &peer, &why);
    CHECK(more >= 0); /* outside a round, no share applies */
    close(more);
    for (int i = 0; i < ADM_ACCEPTS_PER_ROUND; i++)
        close(fds[i]);
    teardown(&f);
}

/* Out of fds: the connections waiting are accepted with the spare fd's room and closed,
 * accepting pauses for ADM_PAUSE_SECONDS, and the spare is taken back. */
static void test_out_of_fds(void)
{
    fixture f;
    net_addr peer;
    const char *why = NULL;
    setup(&f, 0);
    f.k.fail = EMFILE;
    f.k.fails = 1;
    f.k.waiting = 3;
    CHECK(adm_accept(&f.a, 3, &peer, &why) == -EMFILE);
    CHECK(f.k.waiting == 0 && f.a.refused == 3 && f.a.connections == 0);
    CHECK(f.a.spare_fd >= 0);
    CHECK(adm_paused(&f.a));
    CHECK(adm_timeout_ms(&f.a) == (int)(ADM_PAUSE_SECONDS * 1000) + 1);
    CHECK(strstr(logged(&f), "out of file descriptors (Too many open files) with 0 "
                             "connections open: closed 3 waiting connections") != NULL);
    CHECK(!adm_resume_due(&f.a));
    f.clock.virtual_now += ADM_PAUSE_SECONDS;
    CHECK(adm_resume_due(&f.a));
    CHECK(!adm_resume_due(&f.a) && !adm_paused(&f.a) && adm_timeout_ms(&f.a) == -1);
    teardown(&f);
}

/* Regression: a second shed within a second of the first was never told (the line is
 * said once a second). It is counted with the refusals and said once the second has
 * passed, at the end of a round. */
static void test_out_of_fds_twice(void)
{
    fixture f;
    net_addr peer;
    const char *why = NULL;
    setup(&f, 0);
    f.k.fail = EMFILE;
    f.k.fails = 1;
    f.k.waiting = 3;
    CHECK(adm_accept(&f.a, 3, &peer, &why) == -EMFILE);
    f.clock.virtual_now += ADM_PAUSE_SECONDS;
    CHECK(adm_resume_due(&f.a));
    f.k.fails = 1;
    f.k.waiting = 5;
    CHECK(adm_accept(&f.a, 3, &peer, &why) == -EMFILE);
    CHECK(f.a.refused == 8 && f.a.refused_unsaid == 5);
    CHECK(strstr(logged(&f), "closed 5") == NULL);
    CHECK(adm_timeout_ms(&f.a) > 0);
    f.clock.virtual_now += 1.0;
    adm_begin_round(&f.a);
    adm_end_round(&f.a);
    CHECK(strstr(logged(&f), "refusing connections: out of file descriptors, waiting "
                             "connections closed (5 refused since the last such line, 8 "
                             "in all)") != NULL);
    CHECK(f.a.refused_unsaid == 0);
    teardown(&f);
}

/* Regression: "(1 refused so far)" was the only line when 168 were refused in that
 * second. The first refusal is said at once; the rest of the second's are counted and
 * said, all of them, once the second has passed, at the end of a round, whose timeout
 * wakes the loop for it; with nothing refused, nothing more is said. */
static void test_refusal_count(void)
{
    fixture f;
    net_addr peer;
    const char *why = NULL;
    setup(&f, 0);
    f.a.max_connections = 1;
    f.k.waiting = 170;
    int fd = adm_accept(&f.a, 3, &peer, &why);
    CHECK(fd >= 0);
    CHECK(adm_timeout_ms(&f.a) == -1);
    for (int i = 0; i < 168; i++)
        CHECK(adm_accept(&f.a, 3, &peer, &why) == ADM_REFUSED);
    CHECK(strstr(logged(&f), "(1 refused since the last such line, 1 in all)") != NULL);
    adm_end_round(&f.a); /* within the second: nothing more yet */
    CHECK(strstr(logged(&f), "167 refused") == NULL);
    CHECK(adm_timeout_ms(&f.a) > 0 && adm_timeout_ms(&f.a) <= 1001);
    f.clock.virtual_now += 1.0;
    CHECK(adm_timeout_ms(&f.a) == 0);
    adm_end_round(&f.a);
    CHECK(strstr(logged(&f), "refusing connections: too many connections (--max-connections) "
                             "(167 refused since the last such line, 168 in all)") != NULL);
    CHECK(adm_timeout_ms(&f.a) == -1);
    size_t len = f.log.capture->len;
    f.clock.virtual_now += 5.0;
    adm_end_round(&f.a);
    CHECK(f.log.capture->len == len);
    CHECK(adm_accept(&f.a, 3, &peer, &why) == ADM_REFUSED); /* a second on: said at once */
    CHECK(strstr(logged(&f), "(1 refused since the last such line, 169 in all)") != NULL);
    close(fd);
    teardown(&f);
}

/* With a watch limit, the ceiling is the fds below it not yet open, or max_connections
 * if that is fewer; without one, max_connections (0: no limit). */
static void test_ceiling(void)
{
    fixture f;
    setup(&f, 64);
    size_t free_fds = 0;
    for (int fd = 0; fd < 64; fd++)
        free_fds += !fd_is_open(fd);
    CHECK(adm_ceiling(&f.a) == free_fds);
    int extra = dup(0);
    CHECK(extra >= 0 && extra < 64 && adm_ceiling(&f.a) == free_fds - 1);
    close(extra);
    f.a.max_connections = 3;
    CHECK(adm_ceiling(&f.a) == 3);
    teardown(&f);
    setup(&f, 0);
    f.a.max_connections = 5;
    CHECK(adm_ceiling(&f.a) == 5);
    f.a.max_connections = 0;
    CHECK(adm_ceiling(&f.a) == SIZE_MAX);
    teardown(&f);
}

int main(void)
{
    test_counts();
    test_refusals();
    test_refusal_count();
    test_ceiling();
    test_round_share();
    test_out_of_fds();
    test_out_of_fds_twice();
    if (failures) {
        printf("test_admission: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_admission: %lu checks passed\n", checks);
    return 0;
}
