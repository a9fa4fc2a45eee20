/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The output side of an OpAMP WebSocket: frames for the agent (each
 * ServerToAgent, pings, pongs, the close frame) are queued, control
 * frames ahead of data, and written as the socket takes them, behind the
 * rest of the 101; an agent that does not read is closed past
 * opamp_send_queue_limit.  The close handshake starts here, and the
 * linger timer bounds how long it may take.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_websocket_conn.h"
#include "ngx_http_opamp_websocket_write.h"
#include "ngx_http_opamp_wsframe.h"


/*
 * How long a closing connection waits for the agent's close frame once
 * ours is out, and at most for ours to be written: a peer that never
 * answers must not hold the connection (or a worker that shuts down).
 */
#define NGX_HTTP_OPAMP_WS_LINGER            2000


static ngx_http_opamp_ws_out_t *ngx_http_opamp_ws_out(
    ngx_http_opamp_ws_ctx_t *ctx, ngx_uint_t opcode, size_t len);
static void ngx_http_opamp_ws_enqueue(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_http_opamp_ws_out_t *o);
static ngx_uint_t ngx_http_opamp_ws_over_limit(ngx_http_opamp_ws_ctx_t *ctx,
    size_t size);


void
ngx_http_opamp_ws_write_handler(ngx_event_t *wev)
{
    ngx_connection_t         *c;
    ngx_http_opamp_ws_ctx_t  *ctx;

    c = wev->data;
    ctx = c->data;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp ws write handler, ready:%ud timedout:%ud",
                   wev->ready, wev->timedout);

    /* a send rate limit of nginx's write filter, not our timer */

    if (wev->delayed && wev->timedout) {
        wev->delayed = 0;
        wev->timedout = 0;
    }

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "opamp: send timed out");
        c->timedout = 1;
        ngx_http_opamp_ws_finalize(ctx);
        return;
    }

    (void) ngx_http_opamp_ws_flush(ctx);

    if (ngx_http_opamp_ws_finished(ctx)) {
        ngx_http_opamp_ws_finalize(ctx);
    }
}


ngx_int_t
ngx_http_opamp_ws_send(ngx_http_opamp_session_t *s, u_char *data,
    size_t len)
{
    size_t                    size;
    ngx_connection_t         *c;
    ngx_http_opamp_ws_out_t  *o;
    ngx_http_opamp_ws_ctx_t  *ctx;

    ctx = s->transport_data;
    c = s->connection;

    if (ctx->closing || ctx->error) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "opamp ws send of %uz bytes after close, dropped",
                       len);
        return NGX_DECLINED;
    }

    /* the OpAMP header byte counts, as it does for messages received */

    if (len >= ctx->conf->max_message_size) {
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "opamp: ServerToAgent of %uz bytes exceeds "
                      "opamp_max_message_size, not sent", len);
        return NGX_DECLINED;
    }

    size = 1 + len;

    if (ngx_http_opamp_ws_over_limit(ctx, size)) {
        ngx_http_opamp_ws_defer(ctx);
        return NGX_DECLINED;
    }

    o = ngx_http_opamp_ws_out(ctx, NGX_HTTP_OPAMP_WS_OP_BINARY, size);
    if (o == NULL) {
        return NGX_ERROR;
    }

    /* the OpAMP WebSocket header: a varint 0, then the protobuf */

    *o->last++ = 0x00;
    o->last = ngx_cpymem(o->last, data, len);

    ngx_http_opamp_ws_enqueue(ctx, o);

    (void) ngx_http_opamp_ws_flush(ctx);

    /* the handshake's access log line names the agent now */
    ngx_http_opamp_ws_log_request(ctx);

    ngx_http_opamp_ws_defer(ctx);

    return NGX_OK;
}


void
ngx_http_opamp_ws_close(ngx_http_opamp_session_t *s, ngx_uint_t code,
    const char *reason)
{
    ngx_http_opamp_ws_ctx_t  *ctx;

    ctx = s->transport_data;

    ngx_http_opamp_ws_close_frame(ctx, code, reason);

    ngx_http_opamp_ws_defer(ctx);
}


