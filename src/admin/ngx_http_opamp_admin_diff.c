/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * A unified diff of two versions of a text file, for the admin API's diff
 * of two config versions (docs/admin-api.md, "Config versions"): lines
 * common to both ends are set aside, the rest is compared with Myers'
 * O((N+M)D) algorithm, and hunks get three lines of context, as `diff -u`
 * writes them.  What it may cost is bounded: at most 500 differing lines
 * (D), and a work budget per request shared by its files; past either the
 * file's diff is not shown, with the reason.
 */


#include "ngx_http_opamp_admin_internal.h"


#define NGX_HTTP_OPAMP_DIFF_MAX_D        500
#define NGX_HTTP_OPAMP_DIFF_CONTEXT      3

#define NGX_HTTP_OPAMP_DIFF_EQ           0
#define NGX_HTTP_OPAMP_DIFF_DEL          1
#define NGX_HTTP_OPAMP_DIFF_INS          2


typedef struct {
    u_char      *data;
    size_t       len;
    uint32_t     hash;
    unsigned     nonl:1;     /* the last line, without a newline */
} ngx_http_opamp_diff_line_t;


typedef struct {
    ngx_pool_t                  *pool;
    ngx_http_opamp_diff_line_t  *a;
    ngx_http_opamp_diff_line_t  *b;
    ngx_uint_t                   na;
    ngx_uint_t                   nb;
    u_char                      *ops;
    ngx_uint_t                   nops;
    ngx_uint_t                  *budget;
} ngx_http_opamp_diff_t;


static ngx_int_t ngx_http_opamp_diff_split(ngx_pool_t *pool, ngx_str_t *s,
    ngx_http_opamp_diff_line_t **lines, ngx_uint_t *n);
static ngx_int_t ngx_http_opamp_diff_myers(ngx_http_opamp_diff_t *df,
    ngx_uint_t from, ngx_uint_t na, ngx_uint_t nb);
static u_char *ngx_http_opamp_diff_hunks(ngx_http_opamp_diff_t *df,
    ngx_str_t *name, size_t *len);


static ngx_inline ngx_uint_t
ngx_http_opamp_diff_eq(ngx_http_opamp_diff_line_t *x,
    ngx_http_opamp_diff_line_t *y)
{
    return x->hash == y->hash && x->len == y->len && x->nonl == y->nonl
           && ngx_memcmp(x->data, y->data, x->len) == 0;
}


