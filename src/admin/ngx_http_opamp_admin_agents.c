/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's agents: the listing with its filters and cursor, one
 * agent's view (its hash, the protobuf fields decoded to JSON), DELETE,
 * the restart command and custom messages queued for an agent.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_gzip.h"
#include "ngx_http_opamp_lua.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_store.h"

#include "opamp/v1/opamp.pb-c.h"


#define NGX_HTTP_OPAMP_ADMIN_MAX_LIMIT     1000
#define NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS     16
/* admin_list.lua's fixed arguments (KEYS[1], ARGV[1..12]) before the
 * attribute filters */
#define NGX_HTTP_OPAMP_ADMIN_LIST_FIXED    13


/* the protobuf fields of the agent hash and their messages */
static struct {
    ngx_str_t                          name;
    const ProtobufCMessageDescriptor  *descriptor;
} ngx_http_opamp_admin_fields[] = {
    { ngx_string("description"),
      &opamp__proto__v1__agent_description__descriptor },
    { ngx_string("health"),
      &opamp__proto__v1__component_health__descriptor },
    { ngx_string("effective_config"),
      &opamp__proto__v1__effective_config__descriptor },
    { ngx_string("remote_config_status"),
      &opamp__proto__v1__remote_config_status__descriptor },
    { ngx_string("package_statuses"),
      &opamp__proto__v1__package_statuses__descriptor },
    { ngx_string("custom_capabilities"),
      &opamp__proto__v1__custom_capabilities__descriptor },
    { ngx_string("available_components"),
      &opamp__proto__v1__available_components__descriptor },
    { ngx_string("connection_settings_status"),
      &opamp__proto__v1__connection_settings_status__descriptor },
    { ngx_null_string, NULL }
};


/* the most a stored status field may inflate to in the admin API's
 * view: opamp_max_agent_state's largest sensible setting */
#define NGX_HTTP_OPAMP_ADMIN_FIELD_MAX  (64 * 1024 * 1024)


/* fields of the agent hash that hold numbers */
static ngx_str_t  ngx_http_opamp_admin_numbers[] = {
    ngx_string("schema"), ngx_string("sequence_num"),
    ngx_string("capabilities"), ngx_string("first_seen_ms"),
    ngx_string("last_seen_ms"), ngx_string("expires_ms"),
    ngx_string("worker_pid"), ngx_string("connected_at_ms"),
    ngx_string("disconnected_at_ms"), ngx_string("config_version"),
    ngx_string("offered_ms"), ngx_string("offered_packages_ms"),
    ngx_string("healthy"), ngx_string("identity_bound_ms"),
    ngx_string("token_ms"), ngx_string("token_revoked_ms"), ngx_null_string
};


/* the fields admin_list.lua returns, in its order */
static const char  *ngx_http_opamp_admin_list_fields[] = {
    "instance_uid", "connected", "expires_ms", "transport", "server_id",
    "worker_pid", "sequence_num", "capabilities", "healthy",
    "first_seen_ms", "last_seen_ms", "attributes", "config_status",
    "config_hash", "desired_config", "desired_hash"
};


/* GET agents' query: the filters, and the attribute filters as arguments
 * of admin_list.lua past its fixed ones */

typedef struct {
    ngx_str_t                    cursor;
    ngx_str_t                    connected;
    ngx_str_t                    healthy;
    ngx_str_t                    status;
    ngx_str_t                    config_hash;
    ngx_str_t                    component;
    ngx_str_t                    group;
    ngx_int_t                    limit;
    const char                  *reason;     /* of a refusal */
    int                          argc;
    const char                  *argv[NGX_HTTP_OPAMP_ADMIN_LIST_FIXED
                                      + NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS];
    size_t                       argvlen[NGX_HTTP_OPAMP_ADMIN_LIST_FIXED
                                         + NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS];
} ngx_http_opamp_admin_query_t;


static ngx_int_t ngx_http_opamp_admin_list_query(ngx_http_request_t *r,
    ngx_http_opamp_admin_query_t *q);
static void ngx_http_opamp_admin_agent_json(ngx_http_opamp_json_t *j,
    redisReply *reply, ngx_uint_t full);
static void ngx_http_opamp_admin_agent_field(redisReply **el, size_t i,
    ngx_uint_t full, ngx_str_t *name, ngx_str_t *value);


/*
 * GET agents?limit=N&cursor=C&connected=1&healthy=0&config_status=FAILED
 *     &config_hash=H&component=receivers/otlp&group=G&attr=key=value...
 */

