/* loadgen.c: the closed-loop load generator of `make bench`: epoll, non-blocking, one
 * thread; verifies every byte it gets back and prints one line of key=value results.
 *
 *   loadgen --mode echo|idle|chat|handshake|probe --port PORT [options]
 *     -c N            connections (echo, chat: clients; idle: connections to hold)
 *     -s BYTES        message size; echo messages end in '\n', so line servers work
 *     -d DEPTH        messages in flight per connection (echo)
 *     --warmup SEC    load before measuring (default 1)
 *     --duration SEC  measured time (idle: how long to hold; default 5)
 *     --cap SEC       hard limit on the whole run, connecting included (default 60)
 *     --pid PID       the server: its CPU (/proc/PID/stat) and VmRSS over the window
 *     --port2 PORT    odd-numbered connections go to PORT instead: a second server
 *     --also-pid PID  a process whose CPU counts as the server's (up to 4: the second
 *                     server, the Redis between them)
 *     --ramp N        connections opening at once (default 32: LuaSocket's backlog)
 *     --tls           speak TLS (loadgen_tls.c): echo and handshake load; probe then
 *                     asks for a whole handshake, not only a TCP connect
 *     --at-start CMD  pause the load until nothing is in flight, run CMD (sh -c), then
 *                     start the window; --at-end CMD: the same when the window ends.
 *                     A server idle at both edges does, between them, exactly the work
 *                     of the messages counted (tests/bench/ir.lua runs callgrind_control).
 *
 * Echo: once all connections are open (one verified round trip each), every connection
 * keeps DEPTH messages in flight and sends a new one as each comes back whole; latency
 * is from the send of a message to the last byte of its echo.
 * Idle: opens N connections, one verified round trip each, holds them, and reports the
 * server's RSS before and after. Chat: one broadcast in flight; client k % C sends a
 * line, and the next goes out when all C-1 others got {"type":"say",...} for it.
 * Handshake: N connections at a time, each a new connection, a full TLS handshake, one
 * S-byte round trip and a close, then the next in its place; a "message" is one such
 * cycle, and latency is from the connect to the echo's last byte. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_tls.h"

#define PATLEN        65521 /* the payload pattern's period: prime, so no message size divides it */
#define MAXSPAN       65536 /* most bytes handled in one send or recv */
#define LINE_MAX_CHAT 4096  /* a chat line longer than this is an error */

enum mode { M_ECHO, M_IDLE, M_CHAT, M_HANDSHAKE, M_PROBE };
enum state { S_FREE, S_CONNECTING, S_HANDSHAKE, S_OPENING, S_READY, S_DEAD };
enum phase { P_RAMP, P_WARMUP, P_MEASURE, P_DRAIN, P_DONE };

typedef struct conn {
    int fd;
    uint8_t state;
    uint8_t want_out; /* EPOLLOUT armed */
    uint8_t read_out; /* TLS: a read waits for writability */
    uint32_t id;
    tls_conn *tls;    /* --tls: the connection's TLS state */
    uint64_t t_open;  /* handshake mode: when this cycle's connect started */
    uint32_t cycles;  /* handshake mode: cycles this slot has finished */
    uint64_t sent;    /* stream bytes sent */
    uint64_t due;     /* stream bytes that should have been sent */
    uint64_t got;     /* stream bytes received and verified */
    uint64_t *stamps; /* send time of message m at m % depth */
    char name[48];    /* chat: the name the server gave us */
    char *line;       /* chat: a partial line */
    size_t line_len;
    uint64_t seen; /* chat: the last broadcast this client received, plus one */
} conn;

static struct {
    enum mode mode;
    int port, nconns, size, depth, ramp;
    double warmup, duration, cap;
    int pid;
    const char *at_start, *at_end;
    int port2, also[4], nalso;
    int tls;
} opt = {M_ECHO, 0, 100, 64, 1, 32, 1.0, 5.0, 60.0, 0, NULL, NULL, 0, {0}, 0, 0};

static conn *conns;
static int epfd;
static char pattern[PATLEN + MAXSPAN];
static char scratch[MAXSPAN], expect[MAXSPAN];
static enum phase phase = P_RAMP;
static double t_start, t_phase, t_ramped;
static int next_connect, opening, established, failed;
static int paused; /* --at-start/--at-end: no new message until the edge is passed */
static double t_pause;

