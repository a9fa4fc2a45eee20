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
 * The API path, HTML-escaped for the <meta>, and the ETag, kept in the
 * location's conf (dashboard_api, dashboard_etag).
 */

char *
ngx_http_opamp_dashboard_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_opamp_loc_conf_t *olcf = conf;

    u_char                    *p;
    size_t                     len, i;
    uint32_t                   crc;
    ngx_str_t                 *value, api;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate, or the location has another handler";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2) {
        api = value[1];

    } else {
        ngx_str_set(&api, NGX_HTTP_OPAMP_DASHBOARD_API);
    }

    /* an absolute path of the same origin: the page's connect-src is
     * 'self', and a scheme or host here would be a mistake it cannot
     * follow */

    if (api.len == 0 || api.len > 1024 || api.data[0] != '/'
        || (api.len > 1 && api.data[1] == '/'))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"opamp_dashboard\" takes the admin API's "
                           "absolute path on this server, such as "
                           "/opamp-admin/, not \"%V\"", &api);
        return NGX_CONF_ERROR;
    }

    len = 0;

    for (i = 0; i < api.len; i++) {
        if (api.data[i] < 0x21 || api.data[i] == 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"opamp_dashboard\": the admin API path "
                               "\"%V\" has a space or control character",
                               &api);
            return NGX_CONF_ERROR;
        }

        switch (api.data[i]) {
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

    /* the page adds the resources' names: the path ends with a slash */

    if (api.data[api.len - 1] != '/') {
        len++;
    }

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    olcf->dashboard_api.data = p;
    olcf->dashboard_api.len = len;

    for (i = 0; i < api.len; i++) {
        switch (api.data[i]) {
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
            *p++ = api.data[i];
        }
    }

    if (api.data[api.len - 1] != '/') {
        *p++ = '/';
    }

    /* the files' digest, and the path's, since index.html carries it */

    crc = ngx_crc32_short(olcf->dashboard_api.data, olcf->dashboard_api.len);

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


static ngx_int_t
ngx_http_opamp_dashboard_handler(ngx_http_request_t *r)
{
    u_char                           *p, *last;
    ngx_int_t                         rc;
    ngx_str_t                         name, value;
    ngx_buf_t                        *b;
    ngx_uint_t                        i, n;
    ngx_chain_t                       out[3];
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

    /* the page: its head, the API path, its tail */

    n = (f == ngx_http_opamp_dashboard_files) ? 3 : 1;

    r->headers_out.content_length_n = 0;

    for (i = 0; i < n; i++) {
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (n == 1) {
            b->pos = f->body.data;
            b->last = f->body.data + f->body.len;

        } else if (i == 0) {
            b->pos = (u_char *) ngx_http_opamp_dashboard_index_head;
            b->last = b->pos + sizeof(ngx_http_opamp_dashboard_index_head)
                      - 1;

        } else if (i == 1) {
            b->pos = olcf->dashboard_api.data;
            b->last = b->pos + olcf->dashboard_api.len;

        } else {
            b->pos = (u_char *) ngx_http_opamp_dashboard_index_tail;
            b->last = b->pos + sizeof(ngx_http_opamp_dashboard_index_tail)
                      - 1;
        }

        b->memory = 1;
        b->last_buf = (i == n - 1 && r == r->main);
        b->last_in_chain = (i == n - 1);

        r->headers_out.content_length_n += b->last - b->pos;

        out[i].buf = b;
        out[i].next = (i == n - 1) ? NULL : &out[i + 1];
    }

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
