/* test_fdpass.c: proves the master-worker protocol: a message and a passed fd arrive
 * whole (the fd close-on-exec and working), a short, empty or stray record is refused
 * with any fd it carried closed, the end of the peer reads as 0; the master binds an
 * address once per slot (port 0: every slot on one port, a second request on another),
 * keeps each slot's socket and refuses a port another server listens on; and a worker's
 * listen, served by a master in a child process, gets a listening fd while it answers a
 * ping that came first. */
#include "fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "master_listen.h"
#include "worker.h"

static int port_of(int fd)
{
    net_addr a;
    return net_sockname(fd, &a) == 0 ? ntohs(((struct sockaddr_in *)&a.ss)->sin_port) : -1;
}

static int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

static void test_messages(void)
{
    int pair[2], pipefd[2];
    CHECK(fdpass_pair(pair) == 0);
    CHECK(pipe(pipefd) == 0);
    fdpass_msg m, got;
    memset(&m, 0, sizeof m);
    m.type = FDPASS_REPLY;
    m.value = 0;
    CHECK(fdpass_send(pair[0], &m, pipefd[1]) == 0);
    int fd;
    CHECK(fdpass_recv(pair[1], &got, &fd) == 1);
    CHECK(got.type == FDPASS_REPLY && fd >= 0 && fd != pipefd[1]);
    CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    char c = 0;
    CHECK(write(fd, "x", 1) == 1 && read(pipefd[0], &c, 1) == 1 && c == 'x');
    close(fd);
    /* A record of the wrong size, with an fd: refused, and the fd not left open. */
    struct iovec iov = {"abc", 3};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pipefd[1], sizeof(int));
    CHECK(sendmsg(pair[0], &msg, 0) == 3);
    int before = dup(0); /* the lowest free fd: where a leaked one would have gone */
    close(before);
    CHECK(fdpass_recv(pair[1], &got, &fd) == -EPROTO && fd == -1);
    CHECK(!fd_is_open(before));
    /* An empty record, with an fd: refused, not taken for the peer's end (recvmsg says
     * 0 for both), and the fd not left open. */
    iov.iov_len = 0;
    CHECK(sendmsg(pair[0], &msg, 0) == 0);
    CHECK(fdpass_recv(pair[1], &got, &fd) == -EPROTO && fd == -1);
    CHECK(!fd_is_open(before));
    fcntl(pair[1], F_SETFL, O_NONBLOCK);
    CHECK(fdpass_recv(pair[1], &got, &fd) == -EAGAIN);
    close(pair[0]);
    CHECK(fdpass_recv(pair[1], &got, &fd) == 0);
    close(pair[1]);
    close(pipefd[0]);
    close(pipefd[1]);
}

static net_addr loopback(int port)
{
    net_addr a;
    char err[64];
    net_resolve("127.0.0.1", port, 1, &a, err, sizeof err);
    return a;
}

static void test_master_listeners(void)
{
    lh_logger log = {LH_ERROR, NULL};
    master_listeners l;
    ml_init(&l, &log);
    net_addr any = loopback(0);
    int a0 = ml_get(&l, 0, &any, 0, 16), a1 = ml_get(&l, 1, &any, 0, 16);
    CHECK(a0 >= 0 && a1 >= 0 && a0 != a1);
    CHECK(port_of(a0) > 0 && port_of(a0) == port_of(a1));
    CHECK(ml_get(&l, 0, &any, 0, 16) == a0); /* a restarted worker: the same socket */
    int b0 = ml_get(&l, 0, &any, 1, 16);     /* the script's second listen on port 0 */
    CHECK(b0 >= 0 && port_of(b0) != port_of(a0));
    /* A fixed port the master listens on already: that listener, as in one process. */
    net_addr fixed = loopback(port_of(b0));
    CHECK(ml_get(&l, 0, &fixed, 0, 16) == b0);
    CHECK(ml_get(&l, 0, &fixed, 3, 16) == b0);
    /* Another server's socket on a port, with SO_REUSEPORT as a master's has: refused, as
     * one process's listen is, rather than shared with it. */
    int other = net_socket(AF_INET, SOCK_STREAM, 1);
    net_addr any_other = loopback(0);
    CHECK(other >= 0 && net_bind_listen(other, &any_other, 16, 1) == 0);
    net_addr taken = loopback(port_of(other));
    CHECK(ml_get(&l, 1, &taken, 0, 16) == -EADDRINUSE);
    close(other);
    CHECK(ml_get(&l, MASTER_MAX_WORKERS, &any, 0, 16) == -EINVAL);
    ml_close_all(&l);
    CHECK(!fd_is_open(a0) && !fd_is_open(a1) && l.n == 0);
}

/* The master's side of one listen request, in a child: a ping first, then the reply. */
static void serve_one(int chan)
{
    lh_logger log = {LH_ERROR, NULL};
    master_listeners l;
    fdpass_msg req, ping = {.type = FDPASS_PING, .value = 7}, pong;
    int fd, ok = 1;
    ml_init(&l, &log);
    fdpass_send(chan, &ping, -1);
    ok &= fdpass_recv(chan, &req, &fd) == 1 && req.type == FDPASS_LISTEN;
    /* The worker reads the ping before the reply it waits for, and answers it. */
    ok &= fdpass_recv(chan, &pong, &fd) == 1 && pong.type == FDPASS_PONG && pong.value == 7;
    fdpass_msg reply = {.type = FDPASS_REPLY};
    int lfd = ml_get(&l, 0, &req.addr, req.nth, req.value);
    reply.value = lfd < 0 ? -lfd : 0;
    fdpass_send(chan, &reply, lfd);
    _exit(ok ? 0 : 1);
}

static void test_worker_listen(void)
{
    int pair[2];
    CHECK(fdpass_pair(pair) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(pair[1]);
        serve_one(pair[0]);
    }
    close(pair[0]);
    worker_chan w;
    worker_init(&w);
    char env[32];
    snprintf(env, sizeof env, "2,3,%d", pair[1]);
    CHECK(worker_from_env(&w, "2,3") == -EINVAL && worker_from_env(&w, "4,3,5") == -EINVAL);
    CHECK(worker_from_env(&w, env) == 0 && w.number == 2 && w.count == 3);
    net_addr any = loopback(0);
    int fd = worker_listen(&w, &any, 16);
    CHECK(fd >= 0 && port_of(fd) > 0);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* The master gone: a request fails at once rather than wait. */
    CHECK(worker_listen(&w, &any, 16) == -EPIPE);
    if (fd >= 0)
        close(fd);
    worker_close(&w, NULL);
}

int main(void)
{
    alarm(20); /* a protocol that hangs ends the test (SIGALRM) rather than wait for ctest */
    test_messages();
    test_master_listeners();
    test_worker_listen();
    printf("%lu checks, %lu failed\n", checks, failures);
    return failures ? 1 : 0;
}