/* Counters; the measured values are their differences across the window. */
static uint64_t msgs_done, bytes_done;
static uint64_t errors;
static char first_error[160];
static char tls_desc[128] = "-"; /* what the first handshake negotiated */

/* Chat: the broadcast in flight. */
static uint64_t bcast_no;     /* broadcasts sent so far */
static int bcast_sender = -1; /* -1: none in flight */
static int bcast_left;        /* deliveries still missing */
static uint64_t bcast_start_ns;
static char bcast_text[MAXSPAN];
static int chat_receivers; /* live clients but the sender */

/* Latency histogram: 32 sub-buckets per power of two, so about 3% resolution. */
#define HBITS    5
#define HBUCKETS (64 << HBITS)
static uint64_t hist[HBUCKETS], hist_n, hist_max;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double now_s(void)
{
    return (double)now_ns() / 1e9;
}

static void fail(const char *fmt, ...)
{
    va_list ap;
    errors++;
    if (first_error[0])
        return;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
    for (char *p = first_error; *p; p++)
        if (*p == ' ')
            *p = '_';
}

static int hist_bucket(uint64_t v)
{
    if (v < (1u << HBITS))
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - HBITS;
    return ((shift + 1) << HBITS) + (int)((v >> shift) & ((1u << HBITS) - 1));
}

static uint64_t hist_value(int b)
{
    if (b < (1 << HBITS))
        return (uint64_t)b;
    int shift = (b >> HBITS) - 1;
    uint64_t base = ((uint64_t)(1u << HBITS) | (uint64_t)(b & ((1 << HBITS) - 1))) << shift;
    return base + ((1ull << shift) >> 1); /* the middle of the bucket */
}

static void hist_add(uint64_t ns)
{
    if (phase != P_MEASURE)
        return;
    hist[hist_bucket(ns)]++;
    hist_n++;
    if (ns > hist_max)
        hist_max = ns;
}

static double hist_pct(double p)
{
    uint64_t want = (uint64_t)((double)hist_n * p), seen = 0;
    if (!hist_n)
        return 0;
    for (int b = 0; b < HBUCKETS; b++) {
        seen += hist[b];
        if (seen > want)
            return (double)hist_value(b) / 1e3;
    }
    return (double)hist_max / 1e3;
}

/* --- the payload: a printable pattern, every size-th byte a newline --------------------- */

static void pattern_init(void)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < PATLEN; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        pattern[i] = alphabet[x & 63];
    }
    for (int i = PATLEN; i < PATLEN + MAXSPAN; i++) /* byte by byte: MAXSPAN > PATLEN */
        pattern[i] = pattern[i - PATLEN];
}

/* The bytes [off, off+len) of connection c's stream into out. */
static void stream_bytes(const conn *c, uint64_t off, size_t len, char *out)
{
    uint64_t s = (uint64_t)opt.size;
    memcpy(out, pattern + (off + (uint64_t)c->id * 7919u) % PATLEN, len);
    uint64_t nl = off / s * s + s - 1; /* the first newline at or after off */
    for (; nl < off + len; nl += s)
        out[nl - off] = '\n';
}

/* --- connections ----------------------------------------------------------------------- */

static void arm(conn *c, int out)
{
    if (c->want_out == out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = c->id};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        fail("epoll_ctl: %s", strerror(errno));
    c->want_out = (uint8_t)out;
}

static void ramp_more(void);
static void chat_lost(conn *c);

/* One send or recv, over TLS or not: > 0 bytes; 0 when it must wait (a recv: nothing
 * to read yet, or a TLS read waiting for writability, in read_out); -1 on end or error
 * (*why says which). */
static ssize_t io_send(conn *c, const char *data, size_t len, const char **why)
{
    if (c->tls) {
        ssize_t n = tls_send(c->tls, data, len);
        if (n > 0 || n == TLS_WANT_READ || n == TLS_WANT_WRITE)
            return n > 0 ? n : 0;
        return *why = n == TLS_CLOSED ? "closed by the server" : tls_error(), -1;
    }
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    return n < 0 ? (*why = strerror(errno), -1) : n;
}