ngx_int_t
ngx_http_opamp_admin_list(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char                         now[NGX_INT64_LEN];
    u_char                         budget[NGX_INT_T_LEN];
    u_char                         limit[NGX_INT_T_LEN];
    u_char                         from[NGX_INT64_LEN];
    size_t                        *argvlen;
    ngx_int_t                      n, rc;
    ngx_str_t                      key;
    uint64_t                       ms;
    ngx_msec_t                     timeout;
    ngx_time_t                    *tp;
    const char                   **argv;
    ngx_http_request_t            *r;
    ngx_http_opamp_loc_conf_t     *olcf;
    ngx_http_opamp_main_conf_t    *omcf;
    ngx_http_opamp_admin_query_t   q;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    rc = ngx_http_opamp_admin_list_query(r, &q);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST, q.reason);
    }

    if (ngx_http_opamp_admin_key(ctx, &key, "agents", 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tp = ngx_timeofday();

    /* filters may skip most agents: look at ten pages' worth at most */
    n = q.limit * 10;

    argv = q.argv;
    argvlen = q.argvlen;

    argv[0] = (const char *) key.data;
    argvlen[0] = key.len;
    argv[1] = (const char *) omcf->prefix.data;
    argvlen[1] = omcf->prefix.len;
    argv[2] = (const char *) now;
    argvlen[2] = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec) - now;
    argv[3] = (const char *) q.cursor.data;
    argvlen[3] = q.cursor.len;
    argv[4] = (const char *) budget;
    argvlen[4] = ngx_sprintf(budget, "%i", n) - budget;
    argv[5] = (const char *) limit;
    argvlen[5] = ngx_sprintf(limit, "%i", q.limit) - limit;
    argv[6] = (const char *) (q.connected.len ? q.connected.data
                                              : (u_char *) "");
    argvlen[6] = q.connected.len;
    argv[7] = (const char *) (q.healthy.len ? q.healthy.data
                                            : (u_char *) "");
    argvlen[7] = q.healthy.len;
    argv[8] = (const char *) (q.status.len ? q.status.data : (u_char *) "");
    argvlen[8] = q.status.len;

    /*
     * A live agent was seen within its location's opamp_agent_timeout:
     * the live listing looks only at the index entries of that range and
     * never walks the departed.  The longest timeout of this nginx's
     * OpAMP locations, or the admin location's own on a host without one.
     */

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    timeout = omcf->max_agent_timeout ? omcf->max_agent_timeout
                                      : olcf->agent_timeout;
    ms = (uint64_t) tp->sec * 1000 + tp->msec;
    ms = (ms > timeout) ? ms - timeout : 0;

    argv[9] = (const char *) from;
    argvlen[9] = ngx_sprintf(from, "%uL", ms) - from;
    argv[10] = (const char *) (q.config_hash.len ? q.config_hash.data
                                                 : (u_char *) "");
    argvlen[10] = q.config_hash.len;
    argv[11] = (const char *) (q.component.len ? q.component.data
                                               : (u_char *) "");
    argvlen[11] = q.component.len;
    argv[12] = (const char *) (q.group.len ? q.group.data : (u_char *) "");
    argvlen[12] = q.group.len;

    return ngx_http_opamp_admin_eval(ctx, NGX_HTTP_OPAMP_SCRIPT_ADMIN_LIST, 1,
                                     q.argc, argv, argvlen);
}


/* NGX_OK, NGX_DECLINED with q->reason for a bad query, or NGX_ERROR */

