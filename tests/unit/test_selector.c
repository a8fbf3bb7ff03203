/* test_selector.c: proves the selector's Python-selectors semantics, readiness, stale
 * events and limits on every compiled backend, and that no fd is left open. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "selector.h"

static int checks, failures;
static const char *backend = "any"; /* the backend under test, for failure messages */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: [%s] check failed: %s\n", __FILE__, __LINE__, backend, #cond); \
        }                                                                                          \
    } while (0)

/* A selector on the backend under test; aborts the run if one cannot be made. */
static selector *new_sel(void)
{
    char err[128];
    selector *sel = sel_new(backend, err, sizeof(err));
    if (!sel) {
        fprintf(stderr, "cannot create %s selector: %s\n", backend, err);
        exit(1);
    }
    return sel;
}

static void make_pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
        perror("socketpair");
        exit(1);
    }
}

static void send_byte(int fd)
{
    CHECK(write(fd, "x", 1) == 1);
}

static void close_pair(int sv[2])
{
    close(sv[0]);
    close(sv[1]);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* The mask reported for fd by a zero-timeout select, 0 if none, -1 on failure. */
static int ready_mask(selector *sel, int fd)
{
    int n = sel_select(sel, 0), mask = 0;
    if (n < 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (sel_fired_at(sel, i)->fd == fd)
            mask = sel_fired_at(sel, i)->mask;
    return mask;
}

/* The lowest free fd: unchanged across a test means the test closed all it opened. */
static int lowest_free_fd(void)
{
    int fd = dup(0);
    close(fd);
    return fd;
}

static void test_names(void)
{
    const char *const *names = sel_backend_names();
    char err[128] = "";
    selector *sel = sel_new(NULL, err, sizeof(err));
    CHECK(sel != NULL);
    CHECK(names[0] != NULL);
    if (sel && names[0])
        CHECK(strcmp(sel_backend_name(sel), names[0]) == 0);
    sel_free(sel);
    CHECK(sel_new("foo", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "unknown selector backend \"foo\"") != NULL);
    CHECK(strstr(err, "available: ") && strstr(err, "select"));
    CHECK(sel_new("foo", NULL, 0) == NULL);
}

static void test_errors(void)
{
    selector *sel = new_sel();
    int sv[2];
    make_pair(sv);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    CHECK(sel_register(sel, sv[0], SEL_WRITE) == -EEXIST);
    CHECK(strstr(sel_error(sel), "already registered") != NULL);
    CHECK(sel_get(sel, sv[0])->events == SEL_READ);
    CHECK(sel_register(sel, sv[1], 0) == -EINVAL);
    CHECK(strstr(sel_error(sel), "invalid events 0") != NULL);
    CHECK(sel_register(sel, sv[1], 4) == -EINVAL);
    CHECK(sel_modify(sel, sv[0], 4) == -EINVAL);
    CHECK(sel_get(sel, sv[0])->events == SEL_READ);
    int rc = sel_register(sel, -1, SEL_READ);
    CHECK(rc == -EINVAL || rc == -EBADF);
    CHECK(sel_modify(sel, sv[1], SEL_READ) == -ENOENT);
    CHECK(strstr(sel_error(sel), "is not registered") != NULL);
    CHECK(sel_unregister(sel, sv[1]) == -ENOENT);
    CHECK(sel_set_paused(sel, sv[1], SEL_READ) == -ENOENT);
    CHECK(sel_set_host_events(sel, sv[1], 4, NULL) == -EINVAL);
    CHECK(sel_count(sel) == 1);
    CHECK(sel_fired_at(sel, 0) == NULL);
    sel_free(sel);
    close_pair(sv);
}

/* A closed fd is refused by the backend and leaves no slot behind; one that was closed
 * while registered can still be unregistered, or its number could never be reused. */
static void test_closed_fd(void)
{
    selector *sel = new_sel();
    int sv[2];
    make_pair(sv);
    int closed = sv[1];
    close(closed);
    int rc = sel_register(sel, closed, SEL_READ);
    CHECK(rc == -EBADF);
    CHECK(sel_error(sel)[0] != '\0');
    CHECK(sel_get(sel, closed) == NULL && sel_slot(sel, closed) == NULL);
    CHECK(sel_count(sel) == 0);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    close(sv[0]);
    CHECK(sel_unregister(sel, sv[0]) == 0);
    CHECK(sel_count(sel) == 0 && sel_slot(sel, sv[0]) == NULL);
    sel_free(sel);
}

/* An fd closed behind the selector's back while registered never fails the wait: epoll
 * forgets it, poll (POLLNVAL) and select (EBADF) report it as a hang-up, and once it is
 * unregistered the other fds are served. */
static void test_closed_while_registered(void)
{
    selector *sel = new_sel();
    int sv[2], ready[2];
    make_pair(sv);
    make_pair(ready);
    CHECK(write(ready[1], "x", 1) == 1);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    CHECK(sel_register(sel, ready[0], SEL_READ) == 0);
    close(sv[0]);
    int n = sel_select(sel, 0), hangups = 0;
    CHECK(n >= 0);
    for (int i = 0; i < n; i++) {
        const sel_fired *f = sel_fired_at(sel, i);
        if (f->fd == sv[0])
            hangups += (f->mask & SEL_HANGUP) != 0;
    }
    CHECK(hangups == (strcmp(backend, "epoll") == 0 ? 0 : 1));
    CHECK(sel_unregister(sel, sv[0]) == 0);
    CHECK(ready_mask(sel, ready[0]) == SEL_READ);
    sel_free(sel);
    close(sv[1]);
    close_pair(ready);
}

static void test_readiness(void)
{
    selector *sel = new_sel();
    int sv[2], p[2];
    make_pair(sv);
    CHECK(pipe(p) == 0);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    CHECK(sel_register(sel, p[0], SEL_READ) == 0);
    CHECK(sel_select(sel, 0) == 0);
    send_byte(sv[1]);
    CHECK(sel_select(sel, 0) == 1);
    CHECK(sel_fired_at(sel, 0)->fd == sv[0] && sel_fired_at(sel, 0)->mask == SEL_READ);
    CHECK(sel_deliverable(sel, sel_fired_at(sel, 0)) == SEL_READ);
    CHECK(sel_fired_at(sel, 1) == NULL);
    CHECK(sel_register(sel, p[1], SEL_WRITE) == 0);
    CHECK(ready_mask(sel, p[1]) == SEL_WRITE);
    CHECK(ready_mask(sel, p[0]) == 0);
    send_byte(p[1]);
    CHECK(ready_mask(sel, p[0]) == SEL_READ);
    CHECK(sel_select(sel, 0) == 3);
    CHECK(sel_count(sel) == 3 && sel_capacity(sel) > p[1]);
    sel_free(sel);
    close_pair(sv);
    close_pair(p);
}

static void test_modify(void)
{
    selector *sel = new_sel();
    int sv[2];
    make_pair(sv);
    send_byte(sv[1]);
    CHECK(sel_register(sel, sv[0], SEL_BOTH) == 0);
    CHECK(ready_mask(sel, sv[0]) == SEL_BOTH);
    uint32_t gen = sel_get(sel, sv[0])->gen;
    CHECK(gen != 0);
    CHECK(sel_modify(sel, sv[0], SEL_WRITE) == 0);
    CHECK(ready_mask(sel, sv[0]) == SEL_WRITE);
    CHECK(sel_modify(sel, sv[0], SEL_READ) == 0);
    CHECK(ready_mask(sel, sv[0]) == SEL_READ);
    CHECK(sel_get(sel, sv[0])->gen == gen);
    CHECK(sel_get(sel, sv[0])->armed == SEL_READ);
    /* A fired WRITE that the script stopped watching mid-batch is not delivered. */
    CHECK(sel_modify(sel, sv[0], SEL_BOTH) == 0);
    CHECK(sel_select(sel, 0) == 1);
    CHECK(sel_modify(sel, sv[0], SEL_READ) == 0);
    CHECK(sel_deliverable(sel, sel_fired_at(sel, 0)) == SEL_READ);
    CHECK(sel_unregister(sel, sv[0]) == 0);
    CHECK(sel_get(sel, sv[0]) == NULL && sel_count(sel) == 0);
    CHECK(sel_select(sel, 0) == 0);
    sel_free(sel);
    close_pair(sv);
}

/* The host's interest survives pausing and unregistering; paused events stay off the
 * backend but remain the script's events. */
static void test_host_and_paused(void)
{
    selector *sel = new_sel();
    int sv[2], owner;
    make_pair(sv);
    send_byte(sv[1]);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    uint32_t gen = sel_get(sel, sv[0])->gen;
    CHECK(sel_set_host_events(sel, sv[0], SEL_WRITE, &owner) == 0);
    CHECK(sel_host_data(sel, sv[0]) == &owner);
    CHECK(ready_mask(sel, sv[0]) == SEL_BOTH);
    CHECK(sel_set_paused(sel, sv[0], SEL_READ) == 0);
    CHECK(sel_get(sel, sv[0])->events == SEL_READ);
    CHECK(sel_get(sel, sv[0])->armed == SEL_WRITE);
    CHECK(ready_mask(sel, sv[0]) == SEL_WRITE);
    CHECK(sel_set_paused(sel, sv[0], 0) == 0);
    CHECK(ready_mask(sel, sv[0]) == SEL_BOTH);
    CHECK(sel_unregister(sel, sv[0]) == 0);
    CHECK(sel_get(sel, sv[0]) == NULL && sel_slot(sel, sv[0]) != NULL);
    CHECK(sel_slot(sel, sv[0])->gen == gen && sel_count(sel) == 0);
    CHECK(sel_select(sel, 0) == 1);
    CHECK(sel_fired_at(sel, 0)->mask == SEL_WRITE);
    CHECK(sel_deliverable(sel, sel_fired_at(sel, 0)) == SEL_WRITE);
    CHECK(sel_set_host_events(sel, sv[0], 0, NULL) == 0);
    CHECK(sel_slot(sel, sv[0]) == NULL);
    CHECK(sel_set_host_events(sel, sv[0], 0, NULL) == 0);
    CHECK(sel_select(sel, 0) == 0);
    sel_free(sel);
    close_pair(sv);
}

/* Hang-up wakes both directions, but only those the slot watches are reported, with
 * SEL_HANGUP beside them where the backend can tell (select(2) cannot). */
static void test_hangup(void)
{
    selector *sel = new_sel();
    int hup = strcmp(backend, "select") == 0 ? 0 : SEL_HANGUP;
    /* epoll and poll also say the peer shut its side, where READ is watched on a socket. */
    int eof = strcmp(backend, "select") == 0 ? 0 : SEL_PEER_CLOSED;
    int sv[2], p[2];
    make_pair(sv);
    CHECK(pipe(p) == 0);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    CHECK(sel_register(sel, p[0], SEL_READ) == 0);
    CHECK(sel_select(sel, 0) == 0);
    close(sv[1]);
    close(p[1]);
    CHECK(ready_mask(sel, sv[0]) == (SEL_READ | hup | eof));
    CHECK(ready_mask(sel, p[0]) == (SEL_READ | hup));
    CHECK(sel_modify(sel, sv[0], SEL_BOTH) == 0);
    CHECK(ready_mask(sel, sv[0]) == (SEL_BOTH | hup | eof));
    CHECK(sel_modify(sel, sv[0], SEL_WRITE) == 0);
    CHECK(ready_mask(sel, sv[0]) == (SEL_WRITE | hup));
    /* sel_deliverable never reports it: it is not an interest a key can have. */
    int n = sel_select(sel, 0);
    for (int i = 0; i < n; i++)
        if (sel_fired_at(sel, i)->fd == sv[0])
            CHECK(sel_deliverable(sel, sel_fired_at(sel, i)) == SEL_WRITE);
    sel_free(sel);
    close(sv[0]);
    close(p[0]);
}

static int find_fired(selector *sel, int n, int fd)
{
    for (int i = 0; i < n; i++)
        if (sel_fired_at(sel, i)->fd == fd)
            return i;
    return -1;
}

/* A callback that unregisters another ready fd must stop its event in the same batch. */
static void test_same_batch_unregister(void)
{
    selector *sel = new_sel();
    int a[2], b[2];
    make_pair(a);
    make_pair(b);
    send_byte(a[1]);
    send_byte(b[1]);
    CHECK(sel_register(sel, a[0], SEL_READ) == 0);
    CHECK(sel_register(sel, b[0], SEL_READ) == 0);
    int n = sel_select(sel, 0), ia = find_fired(sel, n, a[0]), ib = find_fired(sel, n, b[0]);
    CHECK(n == 2 && ia >= 0 && ib >= 0);
    if (ia >= 0 && ib >= 0) {
        CHECK(sel_deliverable(sel, sel_fired_at(sel, ia)) == SEL_READ);
        CHECK(sel_unregister(sel, b[0]) == 0);
        CHECK(sel_deliverable(sel, sel_fired_at(sel, ib)) == 0);
        CHECK(sel_deliverable(sel, sel_fired_at(sel, ia)) == SEL_READ);
    }
    sel_free(sel);
    close_pair(a);
    close_pair(b);
}

/* An fd closed and reopened under the same number within one batch gets a new
 * generation, so the old event does not reach the new registration. */
static void test_fd_reuse(void)
{
    selector *sel = new_sel();
    int a[2], c[2];
    make_pair(a);
    send_byte(a[1]);
    int x = a[0];
    CHECK(sel_register(sel, x, SEL_READ) == 0);
    CHECK(sel_select(sel, 0) == 1);
    const sel_fired *stale = sel_fired_at(sel, 0);
    uint32_t old_gen = stale->gen;
    CHECK(stale->fd == x && old_gen == sel_get(sel, x)->gen);
    CHECK(sel_unregister(sel, x) == 0);
    close_pair(a);
    make_pair(c);
    if (c[0] != x) {
        CHECK(dup2(c[0], x) == x);
        close(c[0]);
        c[0] = x;
    }
    send_byte(c[1]);
    CHECK(sel_register(sel, x, SEL_READ) == 0);
    CHECK(sel_get(sel, x)->gen != old_gen);
    CHECK(sel_deliverable(sel, stale) == 0);
    CHECK(ready_mask(sel, x) == SEL_READ);
    CHECK(sel_deliverable(sel, sel_fired_at(sel, 0)) == SEL_READ);
    sel_free(sel);
    close_pair(c);
}

/* More ready fds than the first batch holds are all reported in one call. */
static void test_many_ready(void)
{
    enum { N = 100 };
    selector *sel = new_sel();
    int pairs[N][2], ok = 1;
    for (int i = 0; i < N; i++) {
        make_pair(pairs[i]);
        send_byte(pairs[i][1]);
        ok &= sel_register(sel, pairs[i][0], SEL_READ) == 0;
    }
    CHECK(ok);
    CHECK(sel_count(sel) == N);
    CHECK(sel_select(sel, 0) == N);
    for (int i = 0; i < N; i++)
        ok &= sel_unregister(sel, pairs[i][0]) == 0;
    CHECK(ok && sel_count(sel) == 0);
    CHECK(sel_select(sel, 0) == 0);
    for (int i = 0; i < N; i++)
        close_pair(pairs[i]);
    sel_free(sel);
}

/* The state test_churn expects one fd to have. */
typedef struct model_key {
    int fd, registered, events, host, paused, has_data;
} model_key;

static int model_expected(const model_key *m)
{
    int armed = ((m->events & ~m->paused) | m->host) & SEL_BOTH;
    return (SEL_WRITE | (m->has_data ? SEL_READ : 0)) & armed;
}

/* Makes one random change through the selector and to m; 0 if the result disagrees. */
static int model_step(selector *sel, model_key *m)
{
    int ev = 1 + rand() % 3, used = m->registered || m->host, want, rc;
    switch (rand() % 5) {
    case 0:
        want = m->registered ? -EEXIST : 0;
        rc = sel_register(sel, m->fd, ev);
        if (!m->registered)
            m->registered = 1, m->events = ev;
        break;
    case 1:
        want = m->registered ? 0 : -ENOENT;
        rc = sel_modify(sel, m->fd, ev);
        if (m->registered)
            m->events = ev;
        break;
    case 2:
        want = m->registered ? 0 : -ENOENT;
        rc = sel_unregister(sel, m->fd);
        m->registered = m->events = 0;
        break;
    case 3:
        want = 0;
        m->host = ev % 4;
        rc = sel_set_host_events(sel, m->fd, m->host, NULL);
        break;
    default:
        want = used ? 0 : -ENOENT;
        rc = sel_set_paused(sel, m->fd, ev % 4);
        if (used)
            m->paused = ev % 4;
    }
    if (!m->registered && !m->host)
        m->paused = 0;
    return rc == want;
}

/* Random changes over many fds, checked after each against a model: proves the
 * selector's and every backend's bookkeeping (packing, maps, maxfd) stay in step. */
static void test_churn(void)
{
    enum { N = 12, STEPS = 600 };
    selector *sel = new_sel();
    model_key m[N];
    int pairs[N][2], bad_rc = 0, bad_mask = 0, bad_count = 0;
    srand(42);
    for (int i = 0; i < N; i++) {
        make_pair(pairs[i]);
        m[i] = (model_key){.fd = pairs[i][0], .has_data = i % 2};
        if (m[i].has_data)
            send_byte(pairs[i][1]);
    }
    for (int step = 0; step < STEPS; step++) {
        model_key *k = &m[rand() % N];
        size_t count = 0;
        bad_rc += !model_step(sel, k);
        for (int i = 0; i < N; i++) {
            bad_mask += ready_mask(sel, m[i].fd) != model_expected(&m[i]);
            count += (size_t)m[i].registered;
        }
        bad_count += sel_count(sel) != count;
    }
    CHECK(bad_rc == 0);
    CHECK(bad_mask == 0);
    CHECK(bad_count == 0);
    for (int i = 0; i < N; i++)
        close_pair(pairs[i]);
    sel_free(sel);
}

/* Raises the soft fd limit to the hard one, to reach fd numbers past FD_SETSIZE. */
static int fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur > 1 << 20 ? 1 << 20 : (int)rl.rlim_cur;
}

/* Registers a dup of a socketpair end at fd number `at` and checks it is reported. */
static void check_fd_at(int at, int expect_rc)
{
    selector *sel = new_sel();
    int sv[2];
    make_pair(sv);
    CHECK(dup2(sv[0], at) == at);
    send_byte(sv[1]);
    CHECK(sel_register(sel, at, SEL_READ) == expect_rc);
    if (expect_rc == 0) {
        CHECK(sel_capacity(sel) == at + 1 && sel_get(sel, at) != NULL);
        CHECK(ready_mask(sel, at) == SEL_READ);
        CHECK(sel_unregister(sel, at) == 0);
    } else {
        CHECK(strstr(sel_error(sel), "FD_SETSIZE") != NULL);
        CHECK(sel_set_host_events(sel, at, SEL_WRITE, NULL) == expect_rc);
        CHECK(sel_slot(sel, at) == NULL && sel_capacity(sel) <= at);
    }
    CHECK(sel_select(sel, 0) == 0);
    close(at);
    sel_free(sel);
    close_pair(sv);
}

/* High fd numbers: the table grows past its first allocation, FD_SETSIZE - 1 works
 * everywhere, and the select backend refuses FD_SETSIZE and above with -ERANGE. */
static void test_high_fd(void)
{
    int limit = fd_limit(), is_select = strcmp(backend, "select") == 0;
    int high = FD_SETSIZE + 76 < limit ? FD_SETSIZE + 76 : limit - 1;
    if (!is_select && high >= 200) {
        check_fd_at(high, 0);
    } else if (is_select && high >= FD_SETSIZE) {
        check_fd_at(high, -ERANGE);
    } else {
        printf("test_selector: [%s] skipped fd %d (RLIMIT_NOFILE %d too low)\n", backend,
               FD_SETSIZE + 76, limit);
        CHECK(1);
    }
    if (limit >= FD_SETSIZE) {
        check_fd_at(FD_SETSIZE - 1, 0);
    } else {
        printf("test_selector: [%s] skipped fd %d (RLIMIT_NOFILE %d too low)\n", backend,
               FD_SETSIZE - 1, limit);
        CHECK(1);
    }
}

static void test_timeout(void)
{
    selector *sel = new_sel();
    int sv[2];
    make_pair(sv);
    long t0 = now_ms();
    CHECK(sel_select(sel, 50) == 0);
    CHECK(now_ms() - t0 >= 45);
    CHECK(sel_register(sel, sv[0], SEL_READ) == 0);
    t0 = now_ms();
    CHECK(sel_select(sel, 50) == 0);
    CHECK(now_ms() - t0 >= 45);
    sel_free(sel);
    close_pair(sv);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

/* Signals delivered without SA_RESTART neither fail the wait nor shorten it. */
static void test_eintr(void)
{
    selector *sel = new_sel();
    struct sigaction sa = {0}, old;
    struct itimerval it = {{0, 20000}, {0, 20000}}, off = {{0, 0}, {0, 0}};
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGALRM, &sa, &old) == 0);
    alarms = 0;
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    long t0 = now_ms();
    int n = sel_select(sel, 200);
    long elapsed = now_ms() - t0;
    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &old, NULL);
    CHECK(n == 0);
    CHECK(elapsed >= 195);
    CHECK(alarms > 0);
    sel_free(sel);
}

int main(void)
{
    static void (*const tests[])(void) = {
        test_errors,
        test_closed_fd,
        test_closed_while_registered,
        test_readiness,
        test_modify,
        test_host_and_paused,
        test_hangup,
        test_same_batch_unregister,
        test_fd_reuse,
        test_many_ready,
        test_churn,
        test_high_fd,
        test_timeout,
        test_eintr,
    };
    signal(SIGPIPE, SIG_IGN);
    test_names();
    for (const char *const *name = sel_backend_names(); *name; name++) {
        printf("test_selector: testing the %s backend\n", *name);
        backend = *name;
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
            int before = lowest_free_fd();
            tests[i]();
            CHECK(lowest_free_fd() == before);
        }
    }
    printf("test_selector: %d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
