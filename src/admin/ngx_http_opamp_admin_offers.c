/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's offers to agents: connection settings
 * (ConnectionSettingsOffers) and packages (PackagesAvailable), for the
 * fleet or one agent, PUT as JSON or protobuf and shown as JSON.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_proto.h"

#include <jansson.h>

#include "opamp/v1/opamp.pb-c.h"


static ngx_int_t ngx_http_opamp_admin_settings_put(
    ngx_http_opamp_admin_ctx_t *ctx,
    Opamp__Proto__V1__ConnectionSettingsOffers *cso);


/*
 * PUT connection-settings, packages: a ConnectionSettingsOffers or a
 * PackagesAvailable (with its all_packages_hash), as JSON in the shape GET
 * shows, or as the protobuf message itself with
 * Content-Type: application/x-protobuf.  It must decode either way.
 */

ngx_int_t
ngx_http_opamp_admin_offer_put(ngx_http_opamp_admin_ctx_t *ctx)
{
    const char                           *reason;
    u_char                               *p;
    size_t                                len;
    json_t                               *root;
    ngx_str_t                             hash, *type;
    const char                           *err;
    json_error_t                          error;
    ngx_http_request_t                   *r;
    ProtobufCMessage                     *m;
    const ProtobufCMessageDescriptor     *d;
    Opamp__Proto__V1__PackagesAvailable  *pa;

    r = ctx->request;

    d = (ctx->op == NGX_HTTP_OPAMP_ADMIN_PACKAGES)
        ? &opamp__proto__v1__packages_available__descriptor
        : &opamp__proto__v1__connection_settings_offers__descriptor;

    type = r->headers_in.content_type ? &r->headers_in.content_type->value
                                      : NULL;

    if (type && type->len >= sizeof("application/x-protobuf") - 1
        && ngx_strncasecmp(type->data, (u_char *) "application/x-protobuf",
                           sizeof("application/x-protobuf") - 1) == 0)
    {
        m = ngx_http_opamp_proto_unpack(d, ctx->body.data, ctx->body.len,
                                        &reason);
        if (m == NULL) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                       ctx->op == NGX_HTTP_OPAMP_ADMIN_PACKAGES
                       ? "the body is not a PackagesAvailable message"
                       : "the body is not a ConnectionSettingsOffers "
                         "message");
        }

    } else {
        root = json_loadb((const char *) ctx->body.data, ctx->body.len,
                          JSON_REJECT_DUPLICATES, &error);
        if (root == NULL) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "invalid JSON");
        }

        err = "invalid message";
        m = ngx_http_opamp_json_to_message(root, d, &err);
        json_decref(root);

        if (m == NULL) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST, err);
        }

        /* what is stored is the protobuf message, as for any writer */

        len = protobuf_c_message_get_packed_size(m);
        p = ngx_pnalloc(r->pool, len + 1);
        if (p == NULL) {
            protobuf_c_message_free_unpacked(m, NULL);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->body.data = p;
        ctx->body.len = protobuf_c_message_pack(m, p);
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_SETTINGS) {
        return ngx_http_opamp_admin_settings_put(ctx,
                   (Opamp__Proto__V1__ConnectionSettingsOffers *) m);
    }

    pa = (Opamp__Proto__V1__PackagesAvailable *) m;

    if (pa->all_packages_hash.len == 0 || pa->all_packages_hash.len > 64) {
        protobuf_c_message_free_unpacked(m, NULL);
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                   "PackagesAvailable needs all_packages_hash (1 to 64 "
                   "bytes)");
    }

    p = ngx_pnalloc(r->pool, 2 * pa->all_packages_hash.len);
    if (p == NULL) {
        protobuf_c_message_free_unpacked(m, NULL);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    hash.data = p;
    hash.len = ngx_hex_dump(p, pa->all_packages_hash.data,
                            pa->all_packages_hash.len) - p;

    protobuf_c_message_free_unpacked(m, NULL);

    return ngx_http_opamp_admin_push(ctx, "offer", &ctx->body, &hash);
}


/*
 * PUT connection-settings: an opamp part needs a destination_endpoint, a
 * WebSocket or HTTP URL (the spec: it MUST be one and non-empty; the
 * supervisor refuses anything else, and would reconnect for nothing),
 * and for a TLS one the CA certificate that verifies it.
 * The offer's hash field is set anew at every PUT (the time and the
 * worker), so that a PUT of the same settings is offered again: the
 * scripts offer settings once per content, which includes that field.
 */

