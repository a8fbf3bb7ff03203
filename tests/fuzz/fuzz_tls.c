/* fuzz_tls.c: libFuzzer target for the TLS read path: bytes reach a server-side tls.c
 * connection over a socketpair, the server's kernel reads cut where the input says. The
 * first input byte picks a mode: raw bytes from the first one (the handshake's parsing of
 * whatever a client sends), or a completed handshake followed by operations: the client
 * writes records (checked: the server reads exactly those bytes, in order, whatever the
 * cuts), raw bytes spliced into the stream, close_notify, or a reset of the stream's end.
 * Once the stream is spoiled only the absence of a crash or leak is checked. */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "selector.h"
#include "tls.h"
#include "../unit/tls_testcert.h"

#define MAX_PLAIN (256 * 1024)

static const uint8_t *in_data;
static size_t in_len, in_pos;
static tls_ctx *server_ctx, *client_ctx;
static selector *sel;
static size_t cut = 1; /* the most the server's next kernel read takes */

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed at input byte %zu: %s\n", __FILE__, __LINE__, \
                    in_pos, #cond);                                                            \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static unsigned next_byte(void)
{
    return in_pos < in_len ? in_data[in_pos++] : 0;
}

/* The kernel, with the server's reads cut at `cut` bytes. */
static ssize_t cut_recv(const net_io *io, int fd, void *data, size_t len)
{
    (void)io;
    return net_recv(fd, data, len < cut ? len : cut);
}

static ssize_t plain_send(const net_io *io, int fd, const void *data, size_t len)
{
    (void)io;
    return net_send(fd, data, len);
}

static const net_io cut_io = {.send = plain_send, .recv = cut_recv};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char cert[PATH_MAX], key[PATH_MAX];
    char err[300];
    (void)argc;
    (void)argv;
    if (tls_testcert(cert, key, sizeof cert) < 0)
        abort();
    tls_opts s = {.cert = cert, .key = key}, c = {.verify = 0};
    server_ctx = tls_ctx_new(&s, err, sizeof err);
    client_ctx = tls_ctx_new(&c, err, sizeof err);
    sel = sel_new("poll", err, sizeof err);
    tls_testcert_remove(cert, key);
    if (!server_ctx || !client_ctx || !sel)
        abort();
    return 0;
}

typedef struct pair {
    conn srv, cli;
    tls_conn *ts, *tc;
    size_t expected;
    int spoiled;            /* raw bytes went into the stream: it no longer has to make sense */
    int finished;           /* the server read the end, or a failure */
    char expect[MAX_PLAIN]; /* last: what the client wrote that the server has not read;
                               everything before it is zeroed for each input */
} pair;

static pair p;

static void server_reads(void)
{
    static char buf[MAX_PLAIN];
    if (p.finished)
        return;
    cut = 1 + next_byte() * 64;
    size_t want = 1 + next_byte() * 256;
    ssize_t n = tls_recv(p.ts, &p.srv, sel, &cut_io, buf, want);
    CHECK(n <= (ssize_t)want);
    if (n > 0 && !p.spoiled) {
        CHECK((size_t)n <= p.expected && memcmp(buf, p.expect, (size_t)n) == 0);
        memmove(p.expect, p.expect + n, p.expected - (size_t)n);
        p.expected -= (size_t)n;
    }
    if (n == 0 || (n < 0 && n != -EAGAIN))
        p.finished = 1;
    if (n < 0 && n != -EAGAIN && !p.spoiled)
        CHECK(n == -ECONNRESET || n == -EPROTO); /* the end cut, or a reset */
}

static void client_writes(void)
{
    size_t len = next_byte() * 97 + next_byte();
    if (p.expected + len > MAX_PLAIN)
        return;
    char *at = p.expect + p.expected;
    for (size_t i = 0; i < len; i++)
        at[i] = (char)next_byte();
    ssize_t rc = tls_write(p.tc, &p.cli, sel, &net_io_kernel, at, len, NULL);
    if (rc >= 0)
        p.expected += len;
    conn_flush(&p.cli, sel, &net_io_kernel);
}

static void raw_bytes(void)
{
    char junk[256];
    size_t len = next_byte();
    for (size_t i = 0; i < len; i++)
        junk[i] = (char)next_byte();
    if (len > 0 && conn_pending(&p.cli) == 0 && write(p.cli.fd, junk, len) > 0)
        p.spoiled = 1;
}

/* Reads what is left: an unspoiled stream must give every byte the client wrote. */
static void drain(void)
{
    static char buf[65536];
    cut = sizeof buf;
    for (int i = 0; i < 64 && !p.finished; i++) {
        conn_flush(&p.cli, sel, &net_io_kernel);
        ssize_t n = tls_recv(p.ts, &p.srv, sel, &cut_io, buf, sizeof buf);
        if (n > 0 && !p.spoiled) {
            CHECK((size_t)n <= p.expected && memcmp(buf, p.expect, (size_t)n) == 0);
            memmove(p.expect, p.expect + n, p.expected - (size_t)n);
            p.expected -= (size_t)n;
        }
        if (n == -EAGAIN && conn_pending(&p.cli) == 0)
            break;
        if (n == 0 || (n < 0 && n != -EAGAIN))
            p.finished = 1;
    }
    CHECK(p.spoiled || p.finished || p.expected == 0);
}

static void run_ops(void)
{
    for (int ops = 0; in_pos < in_len && ops < 400; ops++) {
        switch (next_byte() % 5) {
        case 0:
        case 1:
            client_writes();
            break;
        case 2:
            server_reads();
            break;
        case 3:
            raw_bytes();
            break;
        case 4:
            tls_close_notify(p.tc, &p.cli, sel, &net_io_kernel);
            break;
        }
    }
    drain();
}

static int handshake(void)
{
    int rs = 0, rc = 0;
    for (int i = 0; i < 20 && (rs == 0 || rc == 0); i++) {
        rc = tls_handshake(p.tc, &p.cli, sel, &net_io_kernel);
        rs = tls_handshake(p.ts, &p.srv, sel, &net_io_kernel);
        if (rs < 0 || rc < 0)
            return -1;
    }
    return rs == 1 && rc == 1 ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char err[200];
    int fds[2];
    in_data = data, in_len = len, in_pos = 0;
    memset(&p, 0, offsetof(pair, expect));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) < 0)
        return 0;
    conn_init(&p.srv, fds[0], CONN_SOCKET, CONN_DEFAULT_LIMIT);
    conn_init(&p.cli, fds[1], CONN_SOCKET, CONN_DEFAULT_LIMIT);
    p.ts = tls_conn_new(server_ctx, 1, NULL, err, sizeof err);
    p.tc = tls_conn_new(client_ctx, 0, "localhost", err, sizeof err);
    CHECK(p.ts && p.tc);
    if (next_byte() & 1) { /* raw bytes from the start: the handshake's parser */
        p.spoiled = 1;
        raw_bytes();
        while (in_pos < in_len && !p.finished) {
            raw_bytes();
            server_reads();
        }
    } else if (handshake() == 0) {
        run_ops();
    }
    conn_drop(&p.srv, sel);
    conn_drop(&p.cli, sel);
    conn_free(&p.srv);
    conn_free(&p.cli);
    tls_conn_free(p.ts);
    tls_conn_free(p.tc);
    close(fds[0]);
    close(fds[1]);
    sel_select(sel, 0); /* takes what the server posted, so nothing carries over */
    return 0;
}