static ssize_t io_recv(conn *c, char *data, size_t len, const char **why)
{
    if (c->tls) {
        ssize_t n = tls_recv(c->tls, data, len);
        c->read_out = n == TLS_WANT_WRITE;
        if (n > 0 || n == TLS_WANT_READ || n == TLS_WANT_WRITE)
            return n > 0 ? n : 0;
        return *why = n == TLS_CLOSED ? "closed by the server" : tls_error(), -1;
    }
    ssize_t n = recv(c->fd, data, len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        *why = n == 0 ? "closed by the server" : strerror(errno);
    return n <= 0 ? -1 : n;
}

/* Closes the socket (with a close_notify first over TLS). */
static void conn_close(conn *c)
{
    if (c->tls)
        tls_close(c->tls);
    c->tls = NULL;
    close(c->fd);
}

static void conn_kill(conn *c, const char *why)
{
    if (c->state == S_DEAD || c->state == S_FREE)
        return;
    if (why)
        fail("conn %u: %s", c->id, why);
    int was_opening = c->state == S_CONNECTING || c->state == S_HANDSHAKE || c->state == S_OPENING;
    conn_close(c);
    c->state = S_DEAD;
    if (was_opening) {
        opening--;
        failed++;
        ramp_more();
    } else if (opt.mode == M_CHAT) {
        chat_lost(c);
    }
}

/* Sends what is due; arms EPOLLOUT only while the kernel does not take it all. */
static void conn_flush(conn *c)
{
    while (c->sent < c->due) {
        size_t len = c->due - c->sent > MAXSPAN ? MAXSPAN : (size_t)(c->due - c->sent);
        const char *data = scratch;
        if (opt.mode == M_CHAT)
            data = bcast_text + c->sent % (uint64_t)opt.size; /* a chat line is one span */
        else
            stream_bytes(c, c->sent, len, scratch);
        const char *why = NULL;
        ssize_t n = io_send(c, data, len, &why);
        if (n == 0)
            break;
        if (n < 0) {
            conn_kill(c, why);
            return;
        }
        c->sent += (uint64_t)n;
    }
    arm(c, c->sent < c->due);
}

/* Echo: issue k more messages. */
static void issue(conn *c, int k, uint64_t t)
{
    uint64_t m = c->due / (uint64_t)opt.size;
    for (int i = 0; i < k; i++)
        c->stamps[(m + (uint64_t)i) % (uint64_t)opt.depth] = t;
    c->due += (uint64_t)k * (uint64_t)opt.size;
    conn_flush(c);
}

static void start_connect(conn *c)
{
    int port = opt.port2 && c->id % 2 ? opt.port2 : opt.port;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail("socket: %s", strerror(errno));
        c->state = S_DEAD;
        failed++;
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = S_CONNECTING;
    c->sent = c->due = c->got = 0; /* handshake mode: the slot's earlier cycle is gone */
    c->t_open = now_ns();
    opening++;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        conn_kill(c, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = c->id};
    c->want_out = 1;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        conn_kill(c, strerror(errno));
}

static void ramp_more(void)
{
    while (phase == P_RAMP && opening < opt.ramp && next_connect < opt.nconns)
        start_connect(&conns[next_connect++]);
}

/* A connection finished opening (echo, idle: its first round trip; chat: its welcome). */
static void became_ready(conn *c)
{
    c->state = S_READY;
    opening--;
    established++;
    if (opt.mode == M_CHAT)
        chat_receivers++;
    ramp_more();
}

static void handshake_step(conn *c);

static void connected(conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        conn_kill(c, strerror(err));
        return;
    }
    if (opt.tls) {
        c->state = S_HANDSHAKE;
        c->tls = tls_new(c->fd);
        if (!c->tls)
            conn_kill(c, tls_error());
        else
            handshake_step(c);
        return;
    }
    c->state = S_OPENING;
    arm(c, 0);
    if (opt.mode != M_CHAT)
        issue(c, 1, now_ns());
}

/* One more step of the TLS handshake; once it is done the connection opens as a plain
 * one does after its connect. */
static void handshake_step(conn *c)
{
    int rc = tls_handshake(c->tls);
    if (rc == TLS_WANT_READ || rc == TLS_WANT_WRITE) {
        arm(c, rc == TLS_WANT_WRITE);
        return;
    }
    if (rc != TLS_OK) {
        conn_kill(c, tls_error());
        return;
    }
    if (tls_desc[0] == '-')
        snprintf(tls_desc, sizeof tls_desc, "%s", tls_describe(c->tls));
    c->state = S_OPENING;
    arm(c, 0);
    issue(c, 1, now_ns());
}

