/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The output side of an OpAMP WebSocket
 * (ngx_http_opamp_websocket_write.c): the frames queued for the agent,
 * written as the socket takes them; the close handshake.
 */

#ifndef _NGX_HTTP_OPAMP_WEBSOCKET_WRITE_H_INCLUDED_
#define _NGX_HTTP_OPAMP_WEBSOCKET_WRITE_H_INCLUDED_


#include "ngx_http_opamp_websocket_conn.h"


/* the write handler once the request is let go */
void ngx_http_opamp_ws_write_handler(ngx_event_t *wev);

/* the session's send and close callbacks */
ngx_int_t ngx_http_opamp_ws_send(ngx_http_opamp_session_t *s,
    u_char *data, size_t len);
void ngx_http_opamp_ws_close(ngx_http_opamp_session_t *s,
    ngx_uint_t code, const char *reason);

/* queues our close frame (once) and stops sending anything else */
void ngx_http_opamp_ws_close_frame(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_uint_t code, const char *reason);

/* queues a ping or a pong: NGX_DECLINED past the queue limit (the
 * connection is being closed), NGX_ERROR when it is broken */
ngx_int_t ngx_http_opamp_ws_control_frame(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_uint_t opcode, u_char *data, size_t len);

/* writes what is queued: NGX_OK, NGX_AGAIN (socket full) or NGX_ERROR */
ngx_int_t ngx_http_opamp_ws_flush(ngx_http_opamp_ws_ctx_t *ctx);


#endif /* _NGX_HTTP_OPAMP_WEBSOCKET_WRITE_H_INCLUDED_ */
