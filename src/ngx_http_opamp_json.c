/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_json.h"
#include "ngx_http_opamp_utf8.h"


static u_char *ngx_http_opamp_json_reserve(ngx_http_opamp_json_t *j,
    size_t n);
static void ngx_http_opamp_json_comma(ngx_http_opamp_json_t *j);
static u_char *ngx_http_opamp_json_utf8(ngx_http_opamp_json_t *j, u_char *s,
    size_t len, size_t *out);
static void ngx_http_opamp_json_value(ngx_http_opamp_json_t *j,
    const ProtobufCFieldDescriptor *f, const void *v);
static void ngx_http_opamp_json_bytes(ngx_http_opamp_json_t *j,
    const ProtobufCFieldDescriptor *f, const ProtobufCBinaryData *b);
static ngx_uint_t ngx_http_opamp_json_is_map(
    const ProtobufCFieldDescriptor *f);
static ngx_uint_t ngx_http_opamp_json_is_default(
    const ProtobufCFieldDescriptor *f, const void *v);


void
ngx_http_opamp_json_init(ngx_http_opamp_json_t *j, ngx_pool_t *pool)
{
    ngx_memzero(j, sizeof(ngx_http_opamp_json_t));
    j->pool = pool;
}


static u_char *
ngx_http_opamp_json_reserve(ngx_http_opamp_json_t *j, size_t n)
{
    u_char  *p;
    size_t   size;

    if (j->failed) {
        return NULL;
    }

    if (j->len + n > j->size) {
        size = ngx_max(2 * j->size, j->len + n + 1024);

        p = ngx_pnalloc(j->pool, size);
        if (p == NULL) {
            j->failed = 1;
            return NULL;
        }

        if (j->len) {
            ngx_memcpy(p, j->data, j->len);
        }

        /* the old buffer stays in the pool until the request ends */

        j->data = p;
        j->size = size;
    }

    return j->data + j->len;
}


static void
ngx_http_opamp_json_put(ngx_http_opamp_json_t *j, const u_char *s, size_t n)
{
    u_char  *p;

    p = ngx_http_opamp_json_reserve(j, n);
    if (p == NULL) {
        return;
    }

    ngx_memcpy(p, s, n);
    j->len += n;
}


static void
ngx_http_opamp_json_comma(ngx_http_opamp_json_t *j)
{
    if (j->comma) {
        ngx_http_opamp_json_put(j, (u_char *) ",", 1);
    }
}


void
ngx_http_opamp_json_begin(ngx_http_opamp_json_t *j, u_char c)
{
    ngx_http_opamp_json_comma(j);
    ngx_http_opamp_json_put(j, &c, 1);
    j->comma = 0;
}


void
ngx_http_opamp_json_end(ngx_http_opamp_json_t *j, u_char c)
{
    ngx_http_opamp_json_put(j, &c, 1);
    j->comma = 1;
}


void
ngx_http_opamp_json_key(ngx_http_opamp_json_t *j, const char *key,
    size_t len)
{
    ngx_http_opamp_json_string(j, (u_char *) key, len);
    ngx_http_opamp_json_put(j, (u_char *) ":", 1);
    j->comma = 0;
}


void
ngx_http_opamp_json_string(ngx_http_opamp_json_t *j, u_char *s, size_t len)
{
    u_char  *p;
    size_t   n;

    ngx_http_opamp_json_comma(j);

    /* JSON is UTF-8: whatever reached Redis, each byte that does not
     * start a valid character is written as U+FFFD */

    if (!ngx_http_opamp_utf8_valid(s, len)) {
        s = ngx_http_opamp_json_utf8(j, s, len, &len);
        if (s == NULL) {
            return;
        }
    }

    n = len + ngx_escape_json(NULL, s, len) + 2;

    p = ngx_http_opamp_json_reserve(j, n);
    if (p == NULL) {
        return;
    }

    *p++ = '"';
    p = (u_char *) ngx_escape_json(p, s, len);
    *p++ = '"';

    j->len += n;
    j->comma = 1;
}


/* a copy of s with U+FFFD in place of every byte that does not start a
 * valid UTF-8 character */

