/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The input side of an OpAMP WebSocket: reads what the agent sends, runs
 * the frame state machine over it (frame-level parsing is in
 * ngx_http_opamp_wsframe.c), gathers fragmented messages and hands each
 * whole one to the session, answers pings and the agent's close frame,
 * and keeps the heartbeat: a quiet agent is pinged, a silent one closed.
 * While the session is busy with a message no more is read.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_websocket_conn.h"
#include "ngx_http_opamp_websocket_read.h"
#include "ngx_http_opamp_websocket_write.h"
#include "ngx_http_opamp_wsframe.h"


/* the per-worker read buffer */
#define NGX_HTTP_OPAMP_WS_BUFFER            16384


static void ngx_http_opamp_ws_read(ngx_http_opamp_ws_ctx_t *ctx);
static size_t ngx_http_opamp_ws_consume(ngx_http_opamp_ws_ctx_t *ctx,
    u_char *start, size_t len);
static void ngx_http_opamp_ws_frame_start(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_frame_done(ngx_http_opamp_ws_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_ws_grow(ngx_http_opamp_ws_ctx_t *ctx,
    size_t need);
static void ngx_http_opamp_ws_message(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_control(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_alive(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_heartbeat(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_fail(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_uint_t code, const char *reason, ngx_uint_t drain);


static u_char  ngx_http_opamp_ws_buffer[NGX_HTTP_OPAMP_WS_BUFFER];


void
ngx_http_opamp_ws_read_handler(ngx_event_t *rev)
{
    ngx_connection_t         *c;
    ngx_http_opamp_ws_ctx_t  *ctx;

    c = rev->data;
    ctx = c->data;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp ws read handler, ready:%ud timedout:%ud close:%ud",
                   rev->ready, rev->timedout, c->close);

    /*
     * ngx_close_idle_connections() on graceful shutdown or reload sets
     * c->close; the agents reconnect to the new workers.  The shutdown
     * timer (worker_shutdown_timeout) sets c->error, too: no time is left
     * for a close handshake then.
     */

    if (c->close) {
        if (c->error) {
            ngx_http_opamp_ws_finalize(ctx);
            return;
        }

        if (!ctx->closing) {
            ngx_http_opamp_ws_close_frame(ctx,
                                          NGX_HTTP_OPAMP_WS_CLOSE_GOING_AWAY,
                                          "server shutting down");
        }
    }

    if (rev->timedout) {
        rev->timedout = 0;

        if (ctx->closing) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                           "opamp ws close linger timed out");
            ngx_http_opamp_ws_finalize(ctx);
            return;
        }

        ngx_http_opamp_ws_heartbeat(ctx);
    }

    ngx_http_opamp_ws_read(ctx);

    if (ngx_http_opamp_ws_finished(ctx)) {
        ngx_http_opamp_ws_finalize(ctx);
    }
}


static void
ngx_http_opamp_ws_read(ngx_http_opamp_ws_ctx_t *ctx)
{
    size_t             used, rest;
    ssize_t            n;
    ngx_event_t       *rev;
    ngx_connection_t  *c;

    c = ctx->connection;
    rev = c->read;

    ctx->reading = 1;

    for ( ;; ) {

        /*
         * While the session waits for Redis on the previous message no
         * more is read: the agent's own socket buffer is the queue, so a
         * fast sender slows down instead of filling the worker's memory.
         */

        if (ctx->error || ctx->close_in
            || (ctx->session->busy && !ctx->closing))
        {
            break;
        }

        if (ctx->pending) {
            used = ngx_http_opamp_ws_consume(ctx, ctx->pending_pos,
                                             ctx->pending_last
                                             - ctx->pending_pos);
            ctx->pending_pos += used;

            if (ctx->pending_pos == ctx->pending_last) {
                ngx_free(ctx->pending);
                ctx->pending = NULL;
            }

            continue;
        }

        if (!rev->ready) {
            break;
        }

        n = c->recv(c, ngx_http_opamp_ws_buffer,
                    NGX_HTTP_OPAMP_WS_BUFFER);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                       "opamp ws recv: %z", n);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            if (n == 0 && !ctx->closing) {
                ngx_log_error(NGX_LOG_INFO, c->log, 0,
                              "opamp: agent closed the connection without "
                              "a close frame");
            }

            rev->eof = 1;
            ctx->error = 1;
            break;
        }

        used = ngx_http_opamp_ws_consume(ctx, ngx_http_opamp_ws_buffer, n);

        if (used < (size_t) n && !ctx->error && !ctx->close_in) {

            /* the session became busy: keep the rest for resume() */

            rest = n - used;

            ctx->pending = ngx_alloc(rest, c->log);
            if (ctx->pending == NULL) {
                ctx->error = 1;
                break;
            }

            ctx->pending_pos = ctx->pending;
            ctx->pending_last = ngx_cpymem(ctx->pending,
                                           ngx_http_opamp_ws_buffer + used,
                                           rest);
        }
    }

    ctx->reading = 0;

    if (ctx->error) {
        return;
    }

    if (ctx->close_in || (ctx->session->busy && !ctx->closing)) {

        /* level-triggered events would report the unread bytes forever */

        if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && rev->active) {
            if (ngx_del_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
                ctx->error = 1;
            }
        }

        return;
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ctx->error = 1;
    }
}


