/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * gzip request bodies inflated with a size limit, apart from the request
 * that carries them, so that t/fuzz feeds the same code any bytes.
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

/* zlib's allocation from the pool in opaque; the pool frees it */
void *ngx_http_opamp_gzip_zalloc(void *opaque, u_int items, u_int size);
void ngx_http_opamp_gzip_zfree(void *opaque, void *address);


#endif /* _NGX_HTTP_OPAMP_GZIP_H_INCLUDED_ */
