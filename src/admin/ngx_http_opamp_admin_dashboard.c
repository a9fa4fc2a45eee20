/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * opamp_dashboard [<admin API path>]: serves the dashboard's three files
 * (src/dashboard/, embedded at build time by src/dashboard/embed.sh into
 * ngx_http_opamp_dashboard.h) from memory: GET and HEAD only, an ETag
 * that names the files and the API path, revalidated at each load, and a
 * Content-Security-Policy that lets the page load nothing but itself and
 * talk to nothing but its own origin.  The page reads the admin API at
 * the path the directive names, given to it in a <meta> of index.html.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_admin_dashboard.h"
#include "ngx_http_opamp_dashboard.h"


#define NGX_HTTP_OPAMP_DASHBOARD_API  "/opamp-admin/"


typedef struct {
    ngx_str_t   name;
    ngx_str_t   type;
    ngx_str_t   body;
} ngx_http_opamp_dashboard_file_t;


static ngx_int_t ngx_http_opamp_dashboard_path(ngx_conf_t *cf,
    ngx_str_t *in, ngx_str_t *out, ngx_uint_t slash, const char *what,
    const char *example);
static ngx_int_t ngx_http_opamp_dashboard_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_opamp_dashboard_header(ngx_http_request_t *r,
    const char *key, ngx_str_t *value);


static ngx_http_opamp_dashboard_file_t  ngx_http_opamp_dashboard_files[] = {

    { ngx_string("index.html"), ngx_string("text/html; charset=utf-8"),
      ngx_null_string },

    { ngx_string("dashboard.css"), ngx_string("text/css; charset=utf-8"),
      { sizeof(ngx_http_opamp_dashboard_css) - 1,
        (u_char *) ngx_http_opamp_dashboard_css } },

    { ngx_string("dashboard.js"),
      ngx_string("text/javascript; charset=utf-8"),
      { sizeof(ngx_http_opamp_dashboard_js) - 1,
        (u_char *) ngx_http_opamp_dashboard_js } },

    { ngx_null_string, ngx_null_string, ngx_null_string }
};


/*
 * Nothing from elsewhere: scripts, styles, images and the API calls of
 * the page's own origin only, no inline script or style, no frames, no
 * form posts, no <base> that would move the relative URLs; images of
 * data: URLs only for the empty icon that keeps the browser from asking
 * for /favicon.ico.
 */
static ngx_str_t  ngx_http_opamp_dashboard_csp = ngx_string(
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'");


/*
 * The paths, HTML-escaped for the page's <meta>s, and the ETag, kept in
 * the location's conf (dashboard_api, dashboard_metrics, dashboard_etag).
 */

char *
ngx_http_opamp_dashboard_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_opamp_loc_conf_t *olcf = conf;

    uint32_t                   crc;
    ngx_str_t                 *value, api, metrics;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate, or the location has another handler";
    }

    value = cf->args->elts;

    if (cf->args->nelts > 1) {
        api = value[1];

    } else {
        ngx_str_set(&api, NGX_HTTP_OPAMP_DASHBOARD_API);
    }

    ngx_str_null(&metrics);

    if (cf->args->nelts > 2) {
        metrics = value[2];
    }

    /* the page adds the resources' names: the API path ends with a
     * slash; the metrics path is one resource */

    if (ngx_http_opamp_dashboard_path(cf, &api, &olcf->dashboard_api, 1,
                                      "admin API", "/opamp-admin/")
        != NGX_OK
        || (metrics.len
            && ngx_http_opamp_dashboard_path(cf, &metrics,
                                             &olcf->dashboard_metrics, 0,
                                             "metrics", "/metrics")
               != NGX_OK))
    {
        return NGX_CONF_ERROR;
    }

    /* the files' digest, and the paths', since index.html carries them */

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, olcf->dashboard_api.data,
                     olcf->dashboard_api.len);
    ngx_crc32_update(&crc, (u_char *) " ", 1);
    ngx_crc32_update(&crc, olcf->dashboard_metrics.data,
                     olcf->dashboard_metrics.len);
    ngx_crc32_final(crc);

    olcf->dashboard_etag.data = ngx_pnalloc(cf->pool,
                                    sizeof(NGX_HTTP_OPAMP_DASHBOARD_DIGEST)
                                    + 2 + 1 + 8);
    if (olcf->dashboard_etag.data == NULL) {
        return NGX_CONF_ERROR;
    }

    olcf->dashboard_etag.len = ngx_sprintf(olcf->dashboard_etag.data,
                                           "\"%s-%08xD\"",
                                           NGX_HTTP_OPAMP_DASHBOARD_DIGEST,
                                           crc)
                               - olcf->dashboard_etag.data;

    clcf->handler = ngx_http_opamp_dashboard_handler;

    return NGX_CONF_OK;
}


/*
 * A path of the directive, checked and HTML-escaped into *out.  An
 * absolute path of the same origin: the page's connect-src is 'self', and
 * a scheme or host would be a mistake it cannot follow.
 */

