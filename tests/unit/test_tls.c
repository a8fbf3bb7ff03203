/* test_tls.c: proves the TLS core over a socketpair, both ends tls.c: a handshake the
 * server side runs with the script's events withheld and hands back once done; bytes
 * both ways in order, in records read in pieces; writes made before the handshake sent
 * after it; close_notify read as a clean end, and an end without it as -ECONNRESET;
 * garbage failing the handshake with a reason, the connection shut and posted; the
 * client refusing a certificate it cannot verify, or of another name; output pushed along
 * by a TLS call leaving the end of its drain to the host. */
#include "tls.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "selector.h"
#include "tls_testcert.h"

static char cert[PATH_MAX], key[PATH_MAX];
static selector *sel;

typedef struct side {
    conn c;
    tls_conn *t;
} side;

static tls_ctx *server_ctx(void)
{
    char err[300];
    tls_opts o = {.cert = cert, .key = key};
    tls_ctx *ctx = tls_ctx_new(&o, err, sizeof err);
    CHECK(ctx != NULL);
    return ctx;
}

static tls_ctx *client_ctx(const char *ca)
{
    char err[300];
    tls_opts o = {.ca = ca, .verify = ca != NULL};
    tls_ctx *ctx = tls_ctx_new(&o, err, sizeof err);
    CHECK(ctx != NULL);
    return ctx;
}