ngx_int_t
ngx_http_opamp_admin_diff_text(ngx_http_opamp_json_t *j, ngx_str_t *name,
    ngx_str_t *a, ngx_str_t *b, ngx_uint_t *budget, const char **reason)
{
    u_char                 *out;
    size_t                  len;
    ngx_int_t               rc;
    ngx_uint_t              pre, suf, i;
    ngx_http_opamp_diff_t   df;

    df.pool = j->pool;
    df.budget = budget;

    /* splitting reads each byte once: what it costs is the sizes */

    if (a->len + b->len > *budget) {
        *reason = "the files are too large to compare";
        return NGX_DECLINED;
    }

    *budget -= a->len + b->len;

    if (ngx_http_opamp_diff_split(df.pool, a, &df.a, &df.na) != NGX_OK
        || ngx_http_opamp_diff_split(df.pool, b, &df.b, &df.nb) != NGX_OK)
    {
        return NGX_ERROR;
    }

    df.ops = ngx_pnalloc(df.pool, df.na + df.nb + 1);
    if (df.ops == NULL) {
        return NGX_ERROR;
    }

    /* the lines both start and end with */

    pre = 0;

    while (pre < df.na && pre < df.nb
           && ngx_http_opamp_diff_eq(&df.a[pre], &df.b[pre]))
    {
        pre++;
    }

    suf = 0;

    while (suf < df.na - pre && suf < df.nb - pre
           && ngx_http_opamp_diff_eq(&df.a[df.na - 1 - suf],
                                     &df.b[df.nb - 1 - suf]))
    {
        suf++;
    }

    ngx_memset(df.ops, NGX_HTTP_OPAMP_DIFF_EQ, pre);
    df.nops = pre;

    rc = ngx_http_opamp_diff_myers(&df, pre, df.na - pre - suf,
                                   df.nb - pre - suf);
    if (rc == NGX_DECLINED) {
        *reason = "too many changes to show";
        return NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    for (i = 0; i < suf; i++) {
        df.ops[df.nops++] = NGX_HTTP_OPAMP_DIFF_EQ;
    }

    /* the same text (a file whose content type alone changed): no hunk,
     * and as diff -u, no header either */

    if (df.nops == pre + suf) {
        ngx_http_opamp_json_string(j, (u_char *) "", 0);
        return NGX_OK;
    }

    out = ngx_http_opamp_diff_hunks(&df, name, &len);
    if (out == NULL) {
        return NGX_ERROR;
    }

    if (len > *budget) {
        *reason = "the diff is too long to show";
        return NGX_DECLINED;
    }

    *budget -= len;

    ngx_http_opamp_json_string(j, out, len);

    return NGX_OK;
}


/* the lines of s; a newline ends a line, a last line may have none */

static ngx_int_t
ngx_http_opamp_diff_split(ngx_pool_t *pool, ngx_str_t *s,
    ngx_http_opamp_diff_line_t **lines, ngx_uint_t *n)
{
    u_char                      *p, *last, *nl;
    uint32_t                     h;
    ngx_uint_t                   count;
    ngx_http_opamp_diff_line_t  *l;

    count = 0;
    last = s->data + s->len;

    for (p = s->data; p < last; p++) {
        if (*p == '\n') {
            count++;
        }
    }

    if (s->len && last[-1] != '\n') {
        count++;
    }

    l = ngx_palloc(pool, (count + 1) * sizeof(ngx_http_opamp_diff_line_t));
    if (l == NULL) {
        return NGX_ERROR;
    }

    *lines = l;
    *n = count;

    for (p = s->data; p < last; p = nl + 1, l++) {
        nl = ngx_strlchr(p, last, '\n');

        l->data = p;
        l->nonl = (nl == NULL);

        if (nl == NULL) {
            nl = last - 1;
            l->len = last - p;

        } else {
            l->len = nl - p;
        }

        /* FNV-1a: unequal lines seldom compare past it */

        h = 2166136261u;

        for (count = 0; count < l->len; count++) {
            h = (h ^ l->data[count]) * 16777619u;
        }

        l->hash = h;
    }

    return NGX_OK;
}


/*
 * The shortest edit script of a[from..from+na) into b[from..from+nb),
 * appended to df->ops: Myers' greedy forward search, keeping V of each D
 * for the way back.  NGX_DECLINED past NGX_HTTP_OPAMP_DIFF_MAX_D or the
 * budget.
 */

static ngx_int_t
ngx_http_opamp_diff_myers(ngx_http_opamp_diff_t *df, ngx_uint_t from,
    ngx_uint_t na, ngx_uint_t nb)
{
    u_char                       *ops;
    int32_t                      *v, **trace;
    ngx_int_t                     d, k, x, y, px, pk, dmax, off, n, m;
    ngx_uint_t                    i, cost;
    ngx_http_opamp_diff_line_t   *a, *b;

    a = df->a + from;
    b = df->b + from;
    n = na;
    m = nb;

    if (n == 0 || m == 0) {
        /* all deleted or all inserted: nothing to search */
        ngx_memset(df->ops + df->nops, NGX_HTTP_OPAMP_DIFF_DEL, n);
        df->nops += n;
        ngx_memset(df->ops + df->nops, NGX_HTTP_OPAMP_DIFF_INS, m);
        df->nops += m;
        return NGX_OK;
    }

    dmax = ngx_min(n + m, NGX_HTTP_OPAMP_DIFF_MAX_D);
    off = dmax + 1;

    v = ngx_pcalloc(df->pool, (2 * dmax + 3) * sizeof(int32_t));
    trace = ngx_palloc(df->pool, (dmax + 1) * sizeof(int32_t *));
    if (v == NULL || trace == NULL) {
        return NGX_ERROR;
    }

    for (d = 0; d <= dmax; d++) {

        /* V as the search for d finds it: k of -d-1 .. d+1 */

        cost = 2 * d + 3;

        if (cost > *df->budget) {
            return NGX_DECLINED;
        }

        *df->budget -= cost;

        trace[d] = ngx_palloc(df->pool, cost * sizeof(int32_t));
        if (trace[d] == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(trace[d], &v[off - d - 1], cost * sizeof(int32_t));

        for (k = -d; k <= d; k += 2) {

            if (k == -d || (k != d && v[off + k - 1] < v[off + k + 1])) {
                x = v[off + k + 1];

            } else {
                x = v[off + k - 1] + 1;
            }

            y = x - k;

            while (x < n && y < m && ngx_http_opamp_diff_eq(&a[x], &b[y])) {
                if (*df->budget == 0) {
                    return NGX_DECLINED;
                }

                (*df->budget)--;
                x++;
                y++;
            }

            v[off + k] = (int32_t) x;

            if (x >= n && y >= m) {
                goto found;
            }
        }
    }

    return NGX_DECLINED;

found:

    /* back from (n, m) to (0, 0), the script written from its end */

    ops = ngx_pnalloc(df->pool, n + m);
    if (ops == NULL) {
        return NGX_ERROR;
    }

    i = n + m;
    x = n;
    y = m;

    for ( /* void */ ; d >= 0; d--) {
        v = trace[d];                   /* v[k + d + 1]: V's k as it was */
        k = x - y;

        if (k == -d || (k != d && v[k - 1 + d + 1] < v[k + 1 + d + 1])) {
            pk = k + 1;

        } else {
            pk = k - 1;
        }

        px = (d == 0) ? 0 : v[pk + d + 1];

        while (x > px && y > px - pk) {
            ops[--i] = NGX_HTTP_OPAMP_DIFF_EQ;
            x--;
            y--;
        }

        if (d > 0) {
            ops[--i] = (x == px) ? NGX_HTTP_OPAMP_DIFF_INS
                                 : NGX_HTTP_OPAMP_DIFF_DEL;
            x = px;
            y = px - pk;
        }
    }

    ngx_memcpy(df->ops + df->nops, ops + i, n + m - i);
    df->nops += n + m - i;

    return NGX_OK;
}


/* hunks as diff -u writes them, under a "--- a/<name>" header */

static u_char *
ngx_http_opamp_diff_hunks(ngx_http_opamp_diff_t *df, ngx_str_t *name,
    size_t *len)
{
    u_char                      *out, *p, c;
    size_t                       size;
    ngx_uint_t                   i, s, e, last, ai, bi, la, lb, sa, sb, g;
    ngx_http_opamp_diff_line_t  *l;

    /* at most every line of both, each with its mark, newline and a "no
     * newline" line, and a header per line of the script */

    size = 2 * name->len + 32;

    for (i = 0; i < df->na; i++) {
        size += df->a[i].len + 2 + 32 + 2 * NGX_INT_T_LEN + 16;
    }

    for (i = 0; i < df->nb; i++) {
        size += df->b[i].len + 2 + 32 + 2 * NGX_INT_T_LEN + 16;
    }

    out = ngx_pnalloc(df->pool, size);
    if (out == NULL) {
        return NULL;
    }

    p = ngx_sprintf(out, "--- a/%V\n+++ b/%V\n", name, name);

    ai = 0;
    bi = 0;
    i = 0;

    while (i < df->nops) {

        /* the next change */

        while (i < df->nops && df->ops[i] == NGX_HTTP_OPAMP_DIFF_EQ) {
            i++;
            ai++;
            bi++;
        }

        if (i == df->nops) {
            break;
        }

        /* its hunk: changes less than twice the context apart join */

        last = i;

        for (e = i; e < df->nops; e++) {
            if (df->ops[e] != NGX_HTTP_OPAMP_DIFF_EQ) {
                last = e;

            } else if (e - last > 2 * NGX_HTTP_OPAMP_DIFF_CONTEXT) {
                break;
            }
        }

        g = ngx_min(i, NGX_HTTP_OPAMP_DIFF_CONTEXT);
        s = i - g;
        sa = ai - g;
        sb = bi - g;
        e = ngx_min(last + 1 + NGX_HTTP_OPAMP_DIFF_CONTEXT, df->nops);

        la = 0;
        lb = 0;

        for (i = s; i < e; i++) {
            la += (df->ops[i] != NGX_HTTP_OPAMP_DIFF_INS);
            lb += (df->ops[i] != NGX_HTTP_OPAMP_DIFF_DEL);
        }

        /* a range of one line is its number alone; an empty one names
         * the line before it */

        p = ngx_cpymem(p, "@@ -", 4);

        if (la == 1) {
            p = ngx_sprintf(p, "%ui", sa + 1);

        } else {
            p = ngx_sprintf(p, "%ui,%ui", la ? sa + 1 : sa, la);
        }

        p = ngx_cpymem(p, " +", 2);

        if (lb == 1) {
            p = ngx_sprintf(p, "%ui", sb + 1);

        } else {
            p = ngx_sprintf(p, "%ui,%ui", lb ? sb + 1 : sb, lb);
        }

        p = ngx_cpymem(p, " @@\n", 4);

        ai = sa;
        bi = sb;

        for (i = s; i < e; i++) {
            switch (df->ops[i]) {

            case NGX_HTTP_OPAMP_DIFF_DEL:
                c = '-';
                l = &df->a[ai++];
                break;

            case NGX_HTTP_OPAMP_DIFF_INS:
                c = '+';
                l = &df->b[bi++];
                break;

            default:
                c = ' ';
                l = &df->a[ai++];
                bi++;
                break;
            }

            *p++ = c;
            p = ngx_cpymem(p, l->data, l->len);
            *p++ = '\n';

            if (l->nonl) {
                p = ngx_cpymem(p, "\\ No newline at end of file\n",
                               sizeof("\\ No newline at end of file\n")
                               - 1);
            }
        }
    }

    *len = p - out;

    return out;
}