static u_char *
ngx_http_opamp_json_utf8(ngx_http_opamp_json_t *j, u_char *s, size_t len,
    size_t *out)
{
    u_char  *p, *last, *dst, *d;
    size_t   n;

    dst = ngx_pnalloc(j->pool, 3 * len);
    if (dst == NULL) {
        j->failed = 1;
        return NULL;
    }

    d = dst;
    p = s;
    last = s + len;

    while (p < last) {
        n = ngx_http_opamp_utf8_char(p, last);

        if (n == 0) {
            *d++ = 0xef; *d++ = 0xbf; *d++ = 0xbd;
            p++;
            continue;
        }

        d = ngx_cpymem(d, p, n);
        p += n;
    }

    *out = d - dst;

    return dst;
}


void
ngx_http_opamp_json_int(ngx_http_opamp_json_t *j, int64_t n)
{
    u_char  buf[NGX_INT64_LEN + 1];

    ngx_http_opamp_json_comma(j);
    ngx_http_opamp_json_put(j, buf, ngx_sprintf(buf, "%L", n) - buf);
    j->comma = 1;
}


void
ngx_http_opamp_json_literal(ngx_http_opamp_json_t *j, const char *s)
{
    ngx_http_opamp_json_comma(j);
    ngx_http_opamp_json_put(j, (u_char *) s, ngx_strlen(s));
    j->comma = 1;
}


void
ngx_http_opamp_json_raw(ngx_http_opamp_json_t *j, u_char *s, size_t len)
{
    json_t        *v;
    json_error_t   error;

    /*
     * Text from Redis that should be JSON: anyone may have written it, so
     * it is written out only if it parses (invalid UTF-8 made U+FFFD
     * first), else as null; one bad agent never spoils a whole page.
     */

    if (!ngx_http_opamp_utf8_valid(s, len)) {
        s = ngx_http_opamp_json_utf8(j, s, len, &len);
        if (s == NULL) {
            return;
        }
    }

    v = json_loadb((const char *) s, len, JSON_DECODE_ANY, &error);
    if (v == NULL) {
        ngx_http_opamp_json_literal(j, "null");
        return;
    }

    json_decref(v);

    ngx_http_opamp_json_comma(j);
    ngx_http_opamp_json_put(j, s, len);
    j->comma = 1;
}


void
ngx_http_opamp_json_number(ngx_http_opamp_json_t *j, u_char *s, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if ((s[i] < '0' || s[i] > '9') && !(i == 0 && s[i] == '-')) {
            break;
        }
    }

    if (s == NULL || len == 0 || i != len) {
        ngx_http_opamp_json_literal(j, "null");
        return;
    }

    ngx_http_opamp_json_comma(j);
    ngx_http_opamp_json_put(j, s, len);
    j->comma = 1;
}


/*
 * The generic encoder: field by field as the descriptor lists them, in
 * the proto3 JSON mapping's camelCase-free form (the .proto field names,
 * as protoc --decode shows them), leaving out fields at their defaults.
 */

