/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * zlib: gzip request bodies inflated with a size limit, apart from the
 * request that carries them, so that t/fuzz feeds the same code any
 * bytes; and the status fields that the worker stores compressed in
 * Redis (docs/redis-schema.md, "Compressed status fields").
 */

#ifndef _NGX_HTTP_OPAMP_GZIP_H_INCLUDED_
#define _NGX_HTTP_OPAMP_GZIP_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/*
 * Inflates the gzip data in "in" into memory from pool (zlib's own state
 * too).  NGX_OK with the result in out; NGX_DECLINED as soon as it would
 * pass limit bytes; NGX_ABORT when it is not valid gzip (logged at info);
 * NGX_ERROR when memory runs out.
 */
ngx_int_t ngx_http_opamp_gunzip(ngx_pool_t *pool, ngx_log_t *log,
    ngx_str_t *in, ngx_str_t *out, size_t limit);

/* fields shorter than this are stored as they are */
#define NGX_HTTP_OPAMP_DEFLATE_MIN  128


/*
 * A status field read from Redis, inflated when it is stored compressed
 * (into memory from pool, at most limit bytes), else as it is; returns
 * as ngx_http_opamp_gunzip().
 */
ngx_int_t ngx_http_opamp_stored_inflate(ngx_pool_t *pool, ngx_log_t *log,
    ngx_str_t *in, ngx_str_t *out, size_t limit);

/*
 * A status field compressed for Redis into out, which has in->len bytes:
 * NGX_OK with *len set, NGX_DECLINED when compression would not make it
 * smaller (store it as it is), NGX_ERROR when zlib fails.
 */
ngx_int_t ngx_http_opamp_stored_deflate(ngx_log_t *log, ngx_str_t *in,
    u_char *out, size_t *len);

/* frees the worker's deflate stream (at its exit) */
void ngx_http_opamp_stored_deflate_end(void);

/* zlib's allocation from the pool in opaque; the pool frees it */
void *ngx_http_opamp_gzip_zalloc(void *opaque, u_int items, u_int size);
void ngx_http_opamp_gzip_zfree(void *opaque, void *address);


#endif /* _NGX_HTTP_OPAMP_GZIP_H_INCLUDED_ */
