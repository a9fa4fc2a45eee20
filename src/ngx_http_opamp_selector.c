/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_selector.h"


ngx_int_t
ngx_http_opamp_selector_check(u_char *p, size_t len)
{
    u_char  *last, *comma, *eq;

    /* an absent selector (NULL, 0) matches every agent */
    if (len == 0) {
        return NGX_OK;
    }

    last = p + len;

    while (p < last) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        eq = ngx_strlchr(p, comma, '=');

        if (eq == NULL || eq == p) {
            return NGX_ERROR;
        }

        p = comma + 1;
    }

    if (last[-1] == ',') {
        return NGX_ERROR;
    }

    return NGX_OK;
}
