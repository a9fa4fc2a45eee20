/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Stand-ins for the few nginx core functions that the module's parsers
 * call, so that the fuzz targets link the module's own .c files without
 * nginx itself.  Each pool allocation is a malloc() of its own, so that
 * AddressSanitizer sees the exact bounds of every block (a real pool
 * would hide an overflow inside its larger chunk); the pool frees them
 * all when it is destroyed.  Logging goes nowhere: the targets assert on
 * return values, not on messages.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "shim.h"


ngx_uint_t  ngx_pagesize = 4096;
ngx_uint_t  ngx_pagesize_shift = 12;
ngx_uint_t  ngx_cacheline_size = 64;


static ngx_log_t  ngx_fuzz_log_s;
ngx_log_t        *ngx_fuzz_log = &ngx_fuzz_log_s;

static ngx_cycle_t     ngx_fuzz_cycle = { .log = &ngx_fuzz_log_s };
volatile ngx_cycle_t  *ngx_cycle = &ngx_fuzz_cycle;


void *
ngx_alloc(size_t size, ngx_log_t *log)
{
    return malloc(size);
}


void *
ngx_calloc(size_t size, ngx_log_t *log)
{
    return calloc(1, size);
}


ngx_pool_t *
ngx_create_pool(size_t size, ngx_log_t *log)
{
    ngx_pool_t  *p;

    p = calloc(1, sizeof(ngx_pool_t));
    if (p == NULL) {
        return NULL;
    }

    p->log = log;

    return p;
}


void
ngx_destroy_pool(ngx_pool_t *pool)
{
    ngx_pool_large_t  *l, *next;

    for (l = pool->large; l; l = next) {
        next = l->next;
        free(l->alloc);
        free(l);
    }

    free(pool);
}


void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    void              *p;
    ngx_pool_large_t  *l;

    l = malloc(sizeof(ngx_pool_large_t));
    if (l == NULL) {
        return NULL;
    }

    /* a zero-length block is still a distinct pointer, as in a pool */
    p = malloc(size ? size : 1);
    if (p == NULL) {
        free(l);
        return NULL;
    }

    l->alloc = p;
    l->next = pool->large;
    pool->large = l;

    return p;
}


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    return ngx_palloc(pool, size);
}


void *
ngx_pcalloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    p = ngx_palloc(pool, size);
    if (p) {
        memset(p, 0, size);
    }

    return p;
}


ngx_int_t
ngx_pfree(ngx_pool_t *pool, void *p)
{
    return NGX_DECLINED;
}


void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
}


/*
 * ngx_sprintf() for the conversions the linked files use: %L %uL %d %ud
 * %i %ui %z %uz %s %V %c %%; anything else is a bug in the shim and
 * stops the run.
 */

u_char *
ngx_vslprintf(u_char *buf, u_char *last, const char *fmt, va_list args)
{
    int          n;
    char         tmp[32];
    size_t       len;
    u_char      *s;
    ngx_str_t   *v;
    ngx_uint_t   uns, lng, sz, ptr;

    while (*fmt && buf < last) {
        if (*fmt != '%') {
            *buf++ = *fmt++;
            continue;
        }

        fmt++;
        uns = lng = sz = ptr = 0;

        if (*fmt == 'u') {
            uns = 1;
            fmt++;
        }

        switch (*fmt) {

        case 'L':
            lng = 1;
            break;

        case 'z':
            sz = 1;
            break;

        case 'i':
            ptr = 1;
            break;

        case 'd':
            break;

        case 's':
            s = va_arg(args, u_char *);
            len = ngx_min(strlen((char *) s), (size_t) (last - buf));
            buf = ngx_cpymem(buf, s, len);
            fmt++;
            continue;

        case 'V':
            v = va_arg(args, ngx_str_t *);
            len = ngx_min(v->len, (size_t) (last - buf));
            buf = ngx_cpymem(buf, v->data, len);
            fmt++;
            continue;

        case 'c':
            *buf++ = (u_char) va_arg(args, int);
            fmt++;
            continue;

        case '%':
            *buf++ = '%';
            fmt++;
            continue;

        default:
            fprintf(stderr, "shim: ngx_sprintf conversion %%%c\n", *fmt);
            abort();
        }

        fmt++;

        if (lng) {
            n = uns ? snprintf(tmp, sizeof(tmp), "%llu",
                               (unsigned long long) va_arg(args, uint64_t))
                    : snprintf(tmp, sizeof(tmp), "%lld",
                               (long long) va_arg(args, int64_t));

        } else if (sz || ptr) {
            n = uns ? snprintf(tmp, sizeof(tmp), "%zu", va_arg(args, size_t))
                    : snprintf(tmp, sizeof(tmp), "%zd", va_arg(args, ssize_t));

        } else {
            n = uns ? snprintf(tmp, sizeof(tmp), "%u", va_arg(args, u_int))
                    : snprintf(tmp, sizeof(tmp), "%d", va_arg(args, int));
        }

        len = ngx_min((size_t) n, (size_t) (last - buf));
        buf = ngx_cpymem(buf, tmp, len);
    }

    return buf;
}


