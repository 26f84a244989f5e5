/*
 * tls.c - HTTPS: the one OpenSSL context every loop shares, and the
 * OpenSSL bufferevent that conn.c makes for each accepted connection when
 * the server has a certificate (libevent's bufferevent_openssl, so evhttp
 * reads and writes plaintext as before and never sees TLS).
 *
 * Design:
 *  - The context is built once at start from a PEM certificate chain (leaf
 *    first, then intermediates) and a PEM private key that must match it;
 *    any failure stops the start with the file's name and OpenSSL's own
 *    error text. An encrypted key is refused instead of prompting.
 *  - TLS 1.2 and 1.3 only; OpenSSL's default cipher suites and groups; no
 *    compression (CRIME); no renegotiation (a client could make the server
 *    do handshakes on an open connection without a new accept); ALPN
 *    answers "http/1.1" (evhttp speaks nothing else).
 *  - A client that speaks plain HTTP (or anything else) to the TLS port
 *    fails the handshake; evhttp then frees the connection, no answer.
 *  - A connection over the connection limit, or a request refused by
 *    conn.c's raw checks, is answered through http_tls_send: one record
 *    written straight to the SSL object, best effort, just before conn.c
 *    shuts the socket down (the encrypted twin of conn.c's send()).
 *
 * SSL_write can raise SIGPIPE on a socket the peer closed: the process must
 * ignore SIGPIPE (serve.c does). The context is read-only once built and
 * OpenSSL 3 locks what it shares, so every loop thread uses it at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "http_int.h"

/* OpenSSL's queued errors, oldest (the cause) first, joined with "; ".
 * Empties the queue. */
static void openssl_errors(char *out, size_t cap) {
    size_t used = 0;
    out[0] = 0;
    unsigned long e;
    int n = 0;
    while ((e = ERR_get_error()) != 0) {
        if (n++ >= 3 || used + 8 >= cap)
            continue; /* keep draining */
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        int w = snprintf(out + used, cap - used, "%s%s", used ? "; " : "", one);
        if (w > 0)
            used += (size_t)w < cap - used ? (size_t)w : cap - used - 1;
    }
    if (!out[0])
        snprintf(out, cap, "unknown OpenSSL error");
}

/* A key file must never make the server wait for a passphrase on a
 * terminal: refusing makes SSL_CTX_use_PrivateKey_file fail instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata) {
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return 0;
}

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *out_len, const unsigned char *in,
                       unsigned int in_len, void *arg) {
    (void)ssl;
    (void)arg;
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *chosen = NULL;
    if (SSL_select_next_proto(&chosen, out_len, http11, sizeof http11 - 1, in, in_len) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* the client does not offer http/1.1: carry on without ALPN */
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

/* Whether path can be opened for reading; else err says why. */
static int readable(const char *what, const char *path, char *err, size_t err_len) {
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        return 1;
    }
    snprintf(err, err_len, "cannot read the TLS %s %s: %s", what, path, strerror(errno));
    return 0;
}

int http_tls_create(const char *cert_file, const char *key_file, SSL_CTX **out, char *err, size_t err_len) {
    *out = NULL;
    char why[800];
    if (!readable("certificate", cert_file, err, err_len) || !readable("key", key_file, err, err_len))
        return -1;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        openssl_errors(why, sizeof why);
        snprintf(err, err_len, "cannot create the TLS context: %s", why);
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* Idle keep-alive connections give their read and write buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);

    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        openssl_errors(why, sizeof why);
        snprintf(err, err_len, "cannot use the TLS certificate %s (a PEM chain, leaf first): %s", cert_file, why);
        SSL_CTX_free(ctx);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        unsigned long first = ERR_peek_error();
        openssl_errors(why, sizeof why);
        if (ERR_GET_REASON(first) == X509_R_KEY_VALUES_MISMATCH)
            snprintf(err, err_len, "the TLS key %s does not match the certificate %s: %s", key_file, cert_file,
                     why);
        else
            snprintf(err, err_len,
                     "cannot use the TLS key %s (a PEM private key, not encrypted): %s", key_file, why);
        SSL_CTX_free(ctx);
        return -1;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        openssl_errors(why, sizeof why);
        snprintf(err, err_len, "the TLS key %s does not match the certificate %s: %s", key_file, cert_file, why);
        SSL_CTX_free(ctx);
        return -1;
    }
    *out = ctx;
    return 0;
}

void http_tls_destroy(SSL_CTX *ctx) {
    SSL_CTX_free(ctx);
}

struct bufferevent *http_tls_bev_new(SSL_CTX *ctx, struct event_base *base) {
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    /* The bufferevent takes the SSL object (freed with it: CLOSE_ON_FREE)
     * and gets its socket from evhttp through bufferevent_setfd. */
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    /* Clients routinely close keep-alive connections without close_notify
     * (HTTP frames every message itself): an end, not an error. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

int http_tls_is_established(struct bufferevent *bev) {
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    return ssl && SSL_is_init_finished(ssl);
}

int http_tls_send(struct bufferevent *bev, const void *data, size_t n) {
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    /* Only between answers: a record written in the middle of one that
     * libevent is still writing would interleave with it. */
    if (!ssl || !SSL_is_init_finished(ssl) || evbuffer_get_length(bufferevent_get_output(bev)) != 0 ||
        n > INT32_MAX)
        return -1;
    ERR_clear_error();
    int w = SSL_write(ssl, data, (int)n);
    ERR_clear_error(); /* a failure here must not show up as the next read's error */
    return w;
}
