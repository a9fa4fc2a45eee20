/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The plain HTTP transport: one AgentToServer in a POST body (maybe
 * gzipped), one ServerToAgent in the response (gzipped when accepted).
 */

#ifndef _NGX_HTTP_OPAMP_HTTP_H_INCLUDED_
#define _NGX_HTTP_OPAMP_HTTP_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_session.h"


ngx_int_t ngx_http_opamp_http_handler(ngx_http_request_t *r);

/* finishes r with status and a one-line text/plain reason */
ngx_int_t ngx_http_opamp_http_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *reason);

/* what the access log says of the request's message: NULL if not a plain
 * HTTP message of an OpAMP location */
ngx_http_opamp_log_t *ngx_http_opamp_http_log(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPAMP_HTTP_H_INCLUDED_ */
