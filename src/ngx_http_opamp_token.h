/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Per-agent tokens (docs/security.md, Tokens): the credential an agent
 * presents (Authorization: Bearer), the enrollment credential of
 * opamp_enrollment_token traded for a token of the agent's own, which
 * the module makes and offers in OpAMP connection settings and Redis
 * keeps only as its SHA-256.
 */

#ifndef _NGX_HTTP_OPAMP_TOKEN_H_INCLUDED_
#define _NGX_HTTP_OPAMP_TOKEN_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_identity.h"


/* a token: 32 random bytes in base64url, no padding */
#define NGX_HTTP_OPAMP_TOKEN_LEN        43
/* the longest credential looked at: longer ones are refused unread */
#define NGX_HTTP_OPAMP_TOKEN_MAX        512


/* what an agent presented, as the scripts take it; fixed size, so that a
 * WebSocket's copy outlives its request by a plain copy */
typedef struct {
    size_t      presented_len;
    u_char      presented[64];     /* "E", "R" (enrollment credential,
                                      opamp_token_reenroll off or on), or
                                      the token's SHA-256 in hex */
    u_char      mark[40];          /* SHA-1 of the identity's mark and
                                      presented, hex, for the beat mark */
} ngx_http_opamp_token_t;


/*
 * Evaluates the credential of r where opamp_enrollment_token is set: NGX_OK
 * with *out (NULL: tokens not configured here) in r's pool; NGX_DECLINED
 * with *reason for a missing or malformed credential (401); NGX_ERROR.
 */
ngx_int_t ngx_http_opamp_token_eval(ngx_http_request_t *r,
    ngx_http_opamp_identity_t *id, ngx_http_opamp_token_t **out,
    const char **reason);

/* a new token into token (NGX_HTTP_OPAMP_TOKEN_LEN bytes) and its SHA-256
 * in hex into digest (64 bytes) */
ngx_int_t ngx_http_opamp_token_mint(u_char *token, u_char *digest,
    ngx_log_t *log);


#endif /* _NGX_HTTP_OPAMP_TOKEN_H_INCLUDED_ */
