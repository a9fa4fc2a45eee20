/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Instance UIDs: UUIDv7 generation and the text forms used in Redis keys,
 * HTTP headers and logs.  Pure code: no nginx types, unit-tested alone.
 */

#ifndef _NGX_HTTP_OPAMP_UID_H_INCLUDED_
#define _NGX_HTTP_OPAMP_UID_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/* writes 16 bytes: RFC 9562 version 7, unix_ms timestamp, random rest */
void ngx_http_opamp_uid_v7(unsigned char *uid, uint64_t unix_ms,
    const unsigned char *random10);

/* writes 36 characters "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", no NUL */
void ngx_http_opamp_uid_format(unsigned char *dst, const unsigned char *uid);

/* parses the canonical form (case-insensitive) or 32 plain hex digits;
 * returns 0 on success, -1 on anything else */
int ngx_http_opamp_uid_parse(unsigned char *uid, const unsigned char *src,
    size_t len);

/* len hex digits (either case) into len / 2 bytes; 0, or -1 on anything
 * that is not an even number of hex digits */
int ngx_http_opamp_hex_decode(unsigned char *dst, const unsigned char *src,
    size_t len);


#endif /* _NGX_HTTP_OPAMP_UID_H_INCLUDED_ */