/*
 * Starts the close handshake: queues a close frame, stops taking data
 * messages and sending anything else.  The connection is closed when the
 * close frame is out and the agent's close came, or when the linger timer
 * ends it.  Never frees the request itself.
 */

void
ngx_http_opamp_ws_close_frame(ngx_http_opamp_ws_ctx_t *ctx, ngx_uint_t code,
    const char *reason)
{
    size_t                    len;
    ngx_connection_t         *c;
    ngx_http_opamp_ws_out_t  *o;

    if (ctx->closing) {
        return;
    }

    c = ctx->connection;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp ws close: %ui \"%s\"", code, reason);

    ctx->closing = 1;
    ctx->close_code = code;

    if (ctx->msg) {
        ngx_free(ctx->msg);
        ctx->msg = NULL;
    }

    ctx->msg_len = 0;
    ctx->msg_size = 0;

    /* no more heartbeats: the read timer is the linger timer from now */

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    /* reserved codes must never go on the wire (RFC 6455, 7.4.1) */

    if (code < 1000 || code > 4999 || code == 1004 || code == 1005
        || code == 1006 || code == 1015)
    {
        code = NGX_HTTP_OPAMP_WS_CLOSE_INTERNAL;
    }

    /* a control frame has room for the code and 123 bytes of reason;
     * a reason cut short must not end inside a UTF-8 sequence */

    len = ngx_strlen(reason);

    if (len > NGX_HTTP_OPAMP_WS_MAX_CONTROL - 2) {
        len = NGX_HTTP_OPAMP_WS_MAX_CONTROL - 2;

        while (len && ((u_char) reason[len] & 0xc0) == 0x80) {
            len--;
        }
    }

    o = ngx_http_opamp_ws_out(ctx, NGX_HTTP_OPAMP_WS_OP_CLOSE, 2 + len);
    if (o == NULL) {
        ctx->error = 1;
        return;
    }

    *o->last++ = (u_char) (code >> 8);
    *o->last++ = (u_char) (code & 0xff);
    o->last = ngx_cpymem(o->last, reason, len);

    ngx_http_opamp_ws_enqueue(ctx, o);

    /* the shorter timeout of a closing connection applies to the output */

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    (void) ngx_http_opamp_ws_flush(ctx);
}