/* --- echo and idle ----------------------------------------------------------------------- */

static void cycle_done(conn *c, uint64_t t);

/* Reads once and checks what came; 0 when there is nothing more to do for now. */
static int echo_read_once(conn *c)
{
    const char *why = NULL;
    ssize_t n = io_recv(c, scratch, MAXSPAN, &why);
    if (n == 0)
        return 0;
    if (n < 0) {
        conn_kill(c, why);
        return 0;
    }
    if (c->got + (uint64_t)n > c->sent) {
        conn_kill(c, "more bytes back than were sent");
        return 0;
    }
    stream_bytes(c, c->got, (size_t)n, expect);
    if (memcmp(scratch, expect, (size_t)n) != 0) {
        conn_kill(c, "echoed bytes differ from those sent");
        return 0;
    }
    uint64_t s = (uint64_t)opt.size, t = now_ns();
    uint64_t first = c->got / s, last = (c->got + (uint64_t)n) / s; /* messages completed */
    c->got += (uint64_t)n;
    if (phase == P_MEASURE)
        bytes_done += (uint64_t)n;
    if (opt.mode == M_HANDSHAKE && last > first) {
        cycle_done(c, t);
        return 0;
    }
    for (uint64_t m = first; m < last; m++) {
        hist_add(t - c->stamps[m % (uint64_t)opt.depth]);
        if (phase == P_MEASURE)
            msgs_done++;
    }
    if (last == first)
        return 1;
    if (c->state == S_OPENING) {
        became_ready(c);
        return 1; /* echo load starts when every connection is open */
    }
    if (opt.mode == M_ECHO && phase < P_DRAIN && !paused) {
        int inflight = (int)(c->due / s - last);
        if (inflight < opt.depth)
            issue(c, opt.depth - inflight, t);
    }
    return 1;
}

/* One read per readiness, and more only while TLS holds bytes it has read already (the
 * kernel will not wake us for them). */
static void echo_readable(conn *c)
{
    while (echo_read_once(c) && c->state != S_DEAD && c->tls && tls_pending(c->tls))
        ;
}

/* --- handshake ------------------------------------------------------------------------ */

/* Handshake mode: this cycle's round trip is back: it counts, the connection closes
 * (close_notify, then close), and a new one takes its place unless the load is paused
 * or over. */
static void cycle_done(conn *c, uint64_t t)
{
    hist_add(t - c->t_open);
    if (phase == P_MEASURE)
        msgs_done++;
    if (c->state == S_OPENING) {
        opening--;
        if (!c->cycles++) /* its first cycle: the slot counts as opened */
            established++;
    }
    conn_close(c);
    c->state = S_FREE;
    if (phase <= P_MEASURE && !paused)
        start_connect(c);
    ramp_more();
}

/* After a pause at an edge of the window: every slot starts a cycle again. */
static void start_handshakes(void)
{
    for (int i = 0; i < opt.nconns; i++)
        if (conns[i].state == S_FREE && conns[i].cycles)
            start_connect(&conns[i]);
}

/* --- chat ---------------------------------------------------------------------------------- */

/* Finds "key":"value" in a flat JSON object; the value is returned raw (no unescaping),
 * which is enough: names and texts the bench uses need no escapes. */
static int json_field(const char *line, const char *key, char *out, size_t outlen)
{
    char pat[32];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p++ != '"')
        return -1;
    size_t n = 0;
    for (; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1])
            p++;
        if (n + 1 >= outlen)
            return -1;
        out[n++] = *p;
    }
    out[n] = '\0';
    return *p == '"' ? 0 : -1;
}

static void chat_next(void);

