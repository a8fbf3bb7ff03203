/* tls.c: TLS contexts and connections over OpenSSL 3 with memory BIOs: the kernel is
 * read through the host's net_io and TLS's output goes through the connection's buffer,
 * so a TLS connection has the same limit, backpressure and lingering close as a plain
 * one. OpenSSL never touches the fd, so it never wants to write: the only wait is for
 * the peer's bytes. */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Ciphertext is moved to the read BIO in reads of this size: a whole record at most. */
#define TLS_READ_SIZE (16384 + 2048)
/* A write is encrypted this much at a time, so the read BIO never holds much more. */
#define TLS_WRITE_CHUNK 65536

struct tls_ctx {
    SSL_CTX *ssl;
    int refs;
    int verify;
    int has_cert;
    double handshake_timeout;
    unsigned char *alpn;
    size_t alpn_len;
    size_t nservers;
    char **names;  /* SNI names, by index into sni */
    SSL_CTX **sni; /* a context holding each name's certificate */
};

struct tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    tls_ctx *ctx;
    buffer early; /* written before the handshake finished, sent once it has */
    int failed;   /* the negative errno every call returns once TLS failed */
    uint8_t server, eof, notified;
    char err[200];
};

/* Empties OpenSSL's error queue before an SSL call, so that SSL_get_error, which reads
 * it, speaks of that call alone. Only when there is something to clear: clearing an
 * empty queue still walks (and frees nothing in) all of its slots, which cost more than
 * the record layer's own bookkeeping on every call. */
static void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* The last OpenSSL error as "what: reason", with the certificate check's own reason when
 * verification is what failed; clears OpenSSL's error queue. */
static void ssl_reason(char *out, size_t outlen, const char *what, SSL *ssl)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (e && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK)
        snprintf(out, outlen, "%s: certificate verify failed: %s", what,
                 X509_verify_cert_error_string(v));
    else
        snprintf(out, outlen, "%s: %s", what, reason ? reason : "protocol error");
    ERR_clear_error();
}

void tls_ctx_ref(tls_ctx *ctx)
{
    ctx->refs++;
}

void tls_ctx_unref(tls_ctx *ctx)
{
    if (!ctx || --ctx->refs > 0)
        return;
    for (size_t i = 0; i < ctx->nservers; i++) {
        free(ctx->names[i]);
        SSL_CTX_free(ctx->sni[i]);
    }
    free(ctx->names);
    free(ctx->sni);
    free(ctx->alpn);
    SSL_CTX_free(ctx->ssl);
    free(ctx);
}

int tls_ctx_has_cert(const tls_ctx *ctx)
{
    return ctx->has_cert;
}

/* Loads a certificate chain and its key into ssl; 0, or -1 with err set. */
static int load_pair(SSL_CTX *ssl, const char *cert, const char *key, char *err, size_t errlen)
{
    char what[300];
    snprintf(what, sizeof what, "cannot load certificate %s", cert);
    if (SSL_CTX_use_certificate_chain_file(ssl, cert) != 1)
        goto fail;
    snprintf(what, sizeof what, "cannot load key %s", key);
    if (SSL_CTX_use_PrivateKey_file(ssl, key, SSL_FILETYPE_PEM) != 1)
        goto fail;
    snprintf(what, sizeof what, "key %s does not match certificate %s", key, cert);
    if (SSL_CTX_check_private_key(ssl) != 1)
        goto fail;
    return 0;
fail:
    ssl_reason(err, errlen, what, NULL);
    return -1;
}

