/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_utf8.h"


size_t
ngx_http_opamp_utf8_char(u_char *p, u_char *last)
{
    u_char      c;
    size_t      n, i;
    uint32_t    u, min;

    c = *p;

    if (c < 0x80) {
        return 1;
    }

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        u = c & 0x1f;
        min = 0x80;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        u = c & 0x0f;
        min = 0x800;

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        u = c & 0x07;
        min = 0x10000;

    } else {
        /* a continuation byte, an overlong lead (c0, c1) or f5..ff */
        return 0;
    }

    if ((size_t) (last - p) < n) {
        return 0;
    }

    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }

        u = (u << 6) | (p[i] & 0x3f);
    }

    if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
        return 0;
    }

    return n;
}


ngx_uint_t
ngx_http_opamp_utf8_valid(u_char *p, size_t len)
{
    size_t   n;
    u_char  *last;

    last = p + len;

    while (p < last) {
        if (*p < 0x80) {
            p++;
            continue;
        }

        n = ngx_http_opamp_utf8_char(p, last);
        if (n == 0) {
            return 0;
        }

        p += n;
    }

    return 1;
}
