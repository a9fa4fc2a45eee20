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


/*
 * Limits on what one protobuf message may hold, checked on the wire format
 * before protobuf-c allocates anything or recurses: protobuf-c's unpack
 * recurses once per level of nesting and allocates per element, so a
 * small message could otherwise exhaust a worker's stack or memory.
 */

/* levels of nested messages (AnyValue in AnyValue, health in health, ...),
 * as protobuf's own runtimes default to */
#define NGX_HTTP_OPAMP_PROTO_MAX_DEPTH     100

/* sub-messages and repeated entries in one message: a real Collector's
 * full status holds a few thousand, the components list most of them */
#define NGX_HTTP_OPAMP_PROTO_MAX_ELEMENTS  65536


/* the top-level fields of an AgentToServer, as the wire scan found them */
#define NGX_HTTP_OPAMP_A2S_FIELDS          16

typedef struct {
    /* the field's bytes (its payload, without tag and length) as received;
     * if a singular message field came more than once, at any level
     * (protobuf merges the occurrences), they point into merged, the
     * message with each such field merged into one occurrence */
    ngx_str_t            field[NGX_HTTP_OPAMP_A2S_FIELDS];
    ngx_uint_t           count[NGX_HTTP_OPAMP_A2S_FIELDS];    /* as sent */
    ngx_str_t            merged;

    /* the message without the fields the module stores without reading
     * (effective_config, available_components): what protobuf-c decodes */
    ngx_str_t            view;

    ngx_uint_t           elements;
    const char          *error;      /* why the scan refused the message */
    unsigned             limit:1;    /* well-formed, but over a limit */
} ngx_http_opamp_a2s_scan_t;


/*
 * Checks a message of type d on the wire: well-formed, wire types that
 * match the fields, valid UTF-8 in string fields, nesting within
 * NGX_HTTP_OPAMP_PROTO_MAX_DEPTH and elements within
 * NGX_HTTP_OPAMP_PROTO_MAX_ELEMENTS.  NGX_ERROR with *error set if not.
 * Never recurses deeper than the depth limit and allocates nothing.
 */
ngx_int_t ngx_http_opamp_proto_check(const ProtobufCMessageDescriptor *d,
    u_char *data, size_t len, const char **error);

/*
 * The wire scan of an AgentToServer: the checks above, repeated
 * occurrences merged, the top-level fields located and the view made
 * (from ngx_alloc(); the caller frees the view and the merge with
 * ngx_http_opamp_proto_scan_free()).  Linear in the message's size.
 */
ngx_int_t ngx_http_opamp_proto_scan_a2s(ngx_http_opamp_a2s_scan_t *scan,
    u_char *data, size_t len, ngx_log_t *log);
void ngx_http_opamp_proto_scan_free(ngx_http_opamp_a2s_scan_t *scan);

/*
 * Decodes a message of type d that came from outside the worker (Redis, an
 * admin upload) after ngx_http_opamp_proto_check(), repeated occurrences
 * merged as the scan does, and with a memory budget; the result is freed
 * with protobuf_c_message_free_unpacked(m, NULL).  NULL and *error set
 * when it is refused.
 */
ProtobufCMessage *ngx_http_opamp_proto_unpack(
    const ProtobufCMessageDescriptor *d, u_char *data, size_t len,
    const char **error);


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