static void chat_line(conn *c, char *line)
{
    char type[16], from[48], text[MAXSPAN];
    if (json_field(line, "type", type, sizeof type) < 0) {
        conn_kill(c, "a line that is not a JSON object with a type");
        return;
    }
    if (strcmp(type, "welcome") == 0) {
        if (c->state != S_OPENING || json_field(line, "name", c->name, sizeof c->name) < 0)
            conn_kill(c, "unexpected welcome");
        else
            became_ready(c);
        return;
    }
    if (strcmp(type, "say") != 0)
        return; /* join, leave: not what is measured */
    if (json_field(line, "from", from, sizeof from) < 0 ||
        json_field(line, "text", text, sizeof text) < 0) {
        conn_kill(c, "say without from or text");
        return;
    }
    if (bcast_sender < 0 || (int)c->id == bcast_sender || c->seen == bcast_no + 1) {
        conn_kill(c, "a say line nobody was waiting for");
        return;
    }
    if (strcmp(from, conns[bcast_sender].name) != 0 ||
        strncmp(text, bcast_text, (size_t)opt.size - 1) != 0 ||
        strlen(text) != (size_t)opt.size - 1) {
        conn_kill(c, "say line with the wrong sender or text");
        return;
    }
    c->seen = bcast_no + 1;
    if (phase == P_MEASURE)
        msgs_done++, bytes_done += strlen(line) + 1;
    if (--bcast_left == 0) {
        hist_add(now_ns() - bcast_start_ns);
        bcast_sender = -1;
        bcast_no++;
        chat_next();
    }
}

/* A chat receiver never answers with data, so its ACKs would wait for the delayed-ACK
 * timer (40 ms), and a server that leaves Nagle on would hold the next line until then:
 * every server would measure that timer. So the client acknowledges at once. */
static void chat_readable(conn *c)
{
    int one = 1;
    ssize_t n = recv(c->fd, scratch, MAXSPAN, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_kill(c, n == 0 ? "closed by the server" : strerror(errno));
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    char *p = scratch, *end = scratch + n;
    while (p < end && c->state != S_DEAD) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t take = (size_t)((nl ? nl : end) - p);
        if (c->line_len + take >= LINE_MAX_CHAT) {
            conn_kill(c, "a line longer than 4096 bytes");
            return;
        }
        memcpy(c->line + c->line_len, p, take);
        c->line_len += take;
        if (!nl)
            break;
        c->line[c->line_len] = '\0';
        c->line_len = 0;
        chat_line(c, c->line);
        p = nl + 1;
    }
}

/* A client died: the broadcast in flight stops waiting for it. */
static void chat_lost(conn *c)
{
    chat_receivers--;
    if (bcast_sender < 0)
        return;
    if ((int)c->id == bcast_sender || c->seen == bcast_no + 1)
        return;
    if (--bcast_left == 0) {
        bcast_sender = -1;
        bcast_no++;
        chat_next();
    }
}

/* Sends the next broadcast from the next live client, unless the run is ending. */
static void chat_next(void)
{
    if ((phase != P_WARMUP && phase != P_MEASURE) || paused)
        return;
    for (int tries = 0; tries < opt.nconns; tries++) {
        conn *c = &conns[bcast_no % (uint64_t)opt.nconns];
        if (c->state != S_READY) {
            bcast_no++;
            continue;
        }
        int len = snprintf(bcast_text, sizeof bcast_text, "b%llu-", (unsigned long long)bcast_no);
        for (; len < opt.size - 1; len++)
            bcast_text[len] = pattern[(bcast_no * 131u + (uint64_t)len) % PATLEN];
        bcast_text[opt.size - 1] = '\n';
        bcast_sender = (int)c->id;
        bcast_left = chat_receivers - 1;
        bcast_start_ns = now_ns();
        if (bcast_left <= 0) {
            fail("no client left to receive a broadcast");
            bcast_sender = -1;
            return;
        }
        c->sent = c->due = 0;
        c->due = (uint64_t)opt.size;
        conn_flush(c);
        return;
    }
}

/* --- measurement ---------------------------------------------------------------------- */

typedef struct snapshot {
    double t;
    double busy, total; /* /proc/stat: all CPUs' busy and total time, in ticks */
    double steal;       /* time the hypervisor gave the vCPUs to someone else, in ticks */
    double lg_cpu;      /* this process: user + system seconds */
    double srv_user, srv_sys;
    long srv_rss_kib;
    uint64_t msgs, bytes;
} snapshot;

static int read_proc_stat(int pid, double *user, double *sys)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    /* After the command: state, then fields 4..13, then utime (14) and stime (15). */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    double hz = (double)sysconf(_SC_CLK_TCK);
    *user = (double)ut / hz;
    *sys = (double)st / hz;
    return 0;
}

static long read_rss_kib(int pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* The machine's busy and total CPU time: what neither the server nor this process used
 * is other load, which makes a run less trustworthy. */
static void read_machine(double *busy, double *total, double *steal)
{
    unsigned long long v[8] = {0};
    *busy = *total = *steal = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6], &v[7]) == 8) {
        for (int i = 0; i < 8; i++)
            *total += (double)v[i];
        *busy = *total - (double)v[3] - (double)v[4] - (double)v[7]; /* not idle, iowait, steal */
        *steal = (double)v[7];
    }
    fclose(f);
}

