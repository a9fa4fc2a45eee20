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

#define NGX_HTTP_OPAMP_A2S  &opamp__proto__v1__agent_to_server__descriptor


typedef struct {
    ngx_uint_t    elements;
    const char   *error;
    unsigned      limit:1;      /* valid, but over a limit */
    unsigned      repeats:1;    /* a singular message field came twice */
} ngx_http_opamp_proto_walk_t;


/*
 * The merge of a message whose singular message fields came more than
 * once (below, ngx_http_opamp_proto_merge()): one node per message, the
 * pieces (occurrences) it is made of, its merged singular message fields
 * by field index, and its repeated message elements in wire order.
 */

typedef struct ngx_http_opamp_proto_piece_s  ngx_http_opamp_proto_piece_t;
typedef struct ngx_http_opamp_proto_node_s   ngx_http_opamp_proto_node_t;

struct ngx_http_opamp_proto_piece_s {
    u_char                             *start;    /* the field's tag */
    u_char                             *value;
    size_t                              len;
    ngx_http_opamp_proto_piece_t       *next;
};

struct ngx_http_opamp_proto_node_s {
    const ProtobufCMessageDescriptor   *d;
    ngx_http_opamp_proto_piece_t       *first;
    ngx_http_opamp_proto_piece_t       *last;
    ngx_http_opamp_proto_node_t       **slots;
    ngx_http_opamp_proto_node_t        *elts;
    ngx_http_opamp_proto_node_t        *last_elt;
    ngx_http_opamp_proto_node_t        *next;     /* the next element */
    size_t                              size;     /* merged */
    uint32_t                            number;   /* its field's */
    unsigned                            changed:1;
};


static ngx_int_t ngx_http_opamp_proto_walk(ngx_http_opamp_proto_walk_t *w,
    const ProtobufCMessageDescriptor *d, u_char *p, u_char *last,
    ngx_uint_t depth);
static ngx_int_t ngx_http_opamp_proto_field(ngx_http_opamp_proto_walk_t *w,
    u_char **pp, u_char *last, uint32_t *number, ngx_uint_t *wire,
    u_char **value, size_t *len);
static ngx_int_t ngx_http_opamp_proto_varint(u_char **pp, u_char *last,
    uint64_t *v);
static ngx_int_t ngx_http_opamp_proto_merge(
    const ProtobufCMessageDescriptor *d, u_char *data, size_t len,
    u_char *out, size_t *out_len, ngx_log_t *log);
static ngx_int_t ngx_http_opamp_proto_merge_node(ngx_pool_t *pool,
    ngx_http_opamp_proto_node_t *node);
static ngx_int_t ngx_http_opamp_proto_merge_field(ngx_pool_t *pool,
    ngx_http_opamp_proto_node_t *node, const ProtobufCFieldDescriptor *f,
    u_char *start, u_char *value, size_t len);
static u_char *ngx_http_opamp_proto_merge_write(
    ngx_http_opamp_proto_node_t *node, u_char *out);
static size_t ngx_http_opamp_proto_merge_size(
    ngx_http_opamp_proto_node_t *node, ngx_http_opamp_proto_node_t *child);
