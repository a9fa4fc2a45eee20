/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_proto.h"


/*
 * protobuf-c turns every byte of input into at most a few dozen bytes of
 * structs (an empty sub-message of two bytes becomes a struct of ~50), so
 * a budget of 64 times the input plus a little keeps any valid message
 * while a crafted one cannot ask for gigabytes.
 */
#define NGX_HTTP_OPAMP_DECODE_FACTOR  64
#define NGX_HTTP_OPAMP_DECODE_SLACK   65536


static void *ngx_http_opamp_proto_alloc(void *data, size_t size);
static void ngx_http_opamp_proto_free(void *data, void *p);


ngx_http_opamp_a2s_t *
ngx_http_opamp_proto_decode_a2s(ngx_http_opamp_proto_alloc_t *a,
    u_char *data, size_t len, ngx_log_t *log)
{
    a->allocator.alloc = ngx_http_opamp_proto_alloc;
    a->allocator.free = ngx_http_opamp_proto_free;
    a->allocator.allocator_data = a;
    a->used = 0;
    a->limit = len * NGX_HTTP_OPAMP_DECODE_FACTOR
               + NGX_HTTP_OPAMP_DECODE_SLACK;
    a->log = log;
    a->exhausted = 0;

    return opamp__proto__v1__agent_to_server__unpack(&a->allocator, len,
                                                     data);
}


void
ngx_http_opamp_proto_free_a2s(ngx_http_opamp_proto_alloc_t *a,
    ngx_http_opamp_a2s_t *msg)
{
    if (msg) {
        opamp__proto__v1__agent_to_server__free_unpacked(msg, &a->allocator);
    }
}


ngx_int_t
ngx_http_opamp_proto_pack(const ProtobufCMessage *msg, ngx_str_t *out,
    ngx_log_t *log)
{
    size_t  size;

    size = protobuf_c_message_get_packed_size(msg);

    /* ngx_alloc(0) may return NULL; a zero-length message is valid */
    out->data = ngx_alloc(size ? size : 1, log);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    out->len = protobuf_c_message_pack(msg, out->data);

    return NGX_OK;
}


static void *
ngx_http_opamp_proto_alloc(void *data, size_t size)
{
    ngx_http_opamp_proto_alloc_t *a = data;

    size_t  *p;

    /* the size is kept in front of each block to return it to the budget */

    if (size > a->limit || a->used + size > a->limit) {
        a->exhausted = 1;
        return NULL;
    }

    p = ngx_alloc(size + sizeof(size_t), a->log);
    if (p == NULL) {
        return NULL;
    }

    *p = size;
    a->used += size;

    return p + 1;
}


static void
ngx_http_opamp_proto_free(void *data, void *p)
{
    ngx_http_opamp_proto_alloc_t *a = data;

    size_t  *sp;

    if (p == NULL) {
        return;
    }

    sp = (size_t *) p - 1;

    if (a->used >= *sp) {
        a->used -= *sp;
    }

    ngx_free(sp);
}
