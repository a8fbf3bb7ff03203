/* net.h: socket helpers in the manner of Redis's anet: they never print and never
 * exit; failures return a negative errno and, where useful, a message in err. */
#ifndef LUAHOST_NET_H
#define LUAHOST_NET_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef struct net_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} net_addr;

/* Room for "[ffff:...:ffff]:65535" and then some. */
#define NET_ADDRSTRLEN 64

/* Resolves host (a name, an IPv4 or IPv6 literal, "[::1]", or "*" for any IPv4) and port
 * into one address. Returns 0, or a negative code with a message in err. */
int net_resolve(const char *host, int port, int passive, net_addr *out, char *err, size_t errlen);

/* A new socket, always close-on-exec; non-blocking when asked. fd or -errno. */
int net_socket(int family, int type, int nonblocking);
/* Binds fd to addr with SO_REUSEADDR (and SO_REUSEPORT when asked) and listens. */
int net_bind_listen(int fd, const net_addr *addr, int backlog, int reuseport);
/* Accepts one connection, non-blocking and close-on-exec; retries EINTR and
 * ECONNABORTED. Returns the fd or -errno (-EAGAIN when none is waiting). */
int net_accept(int fd, net_addr *peer);
/* Starts or completes a connect; 0, -EINPROGRESS on a non-blocking socket, or -errno. */
int net_connect(int fd, const net_addr *addr);
int net_set_nonblocking(int fd, int nonblocking);
/* Makes the next close(fd) send a reset (SO_LINGER 0) instead of a FIN, and drop what the
 * kernel still holds unsent: for a connection whose output was cut, so the peer learns
 * that it was. 0 or -errno (-ENOTSOCK for a pipe, which has no peer to tell). */
int net_reset_on_close(int fd);
/* Bytes of output the kernel holds for fd that the peer has not acknowledged (SIOCOUTQ),
 * or -errno. */
int net_unacked(int fd);
/* Whether a socket of this family speaks TCP, where TCP_NODELAY means something. */
int net_is_tcp_family(int family);
int net_is_nonblocking(int fd);

/* send/recv that retry EINTR and never raise SIGPIPE; bytes or -errno. */
ssize_t net_send(int fd, const void *data, size_t len);
ssize_t net_recv(int fd, void *data, size_t len);

int net_sockname(int fd, net_addr *out);
int net_peername(int fd, net_addr *out);
/* The numeric host and port of addr; for AF_UNIX the path and port 0. */
void net_addr_host(const net_addr *addr, char *host, size_t hostlen, int *port);
/* "127.0.0.1:7342" or "[::1]:7342". */
void net_addr_format(const net_addr *addr, char *out, size_t outlen);

/* The socket calls the host makes on the fds it serves, behind one table so that a
 * selector backend can supply its own (the "sim" backend's in-memory world does);
 * net_io_kernel is the kernel's. Each returns what the net_* call of its name does. */
typedef struct net_io net_io;
struct net_io {
    ssize_t (*send)(const net_io *io, int fd, const void *data, size_t len);
    ssize_t (*recv)(const net_io *io, int fd, void *data, size_t len);
    int (*accept)(const net_io *io, int listen_fd, net_addr *peer);
    int (*peername)(const net_io *io, int fd, net_addr *out);
    /* setsockopt(2): 0 or -errno. */
    int (*setsockopt)(const net_io *io, int fd, int level, int name, int value);
};
extern const net_io net_io_kernel;

/* Splits "[HOST:]PORT", "[v6]:PORT" or "HOST" into host and port, keeping the defaults
 * for the parts not given. Returns 0, or -EINVAL with a message in err. */
int net_parse_hostport(const char *spec, char *host, size_t hostlen, int *port, char *err,
                       size_t errlen);

#endif