static void take(snapshot *s)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->t = now_s();
    read_machine(&s->busy, &s->total, &s->steal);
    s->lg_cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    s->srv_user = s->srv_sys = 0;
    s->srv_rss_kib = -1;
    if (opt.pid > 0) {
        if (read_proc_stat(opt.pid, &s->srv_user, &s->srv_sys) < 0)
            fail("cannot read /proc/%d/stat: the server is gone", opt.pid);
        s->srv_rss_kib = read_rss_kib(opt.pid);
    }
    for (int i = 0; i < opt.nalso; i++) {
        double u = 0, y = 0;
        if (read_proc_stat(opt.also[i], &u, &y) < 0)
            fail("cannot read /proc/%d/stat: it is gone", opt.also[i]);
        s->srv_user += u, s->srv_sys += y;
    }
    s->msgs = msgs_done;
    s->bytes = bytes_done;
}

static snapshot snap_before, snap_after, snap_ramp;

static void report(int capped)
{
    const snapshot *a = &snap_before, *b = &snap_after;
    double secs = b->t - a->t;
    double msgs = (double)(b->msgs - a->msgs), cpu = b->lg_cpu - a->lg_cpu;
    double su = b->srv_user - a->srv_user, ss = b->srv_sys - a->srv_sys;
    static const char *names[] = {"echo", "idle", "chat", "handshake", "probe"};
    if (secs <= 0)
        secs = 1e-9;
    printf("mode=%s conns=%d size=%d depth=%d established=%d", names[opt.mode], opt.nconns,
           opt.size, opt.depth, established);
    printf(" secs=%.3f msgs=%.0f msgs_per_s=%.1f mb_per_s=%.3f", secs, msgs, msgs / secs,
           (double)(b->bytes - a->bytes) / secs / 1e6);
    printf(" p50_us=%.1f p99_us=%.1f max_us=%.1f", hist_pct(0.50), hist_pct(0.99),
           (double)hist_max / 1e3);
    printf(" srv_user_s=%.3f srv_sys_s=%.3f srv_cpu_util=%.3f", su, ss, (su + ss) / secs);
    printf(" user_us_per_msg=%.4f cpu_us_per_msg=%.4f", msgs ? su * 1e6 / msgs : 0,
           msgs ? (su + ss) * 1e6 / msgs : 0);
    double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN), total = b->total - a->total;
    double other = total > 0 ? (b->busy - a->busy) / total * ncpu - (su + ss + cpu) / secs : 0;
    double steal = total > 0 ? (b->steal - a->steal) / total * ncpu : 0;
    printf(" lg_cpu_util=%.3f lg_saturated=%d other_cpu=%.3f steal_cpu=%.3f", cpu / secs,
           cpu / secs >= 0.95, other < 0 ? 0 : other, steal);
    printf(" rss_before_kib=%ld rss_after_kib=%ld ramp_s=%.3f", snap_ramp.srv_rss_kib,
           b->srv_rss_kib, t_ramped > 0 ? t_ramped - t_start : 0.0);
    printf(" tls=%s errors=%llu capped=%d first_error=%s\n", tls_desc, (unsigned long long)errors,
           capped, first_error[0] ? first_error : "-");
    fflush(stdout);
}

/* --- the loop --------------------------------------------------------------------------- */

static int all_drained(void)
{
    if (opt.mode == M_CHAT)
        return bcast_sender < 0;
    if (opt.mode == M_HANDSHAKE)
        return opening == 0;
    for (int i = 0; i < opt.nconns; i++)
        if (conns[i].state == S_READY && conns[i].got < conns[i].due)
            return 0;
    return 1;
}

static void set_phase(enum phase p)
{
    phase = p;
    t_phase = now_s();
}

/* Every connection is open: each one puts depth messages in flight. Until now only the
 * connections being opened were busy, so that a server accepting one connection per
 * wakeup is not starved of wakeups by the load of those already open. */
static void start_echo_load(void)
{
    uint64_t t = now_ns();
    for (int i = 0; i < opt.nconns; i++)
        if (conns[i].state == S_READY)
            issue(&conns[i], opt.depth, t);
}

