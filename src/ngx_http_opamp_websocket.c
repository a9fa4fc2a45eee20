/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * OpAMP over WebSocket (RFC 6455).  After the 101 answer the connection
 * belongs to this file: its read and write handlers are replaced, as
 * ngx_http_upstream does for an upgraded connection.  Once the 101 is
 * written the request itself is let go (access log line, request pool,
 * header buffers), as an idle keep-alive connection lets its request go:
 * an agent may stay connected for days and needs nothing of it.
 *
 * Memory: a connection that waits for its agent holds only its context
 * and session, allocated once from the connection pool.  Input is read
 * into one buffer per worker, a message under way is copied into a buffer
 * taken with ngx_alloc() and freed when the message has been handed to
 * the session, and every queued frame is its own ngx_alloc() block, freed
 * once written.  Nothing per message comes from the connection pool.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_http.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_websocket.h"
#include "ngx_http_opamp_wsframe.h"

#include <ngx_sha1.h>


#define NGX_HTTP_OPAMP_WS_UPGRADE_REQUIRED  426

/* the per-worker read buffer */
#define NGX_HTTP_OPAMP_WS_BUFFER            16384

/*
 * How long a closing connection waits for the agent's close frame once
 * ours is out, and at most for ours to be written: a peer that never
 * answers must not hold the connection (or a worker that shuts down).
 */
#define NGX_HTTP_OPAMP_WS_LINGER            2000

#define NGX_HTTP_OPAMP_WS_MAX_CONTROL       125

#define NGX_HTTP_OPAMP_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
} ngx_http_opamp_ws_ctx_t;


static ngx_uint_t ngx_http_opamp_ws_handshake(ngx_http_request_t *r,
    ngx_str_t *key, const char **reason);
static ngx_uint_t ngx_http_opamp_ws_has_token(ngx_http_request_t *r,
    const char *name, const char *token);
static ngx_table_elt_t *ngx_http_opamp_ws_header_in(ngx_http_request_t *r,
    const char *name, ngx_uint_t *count);
static ngx_int_t ngx_http_opamp_ws_header_out(ngx_http_request_t *r,
    const char *name, ngx_str_t *value);
static ngx_int_t ngx_http_opamp_ws_accept(ngx_http_request_t *r,
    ngx_str_t *key, ngx_str_t *accept);
static ngx_int_t ngx_http_opamp_ws_takeover(ngx_http_request_t *r,
    ngx_http_opamp_ws_ctx_t *ctx);