static ngx_int_t
ngx_http_opamp_admin_list_query(ngx_http_request_t *r,
    ngx_http_opamp_admin_query_t *q)
{
    u_char     *p, *last, *amp, *eq, *dst, *src;
    ngx_str_t   name, value;

    ngx_str_set(&q->cursor, "0");
    ngx_str_null(&q->connected);
    ngx_str_null(&q->healthy);
    ngx_str_null(&q->status);
    ngx_str_null(&q->config_hash);
    ngx_str_null(&q->component);
    ngx_str_null(&q->group);
    q->limit = 100;
    q->argc = NGX_HTTP_OPAMP_ADMIN_LIST_FIXED;

    p = r->args.data;
    last = p + r->args.len;

    for ( /* void */ ; p < last; p = amp + 1) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(p, amp, '=');
        if (eq == NULL) {
            continue;
        }

        name.data = p;
        name.len = eq - p;

        /* values are percent-decoded: attributes may hold anything */

        value.data = ngx_pnalloc(r->pool, amp - eq);
        if (value.data == NULL) {
            return NGX_ERROR;
        }

        dst = value.data;
        src = eq + 1;
        ngx_unescape_uri(&dst, &src, amp - eq - 1, 0);
        value.len = dst - value.data;

        if (name.len == 5 && ngx_strncmp(name.data, "limit", 5) == 0) {
            q->limit = ngx_atoi(value.data, value.len);
            if (q->limit < 1 || q->limit > NGX_HTTP_OPAMP_ADMIN_MAX_LIMIT) {
                q->reason = "limit must be 1 to 1000";
                return NGX_DECLINED;
            }

        } else if (name.len == 6 && ngx_strncmp(name.data, "cursor", 6) == 0)
        {
            if (ngx_atoi(value.data, value.len) == NGX_ERROR) {
                q->reason = "invalid cursor";
                return NGX_DECLINED;
            }

            q->cursor = value;

        } else if ((name.len == 9
                    && ngx_strncmp(name.data, "connected", 9) == 0)
                   || (name.len == 7
                       && ngx_strncmp(name.data, "healthy", 7) == 0))
        {
            if (value.len != 1 || (value.data[0] != '0'
                                   && value.data[0] != '1'))
            {
                q->reason = "connected and healthy take 0 or 1";
                return NGX_DECLINED;
            }

            if (name.len == 9) {
                q->connected = value;

            } else {
                q->healthy = value;
            }

        } else if (name.len == 13
                   && ngx_strncmp(name.data, "config_status", 13) == 0)
        {
            if (!((value.len == 5
                   && ngx_strncmp(value.data, "UNSET", 5) == 0)
                  || (value.len == 7
                      && ngx_strncmp(value.data, "APPLIED", 7) == 0)
                  || (value.len == 8
                      && ngx_strncmp(value.data, "APPLYING", 8) == 0)
                  || (value.len == 6
                      && ngx_strncmp(value.data, "FAILED", 6) == 0)))
            {
                q->reason = "config_status is one of UNSET, APPLIED, "
                            "APPLYING, FAILED";
                return NGX_DECLINED;
            }

            q->status = value;

        } else if (name.len == 11
                   && ngx_strncmp(name.data, "config_hash", 11) == 0)
        {
            /* as the agent hash holds it: lowercase hex */

            for (dst = value.data; dst < value.data + value.len; dst++) {
                if (!((*dst >= '0' && *dst <= '9')
                      || (*dst >= 'a' && *dst <= 'f')))
                {
                    break;
                }
            }

            if (value.len == 0 || value.len > 128
                || dst != value.data + value.len)
            {
                q->reason = "config_hash takes 1 to 128 lowercase hex digits";
                return NGX_DECLINED;
            }

            q->config_hash = value;

        } else if (name.len == 9
                   && ngx_strncmp(name.data, "component", 9) == 0)
        {
            /* "<kind>/<name>" as GET fleet's inventory names them: one
             * line of at most 128 bytes */

            for (dst = value.data; dst < value.data + value.len; dst++) {
                if (*dst < 0x20 || *dst == 0x7f) {
                    break;
                }
            }

            if (value.len == 0 || value.len > 128
                || dst != value.data + value.len)
            {
                q->reason = "component takes 1 to 128 bytes without "
                            "control characters";
                return NGX_DECLINED;
            }

            q->component = value;

        } else if (name.len == 5 && ngx_strncmp(name.data, "group", 5) == 0) {
            /* the members of a group (the gauges' group_members), paged
             * by rank: a name as groups are named, it goes into a key */

            if (ngx_http_opamp_admin_valid_group(&value) != NGX_OK) {
                q->reason = "invalid group name: 1 to 128 of "
                            "A-Z a-z 0-9 . _ -";
                return NGX_DECLINED;
            }

            q->group = value;

        } else if (name.len == 4 && ngx_strncmp(name.data, "attr", 4) == 0) {
            eq = ngx_strlchr(value.data, value.data + value.len, '=');

            if (eq == NULL || eq == value.data) {
                q->reason = "attr takes key=value";
                return NGX_DECLINED;
            }

            if (q->argc == NGX_HTTP_OPAMP_ADMIN_LIST_FIXED
                           + NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS)
            {
                q->reason = "too many attr filters";
                return NGX_DECLINED;
            }

            q->argv[q->argc] = (const char *) value.data;
            q->argvlen[q->argc++] = value.len;

        } else {
            q->reason = "unknown parameter: use limit, cursor, connected, "
                        "healthy, config_status, config_hash, component, "
                        "group, attr";
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/* DELETE agents/<uid>: the agent and all that is only its own, as the
 * retention sweep removes it (remove.lua) */

ngx_int_t
ngx_http_opamp_admin_remove(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char                      now[NGX_INT64_LEN];
    size_t                      argvlen[5];
    ngx_str_t                   index;
    ngx_time_t                 *tp;
    const char                 *argv[5];
    ngx_http_opamp_main_conf_t *omcf;

    omcf = ngx_http_get_module_main_conf(ctx->request,
                                         ngx_http_opamp_module);

    if (ngx_http_opamp_admin_key(ctx, &index, "agents", 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tp = ngx_timeofday();

    argv[0] = (const char *) index.data;
    argvlen[0] = index.len;
    argv[1] = (const char *) omcf->prefix.data;
    argvlen[1] = omcf->prefix.len;
    argv[2] = "agent";
    argvlen[2] = 5;
    argv[3] = (const char *) now;
    argvlen[3] = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec) - now;
    argv[4] = (const char *) ctx->uid_text;
    argvlen[4] = NGX_HTTP_OPAMP_UID_STR_LEN;

    return ngx_http_opamp_admin_eval(ctx, NGX_HTTP_OPAMP_SCRIPT_REMOVE, 1, 5,
                                     argv, argvlen);
}


/* POST agents/<uid>/restart: the command the agent is sent next */

ngx_int_t
ngx_http_opamp_admin_restart(ngx_http_opamp_admin_ctx_t *ctx)
{
    ngx_str_t  restart = ngx_string("restart");

    if (ngx_http_opamp_admin_key(ctx, &ctx->key, "command:",
                                 NGX_HTTP_OPAMP_ADMIN_KEY_AGENT)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_opamp_admin_push(ctx, "set", &restart, NULL);
}


/*
 * POST agents/<uid>/retry-config: the agent is offered the config it is
 * owed again, even one it reported FAILED for (which is otherwise not
 * offered to it again until the config's hash changes)
 */

ngx_int_t
ngx_http_opamp_admin_retry(ngx_http_opamp_admin_ctx_t *ctx)
{
    ngx_str_t  none = ngx_null_string;

    ctx->key = ctx->agent_key;

    return ngx_http_opamp_admin_push(ctx, "retry", &none, NULL);
}


/* DELETE agents/<uid>/identity: the uid's identity binding released
 * (admin_identity.lua); 404 when it had none */

ngx_int_t
ngx_http_opamp_admin_release(ngx_http_opamp_admin_ctx_t *ctx)
{
    size_t       argvlen[1];
    const char  *argv[1];

    argv[0] = (const char *) ctx->agent_key.data;
    argvlen[0] = ctx->agent_key.len;

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_admin_identity,
               sizeof(ngx_http_opamp_lua_admin_identity) - 1, 1, 1, argv,
               argvlen);
}


/* DELETE agents/<uid>/token: the agent's token revoked on every host at
 * once, the enrollment credential refused for its uid from now on
 * (admin_token.lua, docs/security.md); 404 for an unknown agent */

ngx_int_t
ngx_http_opamp_admin_revoke(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char       now[NGX_INT64_LEN];
    size_t       argvlen[2];
    ngx_time_t  *tp;
    const char  *argv[2];

    tp = ngx_timeofday();

    argv[0] = (const char *) ctx->agent_key.data;
    argvlen[0] = ctx->agent_key.len;
    argv[1] = (const char *) now;
    argvlen[1] = ngx_sprintf(now, "%L", (int64_t) tp->sec * 1000 + tp->msec)
                 - now;

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_admin_token,
               sizeof(ngx_http_opamp_lua_admin_token) - 1, 1, 2, argv,
               argvlen);
}


/* POST agents/<uid>/messages {"capability": "...", "type": "...",
 *                             "data": "..."} */

ngx_int_t
ngx_http_opamp_admin_message(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char              *p;
    json_t              *root, *cap, *type, *data;
    ngx_int_t            rc;
    ngx_str_t            entry;
    json_error_t         error;
    ngx_http_request_t  *r;

    r = ctx->request;

    root = json_loadb((const char *) ctx->body.data, ctx->body.len,
                      JSON_REJECT_DUPLICATES, &error);
    if (root == NULL) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                          "invalid JSON");
    }

    cap = json_object_get(root, "capability");
    type = json_object_get(root, "type");
    data = json_object_get(root, "data");

    if (!json_is_object(root) || !json_is_string(cap)
        || !json_is_string(type) || (data && !json_is_string(data))
        || json_string_length(cap) == 0
        || json_object_size(root) != (size_t) (data ? 3 : 2)
        || ngx_strlchr((u_char *) json_string_value(cap),
                       (u_char *) json_string_value(cap)
                       + json_string_length(cap), '\n')
        || ngx_strlchr((u_char *) json_string_value(type),
                       (u_char *) json_string_value(type)
                       + json_string_length(type), '\n'))
    {
        json_decref(root);
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                   "the body must be {\"capability\": string, \"type\": "
                   "string, \"data\": string}, without newlines in "
                   "capability and type");
    }

    entry.len = json_string_length(cap) + json_string_length(type) + 2
                + (data ? json_string_length(data) : 0);
    entry.data = ngx_pnalloc(r->pool, entry.len);
    if (entry.data == NULL) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(entry.data, json_string_value(cap),
                   json_string_length(cap));
    *p++ = '\n';
    p = ngx_cpymem(p, json_string_value(type), json_string_length(type));
    *p++ = '\n';

    if (data) {
        ngx_memcpy(p, json_string_value(data), json_string_length(data));
    }

    json_decref(root);

    if (ngx_http_opamp_admin_key(ctx, &ctx->key, "outbox:",
                                 NGX_HTTP_OPAMP_ADMIN_KEY_AGENT) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_opamp_admin_push(ctx, "rpush", &entry, NULL);

    return rc;
}


