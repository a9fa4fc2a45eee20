/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_utf8.h"


/*
 * protobuf-c turns a byte of input into a few bytes of structs for real
 * messages (strings are copied, each element is a struct and a pointer);
 * the wire check has already bounded the elements, so the budget only
 * stops what slips past it.
 */
#define NGX_HTTP_OPAMP_DECODE_FACTOR  16
#define NGX_HTTP_OPAMP_DECODE_SLACK   (1024 * 1024)


/* the wire types of protobuf */
#define NGX_HTTP_OPAMP_WIRE_VARINT   0
#define NGX_HTTP_OPAMP_WIRE_FIXED64  1
#define NGX_HTTP_OPAMP_WIRE_LEN      2
#define NGX_HTTP_OPAMP_WIRE_FIXED32  5

/* AgentToServer fields that the module stores as received and never reads:
 * kept out of what protobuf-c decodes */
#define NGX_HTTP_OPAMP_A2S_EFFECTIVE_CONFIG      6
#define NGX_HTTP_OPAMP_A2S_AVAILABLE_COMPONENTS  14


typedef struct {
    ngx_uint_t    elements;
    const char   *error;
    unsigned      limit:1;      /* valid, but over a limit */
} ngx_http_opamp_proto_walk_t;


static ngx_int_t ngx_http_opamp_proto_walk(ngx_http_opamp_proto_walk_t *w,
    const ProtobufCMessageDescriptor *d, u_char *p, u_char *last,
    ngx_uint_t depth);
static ngx_int_t ngx_http_opamp_proto_field(ngx_http_opamp_proto_walk_t *w,
    u_char **pp, u_char *last, uint32_t *number, ngx_uint_t *wire,
    u_char **value, size_t *len);
static ngx_int_t ngx_http_opamp_proto_varint(u_char **pp, u_char *last,
    uint64_t *v);
static ngx_int_t ngx_http_opamp_proto_join(ngx_str_t *field, u_char *data,
    size_t len, u_char *value, size_t vlen, ngx_log_t *log);
static ngx_int_t ngx_http_opamp_proto_typed(ngx_http_opamp_proto_walk_t *w,
    const ProtobufCFieldDescriptor *f, ngx_uint_t wire, u_char *value,
    size_t len, ngx_uint_t depth);
static ngx_uint_t ngx_http_opamp_proto_wire_type(ProtobufCType type);
static void *ngx_http_opamp_proto_alloc(void *data, size_t size);
static void ngx_http_opamp_proto_free(void *data, void *p);
static void *ngx_http_opamp_proto_plain_alloc(void *data, size_t size);
static void ngx_http_opamp_proto_plain_free(void *data, void *p);


