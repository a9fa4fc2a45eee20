/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Strict UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF), shared by the wire checks of what agents send and by the JSON
 * the admin API writes, which must stay valid whatever reached Redis.
 */

#ifndef _NGX_HTTP_OPAMP_UTF8_H_INCLUDED_
#define _NGX_HTTP_OPAMP_UTF8_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the length (1 to 4) of the valid character at p, or 0 if p starts an
 * invalid or truncated sequence; p < last */
size_t ngx_http_opamp_utf8_char(u_char *p, u_char *last);

/* whether all of p..p+len is valid UTF-8 */
ngx_uint_t ngx_http_opamp_utf8_valid(u_char *p, size_t len);


#endif /* _NGX_HTTP_OPAMP_UTF8_H_INCLUDED_ */
