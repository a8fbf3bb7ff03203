/* tls_testcert.h: a self-signed ECDSA certificate and its key for the TLS unit test and
 * fuzz target, made in process when they start (no key is committed), written as PEM
 * files into a new temporary directory. */
#ifndef LUAHOST_TLS_TESTCERT_H
#define LUAHOST_TLS_TESTCERT_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fills cert and key (PATH_MAX-sized) with the files' paths; 0, or -1 on failure. */
static inline int tls_testcert(char *cert, char *key, size_t size)
{
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/luahost-tls-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    snprintf(cert, size, "%s/cert.pem", dir);
    snprintf(key, size, "%s/key.pem", dir);
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!pkey || !x)
        return -1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pkey);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509_sign(x, pkey, EVP_sha256());
    FILE *fc = fopen(cert, "w"), *fk = fopen(key, "w");
    int ok = fc && fk && PEM_write_X509(fc, x) &&
             PEM_write_PrivateKey(fk, pkey, NULL, NULL, 0, NULL, NULL);
    if (fc)
        fclose(fc);
    if (fk)
        fclose(fk);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return ok ? 0 : -1;
}

/* Removes the files and their directory. */
static inline void tls_testcert_remove(const char *cert, const char *key)
{
    char dir[4096];
    remove(cert);
    remove(key);
    snprintf(dir, sizeof dir, "%.4000s", cert);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        remove(dir);
    }
}

#endif
