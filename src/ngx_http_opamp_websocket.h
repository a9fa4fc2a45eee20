/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The WebSocket transport (RFC 6455) inside nginx: the handshake, the
 * takeover of the connection after 101, the frame reader, the output queue
 * and the close handshake.  Frame-level parsing lives in
 * ngx_http_opamp_wsframe.c.
 */

#ifndef _NGX_HTTP_OPAMP_WEBSOCKET_H_INCLUDED_
#define _NGX_HTTP_OPAMP_WEBSOCKET_H_INCLUDED_


#include "ngx_http_opamp.h"


/* content handler for a GET: answers 400/426 for a bad handshake, else
 * switches protocols and serves OpAMP over WebSocket on the connection */
ngx_int_t ngx_http_opamp_websocket_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPAMP_WEBSOCKET_H_INCLUDED_ */