void
ngx_http_opamp_json_message(ngx_http_opamp_json_t *j,
    const ProtobufCMessage *m)
{
    size_t                            i, k, n, size;
    const u_char                     *base, *member;
    const ProtobufCMessage           *entry;
    const ProtobufCFieldDescriptor   *f, *kf, *vf;
    const ProtobufCMessageDescriptor *d;

    d = m->descriptor;
    base = (const u_char *) m;

    ngx_http_opamp_json_object(j);

    for (i = 0; i < d->n_fields; i++) {
        f = &d->fields[i];
        member = base + f->offset;

        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *) (base + f->quantifier_offset) != f->id) {
                continue;
            }

        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *) (base + f->quantifier_offset);

            if (n == 0) {
                continue;
            }

            ngx_http_opamp_json_key(j, f->name, ngx_strlen(f->name));

            member = *(const u_char * const *) member;

            if (ngx_http_opamp_json_is_map(f)) {
                /* map<string, V>: an object, as the JSON mapping has it */

                kf = &((const ProtobufCMessageDescriptor *)
                       f->descriptor)->fields[0];
                vf = &((const ProtobufCMessageDescriptor *)
                       f->descriptor)->fields[1];

                ngx_http_opamp_json_object(j);

                for (k = 0; k < n; k++) {
                    entry = ((const ProtobufCMessage * const *) member)[k];

                    ngx_http_opamp_json_key(j,
                        *(char * const *) ((const u_char *) entry
                                           + kf->offset),
                        ngx_strlen(*(char * const *)
                                   ((const u_char *) entry + kf->offset)));

                    ngx_http_opamp_json_value(j, vf,
                        (const u_char *) entry + vf->offset);
                }

                ngx_http_opamp_json_close(j, '}');
                continue;
            }

            switch (f->type) {
            case PROTOBUF_C_TYPE_INT64:
            case PROTOBUF_C_TYPE_SINT64:
            case PROTOBUF_C_TYPE_SFIXED64:
            case PROTOBUF_C_TYPE_UINT64:
            case PROTOBUF_C_TYPE_FIXED64:
            case PROTOBUF_C_TYPE_DOUBLE:
                size = 8;
                break;
            case PROTOBUF_C_TYPE_BOOL:
                size = sizeof(protobuf_c_boolean);
                break;
            case PROTOBUF_C_TYPE_STRING:
            case PROTOBUF_C_TYPE_MESSAGE:
                size = sizeof(void *);
                break;
            case PROTOBUF_C_TYPE_BYTES:
                size = sizeof(ProtobufCBinaryData);
                break;
            default:
                size = 4;
            }

            ngx_http_opamp_json_array(j);

            for (k = 0; k < n; k++) {
                ngx_http_opamp_json_value(j, f, member + k * size);
            }

            ngx_http_opamp_json_close(j, ']');
            continue;

        } else if (ngx_http_opamp_json_is_default(f, member)) {
            continue;
        }

        ngx_http_opamp_json_key(j, f->name, ngx_strlen(f->name));
        ngx_http_opamp_json_value(j, f, member);
    }

    ngx_http_opamp_json_close(j, '}');
}


static ngx_uint_t
ngx_http_opamp_json_is_map(const ProtobufCFieldDescriptor *f)
{
    size_t                             len;
    const ProtobufCMessageDescriptor  *d;

    if (f->type != PROTOBUF_C_TYPE_MESSAGE) {
        return 0;
    }

    d = f->descriptor;
    len = ngx_strlen(d->name);

    return d->n_fields == 2 && len > 5
           && ngx_strcmp(d->name + len - 5, "Entry") == 0
           && ngx_strcmp(d->fields[0].name, "key") == 0
           && d->fields[0].type == PROTOBUF_C_TYPE_STRING
           && ngx_strcmp(d->fields[1].name, "value") == 0;
}


static ngx_uint_t
ngx_http_opamp_json_is_default(const ProtobufCFieldDescriptor *f,
    const void *v)
{
    switch (f->type) {

    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return *(const uint64_t *) v == 0;

    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *) v == 0;

    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *) v == 0;

    case PROTOBUF_C_TYPE_BOOL:
        return !*(const protobuf_c_boolean *) v;

    case PROTOBUF_C_TYPE_STRING:
        return *(char * const *) v == NULL || **(char * const *) v == '\0';

    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *) v)->len == 0;

    case PROTOBUF_C_TYPE_MESSAGE:
        return *(void * const *) v == NULL;

    default: /* 32-bit integers and enums */
        return *(const uint32_t *) v == 0;
    }
}