static size_t ngx_http_opamp_proto_varint_len(uint64_t v);
static u_char *ngx_http_opamp_proto_write_varint(u_char *p, uint64_t v);
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

    ngx_memzero(&w, sizeof(ngx_http_opamp_proto_walk_t));

    if (ngx_http_opamp_proto_walk(&w, d, data, data + len, 1) != NGX_OK) {
        *error = w.error;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The scan checks every level first; a message whose singular message
 * fields came more than once (protobuf merges the occurrences) is merged
 * into one occurrence each, in one pass, so that the fields are stored
 * contiguous and protobuf-c never merges (its merge copies what came
 * before at each occurrence, and fails on two AnyValues without a value).
 */

ngx_int_t
ngx_http_opamp_proto_scan_a2s(ngx_http_opamp_a2s_scan_t *scan,
    u_char *data, size_t len, ngx_log_t *log)
{
    u_char                          *p, *last, *start, *value, *v, *msg;
    size_t                           vlen;
    uint32_t                         number;
    ngx_uint_t                       wire, i, pass;
    ngx_http_opamp_proto_walk_t      w;
    const ProtobufCFieldDescriptor  *f;

    ngx_memzero(scan, sizeof(ngx_http_opamp_a2s_scan_t));
    ngx_memzero(&w, sizeof(ngx_http_opamp_proto_walk_t));

    if (ngx_http_opamp_proto_walk(&w, NGX_HTTP_OPAMP_A2S, data, data + len,
                                  1)
        != NGX_OK)
    {
        scan->error = w.error;
        scan->limit = w.limit;
        return NGX_ERROR;
    }

    scan->elements = w.elements;

    /* the view is at most the message itself, and so is the merge */

    scan->view.data = ngx_alloc(len ? len : 1, log);
    if (scan->view.data == NULL) {
        return NGX_ERROR;
    }

    msg = data;

    if (w.repeats) {
        scan->merged.data = ngx_alloc(len ? len : 1, log);
        if (scan->merged.data == NULL) {
            goto failed;
        }

        if (ngx_http_opamp_proto_merge(NGX_HTTP_OPAMP_A2S, data, len,
                                       scan->merged.data, &scan->merged.len,
                                       log)
            != NGX_OK)
        {
            goto failed;
        }

        msg = scan->merged.data;
    }

    /* pass 0 counts the fields as they came, pass 1 locates them in the
     * message as merged and makes the view */

    v = scan->view.data;

    for (pass = 0; pass < 2; pass++) {
        p = pass ? msg : data;
        last = (pass && w.repeats) ? msg + scan->merged.len : data + len;

        while (p < last) {
            start = p;

            if (ngx_http_opamp_proto_field(&w, &p, last, &number, &wire,
                                           &value, &vlen)
                != NGX_OK)
            {
                goto failed;
            }

            f = protobuf_c_message_descriptor_get_field(NGX_HTTP_OPAMP_A2S,
                                                        number);

            if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE
                && number < NGX_HTTP_OPAMP_A2S_FIELDS)
            {
                if (pass == 0) {
                    scan->count[number]++;

                } else {
                    scan->field[number].data = value;
                    scan->field[number].len = vlen;
                }
            }

            if (pass == 0
                || number == NGX_HTTP_OPAMP_A2S_EFFECTIVE_CONFIG
                || number == NGX_HTTP_OPAMP_A2S_AVAILABLE_COMPONENTS)
            {
                continue;
            }

            v = ngx_cpymem(v, start, p - start);
        }
    }

    scan->view.len = v - scan->view.data;

    return NGX_OK;

failed:

    /* the walk accepted the message: only memory is missing */

    ngx_http_opamp_proto_scan_free(scan);

    for (i = 0; i < NGX_HTTP_OPAMP_A2S_FIELDS; i++) {
        ngx_str_null(&scan->field[i]);
    }

    return NGX_ERROR;
}


void
ngx_http_opamp_proto_scan_free(ngx_http_opamp_a2s_scan_t *scan)
{
    if (scan->merged.data) {
        ngx_free(scan->merged.data);
        scan->merged.data = NULL;
    }

    if (scan->view.data) {
        ngx_free(scan->view.data);
        scan->view.data = NULL;
    }
}


/*
 * Merges the occurrences of every singular message field of a message
 * that the walk accepted, at every level, as protobuf does (the
 * occurrences of a message field are one message; within a oneof the
 * last member wins).  A merged field is written once, where its first
 * occurrence (after the last other member of its oneof) was; everything
 * else keeps its bytes and order, and a part without repeats is copied
 * as it came.  Each field is read twice (once to size, once to write)
 * and each byte copied once, so the cost is linear in the message; the
 * result is never longer than the message (every occurrence merged away
 * took a tag and a length of at least two bytes, more than the longer
 * length of the merge needs).
 */

static ngx_int_t
ngx_http_opamp_proto_merge(const ProtobufCMessageDescriptor *d, u_char *data,
    size_t len, u_char *out, size_t *out_len, ngx_log_t *log)
{
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_pool_t                    *pool;
    ngx_http_opamp_proto_node_t   *root;
    ngx_http_opamp_proto_piece_t  *piece;

    pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    root = ngx_pcalloc(pool, sizeof(ngx_http_opamp_proto_node_t));
    piece = ngx_pcalloc(pool, sizeof(ngx_http_opamp_proto_piece_t));

    if (root == NULL || piece == NULL) {
        goto done;
    }

    piece->start = data;
    piece->value = data;
    piece->len = len;

    root->d = d;
    root->first = piece;
    root->last = piece;

    if (ngx_http_opamp_proto_merge_node(pool, root) != NGX_OK) {
        goto done;
    }

    if (root->size > len) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "opamp: a merged message of %uz bytes is longer "
                      "than the %uz it came in", root->size, len);
        goto done;
    }

    p = ngx_http_opamp_proto_merge_write(root, out);

    *out_len = p - out;
    rc = NGX_OK;

done:

    ngx_destroy_pool(pool);

    return rc;
}


/* what a node's occurrences hold, its children merged, and its size */

