/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * TLS on the Redis links with nginx's own OpenSSL (ngx_ssl_*): the same
 * protocols, ciphers and certificate files as the rest of nginx, and no
 * hiredis TLS, which Debian bookworm's hiredis does not have.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_redis_link.h"
#include "ngx_http_opamp_redis_ssl.h"

#if (NGX_SSL)
#include <openssl/x509v3.h>
#endif


#if (NGX_SSL)

void
ngx_http_opamp_redis_tls_start(ngx_http_opamp_redis_link_t *link)
{
    ngx_str_t          *name;
    ngx_connection_t   *c;

    c = link->conn;

    c->pool = ngx_create_pool(512, c->log);
    if (c->pool == NULL) {
        ngx_http_opamp_redis_drop(link, "no memory");
        return;
    }

    if (ngx_ssl_create_connection(ngx_http_opamp_redis_conf->ssl_ctx, c,
                                  NGX_SSL_CLIENT)
        != NGX_OK)
    {
        ngx_http_opamp_redis_drop(link, "TLS connection not created");
        return;
    }

    SSL_set_mode(c->ssl->connection, SSL_MODE_ENABLE_PARTIAL_WRITE
                                     |SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    name = ngx_http_opamp_redis_conf->ssl_name.len
           ? &ngx_http_opamp_redis_conf->ssl_name : &link->host;

    /* SNI carries names only, never addresses (RFC 6066) */

    if (ngx_http_opamp_redis_conf->ssl_server_name
        && name->len && name->data[name->len] == '\0'
        && ngx_inet_addr(name->data, name->len) == INADDR_NONE
        && ngx_strlchr(name->data, name->data + name->len, ':') == NULL)
    {
        if (SSL_set_tlsext_host_name(c->ssl->connection,
                                     (char *) name->data)
            == 0)
        {
            ngx_http_opamp_redis_drop(link, "TLS server name not set");
            return;
        }
    }

    link->log.action = "TLS handshaking with redis";
    link->state = NGX_HTTP_OPAMP_REDIS_TLS;

    ngx_http_opamp_redis_tls_handshake(link);
}


void
ngx_http_opamp_redis_tls_handshake(ngx_http_opamp_redis_link_t *link)
{
    int                n, sslerr;
    long               rc;
    X509              *cert;
    ngx_str_t         *name;
    ngx_connection_t  *c;

    c = link->conn;

    ERR_clear_error();

    n = SSL_do_handshake(c->ssl->connection);

    if (n != 1) {
        sslerr = SSL_get_error(c->ssl->connection, n);

        if (sslerr == SSL_ERROR_WANT_READ || sslerr == SSL_ERROR_WANT_WRITE)
        {
            return;
        }

        ngx_http_opamp_redis_drop(link,
            ngx_http_opamp_redis_tls_error(link, "TLS handshake failed",
                                           sslerr));
        return;
    }

    if (ngx_http_opamp_redis_conf->ssl_verify) {
        rc = SSL_get_verify_result(c->ssl->connection);

        if (rc != X509_V_OK) {
            ngx_snprintf(link->why, sizeof(link->why) - 1,
                         "TLS certificate of the server not trusted: "
                         "%s (%l)%Z", X509_verify_cert_error_string(rc), rc);
            ngx_http_opamp_redis_drop(link, (char *) link->why);
            return;
        }

        name = ngx_http_opamp_redis_conf->ssl_name.len
               ? &ngx_http_opamp_redis_conf->ssl_name : &link->host;

        /* an address is checked against the certificate's IP names */

        cert = SSL_get_peer_certificate(c->ssl->connection);

        if (cert == NULL) {
            ngx_http_opamp_redis_drop(link, "the server sent no TLS "
                                            "certificate");
            return;
        }

        if (ngx_inet_addr(name->data, name->len) != INADDR_NONE
            || ngx_strlchr(name->data, name->data + name->len, ':'))
        {
            rc = (X509_check_ip_asc(cert, (char *) name->data, 0) == 1);
            X509_free(cert);

        } else {
            X509_free(cert);
            rc = (ngx_ssl_check_host(c, name) == NGX_OK);
        }

        if (!rc) {
            ngx_snprintf(link->why, sizeof(link->why) - 1,
                         "TLS certificate of the server does not match "
                         "\"%V\"%Z", name);
            ngx_http_opamp_redis_drop(link, (char *) link->why);
            return;
        }
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp: redis TLS %s, %s",
                   SSL_get_version(c->ssl->connection),
                   SSL_get_cipher_name(c->ssl->connection));

    ngx_http_opamp_redis_hello(link);
}


/*
 * A write failed because the server closed the connection: the reason is
 * usually a TLS alert that it sent before, such as "certificate required"
 * (TLS 1.3 checks the client's certificate after the client thinks the
 * handshake is done).  Read it, and tell it instead of the reset.
 */

void
ngx_http_opamp_redis_tls_alert(ngx_http_opamp_redis_link_t *link)
{
    u_char   buf[256], why[NGX_MAX_ERROR_STR];
    ssize_t  n;

    ngx_memcpy(why, link->why, sizeof(why));

    n = ngx_http_opamp_redis_recv(link, buf, sizeof(buf));

    if (n != NGX_ERROR || ngx_strstr(link->why, "alert") == NULL) {
        ngx_memcpy(link->why, why, sizeof(why));
    }
}


/* the reason in link->why, one line, without nginx's [crit] of its own */

const char *
ngx_http_opamp_redis_tls_error(ngx_http_opamp_redis_link_t *link,
    const char *what, int sslerr)
{
    u_char         *p, *last;
    ngx_err_t       err;
    unsigned long   e;

    err = ngx_socket_errno;

    p = link->why;
    last = link->why + sizeof(link->why) - 1;

    p = ngx_slprintf(p, last, "%s: ", what);

    e = ERR_peek_last_error();

    if (e) {
        ERR_error_string_n(e, (char *) p, last - p);
        p += ngx_strlen(p);

    } else if (sslerr == SSL_ERROR_SYSCALL && err) {
        p = ngx_strerror(err, p, last - p);

    } else {
        p = ngx_slprintf(p, last, "connection closed by the server");
    }

    *p = '\0';

    ERR_clear_error();

    return (const char *) link->why;
}

#endif
#if (NGX_SSL)

char *
ngx_http_opamp_redis_ssl_conf(ngx_conf_t *cf, ngx_http_opamp_main_conf_t *omcf)
{
    ngx_ssl_t           *ssl;
    ngx_pool_cleanup_t  *cln;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_CONF_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, omcf->ssl_protocols, NULL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    if (ngx_ssl_ciphers(cf, ssl, &omcf->ssl_ciphers, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (omcf->ssl_certificate.len) {

        if (omcf->ssl_certificate_key.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no \"opamp_redis_ssl_certificate_key\" for "
                               "opamp_redis_ssl_certificate \"%V\"",
                               &omcf->ssl_certificate);
            return NGX_CONF_ERROR;
        }

        if (ngx_ssl_certificate(cf, ssl, &omcf->ssl_certificate,
                                &omcf->ssl_certificate_key, NULL)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    if (omcf->ssl_verify) {
        if (omcf->ssl_trusted_certificate.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no opamp_redis_ssl_trusted_certificate for "
                               "opamp_redis_ssl_verify");
            return NGX_CONF_ERROR;
        }

        if (ngx_ssl_trusted_certificate(cf, ssl,
                                        &omcf->ssl_trusted_certificate,
                                        omcf->ssl_verify_depth)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    omcf->ssl_ctx = ssl;

    return NGX_CONF_OK;
}

#endif


#if (NGX_SSL)

ngx_conf_bitmask_t  ngx_http_opamp_redis_ssl_protocols[] = {
    { ngx_string("TLSv1"), NGX_SSL_TLSv1 },
    { ngx_string("TLSv1.1"), NGX_SSL_TLSv1_1 },
    { ngx_string("TLSv1.2"), NGX_SSL_TLSv1_2 },
    { ngx_string("TLSv1.3"), NGX_SSL_TLSv1_3 },
    { ngx_null_string, 0 }
};

#endif