/* admin_list.lua's reply: the next cursor, then one list per agent */

ngx_int_t
ngx_http_opamp_admin_list_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    size_t                  i;
    redisReply             *e;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        /* what a script gone wrong was always answered */
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "nothing stored");
    }

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "agents");
    ngx_http_opamp_json_array(&j);

    for (i = 1; i < reply->elements; i++) {
        ngx_http_opamp_admin_agent_json(&j, reply->element[i], 0);
    }

    ngx_http_opamp_json_close(&j, ']');
    ngx_http_opamp_json_kv(&j, "next_cursor");

    e = reply->element[0];

    if (e->type == REDIS_REPLY_STRING && e->len) {
        ngx_http_opamp_json_string(&j, (u_char *) e->str, e->len);

    } else {
        ngx_http_opamp_json_literal(&j, "null");
    }

    ngx_http_opamp_json_close(&j, '}');
    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}


/* GET agents/<uid>: the agent's hash; DELETE: remove.lua's 1 or 0 */

ngx_int_t
ngx_http_opamp_admin_agent_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    if (r->method & NGX_HTTP_DELETE) {
        if (reply->type != REDIS_REPLY_INTEGER || reply->integer == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "unknown agent");
        }

        return ngx_http_opamp_admin_no_content(r);
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "unknown agent");
    }

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_admin_agent_json(&j, reply, 1);
    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}


