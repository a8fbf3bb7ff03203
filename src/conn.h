/* conn.h: a connection's output side: what the kernel has not taken yet is kept in a
 * buffer and flushed when the selector reports the fd writable, within a byte limit,
 * pausing the script's reads while too much is pending (backpressure). */
#ifndef LUAHOST_CONN_H
#define LUAHOST_CONN_H

#include <stdint.h>
#include <sys/types.h>

#include "buffer.h"
#include "selector.h"

enum conn_kind { CONN_SOCKET = 1, CONN_LINGER, CONN_SIGNAL, CONN_WATCH, CONN_MASTER };
enum conn_flag {
    CONN_SHUT_WR = 1, /* shut the write side once the buffer drains */
    CONN_PAUSED = 2,  /* the script's READ is withheld until the buffer drains below low water */
    CONN_WRITE_CLOSED = 4, /* shutdown("w") was asked: nothing more may be written */
    CONN_ACCEPTED = 8,     /* counts towards the host's connections until its fd closes */
    CONN_EOF_SEEN = 16,    /* the script's recv returned end of stream or an error */
    /* A TLS handshake is under way: the host reads the fd itself and withholds all of the
     * script's events, which would tell of bytes no application sent. */
    CONN_HANDSHAKE = 32,
};

#define CONN_DEFAULT_LIMIT (1024u * 1024u)

typedef struct conn {
    int fd;
    uint8_t kind;
    uint8_t flags;
    uint32_t limit; /* most bytes that may be pending; past it writes fail */
    buffer *out;    /* NULL while nothing is pending: an idle connection holds no buffer */
} conn;

void conn_init(conn *c, int fd, int kind, uint32_t limit);

/* Sends through io what the kernel takes now and keeps the rest, asking sel to report the
 * fd writable to the host. Returns the bytes still pending, -ENOBUFS when they would pass
 * the limit (then nothing is queued, though what the kernel took at once was sent, and
 * *refused, unless NULL, is set to the bytes of data not sent), -ENOMEM, or the send
 * error. */
ssize_t conn_write(conn *c, selector *sel, const net_io *io, const char *data, size_t len,
                   size_t *refused);

/* Sends buffered bytes; called when sel reported the fd writable. Returns the bytes still
 * pending (0 once drained and the host interest withdrawn), or the send error, in which
 * case the buffer is dropped. */
ssize_t conn_flush(conn *c, selector *sel, const net_io *io);

/* Tells sel the host's interest in c's fd and the script events it withholds, from c's
 * flags and pending output (after CONN_HANDSHAKE changed). 0 or the selector's error. */
int conn_sync(conn *c, selector *sel);

/* Sends what the kernel takes of the buffered bytes, and no more: the host's interest,
 * the pause and the end of the drain are left to its next conn_flush (the host's
 * writability event, still asked for). For a layer that must push its own output along
 * on a socket whose host may not be running its loop (a test's client). Returns the
 * bytes still pending, or the send error (the bytes are kept). */
ssize_t conn_send_pending(conn *c, const net_io *io);

/* Discards pending output and withdraws the host's interest and any pause. */
void conn_drop(conn *c, selector *sel);

/* Shuts the write side now, or once the pending output is sent. 0 or -errno. */
int conn_shutdown_write(conn *c, selector *sel);

size_t conn_pending(const conn *c);
/* Frees what c holds for pending output (its fd is the caller's). */
void conn_free(conn *c);
/* Water marks derived from the limit: reads pause above high and resume below low. */
size_t conn_high_water(const conn *c);
size_t conn_low_water(const conn *c);

#endif