static void
ngx_http_opamp_json_value(ngx_http_opamp_json_t *j,
    const ProtobufCFieldDescriptor *f, const void *v)
{
    int                             n;
    char                           *s;
    u_char                          buf[64];
    const ProtobufCEnumValue       *ev;

    switch (f->type) {

    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        ngx_http_opamp_json_int(j, *(const int32_t *) v);
        return;

    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        ngx_http_opamp_json_int(j, *(const uint32_t *) v);
        return;

    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        ngx_http_opamp_json_int(j, *(const int64_t *) v);
        return;

    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        /* exact for every uint64, unlike a JSON number in most readers */
        ngx_http_opamp_json_number(j, buf,
                                   ngx_sprintf(buf, "%uL",
                                               *(const uint64_t *) v)
                                   - buf);
        return;

    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        n = snprintf((char *) buf, sizeof(buf), "%.17g",
                     f->type == PROTOBUF_C_TYPE_FLOAT
                     ? (double) *(const float *) v : *(const double *) v);

        if (n <= 0 || n >= (int) sizeof(buf)
            || buf[n - 1] < '0' || buf[n - 1] > '9')
        {
            ngx_http_opamp_json_literal(j, "null");   /* inf, nan */
            return;
        }

        ngx_http_opamp_json_comma(j);
        ngx_http_opamp_json_put(j, buf, n);
        j->comma = 1;
        return;

    case PROTOBUF_C_TYPE_BOOL:
        ngx_http_opamp_json_literal(j, *(const protobuf_c_boolean *) v
                                       ? "true" : "false");
        return;

    case PROTOBUF_C_TYPE_ENUM:
        ev = protobuf_c_enum_descriptor_get_value(f->descriptor,
                                                  *(const int *) v);
        if (ev) {
            ngx_http_opamp_json_string(j, (u_char *) ev->name,
                                       ngx_strlen(ev->name));
        } else {
            ngx_http_opamp_json_int(j, *(const int *) v);
        }
        return;

    case PROTOBUF_C_TYPE_STRING:
        s = *(char * const *) v;
        ngx_http_opamp_json_string(j, (u_char *) (s ? s : ""),
                                   s ? ngx_strlen(s) : 0);
        return;

    case PROTOBUF_C_TYPE_BYTES:
        ngx_http_opamp_json_bytes(j, f, v);
        return;

    case PROTOBUF_C_TYPE_MESSAGE:
        if (*(void * const *) v == NULL) {
            ngx_http_opamp_json_literal(j, "null");
            return;
        }

        ngx_http_opamp_json_message(j, *(ProtobufCMessage * const *) v);
        return;
    }
}


/*
 * Bytes for people: hashes and uids in hex, config bodies and other text
 * as text, anything else in base64.
 */

static void
ngx_http_opamp_json_bytes(ngx_http_opamp_json_t *j,
    const ProtobufCFieldDescriptor *f, const ProtobufCBinaryData *b)
{
    u_char     *p, *last;
    size_t      len, n;
    ngx_str_t   src, dst;

    len = ngx_strlen(f->name);

    if ((len >= 4 && ngx_strcmp(f->name + len - 4, "hash") == 0)
        || (len >= 3 && ngx_strcmp(f->name + len - 3, "uid") == 0))
    {
        dst.data = ngx_pnalloc(j->pool, 2 * b->len + 1);
        if (dst.data == NULL) {
            j->failed = 1;
            return;
        }

        dst.len = ngx_hex_dump(dst.data, b->data, b->len) - dst.data;
        ngx_http_opamp_json_string(j, dst.data, dst.len);
        return;
    }

    /* protobuf-c leaves empty bytes NULL, and NULL + 0 is undefined */
    if (b->len == 0) {
        ngx_http_opamp_json_string(j, (u_char *) "", 0);
        return;
    }

    p = b->data;
    last = p + b->len;

    while (p < last) {
        if (*p < 0x80) {
            if (*p == 0) {
                break;
            }

            p++;
            continue;
        }

        n = ngx_http_opamp_utf8_char(p, last);
        if (n == 0) {
            break;
        }

        p += n;
    }

    if (p == last) {
        ngx_http_opamp_json_string(j, b->data, b->len);
        return;
    }

    src.data = b->data;
    src.len = b->len;

    dst.data = ngx_pnalloc(j->pool, ngx_base64_encoded_length(b->len));
    if (dst.data == NULL) {
        j->failed = 1;
        return;
    }

    ngx_encode_base64(&dst, &src);
    ngx_http_opamp_json_string(j, dst.data, dst.len);
}


/*
 * The reverse: a jansson value into a protobuf-c message of the given
 * type, in the shape ngx_http_opamp_json_message() writes (field names as
 * in the .proto, enums by name or number, maps as objects, hashes and
 * uids in hex, other bytes as text).  Everything is allocated with
 * malloc, so protobuf_c_message_free_unpacked(m, NULL) frees it all.
 * On failure, NULL and a reason in *err.
 */

static ngx_int_t ngx_http_opamp_json_field(json_t *v,
    const ProtobufCFieldDescriptor *f, void *member, const char **err);


