/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The input side of an OpAMP WebSocket (ngx_http_opamp_websocket_read.c):
 * what the agent sends, frame by frame, to the session; the heartbeat.
 */

#ifndef _NGX_HTTP_OPAMP_WEBSOCKET_READ_H_INCLUDED_
#define _NGX_HTTP_OPAMP_WEBSOCKET_READ_H_INCLUDED_


#include "ngx_http_opamp_websocket_conn.h"


/* the read handler once the request is let go; its timer is the
 * heartbeat, then the linger timer of a closing connection */
void ngx_http_opamp_ws_read_handler(ngx_event_t *rev);

/* the session's resume callback: it is done with a message, input is
 * read again */
void ngx_http_opamp_ws_resume(ngx_http_opamp_session_t *s);


#endif /* _NGX_HTTP_OPAMP_WEBSOCKET_READ_H_INCLUDED_ */
