/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Per-agent tokens: the credential of a request told apart (the
 * enrollment credential, or a token digested with SHA-256, as Redis keeps
 * tokens only by their digest), and new tokens made from OpenSSL's
 * RAND_bytes().  Whether a token is the uid's is decided in report.lua,
 * atomically with the rotation it may complete (docs/security.md).
 */


#include "ngx_http_opamp_token.h"

#include <ngx_sha1.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>


static ngx_int_t ngx_http_opamp_token_sha256(u_char *data, size_t len,
    u_char *hex);


ngx_int_t
ngx_http_opamp_token_eval(ngx_http_request_t *r,
    ngx_http_opamp_identity_t *id, ngx_http_opamp_token_t **out,
    const char **reason)
{
    ngx_str_t                   cred, enroll;
    ngx_sha1_t                  sha1;
    u_char                      digest[20];
    ngx_table_elt_t            *h;
    ngx_http_opamp_token_t     *t;
    ngx_http_opamp_loc_conf_t  *olcf;

    *out = NULL;
    *reason = NULL;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (olcf->enrollment_token == NULL) {
        return NGX_OK;
    }

    h = r->headers_in.authorization;

    if (h == NULL) {
        *reason = "no Authorization header: the agent presents its token "
                  "or the enrollment credential as a Bearer token";
        return NGX_DECLINED;
    }

    if (h->value.len <= sizeof("Bearer ") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) != 0)
    {
        *reason = "the Authorization header is not a Bearer token";
        return NGX_DECLINED;
    }

    cred.data = h->value.data + sizeof("Bearer ") - 1;
    cred.len = h->value.len - (sizeof("Bearer ") - 1);

    if (cred.len > NGX_HTTP_OPAMP_TOKEN_MAX) {
        *reason = "the Bearer token is longer than 512 bytes";
        return NGX_DECLINED;
    }

    if (ngx_http_complex_value(r, olcf->enrollment_token, &enroll)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    t = ngx_palloc(r->pool, sizeof(ngx_http_opamp_token_t));
    if (t == NULL) {
        return NGX_ERROR;
    }

    /* an empty enrollment credential takes no enrollment at all; the
     * comparison takes the same time whatever bytes differ */

    if (enroll.len && enroll.len == cred.len
        && CRYPTO_memcmp(enroll.data, cred.data, cred.len) == 0)
    {
        t->presented[0] = olcf->token_reenroll ? 'R' : 'E';
        t->presented_len = 1;

    } else {
        if (ngx_http_opamp_token_sha256(cred.data, cred.len, t->presented)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        t->presented_len = 64;
    }

    /* the beat mark's part: a heartbeat with another credential takes
     * the long way, where report.lua checks it */

    ngx_sha1_init(&sha1);

    if (id) {
        ngx_sha1_update(&sha1, id->mark.data, id->mark.len);
    }

    ngx_sha1_update(&sha1, " ", 1);
    ngx_sha1_update(&sha1, t->presented, t->presented_len);
    ngx_sha1_final(digest, &sha1);

    ngx_hex_dump(t->mark, digest, sizeof(digest));

    *out = t;

    return NGX_OK;
}


ngx_int_t
ngx_http_opamp_token_mint(u_char *token, u_char *digest, ngx_log_t *log)
{
    u_char     raw[32], b64[ngx_base64_encoded_length(32)];
    ngx_str_t  src, dst;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "opamp: RAND_bytes() failed making an agent token");
        return NGX_ERROR;
    }

    src.data = raw;
    src.len = sizeof(raw);
    dst.data = b64;

    ngx_encode_base64url(&dst, &src);

    if (dst.len != NGX_HTTP_OPAMP_TOKEN_LEN) {
        return NGX_ERROR;
    }

    ngx_memcpy(token, dst.data, NGX_HTTP_OPAMP_TOKEN_LEN);
    ngx_explicit_memzero(raw, sizeof(raw));

    return ngx_http_opamp_token_sha256(token, NGX_HTTP_OPAMP_TOKEN_LEN,
                                       digest);
}


static ngx_int_t
ngx_http_opamp_token_sha256(u_char *data, size_t len, u_char *hex)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  mdlen;

    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1
        || mdlen != 32)
    {
        return NGX_ERROR;
    }

    ngx_hex_dump(hex, md, 32);

    return NGX_OK;
}