static ngx_int_t
ngx_http_opamp_json_hex(const char *s, size_t len, ProtobufCBinaryData *b)
{
    int     hi, lo;
    size_t  i;

    if (len % 2) {
        return NGX_ERROR;
    }

    b->data = malloc(len / 2 + 1);
    if (b->data == NULL) {
        return NGX_ERROR;
    }

    b->len = len / 2;

    for (i = 0; i < len; i += 2) {
        hi = ngx_hextoi((u_char *) s + i, 1);
        lo = ngx_hextoi((u_char *) s + i + 1, 1);

        if (hi == NGX_ERROR || lo == NGX_ERROR) {
            free(b->data);
            b->data = NULL;
            b->len = 0;
            return NGX_ERROR;
        }

        b->data[i / 2] = (uint8_t) (hi << 4 | lo);
    }

    return NGX_OK;
}


ProtobufCMessage *
ngx_http_opamp_json_to_message(json_t *obj,
    const ProtobufCMessageDescriptor *d, const char **err)
{
    size_t                           n, size, i, k;
    u_char                          *base, *array;
    json_t                          *v, *item;
    const char                      *name;
    ProtobufCMessage                *m, *entry;
    const ProtobufCFieldDescriptor  *f, *kf, *vf;

    if (!json_is_object(obj)) {
        *err = "a message must be a JSON object";
        return NULL;
    }

    m = calloc(1, d->sizeof_message);
    if (m == NULL) {
        *err = "out of memory";
        return NULL;
    }

    d->message_init(m);
    base = (u_char *) m;

    json_object_foreach(obj, name, v) {

        f = protobuf_c_message_descriptor_get_field_by_name(d, name);
        if (f == NULL) {
            *err = "unknown field";
            goto failed;
        }

        if (f->label == PROTOBUF_C_LABEL_REPEATED) {

            if (f->type == PROTOBUF_C_TYPE_MESSAGE
                && ngx_http_opamp_json_is_map(f))
            {
                /* a map: {"key": value, ...} */

                if (!json_is_object(v)) {
                    *err = "a map must be a JSON object";
                    goto failed;
                }

                n = json_object_size(v);
                array = calloc(n + 1, sizeof(void *));
                if (array == NULL) {
                    *err = "out of memory";
                    goto failed;
                }

                *(void **) (base + f->offset) = array;

                kf = &((const ProtobufCMessageDescriptor *)
                       f->descriptor)->fields[0];
                vf = &((const ProtobufCMessageDescriptor *)
                       f->descriptor)->fields[1];

                k = 0;

                json_object_foreach(v, name, item) {
                    entry = calloc(1, ((const ProtobufCMessageDescriptor *)
                                       f->descriptor)->sizeof_message);
                    if (entry == NULL) {
                        *err = "out of memory";
                        goto failed;
                    }

                    ((const ProtobufCMessageDescriptor *)
                     f->descriptor)->message_init(entry);

                    ((ProtobufCMessage **) array)[k++] = entry;
                    *(size_t *) (base + f->quantifier_offset) = k;

                    *(char **) ((u_char *) entry + kf->offset) =
                        strdup(name);

                    if (ngx_http_opamp_json_field(item, vf,
                                                  (u_char *) entry
                                                  + vf->offset, err)
                        != NGX_OK)
                    {
                        goto failed;
                    }
                }

                continue;
            }

            if (!json_is_array(v)) {
                *err = "a repeated field must be a JSON array";
                goto failed;
            }

            switch (f->type) {
            case PROTOBUF_C_TYPE_INT64:
            case PROTOBUF_C_TYPE_SINT64:
            case PROTOBUF_C_TYPE_SFIXED64:
            case PROTOBUF_C_TYPE_UINT64:
            case PROTOBUF_C_TYPE_FIXED64:
            case PROTOBUF_C_TYPE_DOUBLE:
                size = 8;
                break;
            case PROTOBUF_C_TYPE_BOOL:
                size = sizeof(protobuf_c_boolean);
                break;
            case PROTOBUF_C_TYPE_STRING:
            case PROTOBUF_C_TYPE_MESSAGE:
                size = sizeof(void *);
                break;
            case PROTOBUF_C_TYPE_BYTES:
                size = sizeof(ProtobufCBinaryData);
                break;
            default:
                size = 4;
            }

            n = json_array_size(v);
            array = calloc(n + 1, size);
            if (array == NULL) {
                *err = "out of memory";
                goto failed;
            }

            *(void **) (base + f->offset) = array;

            for (i = 0; i < n; i++) {
                *(size_t *) (base + f->quantifier_offset) = i + 1;

                if (ngx_http_opamp_json_field(json_array_get(v, i), f,
                                              array + i * size, err)
                    != NGX_OK)
                {
                    goto failed;
                }
            }

            continue;
        }

        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            *(uint32_t *) (base + f->quantifier_offset) = f->id;
        }

        if (ngx_http_opamp_json_field(v, f, base + f->offset, err)
            != NGX_OK)
        {
            goto failed;
        }
    }

    return m;