static ngx_int_t
ngx_http_opamp_dashboard_path(ngx_conf_t *cf, ngx_str_t *in, ngx_str_t *out,
    ngx_uint_t slash, const char *what, const char *example)
{
    u_char  *p;
    size_t   len, i;

    if (in->len == 0 || in->len > 1024 || in->data[0] != '/'
        || (in->len > 1 && in->data[1] == '/'))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"opamp_dashboard\" takes the %s's absolute "
                           "path on this server, such as %s, not \"%V\"",
                           what, example, in);
        return NGX_ERROR;
    }

    len = 0;

    for (i = 0; i < in->len; i++) {
        if (in->data[i] < 0x21 || in->data[i] == 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"opamp_dashboard\": the %s path \"%V\" "
                               "has a space or control character", what, in);
            return NGX_ERROR;
        }

        switch (in->data[i]) {
        case '&':
            len += sizeof("&amp;") - 1;
            break;
        case '"':
            len += sizeof("&quot;") - 1;
            break;
        case '<':
        case '>':
            len += sizeof("&lt;") - 1;
            break;
        default:
            len++;
        }
    }

    slash = slash && in->data[in->len - 1] != '/';

    p = ngx_pnalloc(cf->pool, len + slash);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;
    out->len = len + slash;

    for (i = 0; i < in->len; i++) {
        switch (in->data[i]) {
        case '&':
            p = ngx_cpymem(p, "&amp;", 5);
            break;
        case '"':
            p = ngx_cpymem(p, "&quot;", 6);
            break;
        case '<':
            p = ngx_cpymem(p, "&lt;", 4);
            break;
        case '>':
            p = ngx_cpymem(p, "&gt;", 4);
            break;
        default:
            *p++ = in->data[i];
        }
    }

    if (slash) {
        *p = '/';
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_dashboard_handler(ngx_http_request_t *r)
{
    u_char                           *p, *last;
    ngx_int_t                         rc;
    ngx_str_t                         name, value;
    ngx_buf_t                        *b;
    ngx_uint_t                        i, k, n;
    ngx_str_t                         part[5];
    ngx_chain_t                       out[5];
    ngx_table_elt_t                  *h;
    ngx_http_opamp_loc_conf_t        *olcf;
    ngx_http_opamp_dashboard_file_t  *f;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        ngx_str_set(&value, "GET, HEAD");

        if (ngx_http_opamp_dashboard_header(r, "Allow", &value) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    /* the file is the path's last segment; the location's own path (with
     * its slash) is the page */

    last = r->uri.data + r->uri.len;

    for (p = last; p > r->uri.data && p[-1] != '/'; p--) {
        /* void */
    }

    name.data = p;
    name.len = last - p;

    if (name.len == 0) {
        ngx_str_set(&name, "index.html");
    }

    for (f = ngx_http_opamp_dashboard_files; f->name.len; f++) {
        if (f->name.len == name.len
            && ngx_strncmp(f->name.data, name.data, name.len) == 0)
        {
            break;
        }
    }

    if (f->name.len == 0) {
        return NGX_HTTP_NOT_FOUND;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type = f->type;
    r->headers_out.content_type_len = f->type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* revalidated at every load (If-None-Match: 304 from nginx's
     * not_modified filter), so that a new module shows its new page */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "ETag");
    h->value = olcf->dashboard_etag;
    r->headers_out.etag = h;

    ngx_str_set(&value, "no-cache");

    if (ngx_http_opamp_dashboard_header(r, "Cache-Control", &value) != NGX_OK
        || ngx_http_opamp_dashboard_header(r, "Content-Security-Policy",
                                           &ngx_http_opamp_dashboard_csp)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&value, "nosniff");

    if (ngx_http_opamp_dashboard_header(r, "X-Content-Type-Options", &value)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&value, "no-referrer");

    if (ngx_http_opamp_dashboard_header(r, "Referrer-Policy", &value)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the page: its head, the API path, its middle, the metrics path,
     * its tail */

    if (f == ngx_http_opamp_dashboard_files) {
        part[0].data = (u_char *) ngx_http_opamp_dashboard_index_head;
        part[0].len = sizeof(ngx_http_opamp_dashboard_index_head) - 1;
        part[1] = olcf->dashboard_api;
        part[2].data = (u_char *) ngx_http_opamp_dashboard_index_mid;
        part[2].len = sizeof(ngx_http_opamp_dashboard_index_mid) - 1;
        part[3] = olcf->dashboard_metrics;
        part[4].data = (u_char *) ngx_http_opamp_dashboard_index_tail;
        part[4].len = sizeof(ngx_http_opamp_dashboard_index_tail) - 1;
        n = 5;

    } else {
        part[0] = f->body;
        n = 1;
    }

    r->headers_out.content_length_n = 0;
    k = 0;

    for (i = 0; i < n; i++) {

        /* no metrics path: nothing there (nginx takes an empty buffer
         * for a mistake) */

        if (part[i].len == 0) {
            continue;
        }

        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        b->pos = part[i].data;
        b->last = part[i].data + part[i].len;
        b->memory = 1;

        r->headers_out.content_length_n += part[i].len;

        out[k].buf = b;
        out[k].next = NULL;

        if (k > 0) {
            out[k - 1].next = &out[k];
        }

        k++;
    }

    /* the page's parts and the other files are never empty */

    out[k - 1].buf->last_buf = (r == r->main);
    out[k - 1].buf->last_in_chain = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, out);
}


static ngx_int_t
ngx_http_opamp_dashboard_header(ngx_http_request_t *r, const char *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value = *value;

    return NGX_OK;
}
