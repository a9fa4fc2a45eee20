/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * TLS on a Redis link ("rediss://", opamp_redis_ssl_*) with nginx's own
 * OpenSSL: the client handshake and certificate checks at run time, the
 * SSL context at configuration time.
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_SSL_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_SSL_H_INCLUDED_


#include "ngx_http_opamp_redis_link.h"


#if (NGX_SSL)

void ngx_http_opamp_redis_tls_start(ngx_http_opamp_redis_link_t *link);
void ngx_http_opamp_redis_tls_handshake(ngx_http_opamp_redis_link_t *link);

/* a TLS alert or close from the server while the link is up */
void ngx_http_opamp_redis_tls_alert(ngx_http_opamp_redis_link_t *link);

/* the OpenSSL error queue as a reason in link->why, emptied */
const char *ngx_http_opamp_redis_tls_error(ngx_http_opamp_redis_link_t *link,
    const char *what, int sslerr);

/* the SSL context of the links, once the http block is read */
char *ngx_http_opamp_redis_ssl_conf(ngx_conf_t *cf,
    ngx_http_opamp_main_conf_t *omcf);

#endif


#endif /* _NGX_HTTP_OPAMP_REDIS_SSL_H_INCLUDED_ */
