/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_http.h"
#include "ngx_http_opamp_gzip.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_uid.h"

#include <zlib.h>


/* a plain HTTP agent that hit an unavailable store retries after this */
#define NGX_HTTP_OPAMP_HTTP_RETRY_AFTER  "30"


typedef struct {
    ngx_http_opamp_session_t   *session;
    ngx_http_opamp_log_t        log;
    ngx_int_t                   rc;       /* of sending the response */
    unsigned                    gzip:1;   /* the body is gzipped */
    unsigned                    done:1;   /* the response went out */
} ngx_http_opamp_http_ctx_t;


static void ngx_http_opamp_http_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_opamp_http_collect(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_opamp_http_gzip(ngx_http_request_t *r,
    u_char *data, size_t len, ngx_str_t *out);
static ngx_int_t ngx_http_opamp_http_send(ngx_http_opamp_session_t *s,
    u_char *data, size_t len);
static ngx_int_t ngx_http_opamp_http_output(ngx_http_opamp_session_t *s,
    ngx_http_request_t *r, u_char *data, size_t len);
static void ngx_http_opamp_http_resume(ngx_http_opamp_session_t *s);
static void ngx_http_opamp_http_close(ngx_http_opamp_session_t *s,
    ngx_uint_t code, const char *reason);
static void ngx_http_opamp_http_cleanup(void *data);
static ngx_int_t ngx_http_opamp_http_accepts_gzip(ngx_http_request_t *r);
static ngx_uint_t ngx_http_opamp_http_qvalue(u_char *p, u_char *last);
static ngx_table_elt_t *ngx_http_opamp_http_header_in(ngx_http_request_t *r,
    const char *name, size_t len);
static ngx_int_t ngx_http_opamp_http_header_out(ngx_http_request_t *r,
    const char *name, const char *value);


ngx_int_t
ngx_http_opamp_http_handler(ngx_http_request_t *r)
{
    ngx_int_t                   rc;
    ngx_str_t                  *type;
    const char                 *reason;
    ngx_table_elt_t            *h;
    ngx_http_cleanup_t         *cln;
    ngx_http_opamp_session_t   *s;
    ngx_http_opamp_http_ctx_t  *ctx;
    ngx_http_opamp_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    /* the spec's one media type; parameters such as charset are ignored */

    if (r->headers_in.content_type == NULL) {
        return ngx_http_opamp_http_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                   "Content-Type must be application/x-protobuf");
    }

    type = &r->headers_in.content_type->value;

    if (type->len < sizeof("application/x-protobuf") - 1
        || ngx_strncasecmp(type->data, (u_char *) "application/x-protobuf",
                           sizeof("application/x-protobuf") - 1) != 0
        || (type->len > sizeof("application/x-protobuf") - 1
            && type->data[sizeof("application/x-protobuf") - 1] != ';'
            && type->data[sizeof("application/x-protobuf") - 1] != ' '))
    {
        return ngx_http_opamp_http_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                   "Content-Type must be application/x-protobuf");
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_opamp_http_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h = ngx_http_opamp_http_header_in(r, "Content-Encoding",
                                      sizeof("Content-Encoding") - 1);
    if (h) {
        if (h->value.len == 4
            && ngx_strncasecmp(h->value.data, (u_char *) "gzip", 4) == 0)
        {
            ctx->gzip = 1;

        } else if (!(h->value.len == 8
                     && ngx_strncasecmp(h->value.data,
                                        (u_char *) "identity", 8) == 0))
        {
            return ngx_http_opamp_http_error(r,
                       NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                       "Content-Encoding must be gzip or identity");
        }
    }

    if (r->headers_in.content_length_n > (off_t) olcf->max_message_size) {
        return ngx_http_opamp_http_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                   "request body exceeds opamp_max_message_size");
    }

    s = ngx_http_opamp_session_create(r,
                                      NGX_HTTP_OPAMP_TRANSPORT_HTTP);
    if (s == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* who the agent is, by what nginx verified (docs/security.md) */

    rc = ngx_http_opamp_identity_eval(r, &s->identity, &reason);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_opamp_http_error(r, NGX_HTTP_FORBIDDEN, reason);
    }

    /* the credential, with opamp_enrollment_token (docs/security.md):
     * none or a malformed one is refused before the body is read */

    rc = ngx_http_opamp_token_eval(r, s->identity, &s->token, &reason);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_TOKEN_REFUSALS);
        return ngx_http_opamp_http_error(r, NGX_HTTP_UNAUTHORIZED, reason);
    }

    h = ngx_http_opamp_http_header_in(r, "OpAMP-Instance-UID",
                                      sizeof("OpAMP-Instance-UID") - 1);
    if (h) {
        if (ngx_http_opamp_uid_parse(s->header_uid, h->value.data,
                                     h->value.len)
            != 0)
        {
            return ngx_http_opamp_http_error(r, NGX_HTTP_BAD_REQUEST,
                       "OpAMP-Instance-UID is not a UUID");
        }

        s->has_header_uid = 1;
    }

    s->send = ngx_http_opamp_http_send;
    s->resume = ngx_http_opamp_http_resume;
    s->close = ngx_http_opamp_http_close;
    s->transport_data = ctx;
    s->log = &ctx->log;
    ctx->session = s;
    ctx->rc = NGX_ERROR;

    ngx_http_set_ctx(r, ctx, ngx_http_opamp_module);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_opamp_http_cleanup;
    cln->data = s;

    rc = ngx_http_read_client_request_body(r, ngx_http_opamp_http_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_opamp_http_body(ngx_http_request_t *r)
{
    ngx_int_t                   rc;
    ngx_str_t                   body, plain;
    ngx_http_opamp_http_ctx_t  *ctx;
    ngx_http_opamp_loc_conf_t  *olcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_opamp_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (r->request_body == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_opamp_http_collect(r, &body);
    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (body.len > olcf->max_message_size) {
        ngx_http_finalize_request(r, ngx_http_opamp_http_error(r,
                                  NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                  "request body exceeds "
                                  "opamp_max_message_size"));
        return;
    }

    if (ctx->gzip) {
        rc = ngx_http_opamp_gunzip(r->pool, r->connection->log, &body, &plain,
                                   olcf->max_message_size);

        if (rc == NGX_DECLINED) {
            ngx_http_finalize_request(r, ngx_http_opamp_http_error(r,
                                      NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "gunzipped request body exceeds "
                                      "opamp_max_message_size"));
            return;
        }

        if (rc == NGX_ABORT) {
            ngx_http_finalize_request(r, ngx_http_opamp_http_error(r,
                                      NGX_HTTP_BAD_REQUEST,
                                      "request body is not valid gzip"));
            return;
        }

        if (rc != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        body = plain;
    }

    if (ngx_http_opamp_session_message(ctx->session, body.data, body.len)
        != NGX_OK)
    {
        /* no reply, or one that could not be built: the session will not
         * resume the request, so it ends here */
        ngx_http_finalize_request(r, ctx->done
                                     ? ctx->rc
                                     : NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


/* the body as one piece of memory, wherever nginx buffered it */

static ngx_int_t
ngx_http_opamp_http_collect(ngx_http_request_t *r, ngx_str_t *body)
{
    off_t         len;
    u_char       *p;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    cl = r->request_body->bufs;

    if (cl == NULL) {
        ngx_str_set(body, "");
        return NGX_OK;
    }

    if (cl->next == NULL && !cl->buf->in_file) {
        body->data = cl->buf->pos;
        body->len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? b->file_last - b->file_pos : b->last - b->pos;
    }

    p = ngx_pnalloc(r->pool, len ? len : 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body->data = p;
    body->len = len;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        /* a body larger than client_body_buffer_size went to a file */

        n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                          b->file_pos);
        if (n != b->file_last - b->file_pos) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p += n;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_http_send(ngx_http_opamp_session_t *s, u_char *data,
    size_t len)
{
    ngx_int_t                   rc;
    ngx_http_request_t         *r;
    ngx_http_opamp_http_ctx_t  *ctx;

    r = s->request;
    ctx = s->transport_data;

    if (ctx->done) {
        /* one ServerToAgent per request; a second one waits for a poll */
        return NGX_DECLINED;
    }

    ctx->done = 1;

    if (len > s->conf->max_message_size) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "opamp: ServerToAgent of %uz bytes exceeds "
                      "opamp_max_message_size, not sent", len);
        ctx->rc = ngx_http_opamp_http_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                      "response exceeds opamp_max_message_size");
        return NGX_DECLINED;
    }

    rc = ngx_http_opamp_http_output(s, r, data, len);

    if (rc == NGX_ERROR) {
        /* nothing went out yet: whoever finalizes the request says 500 */
        ctx->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return rc;
}


/* the reply's headers and body; NGX_ERROR before anything was sent */

static ngx_int_t
ngx_http_opamp_http_output(ngx_http_opamp_session_t *s,
    ngx_http_request_t *r, u_char *data, size_t len)
{
    ngx_int_t                   rc;
    ngx_buf_t                  *b;
    ngx_str_t                   body;
    ngx_chain_t                 out;
    ngx_http_opamp_http_ctx_t  *ctx;

    ctx = s->transport_data;

#if (NGX_HTTP_OPAMP_FAULTS)
    if (ngx_http_opamp_fault("http_reply")) {
        return NGX_ERROR;
    }
#endif

    if (s->unavailable) {
        r->headers_out.status = NGX_HTTP_SERVICE_UNAVAILABLE;

        if (ngx_http_opamp_http_header_out(r, "Retry-After",
                                           NGX_HTTP_OPAMP_HTTP_RETRY_AFTER)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (s->forbidden) {
        r->headers_out.status = NGX_HTTP_FORBIDDEN;

    } else if (s->bad_request) {
        r->headers_out.status = NGX_HTTP_BAD_REQUEST;

    } else {
        r->headers_out.status = NGX_HTTP_OK;
    }

    body.data = data;
    body.len = len;

    if (len >= s->conf->gzip_min_length
        && ngx_http_opamp_http_accepts_gzip(r) == NGX_OK)
    {
        if (ngx_http_opamp_http_gzip(r, data, len, &body) != NGX_OK) {
            return NGX_ERROR;
        }

        r->headers_out.content_encoding = ngx_list_push(
                                                  &r->headers_out.headers);
        if (r->headers_out.content_encoding == NULL) {
            return NGX_ERROR;
        }

        r->headers_out.content_encoding->hash = 1;
        ngx_str_set(&r->headers_out.content_encoding->key,
                    "Content-Encoding");
        ngx_str_set(&r->headers_out.content_encoding->value, "gzip");

    } else {
        b = NULL;

        body.data = ngx_pnalloc(r->pool, len ? len : 1);
        if (body.data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(body.data, data, len);
    }

    if (ngx_http_opamp_http_header_out(r, "Vary", "Accept-Encoding")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_set(&r->headers_out.content_type, "application/x-protobuf");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = body.len;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body.data;
    b->last = body.data + body.len;
    b->memory = body.len ? 1 : 0;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ctx->rc = rc;
        return NGX_OK;
    }

    ctx->rc = ngx_http_output_filter(r, &out);

    return NGX_OK;
}


static void
ngx_http_opamp_http_resume(ngx_http_opamp_session_t *s)
{
    ngx_connection_t           *c;
    ngx_http_opamp_http_ctx_t  *ctx;

    ctx = s->transport_data;
    c = s->connection;

    ngx_http_finalize_request(s->request, ctx->done ? ctx->rc
                                          : NGX_HTTP_INTERNAL_SERVER_ERROR);

    /*
     * The reply usually comes from a Redis callback, not from an event of
     * this connection: what finalizing posted (a terminated request after
     * a failed write, say) must run now, or nobody runs it and the
     * connection stays open.
     */

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_opamp_http_close(ngx_http_opamp_session_t *s, ngx_uint_t code,
    const char *reason)
{
    /* nothing to close: the reply ends the exchange */
}


static void
ngx_http_opamp_http_cleanup(void *data)
{
    ngx_http_opamp_session_t *s = data;

    ngx_http_opamp_session_finalize(s);
}


static ngx_int_t
ngx_http_opamp_http_gzip(ngx_http_request_t *r, u_char *data, size_t len,
    ngx_str_t *out)
{
    size_t    bound;
    z_stream  zs;

    ngx_memzero(&zs, sizeof(z_stream));

    zs.zalloc = ngx_http_opamp_gzip_zalloc;
    zs.zfree = ngx_http_opamp_gzip_zfree;
    zs.opaque = r->pool;

    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS,
                     8, Z_DEFAULT_STRATEGY)
        != Z_OK)
    {
        return NGX_ERROR;
    }

    /* deflateBound() does not count the gzip wrapper: 18 bytes more */

    bound = deflateBound(&zs, len) + 18;

    out->data = ngx_pnalloc(r->pool, bound);
    if (out->data == NULL) {
        deflateEnd(&zs);
        return NGX_ERROR;
    }

    zs.next_in = data;
    zs.avail_in = len;
    zs.next_out = out->data;
    zs.avail_out = bound;

    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        deflateEnd(&zs);
        return NGX_ERROR;
    }

    out->len = zs.total_out;

    deflateEnd(&zs);

    return NGX_OK;
}


/* a qvalue ("0", "0.5", "1.000") in thousandths; a bad one counts as 0 */

static ngx_uint_t
ngx_http_opamp_http_qvalue(u_char *p, u_char *last)
{
    ngx_uint_t  q, scale;

    if (p == last || (*p != '0' && *p != '1')) {
        return 0;
    }

    q = (*p++ - '0') * 1000;

    if (p < last && *p == '.') {
        p++;

        for (scale = 100; p < last && *p >= '0' && *p <= '9' && scale;
             p++, scale /= 10)
        {
            q += (*p - '0') * scale;
        }
    }

    return q > 1000 ? 0 : q;
}


static ngx_int_t
ngx_http_opamp_http_accepts_gzip(ngx_http_request_t *r)
{
    u_char            *p, *last;
    ngx_table_elt_t   *ae;

    ae = ngx_http_opamp_http_header_in(r, "Accept-Encoding",
                                       sizeof("Accept-Encoding") - 1);
    if (ae == NULL) {
        return NGX_DECLINED;
    }

    /* "gzip" as a token, not refused with q=0 */

    p = ae->value.data;
    last = p + ae->value.len;

    while ((p = ngx_strlcasestrn(p, last, (u_char *) "gzip", 4 - 1))
           != NULL)
    {
        if ((p == ae->value.data || p[-1] == ',' || p[-1] == ' ')
            && (p + 4 == last || p[4] == ',' || p[4] == ' ' || p[4] == ';'))
        {
            p += 4;

            /* RFC 9110: gzip [ OWS ";" OWS "q=" qvalue ], q=0 refuses */

            while (p < last && (*p == ' ' || *p == '\t')) {
                p++;
            }

            if (p == last || *p != ';') {
                return NGX_OK;
            }

            p++;

            while (p < last && (*p == ' ' || *p == '\t')) {
                p++;
            }

            if (p + 2 > last || (p[0] | 0x20) != 'q' || p[1] != '=') {
                return NGX_OK;
            }

            return ngx_http_opamp_http_qvalue(p + 2, last) > 0
                   ? NGX_OK : NGX_DECLINED;
        }

        p += 4;
    }

    return NGX_DECLINED;
}


static ngx_table_elt_t *
ngx_http_opamp_http_header_in(ngx_http_request_t *r, const char *name,
    size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


static ngx_int_t
ngx_http_opamp_http_header_out(ngx_http_request_t *r, const char *name,
    const char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return NGX_OK;
}


ngx_int_t
ngx_http_opamp_http_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    size_t        len;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "opamp: %ui response: %s", status, reason);

    /* refused before a message was read: a limit (413), a method, media
     * type, header or handshake the protocol does not allow, gzip that
     * does not inflate */
    if (status < NGX_HTTP_INTERNAL_SERVER_ERROR
        || status == NGX_HTTP_SERVICE_UNAVAILABLE)
    {
        ngx_http_opamp_metrics_error(status == NGX_HTTP_SERVICE_UNAVAILABLE,
                                     reason);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (status == NGX_HTTP_NOT_ALLOWED
        && ngx_http_opamp_http_header_out(r, "Allow", "GET, POST") != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* only opamp_enrollment_token refuses with 401: RFC 6750 names the
     * scheme the credential is to come in */

    if (status == NGX_HTTP_UNAUTHORIZED
        && ngx_http_opamp_http_header_out(r, "WWW-Authenticate", "Bearer")
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(reason);

    b = ngx_create_temp_buf(r->pool, len + sizeof("opamp: " CRLF) - 1);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "opamp: ", sizeof("opamp: ") - 1);
    b->last = ngx_cpymem(b->last, reason, len);
    *b->last++ = CR; *b->last++ = LF;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    /* nginx would replace the body of an error status with its own page */
    r->err_status = 0;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the access log's facts of a plain HTTP message, NULL if none */

ngx_http_opamp_log_t *
ngx_http_opamp_http_log(ngx_http_request_t *r)
{
    ngx_http_opamp_loc_conf_t  *olcf;
    ngx_http_opamp_http_ctx_t  *ctx;

    /* the module's context is another one in an admin location */

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (r->method != NGX_HTTP_POST || !olcf->enable) {
        return NULL;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_opamp_module);

    return ctx ? &ctx->log : NULL;
}
