/* fuzz_buffer.c: libFuzzer target proving the output path keeps every byte, in order,
 * within its limit. The first input byte picks a mode: buffer.c alone against a byte-queue
 * model, or conn.c over a socketpair with a small SO_SNDBUF against a model of what the
 * peer must receive (what the kernel took is measured with FIONREAD on the peer). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buffer.h"
#include "conn.h"
#include "selector.h"

#define MAX_LIVE  ((size_t)512 * 1024) /* most bytes the buffer model keeps queued */
#define MAX_WRITE ((size_t)128 * 1024) /* largest single write */

static const uint8_t *in_data;
static size_t in_len, in_pos;
static char scratch[MAX_LIVE + MAX_WRITE];
static int show_trace; /* FUZZ_TRACE=1: print every operation, to read a repro */

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    va_list ap;
    if (!show_trace)
        return;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed at input byte %zu: %s: ", __FILE__, __LINE__, \
                    in_pos, #cond);                                                            \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static int next_byte(void)
{
    return in_pos < in_len ? in_data[in_pos++] : 0;
}

/* The stream every test writes: byte p is stream[p % STREAM_PERIOD], a prime period far
 * above any shift a bug could cause, so that lost, doubled or reordered bytes show. The
 * table runs on past the period, so that any span a test handles is contiguous. */
#define STREAM_PERIOD 65521
static char stream[STREAM_PERIOD + sizeof(scratch)];

static void stream_init(void)
{
    for (size_t p = 0; p < sizeof(stream); p++)
        stream[p] = (char)((uint32_t)((p % STREAM_PERIOD) * 2654435761u) >> 24);
}

static void fill(char *dst, size_t pos, size_t len)
{
    memcpy(dst, stream + pos % STREAM_PERIOD, len);
}

/* Where data differs from the stream at pos, or -1 if it matches. */
static long mismatch(const char *data, size_t pos, size_t len)
{
    const char *want = stream + pos % STREAM_PERIOD;
    if (memcmp(data, want, len) == 0)
        return -1;
    for (size_t i = 0;; i++)
        if (data[i] != want[i])
            return (long)i;
}

/* A length mostly small, sometimes a few KiB, sometimes past any small limit. */
static size_t pick_len(void)
{
    int b = next_byte();
    if (b < 128)
        return (size_t)b;
    if (b < 240)
        return (size_t)(b - 128) * 97;
    return (size_t)(b - 240) * 8191;
}

/* ---- buffer.c alone ---- */

typedef struct bmodel {
    buffer b;
    size_t head, tail; /* stream positions of the first queued byte and one past the last */
} bmodel;

/* The queue holds exactly [head, tail) of the stream; storage exists only when non-empty. */
static void check_buffer(const bmodel *m, int moved)
{
    const buffer *b = &m->b;
    size_t live = m->tail - m->head, len;
    CHECK(b->start <= b->end && b->end <= b->cap, "start %zu end %zu cap %zu", b->start, b->end,
          b->cap);
    CHECK(buf_len(b) == live, "buf_len %zu, model %zu", buf_len(b), live);
    const char *p = buf_peek(b, &len);
    CHECK(len == live && p != NULL, "peek gave %zu bytes, model %zu", len, live);
    CHECK(live || (b->data == NULL && b->cap == 0), "empty buffer keeps %zu bytes", b->cap);
    /* The whole content after the storage moved, else its two ends. */
    size_t edge = live < 32 ? live : 32;
    long at = moved ? mismatch(p, m->head, live) : mismatch(p, m->head, edge);
    if (at < 0 && !moved)
        at = mismatch(p + live - edge, m->tail - edge, edge);
    CHECK(at < 0, "queued bytes differ from the stream at offset %ld", at);
}

static void buffer_append(bmodel *m, size_t len)
{
    size_t live = m->tail - m->head;
    const char *old = m->b.data;
    size_t old_start = m->b.start;
    if (live + len > MAX_LIVE)
        len = MAX_LIVE - live;
    fill(scratch, m->tail, len);
    note("append %zu to %zu queued", len, live);
    CHECK(buf_append(&m->b, scratch, len) == 0, "append of %zu bytes failed", len);
    m->tail += len;
    check_buffer(m, m->b.data != old || m->b.start != old_start);
}

