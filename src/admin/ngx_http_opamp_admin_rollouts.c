/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Staged rollouts in the admin API (docs/admin-api.md, "Staged
 * rollouts"): a group's PUT that carries a plan ("rollout") starts one
 * (src/lua/rollout_start.lua), or with ?dry_run=1 only counts the agents
 * each stage would reach; rollouts, rollouts/<group> and
 * rollouts/<group>/<action> show and steer them
 * (src/lua/rollout_action.lua).  The plan is checked here, whole, before
 * anything is written; Redis keeps it in the record as plain words.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_lua.h"


#define NGX_HTTP_OPAMP_ROLLOUT_MAX_STAGES  16
#define NGX_HTTP_OPAMP_ROLLOUT_MAX_SOAK    (7 * 86400)       /* s */
#define NGX_HTTP_OPAMP_ROLLOUT_MAX_COUNT   100000000


static const char *ngx_http_opamp_admin_plan_stages(ngx_http_request_t *r,
    json_t *stages, ngx_http_opamp_admin_plan_t *out);
static const char *ngx_http_opamp_admin_plan_share(json_t *v, double *share,
    ngx_int_t *count);
static const char *ngx_http_opamp_admin_plan_gate(ngx_http_request_t *r,
    const char *name, json_t *v, u_char **p, u_char *last);
static void ngx_http_opamp_admin_rollout_json(ngx_http_opamp_json_t *j,
    redisReply **pairs, size_t n);
static void ngx_http_opamp_admin_rollout_stages(ngx_http_opamp_json_t *j,
    redisReply *f);
static void ngx_http_opamp_admin_rollout_soak(ngx_http_opamp_json_t *j,
    redisReply *f);
static void ngx_http_opamp_admin_rollout_gates(ngx_http_opamp_json_t *j,
    redisReply *f);


static const char  *ngx_http_opamp_admin_actions[] = {
    "pause", "resume", "advance", "abort", "rollback", NULL
};


/*
 * {"stages": [1, "10%", 0.5, "100%"], "soak_s": 300 or [...],
 *  "gates": {"failed": 0, "unhealthy": "20%", "disconnected": 0.2,
 *            "not_applied": {"max": "10%", "within_s": 300}},
 *  "on_gate": "pause" | "rollback"}
 * as the words rollout_start.lua stores; NULL, or why it is refused.
 */

const char *
ngx_http_opamp_admin_plan_read(ngx_http_request_t *r, json_t *plan,
    ngx_http_opamp_admin_plan_t *out)
{
    u_char        *p, *last;
    json_t        *stages, *soak, *gates, *on_gate, *v;
    ngx_int_t      s;
    ngx_uint_t     i, n;
    const char    *name, *reason;

    if (!json_is_object(plan)) {
        return "\"rollout\" must be an object";
    }

    json_object_foreach(plan, name, v) {
        if (ngx_strcmp(name, "stages") != 0
            && ngx_strcmp(name, "soak_s") != 0
            && ngx_strcmp(name, "gates") != 0
            && ngx_strcmp(name, "on_gate") != 0)
        {
            return "unknown member of \"rollout\": it has \"stages\", "
                   "\"soak_s\", \"gates\" and \"on_gate\"";
        }
    }

    stages = json_object_get(plan, "stages");

    if (!json_is_array(stages) || json_array_size(stages) == 0
        || json_array_size(stages) > NGX_HTTP_OPAMP_ROLLOUT_MAX_STAGES)
    {
        return "\"stages\" must be an array of 1 to 16 stages";
    }

    reason = ngx_http_opamp_admin_plan_stages(r, stages, out);
    if (reason) {
        return reason;
    }

    n = json_array_size(stages);

    soak = json_object_get(plan, "soak_s");

    if (soak && !json_is_integer(soak)
        && !(json_is_array(soak) && json_array_size(soak) == n))
    {
        return "\"soak_s\" must be seconds, or an array of seconds, one "
               "per stage";
    }

    p = ngx_pnalloc(r->pool, n * (NGX_INT64_LEN + 1));
    if (p == NULL) {
        return "out of memory";
    }

    out->soak.data = p;
    last = p + n * (NGX_INT64_LEN + 1);

    for (i = 0; i < n; i++) {
        v = json_is_array(soak) ? json_array_get(soak, i) : soak;
        s = v ? (json_is_integer(v) ? (ngx_int_t) json_integer_value(v) : -1)
              : 0;

        if (s < 0 || s > NGX_HTTP_OPAMP_ROLLOUT_MAX_SOAK) {
            return "a soak time must be 0 to 604800 seconds";
        }

        p = ngx_slprintf(p, last, "%s%i", i ? " " : "", s * 1000);
    }

    out->soak.len = p - out->soak.data;

    /* gates: one line each */

    gates = json_object_get(plan, "gates");

    if (gates && !json_is_object(gates)) {
        return "\"gates\" must be an object";
    }

    p = ngx_pnalloc(r->pool, 4 * 64);
    if (p == NULL) {
        return "out of memory";
    }

    out->gates.data = p;
    last = p + 4 * 64;

    if (gates) {
        json_object_foreach(gates, name, v) {
            reason = ngx_http_opamp_admin_plan_gate(r, name, v, &p, last);
            if (reason) {
                return reason;
            }
        }
    }

    out->gates.len = p - out->gates.data;

    on_gate = json_object_get(plan, "on_gate");
    ngx_str_set(&out->on_gate, "pause");

    if (on_gate) {
        if (!json_is_string(on_gate)) {
            return "\"on_gate\" must be \"pause\" or \"rollback\"";
        }

        if (ngx_strcmp(json_string_value(on_gate), "rollback") == 0) {
            ngx_str_set(&out->on_gate, "rollback");

        } else if (ngx_strcmp(json_string_value(on_gate), "pause") != 0) {
            return "\"on_gate\" must be \"pause\" or \"rollback\"";
        }
    }

    return NULL;
}


/* the stages as "c<count>" or "f<share>" words, in order */

static const char *
ngx_http_opamp_admin_plan_stages(ngx_http_request_t *r, json_t *stages,
    ngx_http_opamp_admin_plan_t *out)
{
    u_char       *p, *last;
    double        share, last_share;
    ngx_int_t     count, last_count;
    ngx_uint_t    i, n;
    const char   *reason;

    n = json_array_size(stages);

    p = ngx_pnalloc(r->pool, n * 32);
    if (p == NULL) {
        return "out of memory";
    }

    out->stages.data = p;
    last = p + n * 32;
    last_share = 0;
    last_count = 0;

    for (i = 0; i < n; i++) {
        reason = ngx_http_opamp_admin_plan_share(json_array_get(stages, i),
                                                 &share, &count);
        if (reason) {
            return reason;
        }

        if (count) {
            if (last_share > 0) {
                return "stages out of order: counts of agents come before "
                       "shares";
            }

            if (count <= last_count) {
                return "stages out of order: each stage must reach more "
                       "agents than the one before";
            }

            last_count = count;
            p = ngx_slprintf(p, last, "%sc%i", i ? " " : "", count);

        } else {
            if (share <= last_share) {
                return "stages out of order: each stage must reach more "
                       "agents than the one before";
            }

            last_share = share;
            p = ngx_slprintf(p, last, "%sf%.6f", i ? " " : "", share);
        }
    }

    if (last_share != 1.0) {
        return "the last stage must be \"100%\"";
    }

    out->stages.len = p - out->stages.data;

    return NULL;
}


/* a stage or a gate's limit: an integer count (*count > 0 for a stage),
 * "<n>%" or a number with a fraction, 0 to 1, as *share */

static const char *
ngx_http_opamp_admin_plan_share(json_t *v, double *share, ngx_int_t *count)
{
    char        *end;
    size_t       len;
    const char  *s;

    *share = 0;
    *count = 0;

    if (json_is_integer(v)) {
        if (json_integer_value(v) < 1
            || json_integer_value(v) > NGX_HTTP_OPAMP_ROLLOUT_MAX_COUNT)
        {
            return "a stage of agents must count 1 to 100000000 agents";
        }

        *count = (ngx_int_t) json_integer_value(v);
        return NULL;
    }

    if (json_is_real(v)) {
        *share = json_real_value(v);

    } else if (json_is_string(v)) {
        s = json_string_value(v);
        len = json_string_length(v);

        if (len < 2 || len > 10 || s[len - 1] != '%') {
            return "a share must be \"<n>%\" or a fraction of 1";
        }

        *share = strtod(s, &end) / 100;

        if (end != s + len - 1) {
            return "a share must be \"<n>%\" or a fraction of 1";
        }

    } else {
        return "a stage must be a count of agents, \"<n>%\" or a fraction "
               "of 1";
    }

    if (!(*share > 0)) {
        return "a share must be more than 0";
    }

    if (*share > 1) {
        return "a share must be at most 1 (100%)";
    }

    return NULL;
}


static const char *
ngx_http_opamp_admin_plan_gate(ngx_http_request_t *r, const char *name,
    json_t *v, u_char **p, u_char *last)
{
    double       share;
    json_t      *max, *within;
    ngx_int_t    count, ms;
    const char  *reason;

    ms = -1;

    if (ngx_strcmp(name, "not_applied") == 0) {
        max = json_object_get(v, "max");
        within = json_object_get(v, "within_s");

        if (!json_is_object(v) || max == NULL || !json_is_integer(within)
            || json_object_size(v) != 2
            || json_integer_value(within) < 0
            || json_integer_value(within) > NGX_HTTP_OPAMP_ROLLOUT_MAX_SOAK)
        {
            return "gate \"not_applied\" must be {\"max\": <limit>, "
                   "\"within_s\": <seconds>}";
        }

        ms = (ngx_int_t) json_integer_value(within) * 1000;
        v = max;

    } else if (ngx_strcmp(name, "failed") != 0
               && ngx_strcmp(name, "unhealthy") != 0
               && ngx_strcmp(name, "disconnected") != 0)
    {
        return "unknown gate: the gates are \"failed\", \"unhealthy\", "
               "\"disconnected\" and \"not_applied\"";
    }

    /* a limit: a count of agents (0: none may) or a share of those the
     * rollout reached */

    if (json_is_integer(v) && json_integer_value(v) == 0) {
        count = 0;
        share = 0;
        reason = NULL;
        *p = ngx_slprintf(*p, last, "%s c0", name);

    } else {
        reason = ngx_http_opamp_admin_plan_share(v, &share, &count);
        if (reason) {
            return "a gate's limit must be a count of agents, \"<n>%\" or "
                   "a fraction of 1";
        }

        if (count) {
            *p = ngx_slprintf(*p, last, "%s c%i", name, count);

        } else {
            *p = ngx_slprintf(*p, last, "%s f%.6f", name, share);
        }
    }

    if (ms >= 0) {
        *p = ngx_slprintf(*p, last, " %i", ms);
    }

    *p = ngx_slprintf(*p, last, "\n");

    return NULL;
}


/*
 * A script's refusal, { "error", status, reason }: the answer for it, or
 * NGX_DECLINED for any other reply.
 */

ngx_int_t
ngx_http_opamp_admin_script_error(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    u_char              *reason;
    ngx_int_t            status;
    ngx_http_request_t  *r;

    r = ctx->request;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[0]->len != 5
        || ngx_strncmp(reply->element[0]->str, "error", 5) != 0
        || reply->element[1]->type != REDIS_REPLY_STRING
        || reply->element[2]->type != REDIS_REPLY_STRING)
    {
        return NGX_DECLINED;
    }

    status = ngx_atoi((u_char *) reply->element[1]->str,
                      reply->element[1]->len);
    if (status < 400 || status > 599) {
        status = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    reason = ngx_pnalloc(r->pool, reply->element[2]->len + 1);
    if (reason == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(reason, reply->element[2]->str, reply->element[2]->len)
        = '\0';

    return ngx_http_opamp_admin_error(r, status, (char *) reason);
}


/* PUT configs/groups/<name> with a plan: rollout_start.lua */

ngx_int_t
ngx_http_opamp_admin_rollout_start(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_http_opamp_admin_config_t *config, ngx_http_opamp_admin_plan_t *plan,
    ngx_int_t version)
{
    int                          argc;
    u_char                       now[NGX_INT64_LEN], max[NGX_INT_T_LEN];
    u_char                       ver[NGX_INT_T_LEN];
    size_t                      *argvlen;
    ngx_str_t                    keys[5], author, note, dry, fleet;
    ngx_uint_t                   i, n;
    const char                 **argv;
    ngx_time_t                  *tp;
    ngx_http_request_t          *r;
    ngx_http_opamp_main_conf_t  *omcf;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);
    n = config ? config->n : 0;

    if (ngx_http_opamp_admin_author(r, &author) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_opamp_admin_note(r, &note);

    if (ngx_http_arg(r, (u_char *) "dry_run", 7, &dry) != NGX_OK) {
        ngx_str_null(&dry);
    }

    if (ngx_http_opamp_admin_key(ctx, &keys[0], "config_version", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[1], "rollout:group:",
                                    NGX_HTTP_OPAMP_ADMIN_KEY_NAME) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[2], "rollouts", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[3], "group_members:",
                                    NGX_HTTP_OPAMP_ADMIN_KEY_NAME) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv = ngx_palloc(r->pool, (24 + 3 * n) * (sizeof(char *)
                                               + sizeof(size_t)));
    if (argv == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argvlen = (size_t *) (argv + 24 + 3 * n);
    tp = ngx_timeofday();

#define ngx_http_opamp_arg(s, l)                                             \
    argv[argc] = (const char *) (s); argvlen[argc++] = (l)

    argc = 0;
    ngx_http_opamp_arg(ctx->key.data, ctx->key.len);
    ngx_http_opamp_arg(ctx->vkey.data, ctx->vkey.len);
    ngx_http_opamp_arg(keys[0].data, keys[0].len);
    ngx_http_opamp_arg(keys[1].data, keys[1].len);
    ngx_http_opamp_arg(keys[2].data, keys[2].len);
    ngx_http_opamp_arg(keys[3].data, keys[3].len);

    ngx_http_opamp_arg(ctx->name.data, ctx->name.len);
    ngx_http_opamp_arg(fleet.data, fleet.len);
    ngx_http_opamp_arg(now, ngx_sprintf(now, "%T%03M", tp->sec, tp->msec)
                            - now);
    ngx_http_opamp_arg(omcf->prefix.data, omcf->prefix.len);
    ngx_http_opamp_arg(max, ngx_sprintf(max, "%ui", omcf->config_versions)
                            - max);
    ngx_http_opamp_arg(author.len ? author.data : (u_char *) "", author.len);
    ngx_http_opamp_arg(note.len ? note.data : (u_char *) "", note.len);
    ngx_http_opamp_arg(plan->stages.data, plan->stages.len);
    ngx_http_opamp_arg(plan->soak.data, plan->soak.len);
    ngx_http_opamp_arg(plan->gates.len ? plan->gates.data : (u_char *) "",
                       plan->gates.len);
    ngx_http_opamp_arg(plan->on_gate.data, plan->on_gate.len);
    ngx_http_opamp_arg((dry.len == 1 && dry.data[0] == '1') ? "1" : "",
                       (size_t) (dry.len == 1 && dry.data[0] == '1'));

    if (config) {
        ngx_http_opamp_arg(ctx->hash, 64);
        ngx_http_opamp_arg("", 0);
        ngx_http_opamp_arg(config->selector.len ? config->selector.data
                                                : (u_char *) "",
                           config->selector.len);
        ngx_http_opamp_arg(config->sorted.data, config->sorted.len);

        for (i = 0; i < n; i++) {
            ngx_http_opamp_arg(config->names[i].data, config->names[i].len);
            ngx_http_opamp_arg(config->bodies[i].data,
                               config->bodies[i].len);
            ngx_http_opamp_arg(config->types[i].len ? config->types[i].data
                                                    : (u_char *) "",
                               config->types[i].len);
        }

    } else {
        /* a staged rollback: the files of that version */
        ngx_http_opamp_arg("", 0);
        ngx_http_opamp_arg(ver, ngx_sprintf(ver, "%i", version) - ver);
        ngx_http_opamp_arg("", 0);
        ngx_http_opamp_arg("", 0);
    }

#undef ngx_http_opamp_arg

    ctx->op = NGX_HTTP_OPAMP_ADMIN_ROLLOUT_START;

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_rollout_start,
               sizeof(ngx_http_opamp_lua_rollout_start) - 1, 6, argc, argv,
               argvlen);
}


/* GET rollouts, GET rollouts/<group>, POST rollouts/<group>/<action> */

ngx_int_t
ngx_http_opamp_admin_rollouts(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char                       now[NGX_INT64_LEN];
    size_t                       argvlen[9];
    ngx_str_t                    keys[4], author, fleet;
    ngx_uint_t                   i;
    const char                  *argv[9];
    ngx_time_t                  *tp;
    ngx_http_request_t          *r;
    ngx_http_opamp_main_conf_t  *omcf;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    if (ngx_http_opamp_admin_author(r, &author) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[0], "rollout:group:",
                                    NGX_HTTP_OPAMP_ADMIN_KEY_NAME) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[1], "rollouts", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[2], "fleet:gauges", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &keys[3], "config_version", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < 4; i++) {
        argv[i] = (const char *) keys[i].data;
        argvlen[i] = keys[i].len;
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_ROLLOUTS) {
        argv[4] = "list";
        argvlen[4] = 4;

    } else if (r->method & NGX_HTTP_POST) {
        argv[4] = (const char *) ctx->action.data;
        argvlen[4] = ctx->action.len;

    } else {
        argv[4] = "show";
        argvlen[4] = 4;
    }

    tp = ngx_timeofday();

    argv[5] = (const char *) now;
    argvlen[5] = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec) - now;
    argv[6] = (const char *) omcf->prefix.data;
    argvlen[6] = omcf->prefix.len;
    argv[7] = (const char *) fleet.data;
    argvlen[7] = fleet.len;
    argv[8] = author.len ? (const char *) author.data : "";
    argvlen[8] = author.len;

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_rollout_action,
               sizeof(ngx_http_opamp_lua_rollout_action) - 1, 4, 9, argv,
               argvlen);
}


