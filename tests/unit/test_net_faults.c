/* test_net_faults.c: the failures of system calls a server meets, in net.c: accept4
 * failing with ECONNABORTED (a peer that gave up while it waited in the backlog) or
 * EINTR, interrupted send, recv and connect, a send to a peer that is gone with SIGPIPE
 * at its default action (which kills the process unless MSG_NOSIGNAL is passed), and a
 * reset peer. The failures are injected by defining accept4, send, recv and connect
 * here: the core is a static library, so its calls bind to these, which fail as told
 * and otherwise call the C library's (found with dlsym(RTLD_NEXT)). Linux itself never
 * makes accept fail with ECONNABORTED, so only injection can prove that path. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "net.h"
#include "check.h"

/* What to inject into one call: the next `fails` calls fail with `err`. */
typedef struct fault {
    const char *name;
    void *real;
    int fails, err;
    int calls, last_flags;
} fault;

static fault f_accept4 = {.name = "accept4"}, f_send = {.name = "send"}, f_recv = {.name = "recv"},
             f_connect = {.name = "connect"};

/* Counts the call; returns 1 (errno set) when this call is to fail. */
static int inject(fault *f)
{
    if (!f->real && !(f->real = dlsym(RTLD_NEXT, f->name))) {
        fprintf(stderr, "test_net_faults: no %s to call: %s\n", f->name, dlerror());
        exit(1);
    }
    f->calls++;
    if (f->fails > 0) {
        f->fails--;
        errno = f->err;
        return 1;
    }
    return 0;
}

static void arm(fault *f, int fails, int err)
{
    f->fails = fails;
    f->err = err;
    f->calls = 0;
    f->last_flags = 0;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    f_accept4.last_flags = flags;
    if (inject(&f_accept4))
        return -1;
    return ((int (*)(int, struct sockaddr *, socklen_t *, int))f_accept4.real)(fd, addr, len,
                                                                               flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    f_send.last_flags = flags;
    if (inject(&f_send))
        return -1;
    return ((ssize_t(*)(int, const void *, size_t, int))f_send.real)(fd, buf, len, flags);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    f_recv.last_flags = flags;
    if (inject(&f_recv))
        return -1;
    return ((ssize_t(*)(int, void *, size_t, int))f_recv.real)(fd, buf, len, flags);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (inject(&f_connect))
        return -1;
    return ((int (*)(int, const struct sockaddr *, socklen_t))f_connect.real)(fd, addr, len);
}

/* A listener on 127.0.0.1 (an ephemeral port), its address in *addr. */
static int listener(net_addr *addr)
{
    char err[128];
    int fd = net_socket(AF_INET, SOCK_STREAM, 1);
    CHECK(fd >= 0);
    CHECK(net_resolve("127.0.0.1", 0, 1, addr, err, sizeof err) == 0);
    CHECK(net_bind_listen(fd, addr, 16, 0) == 0);
    CHECK(net_sockname(fd, addr) == 0);
    return fd;
}

/* A blocking client connected to addr (the connection then waits in the backlog). */
static int client_of(const net_addr *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (const struct sockaddr *)&addr->ss, addr->len) == 0);
    return fd;
}

/* A connected TCP pair over 127.0.0.1: *a the client's end, *b the accepted one. */
static void tcp_pair(int *a, int *b)
{
    net_addr addr, peer;
    int l = listener(&addr);
    *a = client_of(&addr);
    *b = net_accept(l, &peer);
    CHECK(*b >= 0);
    close(l);
}

static int is_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    return flags >= 0 && (flags & FD_CLOEXEC);
}

/* A peer that gave up while it waited (ECONNABORTED) and a signal (EINTR) are retried:
 * the listener is not failed, and the next connection is accepted, close-on-exec. */