static void buffer_consume(bmodel *m, int b)
{
    size_t live = m->tail - m->head;
    size_t n = b < 200 ? (size_t)b : b < 255 ? live * (size_t)(b - 200) / 54 : SIZE_MAX;
    note("consume %zu of %zu", n, live);
    buf_consume(&m->b, n);
    m->head += n < live ? n : live;
    check_buffer(m, 0);
}

/* Sizes whose arithmetic would overflow are refused, leaving the queue as it was. */
static void buffer_huge(bmodel *m, int b)
{
    size_t live = m->tail - m->head;
    size_t len = b & 1 ? SIZE_MAX - (size_t)(b >> 1) : (size_t)PTRDIFF_MAX - live + 1;
    CHECK(buf_append(&m->b, scratch, len) == -ENOMEM, "append of %zu bytes accepted", len);
    check_buffer(m, 0);
}

static void run_buffer(void)
{
    bmodel m = {.head = 0, .tail = 0};
    buf_init(&m.b);
    check_buffer(&m, 1);
    while (in_pos < in_len) {
        int op = next_byte();
        switch (op % 5) {
        case 0:
        case 1:
            buffer_append(&m, pick_len());
            break;
        case 2:
            buffer_consume(&m, next_byte());
            break;
        case 3:
            buffer_huge(&m, next_byte());
            break;
        default:
            buf_free(&m.b);
            m.head = m.tail;
            check_buffer(&m, 1);
        }
    }
    buf_free(&m.b);
}

/* ---- conn.c over a socketpair ---- */

typedef struct cmodel {
    conn c;
    selector *sel;
    int peer;         /* the reading end, -1 once closed */
    size_t read_pos;  /* stream position the peer reads next */
    size_t sent_pos;  /* one past the last byte handed to the kernel */
    size_t pending;   /* what conn should still hold */
    int registered;   /* the script has the fd registered for READ */
    int shut_asked;   /* conn_shutdown_write was called */
    int shut_done;    /* the write side is shut: EOF after the bytes in flight */
    int dropped_shut; /* a drop discarded a pending shutdown */
    int check_pause;  /* the last operation ran update_pause */
} cmodel;

/* Bytes in the peer's receive queue, which for a socketpair is all the kernel holds. */
static size_t in_flight(const cmodel *m)
{
    int n = -1;
    CHECK(ioctl(m->peer, FIONREAD, &n) == 0 && n >= 0, "FIONREAD: %s", strerror(errno));
    return (size_t)n;
}

/* conn's pending bytes, host interest and pause match the model. */
static void check_conn(const cmodel *m)
{
    const conn *c = &m->c;
    const sel_key *k = sel_slot(m->sel, c->fd);
    int paused = (c->flags & CONN_PAUSED) != 0;
    CHECK(conn_pending(c) == m->pending, "pending %zu, model %zu", conn_pending(c), m->pending);
    CHECK((c->out != NULL) == (m->pending > 0), "output buffer %p with %zu pending", (void *)c->out,
          m->pending);
    CHECK((k != NULL) == (m->pending > 0 || m->registered), "slot %p with %zu pending", (void *)k,
          m->pending);
    if (k) {
        CHECK(k->host_events == (m->pending ? SEL_WRITE : 0), "host events %d, %zu pending",
              k->host_events, m->pending);
        CHECK(!m->pending || sel_host_data(m->sel, c->fd) == c, "host_data is not the conn");
        CHECK(k->paused == (paused ? SEL_READ : 0), "slot paused %d, conn flag %d", k->paused,
              paused);
    }
    CHECK(!paused || (k && m->pending > 0), "paused with %zu pending", m->pending);
    if (m->check_pause) {
        CHECK(paused || m->pending <= conn_high_water(c), "%zu pending above high water %zu",
              m->pending, conn_high_water(c));
        CHECK(!paused || m->pending >= conn_low_water(c), "paused below low water");
    }
    if (m->peer >= 0)
        CHECK(in_flight(m) == m->sent_pos - m->read_pos, "kernel holds %zu, model %zu",
              in_flight(m), m->sent_pos - m->read_pos);
}