/* A server's choice among the client's protocols: the first of ours it offers. None in
 * common is not fatal (RFC 7301 allows going on without ALPN). */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    tls_ctx *ctx = (tls_ctx *)arg;
    (void)ssl;
    if (SSL_select_next_proto((unsigned char **)out, outlen, ctx->alpn, (unsigned)ctx->alpn_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

/* SNI: switches to the certificate of the name the client asked for, if one was given
 * for it; else the context's own certificate serves. */
static int select_cert(SSL *ssl, int *alert, void *arg)
{
    tls_ctx *ctx = (tls_ctx *)arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    *alert = SSL_AD_INTERNAL_ERROR;
    for (size_t i = 0; name && i < ctx->nservers; i++) {
        if (strcasecmp(name, ctx->names[i]) == 0) {
            /* The certificate alone changes: trust and verification stay the context's
             * (SSL_set_SSL_CTX would take the other context's empty store with it). */
            SSL_CTX *other = ctx->sni[i];
            STACK_OF(X509) *chain = NULL;
            SSL_CTX_get0_chain_certs(other, &chain);
            if (!SSL_use_cert_and_key(ssl, SSL_CTX_get0_certificate(other),
                                      SSL_CTX_get0_privatekey(other), chain, 1))
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            break;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static int add_servers(tls_ctx *ctx, const tls_opts *o, char *err, size_t errlen)
{
    if (o->nservers == 0)
        return 0;
    ctx->names = (char **)calloc(o->nservers, sizeof *ctx->names);
    ctx->sni = (SSL_CTX **)calloc(o->nservers, sizeof *ctx->sni);
    if (!ctx->names || !ctx->sni) {
        snprintf(err, errlen, "not enough memory");
        return -1;
    }
    for (size_t i = 0; i < o->nservers; i++, ctx->nservers++) {
        ctx->names[i] = strdup(o->servers[i].name);
        ctx->sni[i] = SSL_CTX_new(TLS_method());
        if (!ctx->names[i] || !ctx->sni[i]) {
            snprintf(err, errlen, "not enough memory");
            ctx->nservers++;
            return -1;
        }
        if (load_pair(ctx->sni[i], o->servers[i].cert, o->servers[i].key, err, errlen) < 0) {
            ctx->nservers++;
            return -1;
        }
    }
    SSL_CTX_set_tlsext_servername_callback(ctx->ssl, select_cert);
    SSL_CTX_set_tlsext_servername_arg(ctx->ssl, ctx);
    return 0;
}

/* Resumption: tickets TLS 1.3 session tickets after each full handshake. None also
 * turns off TLS 1.2's tickets and the server's session cache, so that nothing is kept
 * or made for a resumption that cannot happen. */
static void set_sessions(SSL_CTX *ssl, int tickets)
{
    SSL_CTX_set_session_id_context(ssl, (const unsigned char *)"luahost", 7);
    SSL_CTX_set_num_tickets(ssl, (size_t)tickets);
    if (tickets == 0) {
        SSL_CTX_set_options(ssl, SSL_OP_NO_TICKET);
        SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    }
}

/* Trust, versions, ciphers and ALPN; 0 or -1 with err set. */
static int configure(tls_ctx *ctx, const tls_opts *o, char *err, size_t errlen)
{
    SSL_CTX *ssl = ctx->ssl;
    /* Renegotiation is refused: TLS 1.3 has none, and in 1.2 it only serves attacks. */
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* The chain sent is the certificate file's (tls.h): without this, OpenSSL would build
     * one from the trust store at every handshake (a directory look-up and a chain check,
     * ~6% of a server's handshake), only to find the roots it may not send anyway. */
    SSL_CTX_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    set_sessions(ssl, o->tickets);
    const char *what = "cannot set the minimum TLS version";
    if (!SSL_CTX_set_min_proto_version(ssl, o->min_version ? o->min_version : TLS1_2_VERSION))
        goto fail;
    what = "cannot use the cipher list";
    if (o->ciphers && !SSL_CTX_set_cipher_list(ssl, o->ciphers))
        goto fail;
    what = "cannot use the TLS 1.3 cipher suites";
    if (o->ciphersuites && !SSL_CTX_set_ciphersuites(ssl, o->ciphersuites))
        goto fail;
    /* The system's store only where something verifies against it. */
    what = "cannot load the CA file";
    if (o->ca ? !SSL_CTX_load_verify_locations(ssl, o->ca, NULL)
              : o->verify && !SSL_CTX_set_default_verify_paths(ssl))
        goto fail;
    if (o->ca && o->verify) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca);
        if (names)
            SSL_CTX_set_client_CA_list(ssl, names);
    }
    if (o->alpn_len) {
        if (!(ctx->alpn = (unsigned char *)malloc(o->alpn_len)))
            goto fail;
        memcpy(ctx->alpn, o->alpn, o->alpn_len);
        ctx->alpn_len = o->alpn_len;
        what = "cannot set ALPN";
        if (SSL_CTX_set_alpn_protos(ssl, ctx->alpn, (unsigned)ctx->alpn_len) != 0)
            goto fail;
        SSL_CTX_set_alpn_select_cb(ssl, select_alpn, ctx);
    }
    return 0;
fail:
    ssl_reason(err, errlen, what, NULL);
    return -1;
}

tls_ctx *tls_ctx_new(const tls_opts *o, char *err, size_t errlen)
{
    clear_errors();
    tls_ctx *ctx = (tls_ctx *)calloc(1, sizeof *ctx);
    if (!ctx || !(ctx->ssl = SSL_CTX_new(TLS_method()))) {
        snprintf(err, errlen, "not enough memory for a TLS context");
        free(ctx);
        return NULL;
    }
    ctx->refs = 1;
    ctx->verify = o->verify;
    ctx->handshake_timeout = o->handshake_timeout > 0 ? o->handshake_timeout : 10;
    if ((o->cert || o->key) && !(o->cert && o->key)) {
        snprintf(err, errlen, "a certificate needs its key, and a key its certificate");
        goto fail;
    }
    if (o->cert && load_pair(ctx->ssl, o->cert, o->key, err, errlen) < 0)
        goto fail;
    ctx->has_cert = o->cert != NULL;
    if (configure(ctx, o, err, errlen) < 0 || add_servers(ctx, o, err, errlen) < 0)
        goto fail;
    return ctx;
fail:
    tls_ctx_unref(ctx);
    return NULL;
}

/* A client checks the server's name (or address) in its certificate, and sends the
 * name, not an address, as SNI. */
static int set_peer_name(SSL *ssl, const char *name)
{
    unsigned char addr[16];
    int is_ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
    if (is_ip)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
    return SSL_set_tlsext_host_name(ssl, name) && SSL_set1_host(ssl, name);
}

tls_conn *tls_conn_new(tls_ctx *ctx, int server, const char *servername, char *err, size_t errlen)
{
    clear_errors();
    tls_conn *t = (tls_conn *)calloc(1, sizeof *t);
    if (!t || !(t->ssl = SSL_new(ctx->ssl)) || !(t->rbio = BIO_new(BIO_s_mem())) ||
        !(t->wbio = BIO_new(BIO_s_mem()))) {
        snprintf(err, errlen, "not enough memory for a TLS connection");
        goto fail;
    }
    BIO_set_mem_eof_return(t->rbio, -1); /* empty means "wait", not the end */
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    t->server = (uint8_t) !!server;
    buf_init(&t->early);
    if (server) {
        SSL_set_accept_state(t->ssl);
        if (ctx->verify)
            SSL_set_verify(t->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    } else {
        SSL_set_connect_state(t->ssl);
        SSL_set_verify(t->ssl, ctx->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
        if (servername && !set_peer_name(t->ssl, servername)) {
            snprintf(err, errlen, "cannot use server name %s", servername);
            goto fail;
        }
    }
    t->ctx = ctx;
    tls_ctx_ref(ctx);
    return t;
fail:
    if (t && t->ssl) {
        SSL_free(t->ssl);
    } else if (t) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
    }
    free(t);
    return NULL;
}

void tls_conn_free(tls_conn *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    buf_free(&t->early);
    tls_ctx_unref(t->ctx);
    free(t);
}

int tls_done(const tls_conn *t)
{
    return SSL_is_init_finished(t->ssl);
}

int tls_is_server(const tls_conn *t)
{
    return t->server;
}

const char *tls_error(const tls_conn *t)
{
    return t->err;
}

double tls_handshake_timeout(const tls_conn *t)
{
    return t->ctx->handshake_timeout;
}

static int fail(tls_conn *t, int code, const char *why)
{
    snprintf(t->err, sizeof t->err, "%s", why);
    t->failed = code;
    return code;
}

int tls_has_input(const tls_conn *t)
{
    if (SSL_pending(t->ssl) > 0)
        return 1;
    char *p;
    long n = BIO_get_mem_data(t->rbio, &p);
    /* A whole record (5-byte header, then its length) can be decrypted without the
     * kernel; a part of one cannot. */
    return n >= 5 && n >= 5 + (((unsigned char)p[3] << 8) | (unsigned char)p[4]);
}

void tls_post_input(const tls_conn *t, const conn *c, selector *sel)
{
    if (tls_has_input(t))
        sel_post(sel, c->fd);
}

/* Moves what TLS wrote into c's output. conn_write's result. */
static ssize_t push(tls_conn *t, conn *c, selector *sel, const net_io *io, size_t *refused)
{
    char *data;
    long len = BIO_get_mem_data(t->wbio, &data);
    if (len <= 0)
        return (ssize_t)conn_pending(c);
    ssize_t rc = conn_write(c, sel, io, data, (size_t)len, refused);
    (void)BIO_reset(t->wbio);
    return rc;
}

/* Reads what the kernel has for c into the read BIO: bytes read, 0 at the end of the
 * stream, -EAGAIN, or -errno. One buffer serves every connection: a host is one thread,
 * and the bytes are copied out before the call returns. */
static ssize_t pull(tls_conn *t, conn *c, const net_io *io)
{
    static char in[TLS_READ_SIZE];
    ssize_t n = io->recv(io, c->fd, in, sizeof in);
    if (n > 0 && BIO_write(t->rbio, in, (int)n) != (int)n)
        return -ENOMEM;
    return n;
}

/* Reads the kernel for TLS: 1 when bytes came, -EAGAIN, or the failure to return (the
 * end of the stream here is a truncation: a close_notify would have been read first). */
static int refill(tls_conn *t, conn *c, const net_io *io, const char *what)
{
    char why[sizeof t->err];
    ssize_t n = t->eof ? 0 : pull(t, c, io);
    if (n > 0 || n == -EAGAIN)
        return n > 0 ? 1 : -EAGAIN;
    t->eof = 1;
    if (n == 0)
        snprintf(why, sizeof why, "%s: the peer closed the connection without close_notify", what);
    else
        snprintf(why, sizeof why, "%s: %s", what, strerror((int)-n));
    return fail(t, n == 0 ? -ECONNRESET : (int)n, why);
}

/* After an SSL call that returned ret <= 0: 1 when bytes came for it to try again,
 * 0 at the peer's close_notify, else the negative code to return (-EAGAIN: wait). */
static int need(tls_conn *t, conn *c, const net_io *io, int ret, const char *what)
{
    char why[sizeof t->err];
    int e = SSL_get_error(t->ssl, ret);
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e != SSL_ERROR_WANT_READ) {
        ssl_reason(why, sizeof why, what, t->ssl);
        return fail(t, -EPROTO, why);
    }
    return refill(t, c, io, what);
}

/* Encrypts len bytes of data into c's output, a chunk at a time. */
static ssize_t encrypt(tls_conn *t, conn *c, selector *sel, const net_io *io, const char *data,
                       size_t len, size_t *refused)
{
    ssize_t rc = (ssize_t)conn_pending(c);
    char why[sizeof t->err];
    while (len > 0) {
        size_t chunk = len < TLS_WRITE_CHUNK ? len : TLS_WRITE_CHUNK, done = 0;
        clear_errors();
        if (SSL_write_ex(t->ssl, data, chunk, &done) != 1) {
            ssl_reason(why, sizeof why, "TLS write failed", t->ssl);
            return fail(t, -EPROTO, why);
        }
        data += done;
        len -= done;
        if ((rc = push(t, c, sel, io, refused)) < 0) {
            if (refused)
                *refused += len;
            return rc;
        }
    }
    return rc;
}

/* Once the handshake has ended, either way, the host stops reading for it and gives the
 * script back its events; input already decrypted, or a failure, is posted, as no kernel
 * readiness may come to tell of it. A failed connection is shut down, so its peer is
 * not left waiting (the alert goes out first). */
static void settle(tls_conn *t, conn *c, selector *sel)
{
    if (!(c->flags & CONN_HANDSHAKE) || (!t->failed && !tls_done(t)))
        return;
    c->flags &= (uint8_t)~CONN_HANDSHAKE;
    conn_sync(c, sel);
    if (t->failed) {
        shutdown(c->fd, SHUT_RD);
        conn_shutdown_write(c, sel);
    }
    if (t->failed || tls_has_input(t))
        sel_post(sel, c->fd);
}

/* Sends what the script wrote while the handshake ran. */
static int send_early(tls_conn *t, conn *c, selector *sel, const net_io *io)
{
    size_t len;
    const char *data = buf_peek(&t->early, &len);
    ssize_t rc = len ? encrypt(t, c, sel, io, data, len, NULL) : 0;
    buf_free(&t->early);
    return rc < 0 ? (int)rc : 0;
}

static int handshake_step(tls_conn *t, conn *c, selector *sel, const net_io *io)
{
    const char *what = t->server ? "TLS handshake failed" : "TLS handshake with the server failed";
    for (;;) {
        clear_errors();
        int ret = SSL_do_handshake(t->ssl);
        push(t, c, sel, io, NULL); /* the next flight, or the alert that ends it */
        if (ret == 1) {
            int rc = send_early(t, c, sel, io);
            return rc < 0 ? rc : 1;
        }
        int rc = need(t, c, io, ret, what);
        if (rc == 0)
            return fail(t, -ECONNRESET, "TLS handshake: the peer closed the connection");
        if (rc < 0)
            return rc == -EAGAIN ? 0 : rc;
    }
}

void tls_fail(tls_conn *t, conn *c, selector *sel, const char *why)
{
    fail(t, -ETIMEDOUT, why);
    settle(t, c, sel);
}

int tls_handshake(tls_conn *t, conn *c, selector *sel, const net_io *io)
{
    if (t->failed)
        return t->failed;
    if (conn_pending(c) > 0)
        conn_send_pending(c, io); /* a flight queued before the socket could send it */
    int rc = tls_done(t) ? 1 : handshake_step(t, c, sel, io);
    settle(t, c, sel);
    return rc;
}

/* SSL_read until len bytes, or until what one read of the kernel brought is used up: a
 * call gives one record. The kernel is read only while nothing was got, as plain TCP's
 * recv reads it once: it announces what comes next, and neither a recv that would find
 * nothing nor the SSL call that would fail for it is made per message. Bytes just read
 * always go to SSL_read: the rest of a record SSL holds the start of is no whole record
 * to tls_has_input. */
static ssize_t read_records(tls_conn *t, conn *c, selector *sel, const net_io *io, char *buf,
                            size_t len)
{
    size_t got = 0;
    int fresh = 0; /* bytes came that SSL has not seen */
    while (got < len) {
        /* After close_notify, SSL_read itself tells the end; the kernel's is not TLS's. */
        int closed = SSL_get_shutdown(t->ssl) & SSL_RECEIVED_SHUTDOWN;
        if (!fresh && !closed && !tls_has_input(t)) {
            int rc = got > 0 ? -EAGAIN : refill(t, c, io, "TLS");
            if (rc < 0)
                return got > 0 ? (ssize_t)got : rc; /* the end or failure: the next call */
        }
        size_t n = 0;
        clear_errors();
        int ret = SSL_read_ex(t->ssl, buf + got, len - got, &n);
        if (BIO_ctrl_pending(t->wbio) > 0)
            push(t, c, sel, io, NULL); /* a key update's answer, or an alert */
        got += n;
        int rc = ret == 1 ? 1 : need(t, c, io, ret, "TLS");
        fresh = ret != 1 && rc == 1;
        if (rc < 1)
            return got > 0 ? (ssize_t)got : rc;
    }
    if (tls_has_input(t))
        sel_post(sel, c->fd);
    return (ssize_t)got;
}

ssize_t tls_recv(tls_conn *t, conn *c, selector *sel, const net_io *io, char *buf, size_t len)
{
    if (t->failed)
        return t->failed;
    if (conn_pending(c) > 0) /* for a socket no host loop flushes (a test's client) */
        conn_send_pending(c, io);
    if (!tls_done(t)) {
        int rc = tls_handshake(t, c, sel, io);
        if (rc <= 0)
            return rc < 0 ? rc : -EAGAIN;
    }
    return read_records(t, c, sel, io, buf, len);
}

ssize_t tls_write(tls_conn *t, conn *c, selector *sel, const net_io *io, const char *data,
                  size_t len, size_t *refused)
{
    size_t pending = conn_pending(c) + buf_len(&t->early);
    if (t->failed)
        return t->failed;
    if (c->flags & CONN_WRITE_CLOSED)
        return -EPIPE;
    if (len > c->limit || pending > c->limit - len) {
        if (refused)
            *refused = len;
        return -ENOBUFS;
    }
    if (!tls_done(t))
        return buf_append(&t->early, data, len) < 0 ? -ENOMEM : (ssize_t)(pending + len);
    return encrypt(t, c, sel, io, data, len, refused);
}

ssize_t tls_send(tls_conn *t, conn *c, selector *sel, const net_io *io, const char *data,
                 size_t len)
{
    if (t->failed)
        return t->failed;
    if (!tls_done(t)) {
        int rc = tls_handshake(t, c, sel, io);
        if (rc <= 0)
            return rc < 0 ? rc : -EAGAIN;
    }
    if (conn_pending(c) > 0) {
        ssize_t rc = conn_send_pending(c, io);
        if (rc != 0)
            return rc < 0 ? rc : -EAGAIN;
    }
    size_t chunk = len < 16384 ? len : 16384;
    ssize_t rc = encrypt(t, c, sel, io, data, chunk, NULL);
    return rc < 0 ? rc : (ssize_t)chunk;
}

int tls_close_notify(tls_conn *t, conn *c, selector *sel, const net_io *io)
{
    if (t->notified || t->failed || !tls_done(t) || (c->flags & CONN_WRITE_CLOSED))
        return 0;
    t->notified = 1;
    clear_errors();
    SSL_shutdown(t->ssl);
    clear_errors();
    ssize_t rc = push(t, c, sel, io, NULL);
    return rc < 0 ? (int)rc : 0;
}

void tls_get_info(const tls_conn *t, tls_info *info)
{
    memset(info, 0, sizeof *info);
    if (!tls_done(t))
        return;
    info->version = SSL_get_version(t->ssl);
    info->cipher = SSL_get_cipher_name(t->ssl);
    info->servername = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    SSL_get0_alpn_selected(t->ssl, &info->alpn, &info->alpn_len);
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (peer) {
        X509_NAME_oneline(X509_get_subject_name(peer), info->subject, sizeof info->subject);
        info->verified = SSL_get_verify_result(t->ssl) == X509_V_OK &&
                         SSL_get_verify_mode(t->ssl) != SSL_VERIFY_NONE;
    }
}
