/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_variables.h"
#include "ngx_http_opamp_http.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_uid.h"
#include "ngx_http_opamp_websocket.h"


static ngx_int_t ngx_http_opamp_variable_uid(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_opamp_variable_sequence_num(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_opamp_variable_transport(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_opamp_variable_reply(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_opamp_log_t *ngx_http_opamp_variable_log(
    ngx_http_request_t *r, ngx_http_variable_value_t *v);
static void ngx_http_opamp_variable_set(ngx_http_variable_value_t *v,
    u_char *data, size_t len);


static ngx_http_variable_t  ngx_http_opamp_variables[] = {

    { ngx_string("opamp_instance_uid"), NULL,
      ngx_http_opamp_variable_uid, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("opamp_sequence_num"), NULL,
      ngx_http_opamp_variable_sequence_num, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("opamp_transport"), NULL,
      ngx_http_opamp_variable_transport, 0, 0, 0 },

    { ngx_string("opamp_reply"), NULL,
      ngx_http_opamp_variable_reply, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_opamp_variables_add(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_opamp_variables; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* the facts of the request's message, or NULL with v not found */

static ngx_http_opamp_log_t *
ngx_http_opamp_variable_log(ngx_http_request_t *r,
    ngx_http_variable_value_t *v)
{
    ngx_http_opamp_log_t  *log;

    log = (r->method == NGX_HTTP_GET) ? ngx_http_opamp_ws_log(r)
                                      : ngx_http_opamp_http_log(r);

    if (log == NULL || !log->has_uid) {
        v->not_found = 1;
        return NULL;
    }

    return log;
}


static void
ngx_http_opamp_variable_set(ngx_http_variable_value_t *v, u_char *data,
    size_t len)
{
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = data;
}


static ngx_int_t
ngx_http_opamp_variable_uid(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                *p;
    ngx_http_opamp_log_t  *log;

    log = ngx_http_opamp_variable_log(r, v);
    if (log == NULL) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_HTTP_OPAMP_UID_STR_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_http_opamp_uid_format(p, log->uid);

    ngx_http_opamp_variable_set(v, p, NGX_HTTP_OPAMP_UID_STR_LEN);

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_variable_sequence_num(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                *p;
    ngx_http_opamp_log_t  *log;

    log = ngx_http_opamp_variable_log(r, v);
    if (log == NULL) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_http_opamp_variable_set(v, p,
                                ngx_sprintf(p, "%uL", log->sequence_num) - p);

    return NGX_OK;
}


/* "http" for a plain HTTP message, "websocket" for a handshake */

static ngx_int_t
ngx_http_opamp_variable_transport(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_opamp_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (olcf == NULL || !olcf->enable
        || !(r->method & (NGX_HTTP_GET|NGX_HTTP_POST)))
    {
        v->not_found = 1;
        return NGX_OK;
    }

    if (r->method == NGX_HTTP_GET) {
        ngx_http_opamp_variable_set(v, (u_char *) "websocket",
                                    sizeof("websocket") - 1);

    } else {
        ngx_http_opamp_variable_set(v, (u_char *) "http",
                                    sizeof("http") - 1);
    }

    return NGX_OK;
}


/* the parts the reply carried, comma-separated ("none": only the
 * required fields), as the metrics name them */

static ngx_int_t
ngx_http_opamp_variable_reply(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                *p, *last;
    size_t                 size;
    ngx_uint_t             i;
    const char            *name;
    ngx_http_opamp_log_t  *log;

    log = (r->method == NGX_HTTP_GET) ? ngx_http_opamp_ws_log(r)
                                      : ngx_http_opamp_http_log(r);

    if (log == NULL || !log->replied) {
        v->not_found = 1;
        return NGX_OK;
    }

    size = sizeof("none") - 1;

    for (i = 0; i < NGX_HTTP_OPAMP_M_NCARRIES; i++) {
        size += ngx_strlen(ngx_http_opamp_metrics_part_name(i)) + 1;
    }

    p = ngx_pnalloc(r->pool, size);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;
    last = p + size;

    for (i = 0; i < NGX_HTTP_OPAMP_M_NCARRIES; i++) {
        if (!(log->reply & ((ngx_uint_t) 1 << i))) {
            continue;
        }

        name = ngx_http_opamp_metrics_part_name(i);

        if (p != v->data) {
            *p++ = ',';
        }

        p = ngx_slprintf(p, last, "%s", name);
    }

    if (p == v->data) {
        p = ngx_cpymem(p, "none", sizeof("none") - 1);
    }

    ngx_http_opamp_variable_set(v, v->data, p - v->data);

    return NGX_OK;
}