/* What conn_write must do: with nothing pending, send what the kernel takes and queue the
 * rest unless that passes the limit; with bytes pending, send nothing (order) and queue
 * all of it unless that passes the limit. -ENOBUFS queues nothing, but with nothing
 * pending the kernel may already have taken a prefix, which stays in the stream (the host
 * then closes the connection). */
static void conn_model_write(cmodel *m, size_t len)
{
    conn *c = &m->c;
    size_t before = m->peer >= 0 ? in_flight(m) : 0, pos = m->sent_pos + m->pending;
    fill(scratch, pos, len);
    ssize_t rc = conn_write(c, m->sel, &net_io_kernel, scratch, len, NULL);
    size_t sent = m->peer >= 0 ? in_flight(m) - before : 0;
    note("write %zu with %zu pending, limit %u: sent %zu, returned %zd", len, m->pending,
         (unsigned)c->limit, sent, rc);
    m->check_pause = 0;
    if (m->shut_asked) {
        CHECK(rc == -EPIPE && sent == 0, "write after shutdown gave %zd", rc);
        return;
    }
    if (m->peer < 0 && m->pending == 0) {
        CHECK(rc == -EPIPE || (rc == 0 && len == 0), "write to a closed peer gave %zd", rc);
        return;
    }
    CHECK(sent <= len && (m->pending == 0 || sent == 0), "sent %zu of %zu with %zu pending", sent,
          len, m->pending);
    m->sent_pos += sent;
    size_t rest = len - sent, total = m->pending + rest;
    if (total > c->limit) {
        CHECK(rc == -ENOBUFS, "%zu + %zu past limit %u gave %zd", m->pending, rest,
              (unsigned)c->limit, rc);
        return;
    }
    CHECK(rc >= 0 && (size_t)rc == total, "write of %zu gave %zd, model %zu pending", len, rc,
          total);
    m->pending = total;
    m->check_pause = 1;
}

static void conn_model_flush(cmodel *m)
{
    size_t before = m->peer >= 0 ? in_flight(m) : 0;
    ssize_t rc = conn_flush(&m->c, m->sel, &net_io_kernel);
    note("flush of %zu: returned %zd", m->pending, rc);
    m->check_pause = 1;
    if (m->peer < 0) {
        CHECK(m->pending ? rc == -EPIPE || rc == -ECONNRESET : rc <= 0,
              "flush to a closed peer gave %zd", rc);
        m->pending = 0;
        return;
    }
    size_t sent = in_flight(m) - before;
    CHECK(sent <= m->pending && rc >= 0 && (size_t)rc == m->pending - sent,
          "flush of %zu sent %zu and gave %zd", m->pending, sent, rc);
    m->sent_pos += sent;
    m->pending -= sent;
    if (m->pending == 0 && m->shut_asked && !m->dropped_shut)
        m->shut_done = 1;
}

/* Bytes reach the peer in stream order, and EOF only after a shutdown that was sent. */
static void conn_model_read(cmodel *m, size_t want)
{
    ssize_t n;
    if (m->peer < 0)
        return;
    n = recv(m->peer, scratch, want ? want : sizeof(scratch), MSG_DONTWAIT);
    note("peer read %zu at %zu: %zd", want, m->read_pos, n);
    if (n > 0) {
        long at = mismatch(scratch, m->read_pos, (size_t)n);
        CHECK(at < 0, "byte %zu of the stream is wrong", m->read_pos + (size_t)at);
        m->read_pos += (size_t)n;
        CHECK(m->read_pos <= m->sent_pos, "peer read more than was sent");
    } else if (n == 0) {
        CHECK(m->shut_done && m->read_pos == m->sent_pos, "EOF at %zu of %zu", m->read_pos,
              m->sent_pos);
    } else {
        CHECK(errno == EAGAIN && m->read_pos == m->sent_pos && !m->shut_done, "recv: %s at %zu",
              strerror(errno), m->read_pos);
    }
}

