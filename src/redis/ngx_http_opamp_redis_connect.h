/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * How a Redis link connects (ngx_http_opamp_redis_connect.c): the
 * address, nginx's resolver, the socket and connect().
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_CONNECT_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_CONNECT_H_INCLUDED_


#include "ngx_http_opamp_redis_link.h"


/* connects a DOWN link, resolving a name through nginx's resolver */
void ngx_http_opamp_redis_connect(ngx_http_opamp_redis_link_t *link);

/* the socket is connected, or failed to: TLS or the handshake next */
void ngx_http_opamp_redis_connect_done(ngx_http_opamp_redis_link_t *link);


#endif /* _NGX_HTTP_OPAMP_REDIS_CONNECT_H_INCLUDED_ */
