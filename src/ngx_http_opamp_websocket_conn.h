/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What the files of an OpAMP WebSocket share, inside the module only:
 * the connection's context (input state, output queue, close handshake),
 * a queued frame, and the functions of ngx_http_opamp_websocket.c that
 * the input side (ngx_http_opamp_websocket_read.c) and the output side
 * (ngx_http_opamp_websocket_write.c) call to end the connection.
 */

#ifndef _NGX_HTTP_OPAMP_WEBSOCKET_CONN_H_INCLUDED_
#define _NGX_HTTP_OPAMP_WEBSOCKET_CONN_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_wsframe.h"


/* the payload of a control frame, at most (RFC 6455, 5.5) */
#define NGX_HTTP_OPAMP_WS_MAX_CONTROL       125


typedef struct ngx_http_opamp_ws_out_s  ngx_http_opamp_ws_out_t;

/* one frame to send; its bytes follow the structure in the same block */
struct ngx_http_opamp_ws_out_s {
    ngx_http_opamp_ws_out_t    *next;
    u_char                     *pos;
    u_char                     *last;
    unsigned                    control:1;
    unsigned                    close:1;
};


typedef struct {
    ngx_connection_t           *connection;
    ngx_http_request_t         *request;     /* until the 101 is out */
    ngx_http_opamp_session_t   *session;
    ngx_http_opamp_loc_conf_t  *conf;

    /* frames to send, control frames ahead of data at frame boundaries */
    ngx_http_opamp_ws_out_t    *out;
    ngx_http_opamp_ws_out_t   **out_last;
    size_t                      queued;        /* bytes not yet written */

    /* the data message being received, all fragments so far */
    u_char                     *msg;
    size_t                      msg_len;
    size_t                      msg_size;

    /* input read but not parsed yet because the session was busy */
    u_char                     *pending;
    u_char                     *pending_pos;
    u_char                     *pending_last;

    ngx_http_opamp_wsframe_t    frame;
    uint64_t                    frame_pos;     /* payload bytes so far */

    ngx_msec_t                  last_recv;     /* agent's bytes parsed */
    ngx_msec_t                  last_active;   /* message or lease touch */

    /* a control frame's payload while it arrives: allocated then, so
     * that an idle agent does not carry 125 bytes for it */
    u_char                     *control;

    u_char                      header[NGX_HTTP_OPAMP_WS_MAX_HEADER];
    u_char                      header_len;

    unsigned                    in_payload:1;
    unsigned                    fragmented:1;  /* message continues */
    unsigned                    reading:1;     /* in the read loop */
    unsigned                    http_pending:1;  /* 101 not all written */
    unsigned                    closing:1;     /* our close frame queued */
    unsigned                    close_out:1;   /* ... and written */
    unsigned                    close_in:1;    /* the agent's close came */
    unsigned                    drain:1;       /* input no longer parsed */
    unsigned                    error:1;       /* close the connection */
    unsigned                    cleaned:1;
    unsigned                    waiting:1;     /* counted in stub_status */
    unsigned                    metered:1;     /* counted as open */

    /* the first close frame's code, sent or answered: the metrics' */
    ngx_uint_t                  close_code;

    /* what the handshake's access log line says of the agent */
    ngx_http_opamp_log_t        log;
} ngx_http_opamp_ws_ctx_t;


/* whether the connection is done with: broken, or both closes went by */
ngx_uint_t ngx_http_opamp_ws_finished(ngx_http_opamp_ws_ctx_t *ctx);

/* for the session's callbacks: closes a finished connection from a
 * posted event, not under the session's feet */
void ngx_http_opamp_ws_defer(ngx_http_opamp_ws_ctx_t *ctx);

/* closes the connection now, and the request if it is still held */
void ngx_http_opamp_ws_finalize(ngx_http_opamp_ws_ctx_t *ctx);

/* lets the handshake's request go, once the first reply is queued */
void ngx_http_opamp_ws_log_request(ngx_http_opamp_ws_ctx_t *ctx);


#endif /* _NGX_HTTP_OPAMP_WEBSOCKET_CONN_H_INCLUDED_ */