/*
 * Runs the frame state machine over len bytes of input.  Returns how many
 * were used: all of them, unless the session became busy with a message,
 * the agent's close frame came or the connection failed.
 */

static size_t
ngx_http_opamp_ws_consume(ngx_http_opamp_ws_ctx_t *ctx, u_char *start,
    size_t len)
{
    int                        rc;
    u_char                    *p, *last, *dst;
    size_t                     size;
    uint64_t                   rest;
    ngx_http_opamp_wsframe_t  *f;

    p = start;
    last = start + len;
    f = &ctx->frame;

    /*
     * The agent is alive as long as its frames are parsed: input kept in
     * ctx->pending behind a busy session counts when it is reached, so a
     * long pipeline is not mistaken for silence.
     */

    ctx->last_recv = ngx_current_msec;

    while (p < last) {

        if (ctx->drain || ctx->error || ctx->close_in
            || (ctx->session->busy && !ctx->closing))
        {
            break;
        }

        if (!ctx->in_payload) {

            /* the header may come in pieces: gather it in ctx->header */

            size = ngx_min((size_t) (last - p),
                           (size_t) (NGX_HTTP_OPAMP_WS_MAX_HEADER
                                     - ctx->header_len));

            ngx_memcpy(ctx->header + ctx->header_len, p, size);

            rc = ngx_http_opamp_wsframe_parse(f, ctx->header,
                                              ctx->header_len + size);

            if (rc == 0) {
                ctx->header_len += size;
                p += size;
                continue;
            }

            if (rc < 0) {
                ngx_http_opamp_ws_fail(ctx, -rc, "invalid frame header", 1);
                break;
            }

            p += rc - ctx->header_len;
            ctx->header_len = 0;
            ctx->frame_pos = 0;
            ctx->in_payload = 1;

            ngx_log_debug3(NGX_LOG_DEBUG_HTTP,
                           ctx->connection->log, 0,
                           "opamp ws frame: opcode:%ui fin:%ui len:%uL",
                           (ngx_uint_t) f->opcode, (ngx_uint_t) f->fin,
                           f->payload_len);

            ngx_http_opamp_ws_frame_start(ctx);

            if (ctx->drain || ctx->error) {
                break;
            }

            if (f->payload_len == 0) {
                ngx_http_opamp_ws_frame_done(ctx);
            }

            continue;
        }

        rest = f->payload_len - ctx->frame_pos;
        size = (rest < (uint64_t) (last - p)) ? (size_t) rest
                                              : (size_t) (last - p);

        /* data of a message given up on (the close has begun) is skipped */

        if (f->opcode & 0x08) {
            dst = ctx->control ? ctx->control + ctx->frame_pos : NULL;

        } else if (!ctx->closing) {
            if (ngx_http_opamp_ws_grow(ctx, ctx->msg_len + ctx->frame_pos
                                            + size)
                != NGX_OK)
            {
                ngx_http_opamp_ws_close_frame(ctx,
                                              NGX_HTTP_OPAMP_WS_CLOSE_INTERNAL,
                                              "internal error");
                ctx->drain = 1;
                break;
            }

            dst = ctx->msg + ctx->msg_len + ctx->frame_pos;

        } else {
            dst = NULL;
        }

        if (dst) {
            ngx_memcpy(dst, p, size);
            ngx_http_opamp_wsframe_unmask(dst, size, f->mask,
                                          ctx->frame_pos);
        }

        ctx->frame_pos += size;
        p += size;

        if (ctx->frame_pos == f->payload_len) {
            ngx_http_opamp_ws_frame_done(ctx);
        }
    }

    /* once the input cannot be parsed any more, all of it is dropped */

    return ctx->drain ? len : (size_t) (p - start);
}