static ngx_int_t
ngx_http_opamp_admin_settings_put(ngx_http_opamp_admin_ctx_t *ctx,
    Opamp__Proto__V1__ConnectionSettingsOffers *cso)
{
    u_char              *p, id[NGX_INT64_LEN * 2 + NGX_INT_T_LEN + 3];
    size_t               len;
    ngx_uint_t           i;
    ngx_time_t          *tp;
    ProtobufCBinaryData  hash;
    const char          *url;
    ngx_http_request_t  *r;

    static ngx_uint_t    puts;

    static const char   *schemes[] = {
        "ws://", "wss://", "http://", "https://"
    };

    r = ctx->request;

    if (cso->opamp) {
        url = cso->opamp->destination_endpoint;

        for (i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
            len = ngx_strlen(schemes[i]);

            if (url && ngx_strlen(url) > len
                && ngx_strncasecmp((u_char *) url, (u_char *) schemes[i],
                                   len) == 0)
            {
                break;
            }
        }

        if (i == sizeof(schemes) / sizeof(schemes[0])) {
            protobuf_c_message_free_unpacked(&cso->base, NULL);
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                       "opamp needs destination_endpoint, a ws://, wss://, "
                       "http:// or https:// URL");
        }

        /*
         * The supervisor builds its whole server connection from the
         * offer: without a certificate it turns TLS verification off
         * (docs/security.md).  A TLS endpoint's offer carries the CA
         * that verifies it.
         */

        if ((i == 1 || i == 3)
            && (cso->opamp->certificate == NULL
                || cso->opamp->certificate->ca_cert.len == 0))
        {
            protobuf_c_message_free_unpacked(&cso->base, NULL);
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                       "an opamp offer to a wss:// or https:// endpoint "
                       "needs certificate.ca_cert: an agent that accepts "
                       "an offer without a certificate stops verifying the "
                       "server's TLS certificate");
        }
    }

    /* whatever hash the body had is replaced; the decoder's bytes are
     * put back before the message is freed */

    hash = cso->hash;

    tp = ngx_timeofday();
    p = ngx_sprintf(id, "%T%03M:%P:%ui", tp->sec, tp->msec, ngx_pid,
                    puts++);

    cso->hash.data = id;
    cso->hash.len = p - id;

    len = protobuf_c_message_get_packed_size(&cso->base);
    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        cso->hash = hash;
        protobuf_c_message_free_unpacked(&cso->base, NULL);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body.data = p;
    ctx->body.len = protobuf_c_message_pack(&cso->base, p);

    cso->hash = hash;
    protobuf_c_message_free_unpacked(&cso->base, NULL);

    return ngx_http_opamp_admin_push(ctx, "set", &ctx->body, NULL);
}


/* an offer PUT, or GET: the stored message as JSON; DELETE and an unknown
 * agent are answered by ngx_http_opamp_admin.c */

ngx_int_t
ngx_http_opamp_admin_offer_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    const char             *reason;
    size_t                  i;
    redisReply             *e;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;
    ProtobufCMessage       *m;

    r = ctx->request;

    ngx_http_opamp_json_init(&j, r->pool);

    if (r->method & NGX_HTTP_PUT) {
        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "stored");
        ngx_http_opamp_json_literal(&j, "true");
        ngx_http_opamp_json_close(&j, '}');
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
    }

    /* GET */

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_SETTINGS) {
        m = NULL;

        if (reply->type == REDIS_REPLY_STRING) {
            m = ngx_http_opamp_proto_unpack(
                    &opamp__proto__v1__connection_settings_offers__descriptor,
                    (u_char *) reply->str, reply->len, &reason);
        }

    } else {
        m = NULL;

        for (i = 0; reply->type == REDIS_REPLY_ARRAY
                    && i + 1 < reply->elements; i += 2)
        {
            e = reply->element[i];

            if (e->len == 5 && ngx_strncmp(e->str, "offer", 5) == 0) {
                e = reply->element[i + 1];
                m = ngx_http_opamp_proto_unpack(
                        &opamp__proto__v1__packages_available__descriptor,
                        (u_char *) e->str, e->len, &reason);
            }
        }
    }

    if (m == NULL) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "nothing stored");
    }

    ngx_http_opamp_json_message(&j, m);
    protobuf_c_message_free_unpacked(m, NULL);

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}