/* rollouts/<group>/<action>: one of the actions, else NGX_DECLINED */

ngx_int_t
ngx_http_opamp_admin_rollout_action(ngx_str_t *action)
{
    ngx_uint_t  i;

    for (i = 0; ngx_http_opamp_admin_actions[i]; i++) {
        if (action->len == ngx_strlen(ngx_http_opamp_admin_actions[i])
            && ngx_strncmp(action->data, ngx_http_opamp_admin_actions[i],
                           action->len) == 0)
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_opamp_admin_rollouts_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    size_t                  i;
    ngx_int_t               rc;
    redisReply            **e;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    rc = ngx_http_opamp_admin_script_error(ctx, reply);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        goto other;
    }

    e = reply->element;

    for (i = 1; i < reply->elements; i++) {
        if (ctx->op == NGX_HTTP_OPAMP_ADMIN_ROLLOUTS
            ? e[i]->type != REDIS_REPLY_ARRAY
            : (e[i]->type != REDIS_REPLY_STRING
               && e[i]->type != REDIS_REPLY_INTEGER))
        {
            goto other;
        }
    }

    ngx_http_opamp_json_init(&j, r->pool);

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_ROLLOUT_START) {
        ngx_http_opamp_json_object(&j);

        if (e[0]->len == 3 && ngx_strncmp(e[0]->str, "dry", 3) == 0) {
            /* { "dry", agents, per stage ... } */
            ngx_http_opamp_json_kv(&j, "dry_run");
            ngx_http_opamp_json_literal(&j, "true");
            ngx_http_opamp_json_kv(&j, "agents");
            ngx_http_opamp_json_int(&j, e[1]->integer);
            ngx_http_opamp_json_kv(&j, "stages");
            ngx_http_opamp_json_array(&j);

            for (i = 2; i < reply->elements; i++) {
                ngx_http_opamp_json_int(&j, e[i]->integer);
            }

            ngx_http_opamp_json_close(&j, ']');

        } else {
            /* { "ok", config_version, version, id, first stage's agents,
             * config_hash } */
            if (reply->elements != 6 || e[5]->type != REDIS_REPLY_STRING) {
                goto other;
            }

            ngx_http_opamp_json_kv(&j, "config_hash");
            ngx_http_opamp_json_string(&j, (u_char *) e[5]->str, e[5]->len);
            ngx_http_opamp_json_kv(&j, "config_version");
            ngx_http_opamp_json_int(&j, e[1]->integer);
            ngx_http_opamp_json_kv(&j, "version");
            ngx_http_opamp_json_int(&j, e[2]->integer);
            ngx_http_opamp_json_kv(&j, "rollout");
            ngx_http_opamp_json_object(&j);
            ngx_http_opamp_json_kv(&j, "id");
            ngx_http_opamp_json_int(&j, e[3]->integer);
            ngx_http_opamp_json_kv(&j, "state");
            ngx_http_opamp_json_string(&j, (u_char *) "running", 7);
            ngx_http_opamp_json_kv(&j, "stage");
            ngx_http_opamp_json_int(&j, 1);
            ngx_http_opamp_json_kv(&j, "stage_agents");
            ngx_http_opamp_json_int(&j, e[4]->integer);
            ngx_http_opamp_json_close(&j, '}');
        }

        ngx_http_opamp_json_close(&j, '}');
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_ROLLOUTS) {
        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "rollouts");
        ngx_http_opamp_json_array(&j);

        for (i = 1; i < reply->elements; i++) {
            ngx_http_opamp_admin_rollout_json(&j, e[i]->element,
                                              e[i]->elements);
        }

        ngx_http_opamp_json_close(&j, ']');
        ngx_http_opamp_json_close(&j, '}');
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
    }

    ngx_http_opamp_admin_rollout_json(&j, &e[1], reply->elements - 1);

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);