/* At an edge of the window with a command to run (--at-start, --at-end): stops issuing
 * messages and tells whether none is in flight any more; the caller asks again until
 * then. A message lost on the way fails the run instead of stopping it forever. */
static int quiet(const char *cmd)
{
    if (!cmd)
        return 1;
    if (!paused) {
        paused = 1;
        t_pause = now_s();
    }
    if (all_drained())
        return 1;
    if (now_s() - t_pause < 10.0)
        return 0;
    fail("messages still unanswered 10 s into the pause at an edge of the window");
    return 1;
}

static void run_at_edge(const char *cmd)
{
    if (cmd && system(cmd) != 0)
        fail("the command at an edge of the window failed: %s", cmd);
}

/* Moves between phases on time; returns how long epoll may wait (ms). */
static int advance(void)
{
    double t = now_s();
    if (t - t_start > opt.cap) {
        if (snap_after.t == 0)
            take(&snap_after);
        fail("hard time cap of %.0f s reached in phase %d", opt.cap, (int)phase);
        report(1);
        exit(3);
    }
    switch (phase) {
    case P_RAMP:
        if (established + failed < opt.nconns)
            return 100;
        if (!established) {
            fail("no connection could be opened");
            set_phase(P_DONE);
            return 0;
        }
        set_phase(P_WARMUP);
        t_ramped = t_phase;
        if (opt.mode == M_CHAT)
            chat_next();
        if (opt.mode == M_ECHO)
            start_echo_load();
        return 0;
    case P_WARMUP:
        if (t - t_phase < opt.warmup)
            return (int)((opt.warmup - (t - t_phase)) * 1000) + 1;
        if (!quiet(opt.at_start))
            return 5;
        run_at_edge(opt.at_start);
        take(&snap_before);
        memset(hist, 0, sizeof hist);
        hist_n = hist_max = 0;
        set_phase(P_MEASURE);
        if (paused) { /* the load starts again: every connection is idle */
            paused = 0;
            if (opt.mode == M_CHAT)
                chat_next();
            else if (opt.mode == M_ECHO)
                start_echo_load();
            else if (opt.mode == M_HANDSHAKE)
                start_handshakes();
        }
        return 0;
    case P_MEASURE:
        if (t - t_phase < opt.duration)
            return (int)((opt.duration - (t - t_phase)) * 1000) + 1;
        if (!quiet(opt.at_end))
            return 5; /* what comes back meanwhile still counts: it was sent in the window */
        take(&snap_after);
        run_at_edge(opt.at_end);
        set_phase(P_DRAIN);
        return 0;
    case P_DRAIN:
        if (all_drained() || t - t_phase > 3.0) {
            if (!all_drained())
                fail("messages still unanswered 3 s after the load stopped");
            set_phase(P_DONE);
            return 0;
        }
        return 50;
    case P_DONE:
        return 0;
    }
    return 0;
}

static void on_event(conn *c, uint32_t events)
{
    if (c->state == S_CONNECTING) {
        connected(c);
        return;
    }
    if (c->state == S_DEAD || c->state == S_FREE)
        return;
    if (c->state == S_HANDSHAKE) {
        handshake_step(c);
        return;
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) || (c->read_out && (events & EPOLLOUT))) {
        if (opt.mode == M_CHAT)
            chat_readable(c);
        else
            echo_readable(c);
    }
    if (c->state != S_DEAD && (events & EPOLLOUT))
        conn_flush(c);
}

