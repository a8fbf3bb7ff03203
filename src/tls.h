/* tls.h: TLS for a connection with OpenSSL 3, below the bindings. Records pass through
 * memory BIOs: the ciphertext is read from the kernel through the host's net_io and
 * written through the connection's output buffer (conn), so the kernel I/O, the output
 * limit, lingering closes and the sim backend stay as they are for plain TCP. Knows
 * nothing of Lua. */
#ifndef LUAHOST_TLS_H
#define LUAHOST_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "conn.h"
#include "net.h"
#include "selector.h"

typedef struct tls_ctx tls_ctx;
typedef struct tls_conn tls_conn;

/* One certificate a server presents to clients asking for name (SNI). */
typedef struct tls_cert_for {
    const char *name;
    const char *cert; /* PEM file: the certificate, then its chain */
    const char *key;  /* PEM file */
} tls_cert_for;

typedef struct tls_opts {
    const char *cert, *key;    /* PEM files; a server needs them, a client only for mTLS;
                                  the chain is sent as cert has it */
    const char *ca;            /* PEM file of trusted CAs; NULL: the system's store, loaded
                                  only when verify is set */
    int verify;                /* a client verifies the server; a server asks for and
                                  verifies a client certificate (mTLS) */
    const unsigned char *alpn; /* protocols in wire format (length-prefixed), or NULL */
    size_t alpn_len;
    const char *ciphers;         /* OpenSSL's TLS 1.2 cipher list, or NULL */
    const char *ciphersuites;    /* TLS 1.3 suites, or NULL */
    int min_version;             /* TLS1_2_VERSION (the default when 0) or TLS1_3_VERSION */
    const tls_cert_for *servers; /* SNI: certificates by server name */
    size_t nservers;
    double handshake_timeout; /* seconds; 0: the default, 10 */
    int tickets;              /* TLS 1.3 session tickets a server sends after a full
                                 handshake; 0: none, and no resumption at all */
} tls_opts;

/* A context, made once and shared by the connections made from it (reference-counted:
 * a connection keeps its context's certificates after the script dropped or replaced
 * it). NULL with a message in err when a file, key or setting is refused. */
tls_ctx *tls_ctx_new(const tls_opts *opts, char *err, size_t errlen);
void tls_ctx_ref(tls_ctx *ctx);
void tls_ctx_unref(tls_ctx *ctx);
/* Whether the context has a certificate of its own (a server needs one). */
int tls_ctx_has_cert(const tls_ctx *ctx);

/* A connection's TLS state on ctx, in the server role or as a client of servername
 * (checked against the certificate when ctx verifies, sent as SNI unless an address;
 * NULL for none). NULL with a message in err. */
tls_conn *tls_conn_new(tls_ctx *ctx, int server, const char *servername, char *err, size_t errlen);
void tls_conn_free(tls_conn *t);

/* Each call below reads the kernel through io (for c->fd) as TLS needs bytes, and writes
 * what TLS produced through c's output (conn_write, within c's limit). */

/* Moves the handshake on. 1 once done, 0 while it waits for the peer, or a negative
 * errno (-EPROTO for TLS's own failures) with the reason in tls_error. */
int tls_handshake(tls_conn *t, conn *c, selector *sel, const net_io *io);
/* Up to len bytes of application data into buf: their count; 0 at the peer's
 * close_notify (a clean end); -EAGAIN when no record is complete; -ECONNRESET when the
 * stream ended without close_notify (a truncation, which the reader must not take for a
 * clean end); -EPROTO and others with tls_error set. Runs the handshake first if due. */
ssize_t tls_recv(tls_conn *t, conn *c, selector *sel, const net_io *io, char *buf, size_t len);
/* Encrypts all of data into c's output (conn_write's results and refused). */
ssize_t tls_write(tls_conn *t, conn *c, selector *sel, const net_io *io, const char *data,
                  size_t len, size_t *refused);
/* Unbuffered send: -EAGAIN while c has output pending (it is flushed first) or the
 * handshake is not done, else encrypts up to one record of data and returns the bytes
 * taken. */
ssize_t tls_send(tls_conn *t, conn *c, selector *sel, const net_io *io, const char *data,
                 size_t len);
/* Queues close_notify in c's output (once). 0 or conn_write's error. */
int tls_close_notify(tls_conn *t, conn *c, selector *sel, const net_io *io);
/* Ends a handshake that took too long: later calls return -ETIMEDOUT with why, and the
 * connection is shut down and handed back to the script as a handshake failure is. */
void tls_fail(tls_conn *t, conn *c, selector *sel, const char *why);
/* Seconds a handshake on a connection of t's context may take. */
double tls_handshake_timeout(const tls_conn *t);

/* Whether application data is decrypted, or a record is read, that the kernel will not
 * announce again. */
int tls_has_input(const tls_conn *t);
int tls_done(const tls_conn *t); /* the handshake is done */
/* Posts c's fd (sel_post) if t holds input the script has not read: after its READ was
 * paused, when a post made meanwhile was not delivered. */
void tls_post_input(const tls_conn *t, const conn *c, selector *sel);
int tls_is_server(const tls_conn *t);
/* Why the last call failed ("" when none did). */
const char *tls_error(const tls_conn *t);

typedef struct tls_info {
    const char *version, *cipher, *servername; /* NULL when unknown */
    const unsigned char *alpn;
    unsigned alpn_len;
    char subject[256]; /* the peer certificate's subject, "" when it sent none */
    int verified;      /* it sent one and it was verified */
} tls_info;
void tls_get_info(const tls_conn *t, tls_info *info);

#endif
