/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * gzip request bodies: ngx_http_opamp_gunzip(), which the plain HTTP
 * transport calls with opamp_max_message_size as the limit; and the same
 * bytes as a status field stored in Redis (ngx_http_opamp_stored_inflate
 * and _deflate, which must give back what they were given).  The first
 * input byte picks the limit: odd, the default 4m; even, a small limit
 * from the next two bytes (1 to 65536), so that inputs meet it often.
 * The rest is the body.
 *
 * Invariants checked, against zlib inflating the same body in one call
 * into a buffer of limit + 1 bytes:
 *   - NGX_OK exactly when zlib ends the stream within the limit, with the
 *     same bytes;
 *   - NGX_DECLINED exactly when the stream goes past the limit;
 *   - NGX_ABORT (invalid gzip) otherwise; NGX_ERROR never;
 *   - nothing leaks (zlib's state is in the pool, freed with it).
 */


#include "ngx_http_opamp_gzip.h"
#include "shim.h"

#include <zlib.h>


#define FUZZ_DEFAULT_LIMIT  (4 * 1024 * 1024)


/* 1: ended within the limit; 0: past it; -1: not valid gzip */

static int
fuzz_reference(u_char *in, size_t len, size_t limit, u_char *out,
    size_t *outlen)
{
    int       rc;
    z_stream  zs;

    memset(&zs, 0, sizeof(z_stream));

    FUZZ_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "inflateInit2");

    zs.next_in = in;
    zs.avail_in = len;
    zs.next_out = out;
    zs.avail_out = limit + 1;

    do {
        rc = inflate(&zs, Z_NO_FLUSH);
    } while (rc == Z_OK && zs.avail_out > 0);

    *outlen = zs.total_out;
    inflateEnd(&zs);

    if (rc == Z_STREAM_END) {
        return (*outlen <= limit) ? 1 : 0;
    }

    if (zs.avail_out == 0 && (rc == Z_OK || rc == Z_BUF_ERROR)) {
        return 0;
    }

    return -1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int          expect;
    u_char      *ref, *packed;
    size_t       limit, reflen, plen;
    ngx_int_t    rc;
    ngx_str_t    in, out, z;
    ngx_pool_t  *pool;

    if (size < 3) {
        return 0;
    }

    if (data[0] & 1) {
        limit = FUZZ_DEFAULT_LIMIT;

    } else {
        limit = 1 + (data[1] | (data[2] << 8));
    }

    in.len = size - 3;
    in.data = malloc(in.len ? in.len : 1);
    FUZZ_CHECK(in.data != NULL, "malloc");
    memcpy(in.data, data + 3, in.len);

    ref = malloc(limit + 1);
    FUZZ_CHECK(ref != NULL, "malloc");

    expect = fuzz_reference(in.data, in.len, limit, ref, &reflen);

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    FUZZ_CHECK(pool != NULL, "pool");

    rc = ngx_http_opamp_gunzip(pool, ngx_fuzz_log, &in, &out, limit);

    switch (rc) {

    case NGX_OK:
        FUZZ_CHECK(expect == 1, "inflated a body zlib does not end within "
                                "the limit");
        FUZZ_CHECK(out.len <= limit, "inflated past the limit");
        FUZZ_CHECK(out.len == reflen
                   && (reflen == 0 || memcmp(out.data, ref, reflen) == 0),
                   "inflated other bytes than zlib");
        break;

    case NGX_DECLINED:
        FUZZ_CHECK(expect == 0, "refused as too large a body within the "
                                "limit");
        break;

    case NGX_ABORT:
        FUZZ_CHECK(expect == -1, "refused as invalid a body zlib inflates");
        break;

    default:
        FUZZ_CHECK(0, "NGX_ERROR without an allocation failure");
    }

    /* the status fields stored compressed: any value read back is the
     * value itself or what its zlib stream inflates to, within the limit;
     * and a field compressed by the worker reads back as it was */

    rc = ngx_http_opamp_stored_inflate(pool, ngx_fuzz_log, &in, &out, limit);

    if (in.len == 0 || in.data[0] != '\0') {
        FUZZ_CHECK(rc == NGX_OK && out.data == in.data && out.len == in.len,
                   "a value not marked compressed was changed");

    } else {
        FUZZ_CHECK(rc != NGX_ERROR, "NGX_ERROR without an allocation "
                                    "failure");
        FUZZ_CHECK(rc != NGX_OK || out.len <= limit,
                   "inflated past the limit");
    }

    packed = malloc(in.len ? in.len : 1);
    FUZZ_CHECK(packed != NULL, "malloc");

    rc = ngx_http_opamp_stored_deflate(ngx_fuzz_log, &in, packed, &plen);

    if (rc == NGX_OK) {
        FUZZ_CHECK(plen < in.len && packed[0] == '\0',
                   "compressed to no fewer bytes, or unmarked");

        z.data = packed;
        z.len = plen;
        rc = ngx_http_opamp_stored_inflate(pool, ngx_fuzz_log, &z, &out,
                                           in.len);
        FUZZ_CHECK(rc == NGX_OK && out.len == in.len
                   && memcmp(out.data, in.data, in.len) == 0,
                   "a compressed field does not read back as it was");

    } else {
        FUZZ_CHECK(rc == NGX_DECLINED, "deflate failed");
    }

    free(packed);

    ngx_destroy_pool(pool);
    free(ref);
    free(in.data);

    return 0;
}
