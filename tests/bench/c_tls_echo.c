/* c_tls_echo.c: the bench's TLS limit: a single-threaded C epoll echo server over
 * OpenSSL 3, written as a careful C programmer would, to set what TLS costs a server.
 * Level-triggered; non-blocking SSL_read/SSL_write with want-read/want-write honoured;
 * what SSL_write does not take at once is kept, and reading stops until it is sent.
 * Usage: c_tls_echo PORT CERT KEY        (listens on 127.0.0.1; PEM files) */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct tconn {
    SSL *ssl;
    uint32_t armed; /* the epoll events asked for */
    char *out;      /* plaintext SSL_write has not taken yet */
    size_t len, off;
} tconn;

static tconn **conns; /* indexed by fd */
static int nconns;
static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void drop(int ep, int fd)
{
    tconn *c = conns[fd];
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    SSL_free(c->ssl);
    free(c->out);
    free(c);
    conns[fd] = NULL;
    close(fd);
    ERR_clear_error(); /* a stale error would make the next SSL_get_error lie */
}

static void arm(int ep, int fd, uint32_t events)
{
    tconn *c = conns[fd];
    if (c->armed == events)
        return;
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    c->armed = events;
}

/* What an SSL call that returned rc <= 0 asks for: the events to wait for, or 0 when the
 * connection is over (an error, a reset, or the peer's close_notify, answered first). */
static uint32_t wants(SSL *ssl, int rc)
{
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return EPOLLIN;
    case SSL_ERROR_WANT_WRITE:
        return EPOLLOUT;
    case SSL_ERROR_ZERO_RETURN:
        SSL_shutdown(ssl); /* our close_notify; not waiting for anything after it */
        return 0;
    default:
        return 0;
    }
}

/* Sends the kept plaintext. Returns 1 once it is all gone, 0 while it waits (armed
 * for what SSL_write wants), -1 when the connection was dropped. */
static int flush(int ep, int fd)
{
    tconn *c = conns[fd];
    while (c->off < c->len) {
        int n = SSL_write(c->ssl, c->out + c->off, (int)(c->len - c->off));
        if (n <= 0) {
            uint32_t ev = wants(c->ssl, n);
            if (!ev) {
                drop(ep, fd);
                return -1;
            }
            arm(ep, fd, ev);
            return 0;
        }
        c->off += (size_t)n;
    }
    c->len = c->off = 0;
    return 1;
}

/* Keeps what SSL_write left of an echo. Partial writes are on, so the rest is exactly
 * the bytes after those it reported; moving-buffer mode lets the retry come from here. */
static int keep(tconn *c, const char *data, size_t len)
{
    char *p = realloc(c->out, len);
    if (!p)
        return -1;
    memcpy(p, data, len);
    c->out = p;
    c->len = len;
    c->off = 0;
    return 0;
}

/* An SSL call of echo returned rc <= 0: wait for what it wants, or end the connection. */
static void wait_or_drop(int ep, int fd, int rc)
{
    uint32_t ev = wants(conns[fd]->ssl, rc);
    if (ev)
        arm(ep, fd, ev);
    else
        drop(ep, fd);
}

/* Echoes what can be read. One SSL_read per readiness, as c_echo.c does one recv, and
 * more only while OpenSSL holds bytes already read (read-ahead: the kernel would not
 * wake us for them). */
static void echo(int ep, int fd)
{
    static char buf[16384]; /* one TLS record's plaintext at most */
    tconn *c = conns[fd];
    if (c->len > c->off && flush(ep, fd) <= 0)
        return;
    do {
        int n = SSL_read(c->ssl, buf, sizeof buf);
        if (n <= 0) {
            wait_or_drop(ep, fd, n);
            return;
        }
        int sent = SSL_write(c->ssl, buf, n);
        if (sent < n) {
            int done = sent > 0 ? sent : 0; /* none: the retry passes all n again */
            if (keep(c, buf + done, (size_t)(n - done)) < 0) {
                drop(ep, fd);
                return;
            }
            if (sent <= 0) {
                wait_or_drop(ep, fd, sent);
                return;
            }
            if (flush(ep, fd) <= 0)
                return;
        }
    } while (SSL_has_pending(c->ssl));
    arm(ep, fd, EPOLLIN);
}

static void accept_all(int ep, int ls, SSL_CTX *ctx)
{
    int c, one = 1;
    while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        if (c >= nconns) {
            int n = c * 2 + 64;
            tconn **p = realloc(conns, (size_t)n * sizeof *p);
            if (!p) {
                close(c);
                continue;
            }
            memset(p + nconns, 0, (size_t)(n - nconns) * sizeof *p);
            conns = p, nconns = n;
        }
        tconn *t = calloc(1, sizeof *t);
        SSL *ssl = t ? SSL_new(ctx) : NULL;
        if (!ssl || !SSL_set_fd(ssl, c)) {
            SSL_free(ssl), free(t), close(c);
            continue;
        }
        /* OpenSSL sends a handshake flight as one write per record: with Nagle on, the
         * later ones would wait for an ACK the client delays (luahost sets it too). */
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        SSL_set_accept_state(ssl); /* the first SSL_read runs the handshake */
        t->ssl = ssl;
        t->armed = EPOLLIN;
        conns[c] = t;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
    }
}

/* TLS 1.2 at least, 1.3 by default (its ciphersuites and groups as OpenSSL orders them).
 * No session cache and no tickets: nothing is resumed, so every handshake is full, and
 * no ticket is made for a client that would never use it. */
static SSL_CTX *make_ctx(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        ERR_print_errors_fp(stderr);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1); /* a record in one recv, not a header and a body */
    return ctx;
}

static int listen_on(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    sa.sin_port = htons((uint16_t)port);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0)
        return -1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 511) < 0) {
        close(ls);
        return -1;
    }
    return ls;
}

/* SIGINT/SIGTERM end the loop; every connection is freed, so valgrind sees no leak. */
static void serve(int ep, int ls, SSL_CTX *ctx)
{
    struct epoll_event evs[512];
    while (!stopping) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls)
                accept_all(ep, ls, ctx);
            else if (fd < nconns && conns[fd])
                echo(ep, fd);
        }
    }
    for (int fd = 0; fd < nconns; fd++)
        if (conns[fd])
            drop(ep, fd);
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return fprintf(stderr, "usage: c_tls_echo PORT CERT KEY\n"), 2;
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = make_ctx(argv[2], argv[3]);
    if (!ctx)
        return fprintf(stderr, "c_tls_echo: cannot load %s and %s\n", argv[2], argv[3]), 1;
    int ls = listen_on(atoi(argv[1]));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ls < 0 || ep < 0)
        return perror("c_tls_echo: listen"), SSL_CTX_free(ctx), 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    serve(ep, ls, ctx);
    free(conns);
    close(ep);
    close(ls);
    SSL_CTX_free(ctx);
    return 0;
}
