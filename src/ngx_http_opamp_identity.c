/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * An agent's identity and server-set attributes, as nginx verified them:
 * evaluated from the location's variables once per request, encoded the
 * way the scripts read attributes (lib/attributes.lua reads an
 * AgentDescription's identifying_attributes), and digested for the beat
 * mark, so that a heartbeat presented under another identity or other
 * attributes never takes the short way (docs/security.md).
 */


#include "ngx_http_opamp_identity.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_utf8.h"

#include <ngx_sha1.h>


char *
ngx_http_opamp_identity_attribute(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_opamp_loc_conf_t *olcf = conf;

    u_char                            *p;
    ngx_str_t                         *value;
    ngx_uint_t                         i;
    ngx_http_opamp_server_attr_t      *a;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (olcf->server_attributes == NGX_CONF_UNSET_PTR) {
        olcf->server_attributes = ngx_array_create(cf->pool, 4,
                                       sizeof(ngx_http_opamp_server_attr_t));
        if (olcf->server_attributes == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (olcf->server_attributes->nelts == NGX_HTTP_OPAMP_SERVER_ATTRS_MAX) {
        return "is repeated more than 16 times";
    }

    /* a selector is "k=v,k2=v2": a name with '=' or ',' is never matched */

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (*p == '=' || *p == ',' || *p < ' ' || *p == 0x7f) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid attribute name \"%V\": no \"=\", "
                               "\",\" or control characters", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (value[1].len == 0 || value[1].len > 256
        || !ngx_http_opamp_utf8_valid(value[1].data, value[1].len))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid attribute name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    a = olcf->server_attributes->elts;

    for (i = 0; i < olcf->server_attributes->nelts; i++) {
        if (a[i].name.len == value[1].len
            && ngx_strncmp(a[i].name.data, value[1].data, value[1].len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate attribute \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    a = ngx_array_push(olcf->server_attributes);
    if (a == NULL) {
        return NGX_CONF_ERROR;
    }

    /* ngx_conf_parse() leaves every argument NUL-terminated */
    a->name = value[1];

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[2];
    ccv.complex_value = &a->value;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_opamp_identity_eval(ngx_http_request_t *r,
    ngx_http_opamp_identity_t **out, const char **reason)
{
    u_char                            *p;
    size_t                             size, packed;
    ngx_str_t                          identity;
    ngx_str_t                          values[NGX_HTTP_OPAMP_SERVER_ATTRS_MAX];
    ngx_uint_t                         i, n;
    ngx_sha1_t                         sha1;
    u_char                             digest[20], len[NGX_INT_T_LEN];
    ngx_http_opamp_identity_t         *id;
    ngx_http_opamp_loc_conf_t         *olcf;
    ngx_http_opamp_server_attr_t      *sa;
    Opamp__Proto__V1__KeyValue         kv[NGX_HTTP_OPAMP_SERVER_ATTRS_MAX];
    Opamp__Proto__V1__KeyValue        *kvp[NGX_HTTP_OPAMP_SERVER_ATTRS_MAX];
    Opamp__Proto__V1__AnyValue         av[NGX_HTTP_OPAMP_SERVER_ATTRS_MAX];
    Opamp__Proto__V1__AgentDescription desc =
                             OPAMP__PROTO__V1__AGENT_DESCRIPTION__INIT;

    *out = NULL;
    *reason = NULL;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    n = olcf->server_attributes ? olcf->server_attributes->nelts : 0;

    if (olcf->identity == NULL && n == 0) {
        return NGX_OK;
    }

    ngx_str_null(&identity);

    if (olcf->identity) {
        if (ngx_http_complex_value(r, olcf->identity, &identity) != NGX_OK) {
            return NGX_ERROR;
        }

        /* a location that names agents by an identity takes none without
         * one: an agent nginx could not tell would own uids anonymously */

        if (identity.len == 0) {
            *reason = "the agent identity (opamp_agent_identity) is empty";
            return NGX_DECLINED;
        }

        if (identity.len > NGX_HTTP_OPAMP_IDENTITY_MAX) {
            *reason = "the agent identity (opamp_agent_identity) is longer "
                      "than 1024 bytes";
            return NGX_DECLINED;
        }
    }

    size = sizeof(ngx_http_opamp_identity_t)
           + n * sizeof(ngx_http_opamp_identity_attr_t) + identity.len;

    sa = n ? olcf->server_attributes->elts : NULL;

    for (i = 0; i < n; i++) {
        if (ngx_http_complex_value(r, &sa[i].value, &values[i]) != NGX_OK) {
            return NGX_ERROR;
        }

        /* stored as protobuf strings, which are UTF-8; an empty value is
         * set too: the agent cannot fill in what the server left empty */

        if (values[i].len > NGX_HTTP_OPAMP_IDENTITY_MAX
            || !ngx_http_opamp_utf8_valid(values[i].data, values[i].len)
            || ngx_strlchr(values[i].data, values[i].data + values[i].len,
                           '\0'))
        {
            *reason = "a server-set attribute (opamp_agent_attribute) is "
                      "longer than 1024 bytes or not UTF-8 text";
            return NGX_DECLINED;
        }

        /* protobuf-c takes NUL-terminated strings */

        p = ngx_pnalloc(r->pool, values[i].len + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        *ngx_cpymem(p, values[i].data, values[i].len) = '\0';
        values[i].data = p;

        opamp__proto__v1__key_value__init(&kv[i]);
        opamp__proto__v1__any_value__init(&av[i]);

        kv[i].key = (char *) sa[i].name.data;
        kv[i].value = &av[i];
        av[i].value_case = OPAMP__PROTO__V1__ANY_VALUE__VALUE_STRING_VALUE;
        av[i].string_value = (char *) values[i].data;
        kvp[i] = &kv[i];

        size += sa[i].name.len + values[i].len;
    }

    packed = 0;

    if (n) {
        desc.n_identifying_attributes = n;
        desc.identifying_attributes = kvp;

        packed = protobuf_c_message_get_packed_size(
                     (const ProtobufCMessage *) &desc);
        size += packed;
    }

    id = ngx_palloc(r->pool, size);
    if (id == NULL) {
        return NGX_ERROR;
    }

    id->size = size;
    id->nattrs = n;
    id->attrs = (ngx_http_opamp_identity_attr_t *) &id[1];
    p = (u_char *) &id->attrs[n];

    id->identity.data = p;
    id->identity.len = identity.len;
    p = ngx_cpymem(p, identity.data, identity.len);

    for (i = 0; i < n; i++) {
        id->attrs[i].key.data = p;
        id->attrs[i].key.len = sa[i].name.len;
        p = ngx_cpymem(p, sa[i].name.data, sa[i].name.len);

        id->attrs[i].value.data = p;
        id->attrs[i].value.len = values[i].len;
        p = ngx_cpymem(p, values[i].data, values[i].len);
    }

    id->attributes.data = p;
    id->attributes.len = packed;

    if (n) {
        (void) protobuf_c_message_pack((const ProtobufCMessage *) &desc, p);
    }

    /* the beat mark's part (report.lua's beat_mark()): the identity's
     * length keeps identity and attributes apart */

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, len, ngx_sprintf(len, "%uz:", identity.len) - len);
    ngx_sha1_update(&sha1, id->identity.data, id->identity.len);
    ngx_sha1_update(&sha1, id->attributes.data, id->attributes.len);
    ngx_sha1_final(digest, &sha1);

    ngx_hex_dump(id->mark_hex, digest, 20);
    id->mark.data = id->mark_hex;
    id->mark.len = 40;

    *out = id;

    return NGX_OK;
}


ngx_http_opamp_identity_t *
ngx_http_opamp_identity_copy(ngx_http_opamp_identity_t *id, void *buf)
{
    ngx_uint_t                  i;
    ngx_http_opamp_identity_t  *c;

    ngx_memcpy(buf, id, id->size);
    c = buf;

#define ngx_http_opamp_identity_move(s)                                      \
    (s).data = (u_char *) c + ((s).data - (u_char *) id)

    c->attrs = (ngx_http_opamp_identity_attr_t *) &c[1];
    ngx_http_opamp_identity_move(c->identity);
    ngx_http_opamp_identity_move(c->attributes);

    for (i = 0; i < c->nattrs; i++) {
        ngx_http_opamp_identity_move(c->attrs[i].key);
        ngx_http_opamp_identity_move(c->attrs[i].value);
    }

    c->mark.data = c->mark_hex;

    return c;
}
