/* loadgen_tls.c: the load generator's TLS client (OpenSSL 3). One context for the run:
 * TLS 1.2 at least, 1.3 by default, the library's default ciphersuites and groups. The
 * server's certificate chain is not verified (the bench's certificate is a self-signed
 * one made for the run; what is measured is the server, not the client's checks), but
 * TLS 1.3 still checks the server's signature over the handshake with the key in it.
 * Nothing is resumed: no session is stored or offered, so every handshake is full. */
#define _GNU_SOURCE
#include "loadgen_tls.h"

#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static SSL_CTX *ctx;
static char last_error[160];

/* Keeps the reason of the first error in OpenSSL's queue (or what) and empties the
 * queue, so a stale entry cannot turn the next call's result into a failure. */
static void note_error(const char *what)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, last_error, sizeof last_error);
    else
        snprintf(last_error, sizeof last_error, "%s", what);
    ERR_clear_error();
}

const char *tls_error(void)
{
    return last_error[0] ? last_error : "TLS failure";
}

/* The chain is not checked: OpenSSL would build and check it even with SSL_VERIFY_NONE,
 * only to ignore the result, and the load generator's CPU is what bounds the handshake
 * rate on a small machine. */
static int no_chain_check(X509_STORE_CTX *store, void *arg)
{
    (void)store, (void)arg;
    return 1;
}

int tls_init(void)
{
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        note_error("SSL_CTX_new");
        return -1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, no_chain_check, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET); /* TLS 1.2: ask for no ticket either */
    /* loadgen.c retries a send from its own regenerated copy of the same bytes. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1); /* a record in one recv; tls_pending tells what is left */
    return 0;
}

tls_conn *tls_new(int fd)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl || !SSL_set_fd(ssl, fd)) {
        note_error("SSL_new");
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

/* Maps a result <= 0 of an SSL call to what the caller must do. */
static int outcome(SSL *ssl, int rc, const char *what)
{
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return TLS_CLOSED;
    default:
        note_error(what);
        return TLS_FAILED;
    }
}

int tls_handshake(tls_conn *t)
{
    int rc = SSL_do_handshake(t);
    return rc == 1 ? TLS_OK : outcome(t, rc, "handshake failed (no TLS on the other side?)");
}

ssize_t tls_send(tls_conn *t, const char *data, size_t len)
{
    int n = SSL_write(t, data, (int)len);
    return n > 0 ? n : outcome(t, n, "SSL_write failed");
}

ssize_t tls_recv(tls_conn *t, char *data, size_t len)
{
    int n = SSL_read(t, data, (int)len);
    return n > 0 ? n : outcome(t, n, "closed without close_notify");
}

int tls_pending(tls_conn *t)
{
    return SSL_has_pending(t);
}

void tls_close(tls_conn *t)
{
    if (SSL_is_init_finished(t))
        SSL_shutdown(t);
    SSL_free(t);
    ERR_clear_error();
}

const char *tls_describe(tls_conn *t)
{
    static char out[128];
    const char *group = SSL_group_to_name(t, SSL_get_negotiated_group(t));
    EVP_PKEY *key =
        SSL_get0_peer_certificate(t) ? X509_get0_pubkey(SSL_get0_peer_certificate(t)) : NULL;
    snprintf(out, sizeof out, "%s/%s/%s/%s-%d", SSL_get_version(t), SSL_get_cipher_name(t),
             group ? group : "-", key ? EVP_PKEY_get0_type_name(key) : "-",
             key ? EVP_PKEY_get_bits(key) : 0);
    return out;
}

/* A blocking connect and handshake within secs: whether a TLS server answers the port. */
int tls_probe(int port, double secs)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = (time_t)secs, .tv_usec = (long)((secs - (long)secs) * 1e6)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(last_error, sizeof last_error, "nothing listens on port %d", port);
        close(fd);
        return -1;
    }
    SSL *ssl = tls_new(fd);
    int rc = ssl ? SSL_connect(ssl) : -1;
    if (rc != 1 && ssl)
        outcome(ssl, rc, "no answer to a TLS ClientHello");
    if (rc == 1)
        fprintf(stderr, "loadgen: TLS handshake done: %s\n", tls_describe(ssl));
    if (ssl)
        tls_close(ssl);
    close(fd);
    return rc == 1 ? 0 : -1;
}