other:

    return ngx_http_opamp_admin_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "the agent state store answered "
                                      "something else");
}


/* the value of a record's field, or NULL */

static redisReply *
ngx_http_opamp_admin_rollout_field(redisReply **pairs, size_t n,
    const char *name)
{
    size_t  i, len;

    len = ngx_strlen(name);

    for (i = 0; i + 1 < n; i += 2) {
        if (pairs[i]->type == REDIS_REPLY_STRING && pairs[i]->len == len
            && ngx_strncmp(pairs[i]->str, name, len) == 0
            && pairs[i + 1]->type == REDIS_REPLY_STRING)
        {
            return pairs[i + 1];
        }
    }

    return NULL;
}


/* a whole number of the record (0 when absent or not one) */

static int64_t
ngx_http_opamp_admin_rollout_int(redisReply **pairs, size_t n,
    const char *name)
{
    u_char      *p, *last;
    int64_t      v, sign;
    redisReply  *f;

    f = ngx_http_opamp_admin_rollout_field(pairs, n, name);
    if (f == NULL) {
        return 0;
    }

    p = (u_char *) f->str;
    last = p + f->len;
    sign = 1;
    v = 0;

    if (p < last && *p == '-') {
        sign = -1;
        p++;
    }

    for ( /* void */ ; p < last && *p >= '0' && *p <= '9'
                       && v < 1000000000000000LL; p++)
    {
        v = v * 10 + (*p - '0');
    }

    return sign * v;
}


