/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The WebSocket transport (RFC 6455) inside nginx: the handshake and the
 * takeover of the connection after 101 (ngx_http_opamp_websocket.c), the
 * frame reader (ngx_http_opamp_websocket_read.c), the output queue and
 * the close handshake (ngx_http_opamp_websocket_write.c).  Frame-level
 * parsing lives in ngx_http_opamp_wsframe.c.
 */

#ifndef _NGX_HTTP_OPAMP_WEBSOCKET_H_INCLUDED_
#define _NGX_HTTP_OPAMP_WEBSOCKET_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_session.h"


/* content handler for a GET: answers 400/426 for a bad handshake, else
 * switches protocols and serves OpAMP over WebSocket on the connection */
ngx_int_t ngx_http_opamp_websocket_handler(ngx_http_request_t *r);

/* what the access log says of a handshake's agent (its first message):
 * NULL if not a WebSocket handshake of an OpAMP location */
ngx_http_opamp_log_t *ngx_http_opamp_ws_log(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPAMP_WEBSOCKET_H_INCLUDED_ */
