/* net.c: non-blocking socket helpers (resolve, listen, accept, connect, send, recv,
 * address formatting). They report errors by return value and never print. */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/un.h>
#include <unistd.h>

/* Strips the brackets of "[::1]" into buf; returns host unchanged otherwise. */
static const char *unbracket(const char *host, char *buf, size_t buflen)
{
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']' && len - 2 < buflen) {
        memcpy(buf, host + 1, len - 2);
        buf[len - 2] = '\0';
        return buf;
    }
    return host;
}

int net_resolve(const char *host, int port, int passive, net_addr *out, char *err, size_t errlen)
{
    char plain[NET_ADDRSTRLEN], service[16];
    struct addrinfo hints, *res = NULL;
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "invalid port %d (expected 0-65535)", port);
        return -EINVAL;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    if (strcmp(host, "*") == 0)
        host = "0.0.0.0";
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(unbracket(host, plain, sizeof plain), service, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return rc == EAI_SYSTEM ? -errno : -EINVAL;
    }
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int net_socket(int family, int type, int nonblocking)
{
    int fd = socket(family, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    return fd < 0 ? -errno : fd;
}

int net_bind_listen(int fd, const net_addr *addr, int backlog, int reuseport)
{
    int on = 1;
    if (addr->ss.ss_family != AF_UNIX &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0)
        return -errno;
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0)
        return -errno;
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
        return -errno;
    if (listen(fd, backlog) < 0)
        return -errno;
    return 0;
}

int net_accept(int fd, net_addr *peer)
{
    for (;;) {
        peer->len = sizeof peer->ss;
        int conn =
            accept4(fd, (struct sockaddr *)&peer->ss, &peer->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (conn >= 0)
            return conn;
        /* A peer that gave up before we accepted is not the listener's failure. */
        if (errno != EINTR && errno != ECONNABORTED)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

int net_connect(int fd, const net_addr *addr)
{
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) == 0)
        return 0;
    /* An interrupted connect goes on in the background, as a non-blocking one does. */
    return errno == EINTR ? -EINPROGRESS : -errno;
}

int net_set_nonblocking(int fd, int nonblocking)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -errno;
    flags = nonblocking ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags) < 0 ? -errno : 0;
}

int net_reset_on_close(int fd)
{
    struct linger lg = {1, 0};
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0 ? -errno : 0;
}

int net_unacked(int fd)
{
    int n = 0;
    return ioctl(fd, SIOCOUTQ, &n) < 0 ? -errno : n;
}

int net_is_tcp_family(int family)
{
    return family == AF_INET || family == AF_INET6;
}

int net_is_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    return flags >= 0 && (flags & O_NONBLOCK);
}

ssize_t net_send(int fd, const void *data, size_t len)
{
    for (;;) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == ENOTSOCK) /* a pipe or file handed to us as a fileobj */
            n = write(fd, data, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

ssize_t net_recv(int fd, void *data, size_t len)
{
    for (;;) {
        ssize_t n = recv(fd, data, len, 0);
        if (n < 0 && errno == ENOTSOCK)
            n = read(fd, data, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

int net_sockname(int fd, net_addr *out)
{
    out->len = sizeof out->ss;
    return getsockname(fd, (struct sockaddr *)&out->ss, &out->len) < 0 ? -errno : 0;
}

int net_peername(int fd, net_addr *out)
{
    out->len = sizeof out->ss;
    return getpeername(fd, (struct sockaddr *)&out->ss, &out->len) < 0 ? -errno : 0;
}

void net_addr_host(const net_addr *addr, char *host, size_t hostlen, int *port)
{
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)&addr->ss;
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&addr->ss;
    const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->ss;
    host[0] = '\0';
    *port = 0;
    switch (addr->ss.ss_family) {
    case AF_INET:
        inet_ntop(AF_INET, &v4->sin_addr, host, hostlen);
        *port = ntohs(v4->sin_port);
        break;
    case AF_INET6:
        inet_ntop(AF_INET6, &v6->sin6_addr, host, hostlen);
        *port = ntohs(v6->sin6_port);
        break;
    case AF_UNIX:
        /* An unnamed socket (unbound, or a socketpair) has a len that ends before
         * sun_path, whose bytes are then garbage. */
        if (addr->len > offsetof(struct sockaddr_un, sun_path))
            snprintf(host, hostlen, "%.*s",
                     (int)(addr->len - offsetof(struct sockaddr_un, sun_path)), un->sun_path);
        break;
    default:
        snprintf(host, hostlen, "?");
    }
}

void net_addr_format(const net_addr *addr, char *out, size_t outlen)
{
    char host[NET_ADDRSTRLEN];
    int port;
    net_addr_host(addr, host, sizeof host, &port);
    if (addr->ss.ss_family == AF_INET6)
        snprintf(out, outlen, "[%s]:%d", host, port);
    else if (addr->ss.ss_family == AF_UNIX)
        snprintf(out, outlen, "%s", host);
    else
        snprintf(out, outlen, "%s:%d", host, port);
}

/* Parses a whole decimal port in 0..65535. */
static int parse_port(const char *s, int *port)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < 0 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

static int copy_host(const char *s, size_t len, char *host, size_t hostlen)
{
    if (len == 0 || len >= hostlen)
        return -1;
    memcpy(host, s, len);
    host[len] = '\0';
    return 0;
}

int net_parse_hostport(const char *spec, char *host, size_t hostlen, int *port, char *err,
                       size_t errlen)
{
    const char *colon = strrchr(spec, ':');
    int bad = 0;
    if (spec[0] == '[') { /* [v6] or [v6]:port */
        const char *close = strchr(spec, ']');
        bad = !close || copy_host(spec + 1, (size_t)(close - spec - 1), host, hostlen) ||
              (close[1] != '\0' && (close[1] != ':' || parse_port(close + 2, port)));
    } else if (colon && strchr(spec, ':') == colon) { /* host:port or :port */
        bad = (colon != spec && copy_host(spec, (size_t)(colon - spec), host, hostlen)) ||
              parse_port(colon + 1, port);
    } else if (colon) { /* a bare IPv6 literal */
        bad = copy_host(spec, strlen(spec), host, hostlen);
    } else if (parse_port(spec, port) != 0) { /* a host name alone */
        bad = spec[0] >= '0' && spec[0] <= '9' && !strchr(spec, '.');
        bad = bad || copy_host(spec, strlen(spec), host, hostlen);
    }
    if (bad) {
        snprintf(err, errlen, "invalid address '%s' (expected [HOST:]PORT)", spec);
        return -EINVAL;
    }
    return 0;
}

static ssize_t kernel_send(const net_io *io, int fd, const void *data, size_t len)
{
    (void)io;
    return net_send(fd, data, len);
}

static ssize_t kernel_recv(const net_io *io, int fd, void *data, size_t len)
{
    (void)io;
    return net_recv(fd, data, len);
}

static int kernel_accept(const net_io *io, int listen_fd, net_addr *peer)
{
    (void)io;
    return net_accept(listen_fd, peer);
}

static int kernel_peername(const net_io *io, int fd, net_addr *out)
{
    (void)io;
    return net_peername(fd, out);
}

static int kernel_setsockopt(const net_io *io, int fd, int level, int name, int value)
{
    (void)io;
    return setsockopt(fd, level, name, &value, sizeof value) < 0 ? -errno : 0;
}

const net_io net_io_kernel = {
    .send = kernel_send,
    .recv = kernel_recv,
    .accept = kernel_accept,
    .peername = kernel_peername,
    .setsockopt = kernel_setsockopt,
};
