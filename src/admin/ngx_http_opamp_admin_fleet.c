/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * GET fleet (docs/admin-api.md): the fleet gauges and the inventory as
 * JSON, read in a number of Redis steps that does not grow with the fleet
 * (src/lua/fleet.lua, the script a scrape of opamp_metrics runs), for the
 * dashboard's summary and inventory and any control plane.  GET hosts:
 * each nginx host's own figures as the hosts publish them
 * (src/ngx_http_opamp_host.c), for the dashboard's per-host table.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_host.h"
#include "ngx_http_opamp_lua.h"
#include "ngx_http_opamp_store.h"


static void ngx_http_opamp_admin_fleet_hash(ngx_http_opamp_json_t *j,
    redisReply *hash);


ngx_int_t
ngx_http_opamp_admin_fleet(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char                       since[NGX_INT64_LEN];
    size_t                       argvlen[4];
    uint64_t                     ms;
    ngx_str_t                    index, gauges, inventory;
    ngx_msec_t                   timeout;
    ngx_time_t                  *tp;
    const char                  *argv[4];
    ngx_http_opamp_loc_conf_t   *olcf;
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(ctx->request, ngx_http_opamp_module);
    olcf = ngx_http_get_module_loc_conf(ctx->request, ngx_http_opamp_module);

    if (ngx_http_opamp_admin_key(ctx, &index, "agents", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &gauges, "fleet:gauges", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &inventory, "fleet:inventory", 0)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* live: seen within the longest opamp_agent_timeout, as GET agents'
     * connected=1 and opamp_fleet_agents_live count */

    timeout = omcf->max_agent_timeout ? omcf->max_agent_timeout
                                      : olcf->agent_timeout;
    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;
    ms = (ms > timeout) ? ms - timeout : 0;

    argv[0] = (const char *) index.data;
    argvlen[0] = index.len;
    argv[1] = (const char *) gauges.data;
    argvlen[1] = gauges.len;
    argv[2] = (const char *) inventory.data;
    argvlen[2] = inventory.len;
    argv[3] = (const char *) since;
    argvlen[3] = ngx_sprintf(since, "%uL", ms) - since;

    return ngx_http_opamp_admin_eval(ctx, NGX_HTTP_OPAMP_SCRIPT_FLEET, 3, 4,
                                     argv, argvlen);
}


ngx_int_t
ngx_http_opamp_admin_fleet_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    redisReply             **e;
    ngx_http_request_t      *r;
    ngx_http_opamp_json_t    j;

    r = ctx->request;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_INTEGER
        || reply->element[2]->type != REDIS_REPLY_ARRAY
        || reply->element[3]->type != REDIS_REPLY_ARRAY)
    {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                          "the agent state store answered "
                                          "something else");
    }

    e = reply->element;

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "agents");
    ngx_http_opamp_json_int(&j, e[0]->integer);
    ngx_http_opamp_json_kv(&j, "agents_live");
    ngx_http_opamp_json_int(&j, e[1]->integer);
    ngx_http_opamp_json_kv(&j, "gauges");
    ngx_http_opamp_admin_fleet_hash(&j, e[2]);
    ngx_http_opamp_json_kv(&j, "inventory");
    ngx_http_opamp_admin_fleet_hash(&j, e[3]);
    ngx_http_opamp_json_close(&j, '}');

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}


/* GET hosts: the index of hosts, newest publish first, each with its
 * record (src/lua/admin_hosts.lua) */