/* a frame header is complete: check it against the state of the stream */

static void
ngx_http_opamp_ws_frame_start(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_http_opamp_wsframe_t  *f;

    f = &ctx->frame;

    switch (f->opcode) {

    case NGX_HTTP_OPAMP_WS_OP_TEXT:
        ngx_http_opamp_ws_fail(ctx, NGX_HTTP_OPAMP_WS_CLOSE_UNSUPPORTED,
                               "text frames are not supported, "
                               "OpAMP is binary", 0);
        return;

    case NGX_HTTP_OPAMP_WS_OP_BINARY:

        if (ctx->fragmented) {
            ngx_http_opamp_ws_fail(ctx,
                                   NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR,
                                   "new message inside a fragmented one",
                                   0);
            return;
        }

        ctx->fragmented = f->fin ? 0 : 1;
        break;

    case NGX_HTTP_OPAMP_WS_OP_CONT:

        if (!ctx->fragmented) {
            ngx_http_opamp_ws_fail(ctx,
                                   NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR,
                                   "continuation frame without a message",
                                   0);
            return;
        }

        ctx->fragmented = f->fin ? 0 : 1;
        break;

    default:
        /* control frames: the parser has checked FIN and the size */

        if (f->payload_len && ctx->control == NULL) {
            ctx->control = ngx_alloc(NGX_HTTP_OPAMP_WS_MAX_CONTROL,
                                     ctx->connection->log);
            if (ctx->control == NULL) {
                /* its payload has nowhere to go: stop parsing */
                ngx_http_opamp_ws_fail(ctx, NGX_HTTP_OPAMP_WS_CLOSE_INTERNAL,
                                       "no memory", 1);
            }
        }

        return;
    }

    if (ctx->closing) {
        return;
    }

    /* the whole message counts, header included, before any allocation */

    if (f->payload_len > (uint64_t) (ctx->conf->max_message_size
                                     - ctx->msg_len))
    {
        ngx_http_opamp_ws_fail(ctx, NGX_HTTP_OPAMP_WS_CLOSE_TOO_BIG,
                               "message exceeds opamp_max_message_size", 0);
    }

    /* memory comes as the payload does (ngx_http_opamp_ws_grow()), not as
     * the header declares: a header alone reserves nothing */
}


static void
ngx_http_opamp_ws_frame_done(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_http_opamp_wsframe_t  *f;

    f = &ctx->frame;

    ctx->in_payload = 0;

    if (f->opcode & 0x08) {
        ngx_http_opamp_ws_control(ctx);

        /* the answer, if any, has copied what it needs */

        if (ctx->control) {
            ngx_free(ctx->control);
            ctx->control = NULL;
        }

        return;
    }

    if (ctx->closing) {
        return;
    }

    ctx->msg_len += (size_t) f->payload_len;

    if (!f->fin) {
        ngx_http_opamp_ws_alive(ctx);
        return;
    }

    ngx_http_opamp_ws_message(ctx);
}