u_char *
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, (void *) -1, fmt, args);
    va_end(args);

    return p;
}


u_char *
ngx_snprintf(u_char *buf, size_t max, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + max, fmt, args);
    va_end(args);

    return p;
}


/* what nginx's ngx_escape_json() does: '"' and '\' get a backslash,
 * control characters \n \r \t \b \f or \u00XX; dst NULL counts the
 * extra bytes */

uintptr_t
ngx_escape_json(u_char *dst, u_char *src, size_t size)
{
    u_char      ch;
    ngx_uint_t  len;
    static const char  hex[] = "0123456789abcdef";

    if (dst == NULL) {
        len = 0;

        while (size--) {
            ch = *src++;

            if (ch == '\\' || ch == '"') {
                len++;

            } else if (ch <= 0x1f) {
                switch (ch) {
                case '\n': case '\r': case '\t': case '\b': case '\f':
                    len++;
                    break;
                default:
                    len += sizeof("\\u001F") - 2;
                }
            }
        }

        return (uintptr_t) len;
    }

    while (size--) {
        ch = *src++;

        if (ch > 0x1f) {
            if (ch == '\\' || ch == '"') {
                *dst++ = '\\';
            }

            *dst++ = ch;
            continue;
        }

        *dst++ = '\\';

        switch (ch) {
        case '\n': *dst++ = 'n'; break;
        case '\r': *dst++ = 'r'; break;
        case '\t': *dst++ = 't'; break;
        case '\b': *dst++ = 'b'; break;
        case '\f': *dst++ = 'f'; break;
        default:
            *dst++ = 'u'; *dst++ = '0'; *dst++ = '0';
            *dst++ = '0' + (ch >> 4);
            *dst++ = hex[ch & 0xf];
        }
    }

    return (uintptr_t) dst;
}


u_char *
ngx_hex_dump(u_char *dst, u_char *src, size_t len)
{
    static const u_char  hex[] = "0123456789abcdef";

    while (len--) {
        *dst++ = hex[*src >> 4];
        *dst++ = hex[*src++ & 0xf];
    }

    return dst;
}


ngx_int_t
ngx_hextoi(u_char *line, size_t n)
{
    u_char     c, ch;
    ngx_int_t  value, cutoff;

    if (n == 0) {
        return NGX_ERROR;
    }

    cutoff = NGX_MAX_INT_T_VALUE / 16;

    for (value = 0; n--; line++) {
        if (value > cutoff) {
            return NGX_ERROR;
        }

        ch = *line;

        if (ch >= '0' && ch <= '9') {
            value = value * 16 + (ch - '0');
            continue;
        }

        c = (u_char) (ch | 0x20);

        if (c >= 'a' && c <= 'f') {
            value = value * 16 + (c - 'a' + 10);
            continue;
        }

        return NGX_ERROR;
    }

    return value;
}


ngx_int_t
ngx_atoi(u_char *line, size_t n)
{
    ngx_int_t  value, cutoff, cutlim;

    if (n == 0) {
        return NGX_ERROR;
    }

    cutoff = NGX_MAX_INT_T_VALUE / 10;
    cutlim = NGX_MAX_INT_T_VALUE % 10;

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        if (value >= cutoff && (value > cutoff || *line - '0' > cutlim)) {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


void
ngx_encode_base64(ngx_str_t *dst, ngx_str_t *src)
{
    u_char         *d, *s;
    size_t          len;
    static u_char   b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    len = src->len;
    s = src->data;
    d = dst->data;

    while (len > 2) {
        *d++ = b64[(s[0] >> 2) & 0x3f];
        *d++ = b64[((s[0] & 3) << 4) | (s[1] >> 4)];
        *d++ = b64[((s[1] & 0x0f) << 2) | (s[2] >> 6)];
        *d++ = b64[s[2] & 0x3f];

        s += 3;
        len -= 3;
    }

    if (len) {
        *d++ = b64[(s[0] >> 2) & 0x3f];

        if (len == 1) {
            *d++ = b64[(s[0] & 3) << 4];
            *d++ = '=';

        } else {
            *d++ = b64[((s[0] & 3) << 4) | (s[1] >> 4)];
            *d++ = b64[(s[1] & 0x0f) << 2];
        }

        *d++ = '=';
    }

    dst->len = d - dst->data;
}
