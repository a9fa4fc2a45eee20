/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_gzip.h"

#include <zlib.h>


static ngx_int_t ngx_http_opamp_inflate(ngx_pool_t *pool, ngx_log_t *log,
    ngx_str_t *in, ngx_str_t *out, size_t limit, int wbits, char *what);


ngx_int_t
ngx_http_opamp_gunzip(ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *in,
    ngx_str_t *out, size_t limit)
{
    /* 16 + MAX_WBITS: gzip header and trailer only */
    return ngx_http_opamp_inflate(pool, log, in, out, limit, 16 + MAX_WBITS,
                                  "gzip request body");
}


/*
 * A status field as stored: a first byte 0 (which no protobuf message
 * starts with: field number 0 does not exist) says that a zlib stream
 * follows; any other value is the protobuf bytes themselves.
 */

ngx_int_t
ngx_http_opamp_stored_inflate(ngx_pool_t *pool, ngx_log_t *log,
    ngx_str_t *in, ngx_str_t *out, size_t limit)
{
    ngx_str_t  z;

    if (in->len == 0 || in->data[0] != '\0') {
        *out = *in;
        return NGX_OK;
    }

    z.data = in->data + 1;
    z.len = in->len - 1;

    return ngx_http_opamp_inflate(pool, log, &z, out, limit, MAX_WBITS,
                                  "stored status field");
}


/*
 * Compresses a status field for Redis into out (in->len bytes of room),
 * only when that saves bytes: NGX_DECLINED when the result, with its
 * first byte 0, would not be smaller than the field.  A 4 KB window and
 * less memory than zlib's default suit fields of a few KB (a health tree,
 * package statuses).  One stream per worker, reset for each field: made
 * and freed per message, its ~48 KB in five blocks would come and go
 * between the blocks of the agents' sessions and leave the worker's heap
 * full of holes (measured: 3.7 KB more nginx memory per held collector
 * at 2,000 agents, 14.7 KB at 5,000).
 */

static z_stream  ngx_http_opamp_deflate_zs;
static ngx_uint_t  ngx_http_opamp_deflate_ready;


ngx_int_t
ngx_http_opamp_stored_deflate(ngx_log_t *log, ngx_str_t *in, u_char *out,
    size_t *len)
{
    int        rc;
    z_stream  *zs;

    zs = &ngx_http_opamp_deflate_zs;

    if (in->len < NGX_HTTP_OPAMP_DEFLATE_MIN) {
        return NGX_DECLINED;
    }

    if (!ngx_http_opamp_deflate_ready) {
        ngx_memzero(zs, sizeof(z_stream));

        if (deflateInit2(zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 12, 6,
                         Z_DEFAULT_STRATEGY)
            != Z_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, log, 0,
                          "opamp: deflateInit2() failed");
            return NGX_ERROR;
        }

        ngx_http_opamp_deflate_ready = 1;

    } else if (deflateReset(zs) != Z_OK) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "opamp: deflateReset() failed");
        return NGX_ERROR;
    }

    out[0] = '\0';

    zs->next_in = in->data;
    zs->avail_in = in->len;
    zs->next_out = out + 1;
    zs->avail_out = in->len - 2;

    rc = deflate(zs, Z_FINISH);

    *len = 1 + zs->total_out;

    if (rc == Z_STREAM_END) {
        return NGX_OK;
    }

    if (rc == Z_OK || rc == Z_BUF_ERROR) {
        /* no room left: it would not be smaller */
        return NGX_DECLINED;
    }

    ngx_log_error(NGX_LOG_ALERT, log, 0, "opamp: deflate() failed: %d", rc);

    return NGX_ERROR;
}


void
ngx_http_opamp_stored_deflate_end(void)
{
    if (ngx_http_opamp_deflate_ready) {
        (void) deflateEnd(&ngx_http_opamp_deflate_zs);
        ngx_http_opamp_deflate_ready = 0;
    }
}


/*
 * Inflates zlib or gzip data (wbits says which).  The output grows in
 * steps up to limit, so a small bomb costs at most limit bytes:
 * NGX_DECLINED as soon as it would pass.
 */

static ngx_int_t
ngx_http_opamp_inflate(ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *in,
    ngx_str_t *out, size_t limit, int wbits, char *what)
{
    int        rc;
    u_char    *buf, *nbuf;
    size_t     size;
    z_stream   zs;

    ngx_memzero(&zs, sizeof(z_stream));

    zs.zalloc = ngx_http_opamp_gzip_zalloc;
    zs.zfree = ngx_http_opamp_gzip_zfree;
    zs.opaque = pool;

    if (inflateInit2(&zs, wbits) != Z_OK) {
        return NGX_ERROR;
    }

    size = ngx_min(limit + 1, ngx_max(in->len * 4, 4096));

    buf = ngx_alloc(size, log);
    if (buf == NULL) {
        inflateEnd(&zs);
        return NGX_ERROR;
    }

    zs.next_in = in->data;
    zs.avail_in = in->len;
    zs.next_out = buf;
    zs.avail_out = size;

    for ( ;; ) {
        rc = inflate(&zs, Z_NO_FLUSH);

        if (rc == Z_STREAM_END) {
            break;
        }

        if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
            /* the input ended before the trailer */
            rc = Z_DATA_ERROR;
        }

        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            ngx_log_error(NGX_LOG_INFO, log, 0, "opamp: invalid %s: %s",
                          what, zs.msg ? zs.msg : "truncated");
            inflateEnd(&zs);
            ngx_free(buf);
            return NGX_ABORT;
        }

        if (zs.avail_out == 0) {
            if (size > limit) {
                inflateEnd(&zs);
                ngx_free(buf);
                return NGX_DECLINED;
            }

            nbuf = ngx_alloc(ngx_min(size * 2, limit + 1),
                             log);
            if (nbuf == NULL) {
                inflateEnd(&zs);
                ngx_free(buf);
                return NGX_ERROR;
            }

            ngx_memcpy(nbuf, buf, size);
            ngx_free(buf);

            buf = nbuf;
            zs.next_out = buf + size;
            zs.avail_out = ngx_min(size * 2, limit + 1) - size;
            size = ngx_min(size * 2, limit + 1);
        }
    }

    out->len = zs.total_out;
    inflateEnd(&zs);

    if (out->len > limit) {
        ngx_free(buf);
        return NGX_DECLINED;
    }

    /* the pool owns the result, so every exit frees it with the request */

    out->data = ngx_pnalloc(pool, out->len ? out->len : 1);
    if (out->data == NULL) {
        ngx_free(buf);
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, buf, out->len);
    ngx_free(buf);

    return NGX_OK;
}


void *
ngx_http_opamp_gzip_zalloc(void *opaque, u_int items, u_int size)
{
    return ngx_palloc((ngx_pool_t *) opaque, items * size);
}


void
ngx_http_opamp_gzip_zfree(void *opaque, void *address)
{
    /* the pool frees it with the request */
}