ngx_int_t
ngx_http_opamp_admin_hosts(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char                       max[NGX_INT_T_LEN];
    size_t                       argvlen[3];
    ngx_str_t                    index;
    const char                  *argv[3];
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(ctx->request, ngx_http_opamp_module);

    if (ngx_http_opamp_admin_key(ctx, &index, "hosts", 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv[0] = (const char *) index.data;
    argvlen[0] = index.len;
    argv[1] = (const char *) omcf->prefix.data;
    argvlen[1] = omcf->prefix.len;
    argv[2] = (const char *) max;
    argvlen[2] = ngx_sprintf(max, "%d", NGX_HTTP_OPAMP_HOST_MAX) - max;

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_admin_hosts,
               sizeof(ngx_http_opamp_lua_admin_hosts) - 1, 1, 3, argv,
               argvlen);
}


/*
 * {"period_ms":5000,"hosts":[{"name":..,"last_publish_ms":..,
 * "stale":false,"figures":{..}}, ...]}: a host is stale once its record
 * has expired (it stopped publishing, or cannot reach Redis), and then
 * has no figures.
 */

ngx_int_t
ngx_http_opamp_admin_hosts_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    size_t                   i;
    uint64_t                 now;
    ngx_int_t                last;
    redisReply             **e;
    ngx_time_t              *tp;
    ngx_http_request_t      *r;
    ngx_http_opamp_json_t    j;

    r = ctx->request;

    if (reply->type != REDIS_REPLY_ARRAY) {
        goto other;
    }

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i]->element;

        if (reply->element[i]->type != REDIS_REPLY_ARRAY
            || reply->element[i]->elements != 3
            || e[0]->type != REDIS_REPLY_STRING
            || e[1]->type != REDIS_REPLY_STRING
            || e[2]->type != REDIS_REPLY_ARRAY)
        {
            goto other;
        }
    }

    tp = ngx_timeofday();
    now = (uint64_t) tp->sec * 1000 + tp->msec;

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "period_ms");
    ngx_http_opamp_json_int(&j, NGX_HTTP_OPAMP_HOST_PERIOD);
    ngx_http_opamp_json_kv(&j, "hosts");
    ngx_http_opamp_json_array(&j);

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i]->element;

        /* a score as Redis writes it: the ms are whole */
        last = ngx_atoi((u_char *) e[1]->str, e[1]->len);

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "name");
        ngx_http_opamp_json_string(&j, (u_char *) e[0]->str, e[0]->len);
        ngx_http_opamp_json_kv(&j, "last_publish_ms");

        if (last == NGX_ERROR) {
            ngx_http_opamp_json_literal(&j, "null");

        } else {
            ngx_http_opamp_json_int(&j, last);
        }

        ngx_http_opamp_json_kv(&j, "stale");
        ngx_http_opamp_json_literal(&j, (e[2]->elements == 0
                                         || last == NGX_ERROR
                                         || now > (uint64_t) last
                                                  + NGX_HTTP_OPAMP_HOST_TTL)
                                        ? "true" : "false");

        if (e[2]->elements) {
            ngx_http_opamp_json_kv(&j, "figures");
            ngx_http_opamp_admin_fleet_hash(&j, e[2]);
        }

        ngx_http_opamp_json_close(&j, '}');
    }

    ngx_http_opamp_json_close(&j, ']');
    ngx_http_opamp_json_close(&j, '}');

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);

other:

    return ngx_http_opamp_admin_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "the agent state store answered "
                                      "something else");
}


/* an HGETALL of counts as an object of numbers; a value that is not one
 * (a direct write) is shown as the text it is */

static void
ngx_http_opamp_admin_fleet_hash(ngx_http_opamp_json_t *j, redisReply *hash)
{
    size_t       i;
    redisReply  *k, *v;

    ngx_http_opamp_json_object(j);

    for (i = 0; i + 1 < hash->elements; i += 2) {
        k = hash->element[i];
        v = hash->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            continue;
        }

        ngx_http_opamp_json_key(j, k->str, k->len);

        if (ngx_atoof((u_char *) v->str, v->len) != NGX_ERROR) {
            ngx_http_opamp_json_number(j, (u_char *) v->str, v->len);

        } else {
            ngx_http_opamp_json_string(j, (u_char *) v->str, v->len);
        }
    }

    ngx_http_opamp_json_close(j, '}');
}