ngx_int_t
ngx_http_opamp_ws_control_frame(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_uint_t opcode, u_char *data, size_t len)
{
    ngx_http_opamp_ws_out_t  *o;

    if (ngx_http_opamp_ws_over_limit(ctx, len)) {
        return NGX_DECLINED;
    }

    o = ngx_http_opamp_ws_out(ctx, opcode, len);
    if (o == NULL) {
        ctx->error = 1;
        return NGX_ERROR;
    }

    if (len) {
        o->last = ngx_cpymem(o->last, data, len);
    }

    ngx_http_opamp_ws_enqueue(ctx, o);

    return (ngx_http_opamp_ws_flush(ctx) == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}


static ngx_http_opamp_ws_out_t *
ngx_http_opamp_ws_out(ngx_http_opamp_ws_ctx_t *ctx, ngx_uint_t opcode,
    size_t len)
{
    ngx_http_opamp_ws_out_t  *o;

    /* a server frame header is at most 10 bytes: no mask */

    o = ngx_alloc(sizeof(ngx_http_opamp_ws_out_t) + 10 + len,
                  ctx->connection->log);
    if (o == NULL) {
        return NULL;
    }

    o->next = NULL;
    o->pos = (u_char *) &o[1];
    o->last = o->pos + ngx_http_opamp_wsframe_header(o->pos, opcode, 1, len);
    o->control = (opcode & 0x08) ? 1 : 0;
    o->close = (opcode == NGX_HTTP_OPAMP_WS_OP_CLOSE) ? 1 : 0;

    return o;
}


static void
ngx_http_opamp_ws_enqueue(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_http_opamp_ws_out_t *o)
{
    ngx_http_opamp_ws_out_t  **ll, *next, *n;

    ctx->queued += o->last - o->pos;

    if (!o->control) {
        *ctx->out_last = o;
        ctx->out_last = &o->next;
        return;
    }

    /*
     * A control frame goes ahead of queued data, but never into a frame
     * that is partly written, and behind control frames queued before it.
     */

    ll = &ctx->out;

    if (*ll && (*ll)->pos != (u_char *) &(*ll)[1]) {
        ll = &(*ll)->next;
    }

    while (*ll && (*ll)->control) {
        ll = &(*ll)->next;
    }

    if (o->close) {

        /* nothing is sent after a close frame */

        for (n = *ll; n; n = next) {
            next = n->next;
            ctx->queued -= n->last - n->pos;
            ngx_free(n);
        }

        *ll = NULL;
    }

    o->next = *ll;
    *ll = o;

    if (o->next == NULL) {
        ctx->out_last = &o->next;
    }
}


/*
 * The agent does not read what it is sent: one frame is always queued,
 * but past opamp_send_queue_limit the connection is closed rather than
 * the worker's memory filled.
 */

static ngx_uint_t
ngx_http_opamp_ws_over_limit(ngx_http_opamp_ws_ctx_t *ctx, size_t size)
{
    if (ctx->queued == 0
        || ctx->queued + size + 10 <= ctx->conf->send_queue_limit)
    {
        return 0;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->connection->log, 0,
                  "opamp: agent does not read, %uz bytes queued exceed "
                  "opamp_send_queue_limit, closing", ctx->queued);

    ngx_http_opamp_ws_close_frame(ctx, NGX_HTTP_OPAMP_WS_CLOSE_POLICY,
                                  "slow reader");

    return 1;
}


/*
 * Writes what is queued.  Returns NGX_OK when all is out, NGX_AGAIN when
 * the socket is full (the write event and the send timer are set), or
 * NGX_ERROR (ctx->error set) when the connection is broken.
 */

ngx_int_t
ngx_http_opamp_ws_flush(ngx_http_opamp_ws_ctx_t *ctx)
{
    ssize_t                   n;
    ngx_msec_t                timeout;
    ngx_uint_t                progress;
    ngx_event_t              *wev;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_opamp_ws_out_t  *o;

    if (ctx->error) {
        return NGX_ERROR;
    }

    r = ctx->request;
    c = ctx->connection;
    wev = c->write;

    progress = 0;

    /*
     * The rest of the 101 goes first, through nginx's own output chain;
     * frames go straight to c->send() only once it is empty, so nothing
     * can overtake it (with TLS, not even inside the SSL buffer).
     */

    if (ctx->http_pending) {
        if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
            ctx->error = 1;
            return NGX_ERROR;
        }

        if (r->out == NULL && !c->buffered) {
            ctx->http_pending = 0;
            progress = 1;

#if (NGX_HTTP_SSL)
            if (c->ssl) {
                ngx_ssl_free_buffer(c);
            }
#endif
        }
    }

    while (!ctx->http_pending && ctx->out && wev->ready) {
        o = ctx->out;

        n = c->send(c, o->pos, o->last - o->pos);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "opamp ws send: %z of %uz", n, ctx->queued);

        if (n == NGX_ERROR) {
            c->error = 1;
            ctx->error = 1;
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            break;
        }

        progress = 1;
        o->pos += n;
        ctx->queued -= n;

        if (o->pos < o->last) {
            continue;
        }

        ctx->out = o->next;

        if (ctx->out == NULL) {
            ctx->out_last = &ctx->out;
        }

        if (o->close) {
            ctx->close_out = 1;

            /* wait a little for the agent's answer, not forever */

            if (!ctx->close_in) {
                ngx_add_timer(c->read, NGX_HTTP_OPAMP_WS_LINGER);
            }
        }

        ngx_free(o);
    }

    if (ctx->out == NULL && !ctx->http_pending) {
        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        return NGX_OK;
    }

    if (progress || !wev->timer_set) {
        timeout = ctx->conf->send_timeout;

        if (ctx->closing) {
            timeout = ngx_min(timeout, NGX_HTTP_OPAMP_WS_LINGER);
        }

        ngx_add_timer(wev, timeout);
    }

    if (ngx_handle_write_event(wev, 0) != NGX_OK) {
        ctx->error = 1;
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}