/* stages: counts as numbers, shares as "<n>%" */

static void
ngx_http_opamp_admin_rollout_stages(ngx_http_opamp_json_t *j, redisReply *f)
{
    u_char  *p, *last, *sp, *w;
    u_char   pct[32];

    ngx_http_opamp_json_array(j);

    for (p = f ? (u_char *) f->str : NULL, last = f ? p + f->len : NULL;
         p && p < last;
         p = sp + 1)
    {
        sp = ngx_strlchr(p, last, ' ');
        if (sp == NULL) {
            sp = last;
        }

        if (*p == 'c') {
            ngx_http_opamp_json_number(j, p + 1, sp - p - 1);

        } else {
            w = ngx_snprintf(pct, sizeof(pct), "%.4f%%",
                             strtod((char *) p + 1, NULL) * 100);

            /* "10.0000%" as "10%" */
            while (w > pct + 2 && w[-2] == '0') {
                w[-2] = '%';
                w--;
            }

            if (w > pct + 2 && w[-2] == '.') {
                w[-2] = '%';
                w--;
            }

            ngx_http_opamp_json_string(j, pct, w - pct);
        }

        if (sp == last) {
            break;
        }
    }

    ngx_http_opamp_json_close(j, ']');
}


/* soak times: ms as seconds */