static ngx_int_t
ngx_http_opamp_ws_grow(ngx_http_opamp_ws_ctx_t *ctx, size_t need)
{
    u_char  *p;
    size_t   size, limit;

    if (need <= ctx->msg_size) {
        return NGX_OK;
    }

    /*
     * Room doubles as bytes arrive, so that a message is copied a few
     * times, not once per read or per frame, and never beyond what can
     * still come: the end of the last frame when it is the last, else
     * the limit.  A client that declares a large frame and sends little
     * holds little.
     */

    size = ngx_max(need, ngx_max(2 * ctx->msg_size, 4096));

    limit = ctx->frame.fin ? ctx->msg_len + (size_t) ctx->frame.payload_len
                           : ctx->conf->max_message_size;

    size = ngx_max(need, ngx_min(size, limit));

    p = ngx_alloc(size, ctx->connection->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ctx->msg) {
        /* the message so far, and what came of the frame being read */
        ngx_memcpy(p, ctx->msg, ctx->msg_len + (size_t) ctx->frame_pos);
        ngx_free(ctx->msg);
    }

    ctx->msg = p;
    ctx->msg_size = size;

    return NGX_OK;
}


/* a whole binary message: the OpAMP header, then an AgentToServer */

static void
ngx_http_opamp_ws_message(ngx_http_opamp_ws_ctx_t *ctx)
{
    int                        n;
    u_char                    *data;
    size_t                     len;
    uint64_t                   value;
    ngx_int_t                  rc;
    ngx_http_opamp_session_t  *s;

    s = ctx->session;

    /* the session may close the connection, which frees ctx->msg */

    data = ctx->msg;
    len = ctx->msg_len;

    ctx->msg = NULL;
    ctx->msg_len = 0;
    ctx->msg_size = 0;

    ctx->last_active = ngx_current_msec;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->connection->log, 0,
                   "opamp ws message: %uz bytes", len);

    n = ngx_http_opamp_varint_decode(data, len, &value);

    if (n < 0) {
        rc = ngx_http_opamp_session_bad_request(s,
                 "the OpAMP message header is missing or truncated");

    } else if (value != 0) {
        rc = ngx_http_opamp_session_bad_request(s,
                 "the OpAMP message header must be 0");

    } else {
        rc = ngx_http_opamp_session_message(s, data + n, len - n);
    }

    if (data) {
        ngx_free(data);
    }

    if (rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ctx->connection->log, 0,
                      "opamp: could not process an AgentToServer");

        ngx_http_opamp_ws_close_frame(ctx, NGX_HTTP_OPAMP_WS_CLOSE_INTERNAL,
                                      "internal error");
    }
}


static void
ngx_http_opamp_ws_control(ngx_http_opamp_ws_ctx_t *ctx)
{
    int                        code;
    size_t                     len;
    u_char                    *payload;
    ngx_http_opamp_wsframe_t  *f;

    f = &ctx->frame;
    len = (size_t) f->payload_len;
    payload = ctx->control ? ctx->control : (u_char *) "";

    switch (f->opcode) {

    case NGX_HTTP_OPAMP_WS_OP_PING:

        /* nothing may follow our close frame, not even a pong */

        if (!ctx->closing
            && ngx_http_opamp_ws_control_frame(ctx,
                                               NGX_HTTP_OPAMP_WS_OP_PONG,
                                               payload, len)
               != NGX_OK)
        {
            return;
        }

        ngx_http_opamp_ws_alive(ctx);
        return;

    case NGX_HTTP_OPAMP_WS_OP_PONG:
        ngx_http_opamp_ws_alive(ctx);
        return;

    default: /* NGX_HTTP_OPAMP_WS_OP_CLOSE */

        ctx->close_in = 1;

        code = ngx_http_opamp_wsframe_close_payload(payload, len);

        if (code < 0) {
            ngx_http_opamp_ws_fail(ctx, -code,
                                   code == -NGX_HTTP_OPAMP_WS_CLOSE_INVALID_DATA
                                   ? "close reason is not UTF-8"
                                   : "invalid close frame", 0);
            return;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->connection->log,
                       0,
                       "opamp ws close from agent: %d", code);

        /* RFC 6455, 5.5.1: answer with a close frame, the same code */

        ngx_http_opamp_ws_close_frame(ctx, (code == 1005)
                                           ? NGX_HTTP_OPAMP_WS_CLOSE_NORMAL
                                           : (ngx_uint_t) code, "");
        return;
    }
}


