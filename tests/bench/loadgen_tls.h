/* loadgen_tls.h: the load generator's TLS client side (OpenSSL 3), kept apart so that
 * loadgen.c only asks "how much went, and what does it wait for". */
#ifndef LOADGEN_TLS_H
#define LOADGEN_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct ssl_st tls_conn;

/* What a TLS call returned besides bytes: done, or wait for readability or writability,
 * or the connection failed (tls_error says why). */
enum { TLS_OK = 1, TLS_WANT_READ = -2, TLS_WANT_WRITE = -3, TLS_FAILED = -4, TLS_CLOSED = 0 };

int tls_init(void);                                          /* the client context; -1 on failure */
tls_conn *tls_new(int fd);                                   /* NULL on failure */
int tls_handshake(tls_conn *t);                              /* TLS_OK, TLS_WANT_*, TLS_FAILED */
ssize_t tls_send(tls_conn *t, const char *data, size_t len); /* > 0 or TLS_WANT_*, ... */
ssize_t tls_recv(tls_conn *t, char *data, size_t len);       /* > 0, TLS_CLOSED, ... */
int tls_pending(tls_conn *t);          /* bytes already read from the socket, not yet returned */
void tls_close(tls_conn *t);           /* sends close_notify (if it can at once) and frees */
const char *tls_error(void);           /* the last failure, for a result line */
const char *tls_describe(tls_conn *t); /* "TLSv1.3/CIPHER/GROUP", for the result line */
int tls_probe(int port, double secs);  /* one blocking handshake: 0 when it succeeds */

#endif