static void
ngx_http_opamp_admin_rollout_soak(ngx_http_opamp_json_t *j, redisReply *f)
{
    u_char  *p, *last, *sp;

    ngx_http_opamp_json_array(j);

    for (p = f ? (u_char *) f->str : NULL, last = f ? p + f->len : NULL;
         p && p < last;
         p = sp + 1)
    {
        sp = ngx_strlchr(p, last, ' ');
        if (sp == NULL) {
            sp = last;
        }

        ngx_http_opamp_json_int(j, ngx_atoi(p, sp - p) / 1000);

        if (sp == last) {
            break;
        }
    }

    ngx_http_opamp_json_close(j, ']');
}


/* gates: "<name> c<n>|f<share>[ <ms>]" lines */

static void
ngx_http_opamp_admin_rollout_gates(ngx_http_opamp_json_t *j, redisReply *f)
{
    u_char  *p, *last, *sp, *nl, *lim, *ms;

    ngx_http_opamp_json_object(j);

    for (p = f ? (u_char *) f->str : NULL, last = f ? p + f->len : NULL;
         p && p < last;
         p = nl + 1)
    {
        nl = ngx_strlchr(p, last, '\n');
        if (nl == NULL) {
            nl = last;
        }

        sp = ngx_strlchr(p, nl, ' ');
        if (sp == NULL || sp + 2 > nl) {
            break;
        }

        ngx_http_opamp_json_key(j, (const char *) p, sp - p);
        ngx_http_opamp_json_object(j);

        lim = sp + 1;
        ms = ngx_strlchr(lim, nl, ' ');

        if (*lim == 'c') {
            ngx_http_opamp_json_kv(j, "max_agents");

        } else {
            ngx_http_opamp_json_kv(j, "max_share");
        }

        ngx_http_opamp_json_number(j, lim + 1, (ms ? ms : nl) - lim - 1);

        if (ms) {
            ngx_http_opamp_json_kv(j, "within_s");
            ngx_http_opamp_json_int(j, ngx_atoi(ms + 1, nl - ms - 1) / 1000);
        }

        ngx_http_opamp_json_close(j, '}');

        if (nl == last) {
            break;
        }
    }

    ngx_http_opamp_json_close(j, '}');
}


