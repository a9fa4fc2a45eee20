/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_uid.h"


static const unsigned char  ngx_http_opamp_hex[] = "0123456789abcdef";


void
ngx_http_opamp_uid_v7(unsigned char *uid, uint64_t unix_ms,
    const unsigned char *random10)
{
    int  i;

    /* 48-bit big-endian Unix milliseconds, as RFC 9562 section 5.7 says */

    for (i = 0; i < 6; i++) {
        uid[i] = (unsigned char) (unix_ms >> (40 - 8 * i));
    }

    for (i = 0; i < 10; i++) {
        uid[6 + i] = random10[i];
    }

    uid[6] = (unsigned char) (0x70 | (uid[6] & 0x0f));     /* version 7 */
    uid[8] = (unsigned char) (0x80 | (uid[8] & 0x3f));     /* variant 10 */
}


void
ngx_http_opamp_uid_format(unsigned char *dst, const unsigned char *uid)
{
    int  i;

    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            *dst++ = '-';
        }

        *dst++ = ngx_http_opamp_hex[uid[i] >> 4];
        *dst++ = ngx_http_opamp_hex[uid[i] & 0x0f];
    }
}


static int
ngx_http_opamp_hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


int
ngx_http_opamp_uid_parse(unsigned char *uid, const unsigned char *src,
    size_t len)
{
    int     hi, lo;
    size_t  i, n;

    if (len != 36 && len != 32) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; /* void */) {

        if (len == 36 && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (src[i] != '-') {
                return -1;
            }

            i++;
            continue;
        }

        hi = ngx_http_opamp_hex_digit(src[i]);
        lo = ngx_http_opamp_hex_digit(src[i + 1]);

        if (hi < 0 || lo < 0) {
            return -1;
        }

        uid[n++] = (unsigned char) (hi << 4 | lo);
        i += 2;
    }

    return 0;
}


int
ngx_http_opamp_hex_decode(unsigned char *dst, const unsigned char *src,
    size_t len)
{
    int     hi, lo;
    size_t  i;

    if (len % 2) {
        return -1;
    }

    for (i = 0; i < len; i += 2) {
        hi = ngx_http_opamp_hex_digit(src[i]);
        lo = ngx_http_opamp_hex_digit(src[i + 1]);

        if (hi < 0 || lo < 0) {
            return -1;
        }

        *dst++ = (unsigned char) (hi << 4 | lo);
    }

    return 0;
}
