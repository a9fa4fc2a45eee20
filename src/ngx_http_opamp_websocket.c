/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * OpAMP over WebSocket (RFC 6455): the upgrade and the connection's end.
 * After the 101 answer the connection belongs to the WebSocket files: its
 * read and write handlers are replaced, as ngx_http_upstream does for an
 * upgraded connection.  Once the 101 is written the request itself is
 * let go (access log line, request pool, header buffers), as an idle
 * keep-alive connection lets its request go: an agent may stay connected
 * for days and needs nothing of it.
 *
 * Memory: a connection that waits for its agent holds only its context
 * and session, allocated once from the connection pool.  Input is read
 * into one buffer per worker, a message under way is copied into a buffer
 * taken with ngx_alloc() and freed when the message has been handed to
 * the session, and every queued frame is its own ngx_alloc() block, freed
 * once written.  Nothing per message comes from the connection pool.
 *
 * This file checks the handshake, answers 101, takes the connection over,
 * lets the request go and, at the end, closes the connection and frees
 * what it holds.  What the agent sends is read and parsed in
 * ngx_http_opamp_websocket_read.c; what goes to the agent is queued and
 * written, and the close handshake begun, in
 * ngx_http_opamp_websocket_write.c; what they share is in
 * ngx_http_opamp_websocket_conn.h.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_http.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_websocket.h"
#include "ngx_http_opamp_websocket_conn.h"
#include "ngx_http_opamp_websocket_read.h"
#include "ngx_http_opamp_websocket_write.h"
#include "ngx_http_opamp_wsframe.h"

#include <ngx_sha1.h>


#define NGX_HTTP_OPAMP_WS_UPGRADE_REQUIRED  426

#define NGX_HTTP_OPAMP_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
static void ngx_http_opamp_ws_cleanup(void *data);


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
    ngx_http_opamp_identity_t *identity;
    ngx_http_opamp_token_t    *token;

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

    /* who the agent is, by what nginx verified (docs/security.md) */

    rc = ngx_http_opamp_identity_eval(r, &identity, &reason);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_opamp_http_error(r, NGX_HTTP_FORBIDDEN, reason);
    }

    /* the credential, with opamp_enrollment_token (docs/security.md):
     * none or a malformed one is refused at the handshake; whether it is
     * the agent's token, at each message that takes the long way */

    rc = ngx_http_opamp_token_eval(r, identity, &token, &reason);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_TOKEN_REFUSALS);
        return ngx_http_opamp_http_error(r, NGX_HTTP_UNAUTHORIZED, reason);
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
                     + sizeof(ngx_http_opamp_session_t)
                     + (token ? sizeof(ngx_http_opamp_token_t) : 0)
                     + (identity ? identity->size : 0), r->connection->log);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pcln->handler = ngx_http_opamp_ws_free;
    pcln->data = ctx;

    s = (ngx_http_opamp_session_t *) &ctx[1];
    ngx_http_opamp_session_init(s, r, NGX_HTTP_OPAMP_TRANSPORT_WS);

    /* the token's copy first: it is of fixed size, so the identity's
     * block after it stays aligned as ngx_calloc() aligned s */

    if (token) {
        s->token = (ngx_http_opamp_token_t *) &s[1];
        *s->token = *token;
    }

    if (identity) {
        s->identity = ngx_http_opamp_identity_copy(identity,
                          (u_char *) &s[1]
                          + (token ? sizeof(ngx_http_opamp_token_t) : 0));
    }

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
    s->log = &ctx->log;

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
 * The WebSocket handlers take the connection over once the 101 is out.
 * The request stays until the agent's first message is answered, so that
 * its access log line names the agent ($opamp_instance_uid and the rest):
 * see ngx_http_opamp_ws_log_request().
 */

static ngx_int_t
ngx_http_opamp_ws_release(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = ctx->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "opamp ws takeover");

    c->data = ctx;
    c->log->action = "serving OpAMP over WebSocket";

    c->read->handler = ngx_http_opamp_ws_read_handler;
    c->write->handler = ngx_http_opamp_ws_write_handler;

    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_WS_OPENED);
    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_WS_OPEN);
    ctx->metered = 1;

    return NGX_OK;
}


/*
 * Lets the request go as an idle keep-alive connection does: the access
 * log line (status 101, and the agent of the first message), the request
 * pool, the client header buffers.  Called once the first reply is
 * queued; input the agent sent right behind its handshake was copied at
 * takeover.
 */

void
ngx_http_opamp_ws_log_request(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_buf_t                 *b;
    ngx_chain_t               *cl;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_cleanup_t        *cln;
    ngx_http_connection_t     *hc;

    r = ctx->request;

    if (r == NULL || ctx->http_pending) {
        return;
    }

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
}


/* the access log's facts of a WebSocket handshake, NULL if none */

ngx_http_opamp_log_t *
ngx_http_opamp_ws_log(ngx_http_request_t *r)
{
    ngx_http_opamp_ws_ctx_t    *ctx;
    ngx_http_opamp_loc_conf_t  *olcf;

    /* the module's context is another one in an admin location */

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (r->method != NGX_HTTP_GET || !olcf->enable) {
        return NULL;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_opamp_module);

    return ctx ? &ctx->log : NULL;
}


/* whether the connection is done with: broken, or both closes went by */

ngx_uint_t
ngx_http_opamp_ws_finished(ngx_http_opamp_ws_ctx_t *ctx)
{
    return ctx->error || (ctx->close_out && ctx->close_in);
}


/*
 * For the session's callbacks, which must not free the request under the
 * session's feet: a connection that is done with is closed from a posted
 * event instead.
 */

void
ngx_http_opamp_ws_defer(ngx_http_opamp_ws_ctx_t *ctx)
{
    ngx_connection_t  *c;

    if (ngx_http_opamp_ws_finished(ctx)) {
        c = ctx->connection;
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


void
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

    if (ctx->metered) {
        ngx_http_opamp_metrics_ws_closed(ctx->close_code);
        ctx->metered = 0;
    }

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
