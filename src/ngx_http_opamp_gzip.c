/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_gzip.h"

#include <zlib.h>


/*
 * Inflates a gzip body.  The output grows in steps up to limit, so a small
 * bomb costs at most limit bytes: NGX_DECLINED as soon as it would pass.
 */

ngx_int_t
ngx_http_opamp_gunzip(ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *in,
    ngx_str_t *out, size_t limit)
{
    int        rc;
    u_char    *buf, *nbuf;
    size_t     size;
    z_stream   zs;

    ngx_memzero(&zs, sizeof(z_stream));

    zs.zalloc = ngx_http_opamp_gzip_zalloc;
    zs.zfree = ngx_http_opamp_gzip_zfree;
    zs.opaque = pool;

    /* 16 + MAX_WBITS: gzip header and trailer only */

    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
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
            /* the input ended before the gzip trailer */
            rc = Z_DATA_ERROR;
        }

        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            ngx_log_error(NGX_LOG_INFO, log, 0,
                          "opamp: invalid gzip request body: %s",
                          zs.msg ? zs.msg : "truncated");
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