/* a rollout's record as the admin API shows it */

static void
ngx_http_opamp_admin_rollout_json(ngx_http_opamp_json_t *j,
    redisReply **pairs, size_t n)
{
    u_char              name[32];
    redisReply         *f;
    ngx_uint_t          i;
    static const char  *strings[] = { "group", "state", "reason", "from_hash",
                                      "to_hash", "on_gate", "author", "note",
                                      NULL };
    static const char  *numbers[] = { "id", "from_version", "to_version",
                                      "stage", "created_ms", "updated_ms",
                                      "ended_ms", NULL };
    static const char  *counts[] = { "reached", "running", "failed",
                                     "unhealthy", "disconnected", NULL };

    ngx_http_opamp_json_object(j);

    for (i = 0; strings[i]; i++) {
        f = ngx_http_opamp_admin_rollout_field(pairs, n, strings[i]);
        ngx_http_opamp_json_key(j, strings[i], ngx_strlen(strings[i]));

        if (f) {
            ngx_http_opamp_json_string(j, (u_char *) f->str, f->len);

        } else {
            ngx_http_opamp_json_literal(j, "null");
        }
    }

    for (i = 0; numbers[i]; i++) {
        ngx_http_opamp_json_key(j, numbers[i], ngx_strlen(numbers[i]));

        if (ngx_http_opamp_admin_rollout_field(pairs, n, numbers[i])) {
            ngx_http_opamp_json_int(j,
                ngx_http_opamp_admin_rollout_int(pairs, n, numbers[i]));

        } else {
            ngx_http_opamp_json_literal(j, "null");
        }
    }

    ngx_http_opamp_json_kv(j, "stage_started_ms");
    ngx_http_opamp_json_int(j,
                    ngx_http_opamp_admin_rollout_int(pairs, n, "stage_ms"));

    ngx_http_opamp_json_kv(j, "stages");
    ngx_http_opamp_admin_rollout_stages(j,
                 ngx_http_opamp_admin_rollout_field(pairs, n, "stages"));

    ngx_http_opamp_json_kv(j, "soak_s");
    ngx_http_opamp_admin_rollout_soak(j,
                 ngx_http_opamp_admin_rollout_field(pairs, n, "soak"));

    ngx_http_opamp_json_kv(j, "gates");
    ngx_http_opamp_admin_rollout_gates(j,
                 ngx_http_opamp_admin_rollout_field(pairs, n, "gates"));

    ngx_http_opamp_json_kv(j, "counts");
    ngx_http_opamp_json_object(j);

    for (i = 0; counts[i]; i++) {
        ngx_http_opamp_json_key(j, counts[i], ngx_strlen(counts[i]));
        *ngx_sprintf(name, "count_%s", counts[i]) = '\0';
        ngx_http_opamp_json_int(j,
             ngx_http_opamp_admin_rollout_int(pairs, n, (char *) name));
    }

    ngx_http_opamp_json_close(j, '}');
    ngx_http_opamp_json_close(j, '}');
}
