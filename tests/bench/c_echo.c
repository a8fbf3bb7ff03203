/* c_echo.c: the bench's limit: a minimal single-threaded C epoll echo server.
 * Level-triggered; one read per readiness; what the kernel does not take at once is
 * kept and sent on EPOLLOUT, and reading stops until it is sent.
 * Usage: c_echo PORT        (listens on 127.0.0.1) */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct pending {
    char *data;
    size_t len, off;
} pending;

static pending *out; /* indexed by fd */
static int nout;

static void drop(int ep, int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (fd < nout) {
        free(out[fd].data);
        memset(&out[fd], 0, sizeof out[fd]);
    }
}

static void watch(int ep, int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, op, fd, &ev);
}

/* Keeps the unsent rest of an echo and waits for writability instead of reading. */
static void keep(int ep, int fd, const char *data, size_t len)
{
    if (fd >= nout) {
        int n = fd * 2 + 64;
        out = realloc(out, (size_t)n * sizeof *out);
        memset(out + nout, 0, (size_t)(n - nout) * sizeof *out);
        nout = n;
    }
    out[fd].data = malloc(len);
    memcpy(out[fd].data, data, len);
    out[fd].len = len;
    out[fd].off = 0;
    watch(ep, EPOLL_CTL_MOD, fd, EPOLLOUT);
}

static void on_writable(int ep, int fd)
{
    pending *p = &out[fd];
    ssize_t n = send(fd, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) {
        drop(ep, fd);
        return;
    }
    p->off += n > 0 ? (size_t)n : 0;
    if (p->off == p->len) {
        free(p->data);
        p->data = NULL;
        watch(ep, EPOLL_CTL_MOD, fd, EPOLLIN);
    }
}

static void on_readable(int ep, int fd)
{
    static char buf[65536];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        drop(ep, fd);
        return;
    }
    ssize_t sent = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN) {
        drop(ep, fd);
        return;
    }
    if (sent < 0)
        sent = 0;
    if (sent < n)
        keep(ep, fd, buf + sent, (size_t)(n - sent));
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    if (argc != 2)
        return fprintf(stderr, "usage: c_echo PORT\n"), 2;
    sa.sin_port = htons((uint16_t)atoi(argv[1]));
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 511) < 0)
        return perror("c_echo: listen"), 1;
    int ep = epoll_create1(0);
    watch(ep, EPOLL_CTL_ADD, ls, EPOLLIN);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0)
                    watch(ep, EPOLL_CTL_ADD, c, EPOLLIN);
            } else if (evs[i].events & EPOLLOUT) {
                on_writable(ep, fd);
            } else {
                on_readable(ep, fd);
            }
        }
    }
}