/*
 * A frame came though no message did for a while: the agent is alive, so
 * its lease in Redis is renewed, once half of opamp_agent_timeout passed
 * since its last message or renewal (at least a heartbeat interval).  An
 * agent that sends heartbeats of its own (every 30 s by default) renews
 * its lease with them and never needs this; one that only answers pings
 * is renewed well before its lease (the agent timeout) runs out.
 */

static void
ngx_http_opamp_ws_alive(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_msec_t  interval;

    interval = ngx_max((ngx_msec_t) ctx->conf->heartbeat_interval * 1000,
                       ctx->conf->agent_timeout / 2);

    if (ngx_current_msec - ctx->last_active >= interval) {
        ctx->last_active = ngx_current_msec;
        ngx_http_opamp_session_touch(ctx->session);
    }
}


/* the read timer: ping a quiet agent, give up on a silent one */

static void
ngx_http_opamp_ws_heartbeat(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_msec_t         interval, elapsed, next;
    ngx_connection_t  *c;

    c = ctx->connection;

    interval = (ngx_msec_t) ctx->conf->heartbeat_interval * 1000;

    if (ngx_exiting || ngx_terminate) {
        ngx_http_opamp_ws_close_frame(ctx, NGX_HTTP_OPAMP_WS_CLOSE_GOING_AWAY,
                                      "server shutting down");
        return;
    }

    /* input is not read while the session is busy: it says nothing */

    if (ctx->session->busy) {
        ngx_add_timer(c->read, interval);
        return;
    }

    elapsed = ngx_current_msec - ctx->last_recv;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp ws heartbeat, quiet for %M", elapsed);

    if (elapsed >= ctx->conf->agent_timeout) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "opamp: nothing received from the agent for %M ms, "
                      "closing", elapsed);

        ngx_http_opamp_ws_close_frame(ctx, NGX_HTTP_OPAMP_WS_CLOSE_NORMAL,
                                      "agent timeout");
        return;
    }

    if (elapsed >= interval) {
        if (ngx_http_opamp_ws_control_frame(ctx, NGX_HTTP_OPAMP_WS_OP_PING,
                                            NULL, 0)
            != NGX_OK)
        {
            return;
        }

        next = ngx_min(interval, ctx->conf->agent_timeout - elapsed);

    } else {
        next = interval - elapsed;
    }

    ngx_add_timer(c->read, next);
}


/* the agent broke the protocol: its fault, logged at info as nginx does */

static void
ngx_http_opamp_ws_fail(ngx_http_opamp_ws_ctx_t *ctx, ngx_uint_t code,
    const char *reason, ngx_uint_t drain)
{
    if (!ctx->closing) {
        ngx_log_error(NGX_LOG_INFO, ctx->connection->log, 0,
                      "opamp: %s, closing the WebSocket with %ui",
                      reason, code);

        ngx_http_opamp_metrics_refused(
                               (code == NGX_HTTP_OPAMP_WS_CLOSE_TOO_BIG)
                               ? NGX_HTTP_OPAMP_M_REFUSED_LIMIT
                               : NGX_HTTP_OPAMP_M_REFUSED_PROTOCOL);

        ngx_http_opamp_ws_close_frame(ctx, code, reason);
    }

    /*
     * After a bad header the stream cannot be parsed any more: input is
     * dropped until the agent closes or the linger timer ends it.  Other
     * errors leave the framing intact, and the agent's close frame is
     * still recognized.
     */

    if (drain) {
        ctx->drain = 1;
    }
}


void
ngx_http_opamp_ws_resume(ngx_http_opamp_session_t *s)
{
    ngx_http_opamp_ws_ctx_t  *ctx;

    ctx = s->transport_data;

    /* called from within the read loop, which goes on by itself */

    if (ctx->reading) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "opamp ws resume");

    /* posted, not called: the session still runs on the stack */

    ngx_post_event(s->connection->read, &ngx_posted_events);
}