static void test_accept_retries(void)
{
    net_addr addr, peer;
    int l = listener(&addr);
    int c = client_of(&addr);
    arm(&f_accept4, 3, ECONNABORTED);
    int fd = net_accept(l, &peer);
    CHECK(fd >= 0);
    CHECK(f_accept4.calls == 4);
    CHECK((f_accept4.last_flags & (SOCK_CLOEXEC | SOCK_NONBLOCK)) ==
          (SOCK_CLOEXEC | SOCK_NONBLOCK));
    CHECK(is_cloexec(fd) && net_is_nonblocking(fd));
    close(fd);
    close(c);

    c = client_of(&addr);
    arm(&f_accept4, 2, EINTR);
    fd = net_accept(l, &peer);
    CHECK(fd >= 0);
    CHECK(f_accept4.calls == 3);
    close(fd);
    close(c);

    /* Nothing waiting: "would block", once. Out of fds: reported, not retried. */
    arm(&f_accept4, 0, 0);
    CHECK(net_accept(l, &peer) == -EAGAIN);
    CHECK(f_accept4.calls == 1);
    arm(&f_accept4, 1, EMFILE);
    CHECK(net_accept(l, &peer) == -EMFILE);
    CHECK(f_accept4.calls == 1);
    close(l);
}

/* An interrupted send or recv is retried, not reported. */
static void test_send_recv_eintr(void)
{
    int a, b;
    char buf[16];
    tcp_pair(&a, &b);
    arm(&f_send, 2, EINTR);
    CHECK(net_send(b, "hello", 5) == 5);
    CHECK(f_send.calls == 3);
    CHECK(f_send.last_flags & MSG_NOSIGNAL);
    arm(&f_recv, 2, EINTR);
    ssize_t n;
    int tries = 0;
    while ((n = net_recv(a, buf, sizeof buf)) == -EAGAIN && tries++ < 1000)
        usleep(1000); /* the bytes may take a moment over loopback */
    CHECK(n == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(f_recv.calls >= 3);
    arm(&f_recv, 0, 0);
    arm(&f_send, 0, 0);
    close(a);
    close(b);
}

/* An interrupted connect goes on in the background: reported as in progress. */
static void test_connect_eintr(void)
{
    net_addr addr;
    int l = listener(&addr);
    int fd = net_socket(AF_INET, SOCK_STREAM, 1);
    arm(&f_connect, 1, EINTR);
    CHECK(net_connect(fd, &addr) == -EINPROGRESS);
    arm(&f_connect, 0, 0);
    close(fd);
    close(l);
}

/* In a child with SIGPIPE at its default action: sends to a peer that is gone until
 * the kernel says so. The child exits 0 if net_send reported EPIPE or ECONNRESET. */
static void send_to_gone_peer(void)
{
    int a, b;
    tcp_pair(&a, &b);
    close(a);
    signal(SIGPIPE, SIG_DFL);
    char chunk[4096] = {0};
    for (int i = 0; i < 1000; i++) {
        ssize_t n = net_send(b, chunk, sizeof chunk);
        if (n == -EPIPE || n == -ECONNRESET)
            _exit(0);
        if (n < 0 && n != -EAGAIN)
            _exit(2);
        usleep(1000);
    }
    _exit(3);
}

/* A send to a peer that is gone returns an error, and never kills with SIGPIPE, even
 * where the process has not ignored it (luahost.so inside another program). */
static void test_no_sigpipe(void)
{
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        send_to_gone_peer();
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFSIGNALED(status))
        fprintf(stderr, "test_net_faults: the sender died of signal %d\n", WTERMSIG(status));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A reset peer: recv and send say ECONNRESET (or EPIPE), they do not fail the process. */
static void test_reset_peer(void)
{
    int a, b;
    char buf[16];
    tcp_pair(&a, &b);
    struct linger hard = {1, 0};
    CHECK(setsockopt(a, SOL_SOCKET, SO_LINGER, &hard, sizeof hard) == 0);
    close(a); /* a reset, not a FIN */
    ssize_t n;
    int tries = 0;
    while ((n = net_recv(b, buf, sizeof buf)) == -EAGAIN && tries++ < 1000)
        usleep(1000);
    CHECK(n == -ECONNRESET);
    n = net_send(b, "x", 1);
    CHECK(n == -EPIPE || n == -ECONNRESET);
    close(b);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_accept_retries();
    test_send_recv_eintr();
    test_connect_eintr();
    test_no_sigpipe();
    test_reset_peer();
    CHECK(f_accept4.calls > 0 && f_send.calls > 0 && f_recv.calls > 0); /* interposed */
    printf("test_net_faults: %lu passed, %lu failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