ngx_int_t
ngx_http_opamp_proto_check(const ProtobufCMessageDescriptor *d,
    u_char *data, size_t len, const char **error)
{
    ngx_http_opamp_proto_walk_t  w;

    w.elements = 0;
    w.error = NULL;
    w.limit = 0;

    if (ngx_http_opamp_proto_walk(&w, d, data, data + len, 1) != NGX_OK) {
        *error = w.error;
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_opamp_proto_scan_a2s(ngx_http_opamp_a2s_scan_t *scan,
    u_char *data, size_t len, ngx_log_t *log)
{
    u_char                          *p, *last, *start, *value, *v;
    size_t                           vlen;
    uint32_t                         number;
    ngx_uint_t                       wire, i;
    ngx_http_opamp_proto_walk_t      w;
    const ProtobufCFieldDescriptor  *f;

    ngx_memzero(scan, sizeof(ngx_http_opamp_a2s_scan_t));

    w.elements = 0;
    w.error = NULL;
    w.limit = 0;

    /* the view is at most the message itself */

    scan->view.data = ngx_alloc(len ? len : 1, log);
    if (scan->view.data == NULL) {
        return NGX_ERROR;
    }

    v = scan->view.data;
    p = data;
    last = data + len;

    while (p < last) {
        start = p;

        if (ngx_http_opamp_proto_field(&w, &p, last, &number, &wire, &value,
                                       &vlen)
            != NGX_OK)
        {
            goto refused;
        }

        f = protobuf_c_message_descriptor_get_field(
                &opamp__proto__v1__agent_to_server__descriptor, number);

        if (f != NULL
            && ngx_http_opamp_proto_typed(&w, f, wire, value, vlen, 1)
               != NGX_OK)
        {
            goto refused;
        }

        if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE
            && number < NGX_HTTP_OPAMP_A2S_FIELDS)
        {
            if (scan->count[number] == 0) {
                scan->field[number].data = value;
                scan->field[number].len = vlen;

            } else if (ngx_http_opamp_proto_join(&scan->field[number], data,
                                                 len, value, vlen, log)
                       != NGX_OK)
            {
                /* the field still points into the message: not ours to
                 * free */
                goto failed;
            }

            scan->count[number]++;
        }

        if (number == NGX_HTTP_OPAMP_A2S_EFFECTIVE_CONFIG
            || number == NGX_HTTP_OPAMP_A2S_AVAILABLE_COMPONENTS)
        {
            continue;
        }

        v = ngx_cpymem(v, start, p - start);
    }

    scan->view.len = v - scan->view.data;
    scan->elements = w.elements;

    return NGX_OK;

refused:

    scan->error = w.error;
    scan->limit = w.limit;

failed:

    ngx_http_opamp_proto_scan_free(scan, data, len);

    for (i = 0; i < NGX_HTTP_OPAMP_A2S_FIELDS; i++) {
        ngx_str_null(&scan->field[i]);
    }

    return NGX_ERROR;
}


void
ngx_http_opamp_proto_scan_free(ngx_http_opamp_a2s_scan_t *scan,
    u_char *data, size_t len)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_OPAMP_A2S_FIELDS; i++) {
        if (scan->count[i] > 1 && scan->field[i].data) {
            ngx_free(scan->field[i].data);
            scan->field[i].data = NULL;
        }
    }

    if (scan->view.data) {
        ngx_free(scan->view.data);
        scan->view.data = NULL;
    }
}


/*
 * A message field that came again: protobuf merges the occurrences, which
 * on the wire is their concatenation, so the stored bytes are joined.
 */

static ngx_int_t
ngx_http_opamp_proto_join(ngx_str_t *field, u_char *data, size_t len,
    u_char *value, size_t vlen, ngx_log_t *log)
{
    u_char  *p;

    p = ngx_alloc(field->len + vlen + 1, log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, field->data, field->len);
    ngx_memcpy(p + field->len, value, vlen);

    /* a piece joined before is the scan's own memory */
    if (field->data < data || field->data >= data + len) {
        ngx_free(field->data);
    }

    field->data = p;
    field->len += vlen;

    return NGX_OK;
}


ProtobufCMessage *
ngx_http_opamp_proto_unpack(const ProtobufCMessageDescriptor *d,
    u_char *data, size_t len, const char **error)
{
    size_t              used;
    ProtobufCMessage   *m;
    ProtobufCAllocator  a;

    if (ngx_http_opamp_proto_check(d, data, len, error) != NGX_OK) {
        return NULL;
    }

    /* malloc and free as protobuf-c's own allocator, within a budget, so
     * that protobuf_c_message_free_unpacked(m, NULL) frees it */

    used = len * NGX_HTTP_OPAMP_DECODE_FACTOR + NGX_HTTP_OPAMP_DECODE_SLACK;

    a.alloc = ngx_http_opamp_proto_plain_alloc;
    a.free = ngx_http_opamp_proto_plain_free;
    a.allocator_data = &used;

    m = protobuf_c_message_unpack(d, &a, len, data);
    if (m == NULL) {
        *error = used ? "not a valid protobuf message"
                      : "needs more memory to decode than its size allows";
    }

    return m;
}