static void ngx_http_opamp_ws_free(void *data);
static void ngx_http_opamp_ws_upgrade_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_opamp_ws_release(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_read_handler(ngx_event_t *rev);
static void ngx_http_opamp_ws_write_handler(ngx_event_t *wev);
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

static ngx_int_t ngx_http_opamp_ws_send(ngx_http_opamp_session_t *s,
    u_char *data, size_t len);
static void ngx_http_opamp_ws_resume(ngx_http_opamp_session_t *s);
static void ngx_http_opamp_ws_close(ngx_http_opamp_session_t *s,
    ngx_uint_t code, const char *reason);

static void ngx_http_opamp_ws_close_frame(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_uint_t code, const char *reason);
static ngx_int_t ngx_http_opamp_ws_control_frame(
    ngx_http_opamp_ws_ctx_t *ctx, ngx_uint_t opcode, u_char *data,
    size_t len);
static ngx_http_opamp_ws_out_t *ngx_http_opamp_ws_out(
    ngx_http_opamp_ws_ctx_t *ctx, ngx_uint_t opcode, size_t len);
static void ngx_http_opamp_ws_enqueue(ngx_http_opamp_ws_ctx_t *ctx,
    ngx_http_opamp_ws_out_t *o);
static ngx_uint_t ngx_http_opamp_ws_over_limit(ngx_http_opamp_ws_ctx_t *ctx,
    size_t size);
static ngx_int_t ngx_http_opamp_ws_flush(ngx_http_opamp_ws_ctx_t *ctx);

static ngx_uint_t ngx_http_opamp_ws_finished(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_defer(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_finalize(ngx_http_opamp_ws_ctx_t *ctx);
static void ngx_http_opamp_ws_cleanup(void *data);


static u_char  ngx_http_opamp_ws_buffer[NGX_HTTP_OPAMP_WS_BUFFER];


ngx_int_t
ngx_http_opamp_websocket_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_str_t                  key, accept, value;
    ngx_uint_t                 status;
    const char                *reason;
    ngx_pool_cleanup_t        *pcln;
    ngx_http_cleanup_t        *cln;
    ngx_http_opamp_ws_ctx_t   *ctx;
    ngx_http_opamp_session_t  *s;

    if (r != r->main) {
        return ngx_http_opamp_http_error(r, NGX_HTTP_BAD_REQUEST,
                   "a WebSocket cannot be opened in a subrequest");
    }

    status = ngx_http_opamp_ws_handshake(r, &key, &reason);

    if (status) {
        if (status == NGX_HTTP_OPAMP_WS_UPGRADE_REQUIRED) {

            /* nginx has no reason phrase of its own for 426 */
            ngx_str_set(&r->headers_out.status_line, "426 Upgrade Required");

            ngx_str_set(&value, "13");

            if (ngx_http_opamp_ws_header_out(r, "Sec-WebSocket-Version",
                                             &value)
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
        }

        return ngx_http_opamp_http_error(r, status, reason);
    }

    /*
     * A handshake has no body; one sent anyway is read and dropped here,
     * so that the bytes after it are the agent's first frames.  A body
     * still on its way cannot be told apart from frames: refuse it.
     */

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    if (r->discard_body) {
        return ngx_http_opamp_http_error(r, NGX_HTTP_BAD_REQUEST,
                   "a WebSocket handshake must not have a body");
    }

    if (ngx_http_opamp_ws_accept(r, &key, &accept) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * The context and the session outlive the request: one block of
     * their exact size, freed with the connection pool.  In the pool
     * itself they would not fit beside what nginx keeps there and cost
     * a whole second pool block per agent.
     */

    pcln = ngx_pool_cleanup_add(r->connection->pool, 0);
    if (pcln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_calloc(sizeof(ngx_http_opamp_ws_ctx_t)
                     + sizeof(ngx_http_opamp_session_t), r->connection->log);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pcln->handler = ngx_http_opamp_ws_free;
    pcln->data = ctx;

    s = (ngx_http_opamp_session_t *) &ctx[1];
    ngx_http_opamp_session_init(s, r, NGX_HTTP_OPAMP_TRANSPORT_WS);

    ctx->connection = r->connection;
    ctx->request = r;
    ctx->session = s;
    ctx->conf = s->conf;
    ctx->out_last = &ctx->out;

    /* the session is finalized however the request ends from now on */

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_opamp_ws_cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_http_opamp_module);

    s->send = ngx_http_opamp_ws_send;
    s->resume = ngx_http_opamp_ws_resume;
    s->close = ngx_http_opamp_ws_close;
    s->transport_data = ctx;

    ngx_str_set(&value, "websocket");

    if (ngx_http_opamp_ws_header_out(r, "Upgrade", &value) != NGX_OK
        || ngx_http_opamp_ws_header_out(r, "Sec-WebSocket-Accept", &accept)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* nginx's header filter adds "Connection: upgrade" to a 101 */

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->keepalive = 0;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    if (ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (ngx_http_opamp_ws_takeover(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the connection's own reference, released in ws_release() or
     * ws_finalize() */

    r->main->count++;

    return NGX_DONE;
}


static ngx_uint_t
ngx_http_opamp_ws_handshake(ngx_http_request_t *r, ngx_str_t *key,
    const char **reason)
{
    u_char            buf[16];
    ngx_str_t         src, dst;
    ngx_uint_t        n;
    ngx_table_elt_t  *h;

    /* RFC 6455, 4.2.1; HTTP/2 would need RFC 8441, which nginx lacks */

    if (r->http_version < NGX_HTTP_VERSION_11
        || r->http_version >= NGX_HTTP_VERSION_20)
    {
        *reason = "a WebSocket handshake needs HTTP/1.1";
        return NGX_HTTP_BAD_REQUEST;
    }

    if (!ngx_http_opamp_ws_has_token(r, "Upgrade", "websocket")) {
        *reason = "not a WebSocket handshake: \"Upgrade: websocket\" "
                  "is missing (plain HTTP agents use POST)";
        return NGX_HTTP_BAD_REQUEST;
    }

    if (!ngx_http_opamp_ws_has_token(r, "Connection", "upgrade")) {
        *reason = "not a WebSocket handshake: \"Connection: Upgrade\" "
                  "is missing";
        return NGX_HTTP_BAD_REQUEST;
    }

    if (!ngx_http_opamp_ws_has_token(r, "Sec-WebSocket-Version", "13")) {
        *reason = "only WebSocket version 13 is supported";
        return NGX_HTTP_OPAMP_WS_UPGRADE_REQUIRED;
    }

    /* 16 bytes in base64: 22 characters and "==" */

    *reason = "Sec-WebSocket-Key must be 16 bytes in base64";

    h = ngx_http_opamp_ws_header_in(r, "Sec-WebSocket-Key", &n);

    if (h == NULL || n != 1 || h->value.len != 24
        || h->value.data[22] != '=' || h->value.data[23] != '=')
    {
        return NGX_HTTP_BAD_REQUEST;
    }

    src = h->value;
    dst.data = buf;

    if (ngx_decode_base64(&dst, &src) != NGX_OK || dst.len != 16) {
        return NGX_HTTP_BAD_REQUEST;
    }

    *key = h->value;

    return 0;
}


/* whether any header line called name lists token (case-insensitive) */

static ngx_uint_t
ngx_http_opamp_ws_has_token(ngx_http_request_t *r, const char *name,
    const char *token)
{
    u_char           *p, *last, *start, *end;
    size_t            nlen, tlen;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    nlen = ngx_strlen(name);
    tlen = ngx_strlen(token);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0
            || h[i].key.len != nlen
            || ngx_strncasecmp(h[i].key.data, (u_char *) name, nlen) != 0)
        {
            continue;
        }

        p = h[i].value.data;
        last = p + h[i].value.len;

        while (p < last) {
            start = p;

            while (p < last && *p != ',') {
                p++;
            }

            end = p++;

            while (start < end && (*start == ' ' || *start == '\t')) {
                start++;
            }

            while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
                end--;
            }

            if ((size_t) (end - start) == tlen
                && ngx_strncasecmp(start, (u_char *) token, tlen) == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


static ngx_table_elt_t *
ngx_http_opamp_ws_header_in(ngx_http_request_t *r, const char *name,
    ngx_uint_t *count)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    len = ngx_strlen(name);
    found = NULL;
    *count = 0;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0
            && h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            if (found == NULL) {
                found = &h[i];
            }

            (*count)++;
        }
    }

    return found;
}


static ngx_int_t
ngx_http_opamp_ws_header_out(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;
    h->lowcase_key = NULL;

#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/* Sec-WebSocket-Accept: base64(SHA-1(key + GUID)), RFC 6455, 4.2.2 */

static ngx_int_t
ngx_http_opamp_ws_accept(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *accept)
{
    u_char       digest[20];
    ngx_str_t    src;
    ngx_sha1_t   sha1;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key->data, key->len);
    ngx_sha1_update(&sha1, NGX_HTTP_OPAMP_WS_GUID,
                    sizeof(NGX_HTTP_OPAMP_WS_GUID) - 1);
    ngx_sha1_final(digest, &sha1);

    src.data = digest;
    src.len = sizeof(digest);

    accept->data = ngx_pnalloc(r->pool, ngx_base64_encoded_length(src.len));
    if (accept->data == NULL) {
        return NGX_ERROR;
    }

    ngx_encode_base64(accept, &src);

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_ws_takeover(ngx_http_request_t *r,
    ngx_http_opamp_ws_ctx_t *ctx)
{
    size_t                     size;
    ngx_buf_t                 *b;
    ngx_connection_t          *c;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp ws takeover, conn number %uL",
                   ctx->session->conn_number);

    c->log->action = "serving OpAMP over WebSocket";

    /* the 101 may still sit in nginx's output chain (r->out) */

    ctx->http_pending = (r->out || c->buffered) ? 1 : 0;

#if (NGX_HTTP_SSL)

    /*
     * Frames bypass nginx's SSL write buffer (ssl_buffer_size, 16k by
     * default, taken for the 101): release it as an idle keepalive
     * connection does.  It comes back by itself if it is ever used again.
     */

    if (c->ssl && !ctx->http_pending) {
        ngx_ssl_free_buffer(c);
    }

#endif

    /* until the 101 is out, see ws_upgrade_handler() */

    c->read->handler = ngx_http_opamp_ws_upgrade_handler;
    c->write->handler = ngx_http_opamp_ws_upgrade_handler;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->tcp_nodelay && ngx_tcp_nodelay(c) != NGX_OK) {
        return NGX_ERROR;
    }

    /* graceful shutdown and reload reach the connection: see read_handler */

    c->idle = 1;

    ctx->last_recv = ngx_current_msec;
    ctx->last_active = ngx_current_msec;

    /* frames the agent sent right behind its handshake */

    b = r->header_in;

    if (b && b->pos < b->last) {
        size = b->last - b->pos;

        ctx->pending = ngx_alloc(size, c->log);
        if (ctx->pending == NULL) {
            return NGX_ERROR;
        }

        ctx->pending_pos = ctx->pending;
        ctx->pending_last = ngx_cpymem(ctx->pending, b->pos, size);
        b->pos = b->last;
    }

    ngx_add_timer(c->read,
                  (ngx_msec_t) ctx->conf->heartbeat_interval * 1000);

    if (ngx_exiting || ngx_terminate) {
        ngx_http_opamp_ws_close_frame(ctx, NGX_HTTP_OPAMP_WS_CLOSE_GOING_AWAY,
                                      "server shutting down");

    } else if (ctx->http_pending) {
        (void) ngx_http_opamp_ws_flush(ctx);
    }

    /*
     * Posted, not called: the request goes on being used by nginx until
     * the content handler has returned.  The handler lets the request go
     * and reads what is there already; errors are handled there, too.
     */

    ngx_post_event(c->read, &ngx_posted_events);

    return NGX_OK;
}


/*
 * The handler of both events while the request is still held: the 101
 * may sit partly written in nginx's output chain.  Once it is out the
 * request is let go, and the WebSocket handlers take over.
 */

static void
ngx_http_opamp_ws_upgrade_handler(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_http_opamp_ws_ctx_t  *ctx;

    c = ev->data;
    r = c->data;
    ctx = ngx_http_get_module_ctx(r, ngx_http_opamp_module);

    ngx_http_set_log_request(c->log, r);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "opamp ws upgrade handler, write:%ud timedout:%ud "
                   "pending:%ud", ev->write, ev->timedout, ctx->http_pending);

    if (ev->write && ev->delayed && ev->timedout) {
        ev->delayed = 0;
        ev->timedout = 0;
    }

    if (ev->write && ev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "opamp: sending the 101 timed out");
        c->timedout = 1;
        ngx_http_opamp_ws_finalize(ctx);
        return;
    }

    if (c->error) {
        ngx_http_opamp_ws_finalize(ctx);
        return;
    }

    if (ctx->http_pending) {
        if (ngx_http_opamp_ws_flush(ctx) == NGX_ERROR) {
            ngx_http_opamp_ws_finalize(ctx);
            return;
        }

        if (ctx->http_pending) {
            return;
        }
    }

    if (ngx_http_opamp_ws_release(ctx) != NGX_OK) {
        ngx_http_opamp_ws_finalize(ctx);
        return;
    }

    /* a read timer that fired is handled there; input is read anyway */

    if (ev->write) {
        ngx_post_event(c->read, &ngx_posted_events);
    }

    ev->handler(ev);
}


/*
 * Lets the request go as an idle keep-alive connection does: the access
 * log line (status 101), the request pool, the client header buffers.
 * Input the agent sent right behind its handshake was copied at takeover.
 */

static ngx_int_t
ngx_http_opamp_ws_release(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_buf_t                 *b;
    ngx_chain_t               *cl;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_cleanup_t        *cln;
    ngx_http_connection_t     *hc;

    r = ctx->request;
    c = ctx->connection;
    hc = r->http_connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "opamp ws release request");

    /* the session outlives the request: its cleanup must not run now */

    for (cln = r->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_opamp_ws_cleanup && cln->data == ctx) {
            cln->handler = NULL;
        }
    }

    ngx_http_free_request(r, 0);

    ctx->request = NULL;

    /* ngx_http_free_request() marks the connection for its own closing */

    c->destroyed = 0;
    c->data = ctx;
    c->log->action = "serving OpAMP over WebSocket";

    for (cl = hc->free; cl; cl = cl->next) {
        (void) ngx_pfree(c->pool, cl->buf->start);
    }

    for (cl = hc->busy; cl; cl = cl->next) {
        (void) ngx_pfree(c->pool, cl->buf->start);
    }

    hc->free = NULL;
    hc->busy = NULL;
    hc->nbusy = 0;

    b = c->buffer;

    if (b && b->start && ngx_pfree(c->pool, b->start) == NGX_OK) {
        c->buffer = NULL;
    }

    c->read->handler = ngx_http_opamp_ws_read_handler;
    c->write->handler = ngx_http_opamp_ws_write_handler;

    /*
     * Without its request the connection is in neither stub_status's
     * Reading nor Writing: it waits for its agent as an idle keep-alive
     * connection does, and is counted as Waiting.  Not by making it
     * reusable: nginx would close reusable connections, agents among
     * them, whenever it runs short of free connections.
     */

#if (NGX_STAT_STUB)
    (void) ngx_atomic_fetch_add(ngx_stat_waiting, 1);
    ctx->waiting = 1;
#endif

    return NGX_OK;
}


static void
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
 * its lease in Redis is renewed, at most once per heartbeat interval.
 */

static void
ngx_http_opamp_ws_alive(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_msec_t  interval;

    interval = (ngx_msec_t) ctx->conf->heartbeat_interval * 1000;

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


static ngx_int_t
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

    ngx_http_opamp_ws_defer(ctx);

    return NGX_OK;
}


static void
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


static void
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

static void
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


static ngx_int_t
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

static ngx_int_t
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


/* whether the connection is done with: broken, or both closes went by */

static ngx_uint_t
ngx_http_opamp_ws_finished(ngx_http_opamp_ws_ctx_t *ctx)
{
    return ctx->error || (ctx->close_out && ctx->close_in);
}


/*
 * For the session's callbacks, which must not free the request under the
 * session's feet: a connection that is done with is closed from a posted
 * event instead.
 */

static void
ngx_http_opamp_ws_defer(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_connection_t  *c;

    if (ngx_http_opamp_ws_finished(ctx)) {
        c = ctx->connection;
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


static void
ngx_http_opamp_ws_finalize(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = ctx->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "opamp ws finalize");

    ngx_http_opamp_ws_cleanup(ctx);

    /*
     * A request still held (the 101 not all out) goes as
     * ngx_http_close_request() would let it go once the last reference
     * is gone: the access log line, the request pool.  Then the
     * connection, timers and posted events with it.  Not NGX_HTTP_CLOSE:
     * that marks the connection timed out, and reset_timedout_connection
     * would throw away a close frame still in the socket buffer.
     */

    if (ctx->request) {
        ngx_http_free_request(ctx->request, 0);
        ctx->request = NULL;
    }

    ngx_http_close_connection(c);
}


/* the connection pool goes: the context and the session with it */

static void
ngx_http_opamp_ws_free(void *data)
{
    ngx_free(data);
}


static void
ngx_http_opamp_ws_cleanup(void *data)
{
    ngx_http_opamp_ws_ctx_t *ctx = data;

    ngx_http_opamp_ws_out_t  *o, *next;

    if (ctx->cleaned) {
        return;
    }

    ctx->cleaned = 1;

#if (NGX_STAT_STUB)
    if (ctx->waiting) {
        (void) ngx_atomic_fetch_add(ngx_stat_waiting, -1);
        ctx->waiting = 0;
    }
#endif

    ngx_http_opamp_session_finalize(ctx->session);

    for (o = ctx->out; o; o = next) {
        next = o->next;
        ngx_free(o);
    }

    ctx->out = NULL;
    ctx->out_last = &ctx->out;
    ctx->queued = 0;

    if (ctx->msg) {
        ngx_free(ctx->msg);
        ctx->msg = NULL;
    }

    if (ctx->pending) {
        ngx_free(ctx->pending);
        ctx->pending = NULL;
    }

    if (ctx->control) {
        ngx_free(ctx->control);
        ctx->control = NULL;
    }

    /* anything the session still does finds the connection gone */

    ctx->error = 1;
}
