/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Group selectors: ngx_http_opamp_selector_check(), which the admin API
 * applies to what an operator PUTs.  src/lua/lib/owed_config.lua (of
 * report.lua and check.lua) parses the stored selector again in Redis
 * (parse_selector: the pairs of
 * string.gmatch(s, '[^,]+'), each matching '^([^=]+)=(.*)$', else no
 * match at all); Lua cannot run here, so parse_selector is written again
 * below, and the check must only accept what it parses into the same
 * pairs as a plain split on "," and the first "=".
 */


#include "ngx_http_opamp_selector.h"
#include "shim.h"


/* owed_config.lua's parse_selector: the number of pairs, or -1 (false) */

static ngx_int_t
fuzz_lua_parse(u_char *s, size_t len, u_char **keys, size_t *klen,
    u_char **vals, size_t *vlen)
{
    size_t      i, start, eq;
    ngx_int_t   n;

    n = 0;
    i = 0;

    while (i < len) {
        /* gmatch '[^,]+': skip commas, take the longest run of others */
        if (s[i] == ',') {
            i++;
            continue;
        }

        start = i;

        while (i < len && s[i] != ',') {
            i++;
        }

        /* '^([^=]+)=(.*)$': a non-empty key up to the first '=' */
        for (eq = start; eq < i && s[eq] != '='; eq++) { /* void */ }

        if (eq == start || eq == i) {
            return -1;
        }

        keys[n] = s + start;
        klen[n] = eq - start;
        vals[n] = s + eq + 1;
        vlen[n] = i - eq - 1;
        n++;
    }

    return n;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *buf, *p, *last, *comma, *eq;
    u_char    **keys, **vals;
    size_t     *klen, *vlen;
    ngx_int_t   n, k;

    buf = malloc(size ? size : 1);
    keys = malloc((size / 2 + 1) * sizeof(u_char *));
    vals = malloc((size / 2 + 1) * sizeof(u_char *));
    klen = malloc((size / 2 + 1) * sizeof(size_t));
    vlen = malloc((size / 2 + 1) * sizeof(size_t));
    FUZZ_CHECK(buf && keys && vals && klen && vlen, "malloc");

    memcpy(buf, data, size);

    if (ngx_http_opamp_selector_check(size ? buf : NULL, size) == NGX_OK) {
        n = fuzz_lua_parse(buf, size, keys, klen, vals, vlen);

        FUZZ_CHECK(n >= 0, "a selector the admin API accepts does not "
                           "parse in lib/owed_config.lua");

        /* the same pairs as "," then the first "=" */

        p = buf;
        last = buf + size;
        k = 0;

        while (p < last) {
            comma = ngx_strlchr(p, last, ',');
            if (comma == NULL) {
                comma = last;
            }

            eq = ngx_strlchr(p, comma, '=');
            FUZZ_CHECK(eq != NULL && k < n, "pairs differ");
            FUZZ_CHECK(keys[k] == p && klen[k] == (size_t) (eq - p)
                       && vals[k] == eq + 1
                       && vlen[k] == (size_t) (comma - eq - 1),
                       "owed_config.lua would read other pairs");
            k++;
            p = comma + 1;
        }

        FUZZ_CHECK(k == n, "owed_config.lua would read more pairs");
    }

    free(vlen);
    free(klen);
    free(vals);
    free(keys);
    free(buf);

    return 0;
}