/* The host's loop: flush when the selector reports the fd writable for the host. */
static void conn_model_select(cmodel *m)
{
    int n = sel_select(m->sel, 0);
    CHECK(n >= 0, "select: %s", sel_error(m->sel));
    for (int i = 0; i < n; i++) {
        const sel_fired *f = sel_fired_at(m->sel, i);
        const sel_key *k = sel_slot(m->sel, f->fd);
        if (k && (sel_deliverable(m->sel, f) & k->host_events & SEL_WRITE))
            conn_model_flush(m);
    }
}

static void conn_model_shutdown(cmodel *m)
{
    int rc = conn_shutdown_write(&m->c, m->sel);
    note("shutdown with %zu pending: %d", m->pending, rc);
    CHECK(rc == 0 || m->peer < 0, "shutdown gave %d", rc);
    m->shut_asked = 1;
    if (m->pending == 0)
        m->shut_done = 1;
}

static void conn_model_drop(cmodel *m)
{
    note("drop %zu pending", m->pending);
    conn_drop(&m->c, m->sel);
    if (m->pending && m->shut_asked && !m->shut_done)
        m->dropped_shut = 1;
    m->pending = 0;
    m->check_pause = 1;
}

static void conn_model_register(cmodel *m)
{
    int rc = m->registered ? sel_unregister(m->sel, m->c.fd) : sel_register(m->sel, m->c.fd, 1);
    CHECK(rc == 0, "script (un)register: %s", sel_error(m->sel));
    m->registered = !m->registered;
}

static uint32_t pick_limit(void)
{
    int a = next_byte(), b = next_byte();
    return a < 16 ? (uint32_t)a + 1 : (uint32_t)((a << 8) | b) + 1;
}

static void conn_op(cmodel *m, int op)
{
    switch (op % 10) {
    case 0:
    case 1:
    case 2:
        conn_model_write(m, pick_len());
        break;
    case 3:
        conn_model_flush(m);
        break;
    case 4:
    case 5:
        conn_model_read(m, (size_t)next_byte() * 67);
        break;
    case 6:
        conn_model_select(m);
        break;
    case 7:
        switch (next_byte() % 8) {
        case 0:
            conn_model_shutdown(m);
            break;
        case 1:
            conn_model_drop(m);
            break;
        case 2:
            note("peer closed");
            if (m->peer >= 0)
                close(m->peer);
            m->peer = -1;
            break;
        default:
            conn_model_register(m);
        }
        break;
    case 8:
        m->c.limit = pick_limit(); /* as socket:setlimit does: pending may exceed it */
        note("limit %u", (unsigned)m->c.limit);
        m->check_pause = 0;
        break;
    default:
        conn_model_read(m, 0);
    }
}

static void run_conn(void)
{
    int sv[2], sndbuf = 1024 + next_byte() * 64;
    char err[160];
    cmodel m = {.peer = -1};
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
          "socketpair: %s", strerror(errno));
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0, "SO_SNDBUF");
    m.sel = sel_new(NULL, err, sizeof(err));
    CHECK(m.sel != NULL, "%s", err);
    m.peer = sv[1];
    conn_init(&m.c, sv[0], CONN_SOCKET, pick_limit());
    note("conn: SO_SNDBUF %d, limit %u", sndbuf, (unsigned)m.c.limit);
    while (in_pos < in_len) {
        conn_op(&m, next_byte());
        check_conn(&m);
    }
    conn_drop(&m.c, m.sel);
    conn_free(&m.c);
    sel_free(m.sel);
    close(sv[0]);
    if (m.peer >= 0)
        close(m.peer);
}

static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    show_trace = getenv("FUZZ_TRACE") && strcmp(getenv("FUZZ_TRACE"), "1") == 0;
    stream_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int base = lowest_free_fd();
    if (size < 1)
        return 0;
    in_data = data;
    in_len = size;
    in_pos = 1;
    if (data[0] & 1)
        run_conn();
    else
        run_buffer();
    CHECK(lowest_free_fd() == base, "an fd was left open");
    return 0;
}
