/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * JSON output for the admin API: a growing buffer in a request pool that
 * places commas itself, and a generic protobuf-c message encoder driven by
 * the message descriptors (proto3 JSON mapping, with bytes shown as hex,
 * text or base64 for people to read).
 */

#ifndef _NGX_HTTP_OPAMP_JSON_H_INCLUDED_
#define _NGX_HTTP_OPAMP_JSON_H_INCLUDED_


#include "ngx_http_opamp.h"
#include <protobuf-c/protobuf-c.h>
#include <jansson.h>


typedef struct {
    ngx_pool_t     *pool;
    u_char         *data;
    size_t          len;
    size_t          size;
    unsigned        comma:1;     /* the next value needs a comma first */
    unsigned        failed:1;    /* out of memory: the output is useless */
} ngx_http_opamp_json_t;


void ngx_http_opamp_json_init(ngx_http_opamp_json_t *j, ngx_pool_t *pool);

void ngx_http_opamp_json_begin(ngx_http_opamp_json_t *j, u_char c);
void ngx_http_opamp_json_end(ngx_http_opamp_json_t *j, u_char c);
void ngx_http_opamp_json_key(ngx_http_opamp_json_t *j, const char *key,
    size_t len);
void ngx_http_opamp_json_string(ngx_http_opamp_json_t *j, u_char *s,
    size_t len);
void ngx_http_opamp_json_int(ngx_http_opamp_json_t *j, int64_t n);
void ngx_http_opamp_json_literal(ngx_http_opamp_json_t *j, const char *s);

/* text that should be JSON already (from Redis): written if it parses,
 * with invalid UTF-8 replaced, else null */
void ngx_http_opamp_json_raw(ngx_http_opamp_json_t *j, u_char *s,
    size_t len);

/* a number as stored in Redis (digits), or null when absent */
void ngx_http_opamp_json_number(ngx_http_opamp_json_t *j, u_char *s,
    size_t len);

/* a whole protobuf-c message as a JSON object */
void ngx_http_opamp_json_message(ngx_http_opamp_json_t *j,
    const ProtobufCMessage *m);

/* a JSON value of that shape into a message (malloc'ed: free it with
 * protobuf_c_message_free_unpacked()); NULL with a reason in *err */
ProtobufCMessage *ngx_http_opamp_json_to_message(json_t *obj,
    const ProtobufCMessageDescriptor *d, const char **err);

#define ngx_http_opamp_json_object(j)   ngx_http_opamp_json_begin(j, '{')
#define ngx_http_opamp_json_array(j)    ngx_http_opamp_json_begin(j, '[')
#define ngx_http_opamp_json_close(j, c) ngx_http_opamp_json_end(j, c)
#define ngx_http_opamp_json_kv(j, k)                                         \
    ngx_http_opamp_json_key(j, k, sizeof(k) - 1)


#endif /* _NGX_HTTP_OPAMP_JSON_H_INCLUDED_ */