failed:

    protobuf_c_message_free_unpacked(m, NULL);
    return NULL;
}


static ngx_int_t
ngx_http_opamp_json_field(json_t *v, const ProtobufCFieldDescriptor *f,
    void *member, const char **err)
{
    size_t                     len;
    const char                *s;
    json_int_t                 n;
    ProtobufCBinaryData       *b;
    const ProtobufCEnumValue  *ev;

    switch (f->type) {

    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(v)) {
            *err = "a string field needs a JSON string";
            return NGX_ERROR;
        }

        *(char **) member = strdup(json_string_value(v));
        return *(char **) member ? NGX_OK : NGX_ERROR;

    case PROTOBUF_C_TYPE_BYTES:
        if (!json_is_string(v)) {
            *err = "a bytes field needs a JSON string";
            return NGX_ERROR;
        }

        s = json_string_value(v);
        len = json_string_length(v);
        b = member;

        n = ngx_strlen(f->name);

        if ((n >= 4 && ngx_strcmp(f->name + n - 4, "hash") == 0)
            || (n >= 3 && ngx_strcmp(f->name + n - 3, "uid") == 0))
        {
            if (ngx_http_opamp_json_hex(s, len, b) != NGX_OK) {
                *err = "hashes and uids are written in hex";
                return NGX_ERROR;
            }

            return NGX_OK;
        }

        b->data = malloc(len + 1);
        if (b->data == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(b->data, s, len);
        b->len = len;
        return NGX_OK;

    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v)) {
            *err = "a bool field needs true or false";
            return NGX_ERROR;
        }

        *(protobuf_c_boolean *) member = json_is_true(v);
        return NGX_OK;

    case PROTOBUF_C_TYPE_ENUM:
        if (json_is_string(v)) {
            ev = protobuf_c_enum_descriptor_get_value_by_name(f->descriptor,
                     json_string_value(v));
            if (ev == NULL) {
                *err = "unknown enum value";
                return NGX_ERROR;
            }

            *(int *) member = ev->value;
            return NGX_OK;
        }

        if (!json_is_integer(v)) {
            *err = "an enum field needs a name or a number";
            return NGX_ERROR;
        }

        *(int *) member = (int) json_integer_value(v);
        return NGX_OK;

    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        if (!json_is_number(v)) {
            *err = "a floating point field needs a number";
            return NGX_ERROR;
        }

        if (f->type == PROTOBUF_C_TYPE_FLOAT) {
            *(float *) member = (float) json_number_value(v);

        } else {
            *(double *) member = json_number_value(v);
        }

        return NGX_OK;

    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **) member =
            ngx_http_opamp_json_to_message(v, f->descriptor, err);

        return *(ProtobufCMessage **) member ? NGX_OK : NGX_ERROR;

    default:
        /* integers; uint64 may come as a string of digits */

        if (json_is_string(v)) {
            n = ngx_atoi((u_char *) json_string_value(v),
                         json_string_length(v));
            if (n == NGX_ERROR) {
                *err = "an integer field needs a number";
                return NGX_ERROR;
            }

        } else if (json_is_integer(v)) {
            n = json_integer_value(v);

        } else {
            *err = "an integer field needs a number";
            return NGX_ERROR;
        }

        switch (f->type) {
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
            *(int64_t *) member = n;
            break;
        default:
            *(int32_t *) member = (int32_t) n;
        }

        return NGX_OK;
    }
}