/*
 * Reads one field: its number, wire type and, for a length-delimited one,
 * where its bytes are; any other value is skipped over.
 */

static ngx_int_t
ngx_http_opamp_proto_field(ngx_http_opamp_proto_walk_t *w, u_char **pp,
    u_char *last, uint32_t *number, ngx_uint_t *wire, u_char **value,
    size_t *len)
{
    u_char    *p;
    uint64_t   tag, n;

    p = *pp;

    /* a tag is a 32-bit varint: protobuf-c reads at most 5 bytes of it */

    if (ngx_http_opamp_proto_varint(&p, last, &tag) != NGX_OK
        || p - *pp > 5)
    {
        w->error = "truncated or overlong field tag";
        return NGX_ERROR;
    }

    *wire = (ngx_uint_t) (tag & 7);
    tag >>= 3;

    if (tag == 0 || tag > 536870911) {
        w->error = "invalid field number";
        return NGX_ERROR;
    }

    *number = (uint32_t) tag;
    *value = p;

    switch (*wire) {

    case NGX_HTTP_OPAMP_WIRE_VARINT:
        if (ngx_http_opamp_proto_varint(&p, last, &n) != NGX_OK) {
            w->error = "truncated or overlong varint";
            return NGX_ERROR;
        }
        break;

    case NGX_HTTP_OPAMP_WIRE_FIXED64:
        if (last - p < 8) {
            w->error = "truncated fixed64";
            return NGX_ERROR;
        }
        p += 8;
        break;

    case NGX_HTTP_OPAMP_WIRE_FIXED32:
        if (last - p < 4) {
            w->error = "truncated fixed32";
            return NGX_ERROR;
        }
        p += 4;
        break;

    case NGX_HTTP_OPAMP_WIRE_LEN:

        /* protobuf-c reads at most 5 bytes of a length, too */

        if (ngx_http_opamp_proto_varint(&p, last, &n) != NGX_OK
            || p - *value > 5)
        {
            w->error = "truncated or overlong length";
            return NGX_ERROR;
        }

        if (n > (uint64_t) (last - p)) {
            w->error = "length-delimited field longer than its message";
            return NGX_ERROR;
        }

        *value = p;
        p += n;
        break;

    default:
        /* groups (3, 4) are not proto3, 6 and 7 do not exist */
        w->error = "unsupported wire type";
        return NGX_ERROR;
    }

    *len = p - *value;
    *pp = p;

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_proto_walk(ngx_http_opamp_proto_walk_t *w,
    const ProtobufCMessageDescriptor *d, u_char *p, u_char *last,
    ngx_uint_t depth)
{
    u_char                          *value;
    size_t                           len;
    uint32_t                         number;
    ngx_uint_t                       wire;
    const ProtobufCFieldDescriptor  *f;

    if (depth > NGX_HTTP_OPAMP_PROTO_MAX_DEPTH) {
        w->error = "messages nested deeper than 100 levels";
        w->limit = 1;
        return NGX_ERROR;
    }

    while (p < last) {
        if (ngx_http_opamp_proto_field(w, &p, last, &number, &wire, &value,
                                       &len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* unknown fields are kept as they are: nothing to look into */

        f = protobuf_c_message_descriptor_get_field(d, number);

        if (f != NULL
            && ngx_http_opamp_proto_typed(w, f, wire, value, len, depth)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* one value of a known field: the wire type its type needs, then what
 * its type asks of the bytes */

static ngx_int_t
ngx_http_opamp_proto_typed(ngx_http_opamp_proto_walk_t *w,
    const ProtobufCFieldDescriptor *f, ngx_uint_t wire, u_char *value,
    size_t len, ngx_uint_t depth)
{
    u_char    *p, *last;
    uint64_t   n;
    ngx_uint_t expected;

    expected = ngx_http_opamp_proto_wire_type(f->type);

    if (wire != expected) {

        /* repeated numbers may come packed into one length-delimited
         * field; each of them is an element */

        if (f->label == PROTOBUF_C_LABEL_REPEATED
            && wire == NGX_HTTP_OPAMP_WIRE_LEN
            && expected != NGX_HTTP_OPAMP_WIRE_LEN)
        {
            p = value;
            last = value + len;

            while (p < last) {
                if (expected == NGX_HTTP_OPAMP_WIRE_VARINT) {
                    if (ngx_http_opamp_proto_varint(&p, last, &n) != NGX_OK)
                    {
                        w->error = "truncated packed varint";
                        return NGX_ERROR;
                    }

                } else {
                    n = (expected == NGX_HTTP_OPAMP_WIRE_FIXED64) ? 8 : 4;

                    if ((uint64_t) (last - p) < n) {
                        w->error = "truncated packed field";
                        return NGX_ERROR;
                    }

                    p += n;
                }

                if (++w->elements > NGX_HTTP_OPAMP_PROTO_MAX_ELEMENTS) {
                    w->error = "more than 65536 elements";
                    w->limit = 1;
                    return NGX_ERROR;
                }
            }

            return NGX_OK;
        }

        w->error = "field of the wrong wire type";
        return NGX_ERROR;
    }

    if (f->label == PROTOBUF_C_LABEL_REPEATED
        || f->type == PROTOBUF_C_TYPE_MESSAGE)
    {
        if (++w->elements > NGX_HTTP_OPAMP_PROTO_MAX_ELEMENTS) {
            w->error = "more than 65536 elements";
            w->limit = 1;
            return NGX_ERROR;
        }
    }

    switch (f->type) {

    case PROTOBUF_C_TYPE_MESSAGE:
        return ngx_http_opamp_proto_walk(w, f->descriptor, value,
                                         value + len, depth + 1);

    case PROTOBUF_C_TYPE_STRING:

        /* proto3 strings are UTF-8; strict decoders refuse anything else,
         * and whatever is stored must decode anywhere */

        if (!ngx_http_opamp_utf8_valid(value, len)) {
            w->error = "string field is not valid UTF-8";
            return NGX_ERROR;
        }

        return NGX_OK;

    default:
        return NGX_OK;
    }
}


static ngx_uint_t
ngx_http_opamp_proto_wire_type(ProtobufCType type)
{
    switch (type) {

    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return NGX_HTTP_OPAMP_WIRE_FIXED32;

    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return NGX_HTTP_OPAMP_WIRE_FIXED64;

    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return NGX_HTTP_OPAMP_WIRE_LEN;

    default:
        return NGX_HTTP_OPAMP_WIRE_VARINT;
    }
}


/* a varint of at most ten bytes whose tenth byte carries at most one bit,
 * as protobuf writes them */

static ngx_int_t
ngx_http_opamp_proto_varint(u_char **pp, u_char *last, uint64_t *v)
{
    u_char      *p;
    uint64_t     n;
    ngx_uint_t   shift;

    p = *pp;
    n = 0;

    for (shift = 0; shift < 64; shift += 7) {
        if (p == last) {
            return NGX_ERROR;
        }

        if (shift == 63 && *p > 1) {
            return NGX_ERROR;
        }

        n |= (uint64_t) (*p & 0x7f) << shift;

        if ((*p++ & 0x80) == 0) {
            *v = n;
            *pp = p;
            return NGX_OK;
        }
    }

    return NGX_ERROR;
}


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


/* protobuf-c's own allocation, within the budget in *data */

static void *
ngx_http_opamp_proto_plain_alloc(void *data, size_t size)
{
    size_t *left = data;

    if (size > *left) {
        *left = 0;
        return NULL;
    }

    *left -= size;

    return malloc(size);
}


static void
ngx_http_opamp_proto_plain_free(void *data, void *p)
{
    free(p);
}