/* A connected pair: the server with its handshake under the host's control. */
static void make_pair(side *srv, side *cli, tls_ctx *sctx, tls_ctx *cctx, const char *name)
{
    char err[300];
    int fds[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    conn_init(&srv->c, fds[0], CONN_SOCKET, CONN_DEFAULT_LIMIT);
    conn_init(&cli->c, fds[1], CONN_SOCKET, CONN_DEFAULT_LIMIT);
    srv->t = tls_conn_new(sctx, 1, NULL, err, sizeof err);
    cli->t = tls_conn_new(cctx, 0, name, err, sizeof err);
    CHECK(srv->t && cli->t);
    CHECK(sel_register(sel, fds[0], SEL_READ) == 0);
    srv->c.flags |= CONN_HANDSHAKE;
    CHECK(conn_sync(&srv->c, sel) == 0);
}

static void free_side(side *s)
{
    sel_unregister(sel, s->c.fd);
    conn_drop(&s->c, sel);
    conn_free(&s->c);
    tls_conn_free(s->t);
    close(s->c.fd);
}

/* Runs both handshakes until neither moves; returns the server's last result. */
static int shake(side *srv, side *cli)
{
    int rs = 0, rc = 0;
    for (int i = 0; i < 20 && (rs == 0 || rc == 0); i++) {
        rc = tls_handshake(cli->t, &cli->c, sel, &net_io_kernel);
        rs = tls_handshake(srv->t, &srv->c, sel, &net_io_kernel);
        if (rc < 0 || rs < 0)
            break;
    }
    return rs < 0 ? rs : rc < 0 ? rc : rs;
}

static void test_handshake_and_data(tls_ctx *sctx, tls_ctx *cctx)
{
    side srv, cli;
    make_pair(&srv, &cli, sctx, cctx, "localhost");
    CHECK(sel_slot(sel, srv.c.fd)->paused == SEL_BOTH); /* the script sees nothing yet */
    CHECK(sel_slot(sel, srv.c.fd)->host_events & SEL_READ);
    CHECK(tls_write(srv.t, &srv.c, sel, &net_io_kernel, "early", 5, NULL) == 5);
    CHECK(shake(&srv, &cli) == 1);
    CHECK(!(srv.c.flags & CONN_HANDSHAKE));
    CHECK(sel_slot(sel, srv.c.fd)->paused == 0);
    char buf[70000], big[60000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7);
    CHECK(tls_write(cli.t, &cli.c, sel, &net_io_kernel, big, sizeof big, NULL) >= 0);
    size_t got = 0;
    for (int i = 0; i < 100 && got < sizeof big; i++) { /* read in small pieces */
        ssize_t n = tls_recv(srv.t, &srv.c, sel, &net_io_kernel, buf + got, 1000);
        CHECK(n > 0 || n == -EAGAIN);
        got += n > 0 ? (size_t)n : 0;
    }
    CHECK(got == sizeof big && memcmp(buf, big, sizeof big) == 0);
    ssize_t n = tls_recv(cli.t, &cli.c, sel, &net_io_kernel, buf, sizeof buf);
    CHECK(n == 5 && memcmp(buf, "early", 5) == 0);
    tls_info info;
    tls_get_info(cli.t, &info);
    CHECK(info.verified && strcmp(info.subject, "/CN=localhost") == 0);
    CHECK(tls_close_notify(cli.t, &cli.c, sel, &net_io_kernel) == 0);
    CHECK(tls_recv(srv.t, &srv.c, sel, &net_io_kernel, buf, sizeof buf) == 0);
    free_side(&srv);
    free_side(&cli);
}

static void test_truncation(tls_ctx *sctx, tls_ctx *cctx)
{
    side srv, cli;
    char buf[100];
    make_pair(&srv, &cli, sctx, cctx, "localhost");
    CHECK(shake(&srv, &cli) == 1);
    shutdown(cli.c.fd, SHUT_WR); /* TCP's end, without close_notify */
    ssize_t n = tls_recv(srv.t, &srv.c, sel, &net_io_kernel, buf, sizeof buf);
    CHECK(n == -ECONNRESET);
    CHECK(strstr(tls_error(srv.t), "without close_notify") != NULL);
    free_side(&srv);
    free_side(&cli);
}

static void test_garbage(tls_ctx *sctx, tls_ctx *cctx)
{
    side srv, cli;
    make_pair(&srv, &cli, sctx, cctx, "localhost");
    CHECK(write(cli.c.fd, "GET / HTTP/1.0\r\n\r\n", 18) == 18);
    CHECK(tls_handshake(srv.t, &srv.c, sel, &net_io_kernel) == -EPROTO);
    CHECK(strstr(tls_error(srv.t), "http request") != NULL);
    CHECK(!(srv.c.flags & CONN_HANDSHAKE)); /* handed back to the script */
    CHECK(srv.c.flags & CONN_WRITE_CLOSED); /* and shut */
    CHECK(sel_select(sel, 0) >= 1);         /* posted: the script will read why */
    free_side(&srv);
    free_side(&cli);
}

static void test_verification(tls_ctx *sctx)
{
    side srv, cli;
    /* The system's store (no ca) knows nothing of a self-signed test certificate. */
    tls_ctx *trusting = client_ctx(cert), *strict;
    tls_opts o = {.verify = 1};
    char err[300];
    CHECK((strict = tls_ctx_new(&o, err, sizeof err)) != NULL);
    make_pair(&srv, &cli, sctx, strict, "localhost");
    CHECK(shake(&srv, &cli) < 0);
    CHECK(strstr(tls_error(cli.t), "certificate verify failed") != NULL);
    free_side(&srv);
    free_side(&cli);
    make_pair(&srv, &cli, sctx, trusting, "other.example");
    CHECK(shake(&srv, &cli) < 0);
    CHECK(strstr(tls_error(cli.t), "hostname mismatch") != NULL);
    free_side(&srv);
    free_side(&cli);
    tls_ctx_unref(trusting);
    tls_ctx_unref(strict);
}

/* conn_send_pending, which TLS calls use to push output along, sends but leaves the end
 * of the drain (the host's interest withdrawn, on_drain) to the host's own flush. */
static void test_send_pending(void)
{
    static char big[1 << 20], sink[65536];
    int fds[2];
    conn c;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
    conn_init(&c, fds[0], CONN_SOCKET, CONN_DEFAULT_LIMIT);
    CHECK(conn_write(&c, sel, &net_io_kernel, big, sizeof big / 2, NULL) > 0);
    for (int i = 0; i < 1000 && conn_send_pending(&c, &net_io_kernel) > 0; i++)
        while (read(fds[1], sink, sizeof sink) > 0)
            ;
    CHECK(conn_pending(&c) == 0);
    CHECK(sel_slot(sel, fds[0]) && (sel_slot(sel, fds[0])->host_events & SEL_WRITE));
    CHECK(conn_flush(&c, sel, &net_io_kernel) == 0);
    CHECK(sel_slot(sel, fds[0]) == NULL);
    conn_free(&c);
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    char err[160];
    CHECK(tls_testcert(cert, key, sizeof cert) == 0);
    sel = sel_new("poll", err, sizeof err);
    tls_ctx *sctx = server_ctx(), *cctx = client_ctx(cert);
    test_handshake_and_data(sctx, cctx);
    test_truncation(sctx, cctx);
    test_garbage(sctx, cctx);
    test_verification(sctx);
    test_send_pending();
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
    sel_free(sel);
    tls_testcert_remove(cert, key);
    printf("test_tls: %lu checks, %lu failed\n", checks, failures);
    return failures ? 1 : 0;
}