static ngx_int_t
ngx_http_opamp_proto_merge_node(ngx_pool_t *pool,
    ngx_http_opamp_proto_node_t *node)
{
    u_char                          *p, *last, *start, *value;
    size_t                           len, size;
    uint32_t                         number;
    ngx_uint_t                       wire, i;
    ngx_http_opamp_proto_node_t     *child;
    ngx_http_opamp_proto_walk_t      w;
    ngx_http_opamp_proto_piece_t    *piece;
    const ProtobufCFieldDescriptor  *f, *g;

    ngx_memzero(&w, sizeof(ngx_http_opamp_proto_walk_t));

    size = 0;

    for (piece = node->first; piece; piece = piece->next) {
        p = piece->value;
        last = p + piece->len;

        while (p < last) {
            start = p;

            if (ngx_http_opamp_proto_field(&w, &p, last, &number, &wire,
                                           &value, &len)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            f = protobuf_c_message_descriptor_get_field(node->d, number);

            /* another member of a oneof replaces what came before */

            if (f != NULL && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
                && node->slots != NULL)
            {
                for (i = 0; i < node->d->n_fields; i++) {
                    g = &node->d->fields[i];

                    if (g != f && node->slots[i] != NULL
                        && (g->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
                        && g->quantifier_offset == f->quantifier_offset)
                    {
                        node->slots[i] = NULL;
                        node->changed = 1;
                    }
                }
            }

            if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE) {
                size += p - start;
                continue;
            }

            if (ngx_http_opamp_proto_merge_field(pool, node, f, start, value,
                                                 len)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    for (child = node->elts; child; child = child->next) {
        if (ngx_http_opamp_proto_merge_node(pool, child) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    for (i = 0; node->slots && i < node->d->n_fields; i++) {
        if (node->slots[i]
            && ngx_http_opamp_proto_merge_node(pool, node->slots[i])
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* the children's sizes as they will be written */

    for (child = node->elts; child; child = child->next) {
        size += ngx_http_opamp_proto_merge_size(node, child);
    }

    for (i = 0; node->slots && i < node->d->n_fields; i++) {
        if (node->slots[i]) {
            size += ngx_http_opamp_proto_merge_size(node, node->slots[i]);
        }
    }

    node->size = size;

    return NGX_OK;
}


static size_t
ngx_http_opamp_proto_merge_size(ngx_http_opamp_proto_node_t *node,
    ngx_http_opamp_proto_node_t *child)
{
    ngx_http_opamp_proto_piece_t  *piece;

    piece = child->first;

    if (!child->changed) {
        return piece->value + piece->len - piece->start;
    }

    node->changed = 1;

    return ngx_http_opamp_proto_varint_len(
               ((uint64_t) child->number << 3) | NGX_HTTP_OPAMP_WIRE_LEN)
           + ngx_http_opamp_proto_varint_len(child->size)
           + child->size;
}


/* one more occurrence of a message field */

static ngx_int_t
ngx_http_opamp_proto_merge_field(ngx_pool_t *pool,
    ngx_http_opamp_proto_node_t *node, const ProtobufCFieldDescriptor *f,
    u_char *start, u_char *value, size_t len)
{
    ngx_http_opamp_proto_node_t   *child, **slot;
    ngx_http_opamp_proto_piece_t  *piece;

    piece = ngx_palloc(pool, sizeof(ngx_http_opamp_proto_piece_t));
    if (piece == NULL) {
        return NGX_ERROR;
    }

    piece->start = start;
    piece->value = value;
    piece->len = len;
    piece->next = NULL;

    slot = NULL;

    if (f->label != PROTOBUF_C_LABEL_REPEATED) {

        if (node->slots == NULL) {
            node->slots = ngx_pcalloc(pool, node->d->n_fields
                                      * sizeof(ngx_http_opamp_proto_node_t *));
            if (node->slots == NULL) {
                return NGX_ERROR;
            }
        }

        slot = &node->slots[f - node->d->fields];

        if (*slot != NULL) {
            child = *slot;
            child->last->next = piece;
            child->last = piece;
            child->changed = 1;
            return NGX_OK;
        }
    }

    child = ngx_pcalloc(pool, sizeof(ngx_http_opamp_proto_node_t));
    if (child == NULL) {
        return NGX_ERROR;
    }

    child->d = f->descriptor;
    child->number = f->id;
    child->first = piece;
    child->last = piece;

    if (slot) {
        *slot = child;
        return NGX_OK;
    }

    /* an element of a repeated field */

    if (node->last_elt) {
        node->last_elt->next = child;

    } else {
        node->elts = child;
    }

    node->last_elt = child;

    return NGX_OK;
}


static u_char *
ngx_http_opamp_proto_merge_write(ngx_http_opamp_proto_node_t *node,
    u_char *out)
{
    u_char                          *p, *last, *start, *value;
    size_t                           len;
    uint32_t                         number;
    ngx_uint_t                       wire;
    ngx_http_opamp_proto_node_t     *elt, *child;
    ngx_http_opamp_proto_walk_t      w;
    ngx_http_opamp_proto_piece_t    *piece;
    const ProtobufCFieldDescriptor  *f;

    if (!node->changed) {
        return ngx_cpymem(out, node->first->value, node->first->len);
    }

    ngx_memzero(&w, sizeof(ngx_http_opamp_proto_walk_t));

    elt = node->elts;

    for (piece = node->first; piece; piece = piece->next) {
        p = piece->value;
        last = p + piece->len;

        while (p < last) {
            start = p;

            /* read before by ngx_http_opamp_proto_merge_node() */
            (void) ngx_http_opamp_proto_field(&w, &p, last, &number, &wire,
                                              &value, &len);

            f = protobuf_c_message_descriptor_get_field(node->d, number);

            if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE) {
                out = ngx_cpymem(out, start, p - start);
                continue;
            }

            if (f->label == PROTOBUF_C_LABEL_REPEATED) {
                child = elt;
                elt = elt->next;

            } else {
                child = node->slots[f - node->d->fields];

                /* merged into the occurrence that is written */
                if (child == NULL || child->first->start != start) {
                    continue;
                }
            }

            if (!child->changed) {
                out = ngx_cpymem(out, start, p - start);
                continue;
            }

            out = ngx_http_opamp_proto_write_varint(out,
                      ((uint64_t) number << 3) | NGX_HTTP_OPAMP_WIRE_LEN);
            out = ngx_http_opamp_proto_write_varint(out, child->size);
            out = ngx_http_opamp_proto_merge_write(child, out);
        }
    }

    return out;
}


static size_t
ngx_http_opamp_proto_varint_len(uint64_t v)
{
    size_t  n;

    for (n = 1; v >= 0x80; n++) {
        v >>= 7;
    }

    return n;
}


static u_char *
ngx_http_opamp_proto_write_varint(u_char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (u_char) (v | 0x80);
        v >>= 7;
    }

    *p++ = (u_char) v;

    return p;
}


ProtobufCMessage *
ngx_http_opamp_proto_unpack(const ProtobufCMessageDescriptor *d,
    u_char *data, size_t len, const char **error)
{
    u_char                       *merged;
    size_t                        used;
    ProtobufCMessage             *m;
    ProtobufCAllocator            a;
    ngx_http_opamp_proto_walk_t   w;

    ngx_memzero(&w, sizeof(ngx_http_opamp_proto_walk_t));

    if (ngx_http_opamp_proto_walk(&w, d, data, data + len, 1) != NGX_OK) {
        *error = w.error;
        return NULL;
    }

    /* stored by an older version or written by another client: merged
     * here as the scan of an AgentToServer does */

    merged = NULL;

    if (w.repeats) {
        merged = ngx_alloc(len, ngx_cycle->log);
        if (merged == NULL) {
            *error = "needs more memory to decode than its size allows";
            return NULL;
        }

        if (ngx_http_opamp_proto_merge(d, data, len, merged, &len,
                                       ngx_cycle->log)
            != NGX_OK)
        {
            ngx_free(merged);
            *error = "needs more memory to decode than its size allows";
            return NULL;
        }

        data = merged;
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

    if (merged) {
        ngx_free(merged);
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
    uint64_t                         seen, bit;
    ngx_uint_t                       wire;
    const ProtobufCFieldDescriptor  *f;

    if (depth > NGX_HTTP_OPAMP_PROTO_MAX_DEPTH) {
        w->error = "messages nested deeper than 100 levels";
        w->limit = 1;
        return NGX_ERROR;
    }

    seen = 0;

    while (p < last) {
        if (ngx_http_opamp_proto_field(w, &p, last, &number, &wire, &value,
                                       &len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* unknown fields are kept as they are: nothing to look into */

        f = protobuf_c_message_descriptor_get_field(d, number);

        if (f == NULL) {
            continue;
        }

        if (ngx_http_opamp_proto_typed(w, f, wire, value, len, depth)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* a singular message field that comes again is merged */

        if (f->type == PROTOBUF_C_TYPE_MESSAGE
            && f->label != PROTOBUF_C_LABEL_REPEATED)
        {
            bit = (uint64_t) 1 << ((f - d->fields) & 63);

            if (seen & bit) {
                w->repeats = 1;
            }

            seen |= bit;
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
