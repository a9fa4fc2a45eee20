/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Protobuf helpers around the protoc-c code of proto/: decoding with a
 * memory budget (a hostile message cannot make the worker allocate without
 * bound) and packing messages into worker-owned buffers.
 */

#ifndef _NGX_HTTP_OPAMP_PROTO_H_INCLUDED_
#define _NGX_HTTP_OPAMP_PROTO_H_INCLUDED_


#include "ngx_http_opamp.h"
#include <opamp/v1/opamp.pb-c.h>


typedef Opamp__Proto__V1__AgentToServer  ngx_http_opamp_a2s_t;
typedef Opamp__Proto__V1__ServerToAgent  ngx_http_opamp_s2a_t;


/* the budget-limited allocator of one decode */
typedef struct {
    ProtobufCAllocator   allocator;
    size_t               used;
    size_t               limit;
    ngx_log_t           *log;
    unsigned             exhausted:1;
} ngx_http_opamp_proto_alloc_t;


/*
 * Decodes an AgentToServer.  The allocator limits the memory the decoded
 * tree may take; NULL means the bytes are not a valid AgentToServer or the
 * budget ran out (a->exhausted tells which).
 */
ngx_http_opamp_a2s_t *ngx_http_opamp_proto_decode_a2s(
    ngx_http_opamp_proto_alloc_t *a, u_char *data, size_t len,
    ngx_log_t *log);

void ngx_http_opamp_proto_free_a2s(ngx_http_opamp_proto_alloc_t *a,
    ngx_http_opamp_a2s_t *msg);

/* packs any message into memory from ngx_alloc(); the caller ngx_free()s
 * out->data; NGX_ERROR on allocation failure */
ngx_int_t ngx_http_opamp_proto_pack(const ProtobufCMessage *msg,
    ngx_str_t *out, ngx_log_t *log);


#endif /* _NGX_HTTP_OPAMP_PROTO_H_INCLUDED_ */