static int probe(void)
{
    if (opt.tls && tls_init() == 0) { /* a TCP server answering is not enough */
        int rc = tls_probe(opt.port, opt.cap > 0 ? opt.cap : 1);
        if (rc < 0)
            fprintf(stderr, "loadgen: no TLS on 127.0.0.1:%d: %s\n", opt.port, tls_error());
        return rc < 0;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    do { /* at least once, so --cap 0 asks whether the port is taken */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        if (rc == 0)
            return 0;
        usleep(20000);
    } while (now_s() - t_start < opt.cap);
    if (opt.cap > 0)
        fprintf(stderr, "loadgen: nothing listens on 127.0.0.1:%d after %.0f s\n", opt.port,
                opt.cap);
    return 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --mode echo|idle|chat|handshake|probe --port PORT [-c N] [-s BYTES] "
            "[-d DEPTH] [--warmup SEC] [--duration SEC] [--cap SEC] [--pid PID] [--ramp N] "
            "[--at-start CMD] [--at-end CMD] [--port2 PORT] [--also-pid PID]... [--tls]\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option longs[] = {
        {"mode", 1, 0, 'm'},
        {"port", 1, 0, 'p'},
        {"warmup", 1, 0, 'w'},
        {"duration", 1, 0, 't'},
        {"cap", 1, 0, 'C'},
        {"pid", 1, 0, 'P'},
        {"ramp", 1, 0, 'r'},
        {"at-start", 1, 0, 'S'},
        {"at-end", 1, 0, 'E'},
        {"port2", 1, 0, '2'},
        {"also-pid", 1, 0, 'A'},
        {"tls", 0, 0, 'T'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:d:", longs, NULL)) != -1) {
        switch (ch) {
        case 'm':
            opt.mode = !strcmp(optarg, "echo")        ? M_ECHO
                       : !strcmp(optarg, "idle")      ? M_IDLE
                       : !strcmp(optarg, "chat")      ? M_CHAT
                       : !strcmp(optarg, "handshake") ? M_HANDSHAKE
                       : !strcmp(optarg, "probe")     ? M_PROBE
                                                      : (usage(), M_ECHO);
            break;
        case 'p':
            opt.port = atoi(optarg);
            break;
        case 'c':
            opt.nconns = atoi(optarg);
            break;
        case 's':
            opt.size = atoi(optarg);
            break;
        case 'd':
            opt.depth = atoi(optarg);
            break;
        case 'w':
            opt.warmup = atof(optarg);
            break;
        case 't':
            opt.duration = atof(optarg);
            break;
        case 'C':
            opt.cap = atof(optarg);
            break;
        case 'P':
            opt.pid = atoi(optarg);
            break;
        case 'r':
            opt.ramp = atoi(optarg);
            break;
        case 'S':
            opt.at_start = optarg;
            break;
        case 'E':
            opt.at_end = optarg;
            break;
        case '2':
            opt.port2 = atoi(optarg);
            break;
        case 'A':
            if (opt.nalso == 4)
                usage();
            opt.also[opt.nalso++] = atoi(optarg);
            break;
        case 'T':
            opt.tls = 1;
            break;
        default:
            usage();
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.nconns < 1 || opt.size < 2 ||
        opt.size > MAXSPAN / 2 || opt.depth < 1 || opt.depth * opt.size > MAXSPAN || opt.ramp < 1)
        usage();
    if (opt.mode == M_CHAT && (opt.nconns < 2 || opt.size > LINE_MAX_CHAT / 2 || opt.tls))
        usage();
    if (opt.mode == M_HANDSHAKE)
        opt.depth = 1;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    t_start = now_s();
    if (opt.mode == M_PROBE)
        return probe();
    pattern_init();
    conns = calloc((size_t)opt.nconns, sizeof *conns);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || epfd < 0)
        return perror("loadgen"), 1;
    if (opt.tls && tls_init() < 0)
        return fprintf(stderr, "loadgen: %s\n", tls_error()), 1;
    for (int i = 0; i < opt.nconns; i++) {
        conns[i].id = (uint32_t)i;
        conns[i].stamps = calloc((size_t)opt.depth, sizeof(uint64_t));
        if (opt.mode == M_CHAT)
            conns[i].line = malloc(LINE_MAX_CHAT);
    }
    if (opt.mode == M_IDLE)
        opt.warmup = 0;
    take(&snap_ramp); /* the server before any connection: idle's RSS baseline */
    ramp_more();
    static struct epoll_event evs[1024];
    while (phase != P_DONE) {
        int timeout = advance();
        if (phase == P_DONE)
            break;
        int n = epoll_wait(epfd, evs, 1024, timeout);
        if (n < 0 && errno != EINTR)
            return perror("loadgen: epoll_wait"), 1;
        for (int i = 0; i < n; i++)
            on_event(&conns[evs[i].data.u32], evs[i].events);
    }
    if (opt.mode == M_IDLE) {
        /* Held connections must still be open: a server that dropped one shows here. */
        for (int i = 0; i < opt.nconns; i++) {
            char b;
            if (conns[i].state == S_READY && recv(conns[i].fd, &b, 1, MSG_PEEK) >= 0)
                conn_kill(&conns[i], "closed or written to while idle");
        }
    }
    report(0);
    return errors ? 1 : 0;
}