/* a restart or a custom message queued by admin_push.lua, or 0 */

ngx_int_t
ngx_http_opamp_admin_queued_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "unknown agent");
    }

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "queued");
    ngx_http_opamp_json_literal(&j, "true");
    ngx_http_opamp_json_close(&j, '}');
    return ngx_http_opamp_admin_send(r, NGX_HTTP_ACCEPTED, &j);
}


/* one agent: the flat HGETALL (full) or admin_list.lua's field list */

static void
ngx_http_opamp_admin_agent_json(ngx_http_opamp_json_t *j, redisReply *reply,
    ngx_uint_t full)
{
    const char         *reason;
    size_t             i, n;
    int64_t            expires;
    ngx_str_t          name, value, connected, exp, failed, status, hash;
    ngx_uint_t         f, numeric;
    redisReply       **el;
    ProtobufCMessage  *m;

    if (reply->type != REDIS_REPLY_ARRAY) {
        return;
    }

    el = reply->element;
    n = full ? reply->elements / 2 : reply->elements;

    ngx_str_null(&connected);
    ngx_str_null(&exp);
    ngx_str_null(&failed);
    ngx_str_null(&status);
    ngx_str_null(&hash);

    /* first the fields that make "connected" mean live, and those that
     * say whether the agent rolled back a config it failed */

    for (i = 0; i < n; i++) {
        ngx_http_opamp_admin_agent_field(el, i, full, &name, &value);

        if (name.len == 9 && ngx_strncmp(name.data, "connected", 9) == 0) {
            connected = value;

        } else if (name.len == 10
                   && ngx_strncmp(name.data, "expires_ms", 10) == 0)
        {
            exp = value;

        } else if (name.len == 11
                   && ngx_strncmp(name.data, "failed_hash", 11) == 0)
        {
            failed = value;

        } else if (name.len == 13
                   && ngx_strncmp(name.data, "config_status", 13) == 0)
        {
            status = value;

        } else if (name.len == 11
                   && ngx_strncmp(name.data, "config_hash", 11) == 0)
        {
            hash = value;
        }
    }

    expires = exp.len ? ngx_atoi(exp.data, exp.len) : 0;

    ngx_http_opamp_json_object(j);
    ngx_http_opamp_json_kv(j, "live");
    ngx_http_opamp_json_literal(j,
        (connected.len == 1 && connected.data[0] == '1'
         && expires > (int64_t) ngx_time() * 1000
                      + (int64_t) ngx_timeofday()->msec)
        ? "true" : "false");

    /* an agent that failed a config and then applied another (the one it
     * ran before, as the spec asks of it) rolled itself back */

    if (failed.len) {
        ngx_http_opamp_json_kv(j, "config_rolled_back");
        ngx_http_opamp_json_literal(j,
            (status.len == 7 && ngx_strncmp(status.data, "APPLIED", 7) == 0
             && (hash.len != failed.len
                 || ngx_strncmp(hash.data, failed.data, failed.len) != 0))
            ? "true" : "false");
    }

    for (i = 0; i < n; i++) {
        ngx_http_opamp_admin_agent_field(el, i, full, &name, &value);

        if (value.len == 0 && !full) {
            continue;
        }

        ngx_http_opamp_json_key(j, (char *) name.data, name.len);

        /* protobuf fields, decoded */

        for (f = 0; ngx_http_opamp_admin_fields[f].descriptor; f++) {
            if (ngx_http_opamp_admin_fields[f].name.len == name.len
                && ngx_strncmp(ngx_http_opamp_admin_fields[f].name.data,
                               name.data, name.len) == 0)
            {
                break;
            }
        }

        if (ngx_http_opamp_admin_fields[f].descriptor) {

            /* stored compressed where that saved bytes; bounded like a
             * message, whoever wrote it */

            if (ngx_http_opamp_stored_inflate(j->pool, ngx_cycle->log,
                                              &value, &value,
                                              NGX_HTTP_OPAMP_ADMIN_FIELD_MAX)
                != NGX_OK)
            {
                ngx_http_opamp_json_literal(j, "null");
                continue;
            }

            /* whatever is in Redis is checked like an agent's message:
             * anyone may have written it */
            m = ngx_http_opamp_proto_unpack(
                    ngx_http_opamp_admin_fields[f].descriptor, value.data,
                    value.len, &reason);

            if (m) {
                ngx_http_opamp_json_message(j, m);
                protobuf_c_message_free_unpacked(m, NULL);

            } else {
                ngx_http_opamp_json_literal(j, "null");
            }

            continue;
        }

        /* attributes are JSON already, written by this module */

        if (((name.len == 10
              && ngx_strncmp(name.data, "attributes", 10) == 0)
             || (name.len == 17
                 && ngx_strncmp(name.data, "server_attributes", 17) == 0))
            && value.len && value.data[0] == '{')
        {
            ngx_http_opamp_json_raw(j, value.data, value.len);
            continue;
        }

        numeric = 0;

        for (f = 0; ngx_http_opamp_admin_numbers[f].len; f++) {
            if (ngx_http_opamp_admin_numbers[f].len == name.len
                && ngx_strncmp(ngx_http_opamp_admin_numbers[f].data,
                               name.data, name.len) == 0)
            {
                numeric = 1;
                break;
            }
        }

        if (numeric) {
            ngx_http_opamp_json_number(j, value.data, value.len);

        } else {
            ngx_http_opamp_json_string(j, value.data, value.len);
        }
    }

    ngx_http_opamp_json_close(j, '}');
}


/* the i-th field of an agent and its value, in either form */

static void
ngx_http_opamp_admin_agent_field(redisReply **el, size_t i, ngx_uint_t full,
    ngx_str_t *name, ngx_str_t *value)
{
    if (full) {
        name->data = (u_char *) el[2 * i]->str;
        name->len = el[2 * i]->len;
        value->data = (u_char *) el[2 * i + 1]->str;
        value->len = el[2 * i + 1]->len;

    } else {
        name->data = (u_char *) ngx_http_opamp_admin_list_fields[i];
        name->len = ngx_strlen(name->data);
        value->data = (u_char *) el[i]->str;
        value->len = el[i]->len;
    }
}
