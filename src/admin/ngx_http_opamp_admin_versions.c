/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's config versions (docs/admin-api.md, "Config versions"):
 * a config's history, one version with its files, two compared file by
 * file, an earlier one put back.  Every PUT of a config makes a version
 * (admin_config_set.lua); the history is read and rolled back by
 * src/lua/admin_versions.lua and admin_version_rollback.lua.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_lua.h"
#include "ngx_http_opamp_utf8.h"


#define NGX_HTTP_OPAMP_ADMIN_VERSIONS_LIMIT   50
#define NGX_HTTP_OPAMP_ADMIN_MAX_LIMIT        1000


static ngx_int_t ngx_http_opamp_admin_rollback(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_version_arg(ngx_http_request_t *r,
    const char *name, ngx_int_t *n);
static void ngx_http_opamp_admin_version_json(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_http_opamp_json_t *j, redisReply *rec, ngx_uint_t open);
static void ngx_http_opamp_admin_files_json(ngx_http_opamp_json_t *j,
    redisReply *files);
static ngx_int_t ngx_http_opamp_admin_diff_json(
    ngx_http_opamp_admin_ctx_t *ctx, ngx_http_opamp_json_t *j,
    redisReply *reply);
static ngx_uint_t ngx_http_opamp_admin_is_text(redisReply *body);


/* the record's fields: { n, hash, ms, author, note, selector, priority,
 * from } (src/lua/lib/versions.lua) */
#define NGX_HTTP_OPAMP_REC_FIELDS  8


/*
 * GET  configs/.../versions?limit=N&cursor=V     the history, newest first
 * DELETE configs/.../versions                    a deleted config's history
 * GET  configs/.../versions/<n>                  one version and its files
 * GET  configs/.../diff?from=A[&to=B]            A against B (the newest)
 * POST configs/.../rollback?version=N            N put back
 */

/* a staged rollback: {"rollout": plan}, ngx_http_opamp_admin_rollouts.c */

static ngx_int_t
ngx_http_opamp_admin_staged_rollback(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_int_t version)
{
    json_t                       *root;
    ngx_int_t                     rc;
    const char                   *reason;
    json_error_t                  error;
    ngx_http_opamp_admin_plan_t   plan;

    root = json_loadb((const char *) ctx->body.data, ctx->body.len,
                      JSON_REJECT_DUPLICATES, &error);

    if (root == NULL || !json_is_object(root) || json_object_size(root) != 1
        || json_object_get(root, "rollout") == NULL)
    {
        if (root) {
            json_decref(root);
        }

        return ngx_http_opamp_admin_error(ctx->request, NGX_HTTP_BAD_REQUEST,
                                          "the body of a rollback, if any, "
                                          "must be {\"rollout\": {...}}");
    }

    reason = ngx_http_opamp_admin_plan_read(ctx->request,
                                            json_object_get(root, "rollout"),
                                            &plan);
    if (reason) {
        json_decref(root);
        return ngx_http_opamp_admin_error(ctx->request, NGX_HTTP_BAD_REQUEST,
                                          reason);
    }

    rc = ngx_http_opamp_admin_rollout_start(ctx, NULL, &plan, version);

    json_decref(root);

    return rc;
}


ngx_int_t
ngx_http_opamp_admin_versions(ngx_http_opamp_admin_ctx_t *ctx)
{
    int                          argc;
    u_char                       a[NGX_INT_T_LEN], b[NGX_INT_T_LEN];
    size_t                       argvlen[6];
    ngx_int_t                    from, to, limit;
    const char                  *argv[6];
    ngx_http_request_t          *r;
    ngx_http_opamp_main_conf_t  *omcf;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_ROLLBACK) {
        return ngx_http_opamp_admin_rollback(ctx);
    }

    argv[0] = (const char *) ctx->vkey.data;
    argvlen[0] = ctx->vkey.len;
    argv[1] = (const char *) ctx->key.data;
    argvlen[1] = ctx->key.len;
    argv[2] = (const char *) omcf->prefix.data;
    argvlen[2] = omcf->prefix.len;
    argc = 4;

    switch (ctx->op) {

    case NGX_HTTP_OPAMP_ADMIN_VERSIONS:

        if (r->method & NGX_HTTP_DELETE) {
            argv[3] = "purge";
            break;
        }

        argv[3] = "list";

        from = 0;
        limit = NGX_HTTP_OPAMP_ADMIN_VERSIONS_LIMIT;

        if (ngx_http_opamp_admin_version_arg(r, "cursor", &from) != NGX_OK) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "cursor must be a version "
                                              "number");
        }

        if (ngx_http_opamp_admin_version_arg(r, "limit", &limit) != NGX_OK
            || limit > NGX_HTTP_OPAMP_ADMIN_MAX_LIMIT)
        {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "limit must be 1 to 1000");
        }

        argv[4] = (const char *) a;
        argvlen[4] = from ? ngx_sprintf(a, "%i", from) - a : 0;
        argv[5] = (const char *) b;
        argvlen[5] = ngx_sprintf(b, "%i", limit) - b;
        argc = 6;
        break;

    case NGX_HTTP_OPAMP_ADMIN_VERSION:
        argv[3] = "show";
        argv[4] = (const char *) a;
        argvlen[4] = ngx_sprintf(a, "%i", ctx->version) - a;
        argc = 5;
        break;

    default: /* NGX_HTTP_OPAMP_ADMIN_DIFF */

        from = 0;
        to = 0;

        if (ngx_http_opamp_admin_version_arg(r, "from", &from) != NGX_OK
            || from == 0
            || ngx_http_opamp_admin_version_arg(r, "to", &to) != NGX_OK)
        {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "from (required) and to "
                                              "(default: the newest) must "
                                              "be version numbers");
        }

        argv[3] = "diff";
        argv[4] = (const char *) a;
        argvlen[4] = ngx_sprintf(a, "%i", from) - a;
        argv[5] = (const char *) b;
        argvlen[5] = to ? ngx_sprintf(b, "%i", to) - b : 0;
        argc = 6;
        break;
    }

    argvlen[3] = ngx_strlen(argv[3]);

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_admin_versions,
               sizeof(ngx_http_opamp_lua_admin_versions) - 1, 2, argc, argv,
               argvlen);
}


/* POST configs/.../rollback?version=N: admin_version_rollback.lua */

static ngx_int_t
ngx_http_opamp_admin_rollback(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char                       now[NGX_INT64_LEN], n[NGX_INT_T_LEN];
    u_char                       max[NGX_INT_T_LEN];
    size_t                       argvlen[14];
    ngx_int_t                    version;
    ngx_str_t                    groups, cversion, fleet, author, note;
    ngx_time_t                  *tp;
    const char                  *argv[14];
    ngx_http_request_t          *r;
    ngx_http_opamp_main_conf_t  *omcf;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    version = 0;

    if (ngx_http_opamp_admin_version_arg(r, "version", &version) != NGX_OK
        || version == 0)
    {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                          "version must be the number of "
                                          "the version to put back");
    }

    if (ctx->group && ctx->body.len) {
        /* {"rollout": {...}}: the version put back by a staged rollout */
        return ngx_http_opamp_admin_staged_rollback(ctx, version);
    }

    if (ngx_http_opamp_admin_key(ctx, &groups, "groups", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &cversion, "config_version", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK
        || ngx_http_opamp_admin_author(r, &author) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_opamp_admin_note(r, &note);

    tp = ngx_timeofday();

    argv[0] = (const char *) ctx->key.data;
    argvlen[0] = ctx->key.len;
    argv[1] = (const char *) groups.data;
    argvlen[1] = groups.len;
    argv[2] = (const char *) cversion.data;
    argvlen[2] = cversion.len;
    argv[3] = (const char *) (ctx->has_uid ? ctx->agent_key.data
                                           : ctx->key.data);
    argvlen[3] = ctx->has_uid ? ctx->agent_key.len : ctx->key.len;
    argv[4] = (const char *) ctx->vkey.data;
    argvlen[4] = ctx->vkey.len;
    argv[5] = ctx->has_uid ? "agent" : "group";
    argvlen[5] = 5;
    argv[6] = (const char *) (ctx->has_uid ? ctx->uid_text : ctx->name.data);
    argvlen[6] = ctx->has_uid ? NGX_HTTP_OPAMP_UID_STR_LEN : ctx->name.len;
    argv[7] = (const char *) fleet.data;
    argvlen[7] = fleet.len;
    argv[8] = (const char *) now;
    argvlen[8] = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec) - now;
    argv[9] = (const char *) n;
    argvlen[9] = ngx_sprintf(n, "%i", version) - n;
    argv[10] = (const char *) omcf->prefix.data;
    argvlen[10] = omcf->prefix.len;
    argv[11] = (const char *) max;
    argvlen[11] = ngx_sprintf(max, "%ui", omcf->config_versions) - max;
    argv[12] = (const char *) (author.len ? author.data : (u_char *) "");
    argvlen[12] = author.len;
    argv[13] = (const char *) (note.len ? note.data : (u_char *) "");
    argvlen[13] = note.len;

    return ngx_http_opamp_admin_eval_source(ctx,
               ngx_http_opamp_lua_admin_version_rollback,
               sizeof(ngx_http_opamp_lua_admin_version_rollback) - 1, 5, 14,
               argv, argvlen);
}


/* ?name=N: NGX_OK with *n set when present and a version number, NGX_OK
 * with *n kept when absent, else NGX_ERROR */

static ngx_int_t
ngx_http_opamp_admin_version_arg(ngx_http_request_t *r, const char *name,
    ngx_int_t *n)
{
    ngx_int_t  v;
    ngx_str_t  value;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &value)
        != NGX_OK)
    {
        return NGX_OK;
    }

    v = ngx_http_opamp_admin_version_number(value.data, value.len);
    if (v == NGX_ERROR) {
        return NGX_ERROR;
    }

    *n = v;

    return NGX_OK;
}


ngx_int_t
ngx_http_opamp_admin_versions_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    size_t                  i;
    redisReply            **el, *last;
    ngx_int_t               rc;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    ngx_http_opamp_json_init(&j, r->pool);

    if (reply->type == REDIS_REPLY_INTEGER) {
        /* a purge */

        if (reply->integer < 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_CONFLICT,
                                              "the config exists: its "
                                              "history is what it rolls "
                                              "back to; delete the config "
                                              "first");
        }

        if (reply->integer == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "no history");
        }

        return ngx_http_opamp_admin_no_content(r);
    }

    if (reply->type != REDIS_REPLY_ARRAY) {
        goto unexpected;
    }

    el = reply->element;

    if (reply->elements == 0) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "no such version");
    }

    for (i = 0; i < reply->elements; i++) {
        if (el[i]->type == REDIS_REPLY_ARRAY
            && el[i]->elements >= NGX_HTTP_OPAMP_REC_FIELDS
            && (el[i]->element[0]->type != REDIS_REPLY_STRING
                || el[i]->element[1]->type != REDIS_REPLY_STRING))
        {
            goto unexpected;
        }
    }

    switch (ctx->op) {

    case NGX_HTTP_OPAMP_ADMIN_ROLLBACK:
        /* { config_version, version, hash }, or a refusal */

        rc = ngx_http_opamp_admin_script_error(ctx, reply);
        if (rc != NGX_DECLINED) {
            return rc;
        }

        if (reply->elements != 3 || el[0]->type != REDIS_REPLY_INTEGER
            || el[1]->type != REDIS_REPLY_INTEGER
            || el[2]->type != REDIS_REPLY_STRING)
        {
            goto unexpected;
        }

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "config_hash");
        ngx_http_opamp_json_string(&j, (u_char *) el[2]->str, el[2]->len);
        ngx_http_opamp_json_kv(&j, "config_version");
        ngx_http_opamp_json_int(&j, el[0]->integer);
        ngx_http_opamp_json_kv(&j, "version");
        ngx_http_opamp_json_int(&j, el[1]->integer);
        ngx_http_opamp_json_close(&j, '}');
        break;

    case NGX_HTTP_OPAMP_ADMIN_VERSIONS:
        /* { first, last, record, ... } */

        if (reply->elements < 2 || el[0]->type != REDIS_REPLY_INTEGER) {
            goto unexpected;
        }

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "versions");
        ngx_http_opamp_json_array(&j);

        last = NULL;

        for (i = 2; i < reply->elements; i++) {
            if (el[i]->type != REDIS_REPLY_ARRAY
                || el[i]->elements < NGX_HTTP_OPAMP_REC_FIELDS)
            {
                goto unexpected;
            }

            ngx_http_opamp_admin_version_json(ctx, &j, el[i], 0);
            last = el[i];
        }

        ngx_http_opamp_json_close(&j, ']');
        ngx_http_opamp_json_kv(&j, "next_cursor");

        /* more below the last one shown: its number is the cursor */

        if (last && ngx_atoi((u_char *) last->element[0]->str,
                             last->element[0]->len)
                    > el[0]->integer)
        {
            ngx_http_opamp_json_number(&j, (u_char *) last->element[0]->str,
                                       last->element[0]->len);

        } else {
            ngx_http_opamp_json_literal(&j, "null");
        }

        ngx_http_opamp_json_close(&j, '}');
        break;

    case NGX_HTTP_OPAMP_ADMIN_VERSION:
        /* { record, files } */

        if (reply->elements != 2 || el[0]->type != REDIS_REPLY_ARRAY
            || el[0]->elements < NGX_HTTP_OPAMP_REC_FIELDS
            || el[1]->type != REDIS_REPLY_ARRAY)
        {
            goto unexpected;
        }

        ngx_http_opamp_admin_version_json(ctx, &j, el[0], 1);

        ngx_http_opamp_json_kv(&j, "files");
        ngx_http_opamp_admin_files_json(&j, el[1]);
        ngx_http_opamp_json_close(&j, '}');
        break;

    default: /* NGX_HTTP_OPAMP_ADMIN_DIFF: { record, files, record, files } */

        rc = ngx_http_opamp_admin_diff_json(ctx, &j, reply);
        if (rc == NGX_DECLINED) {
            goto unexpected;
        }

        if (rc != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;
    }

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);

unexpected:

    return ngx_http_opamp_admin_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "the agent state store answered "
                                      "something else");
}


/* a record as JSON: number, config_hash, created_ms, author, note, a
 * group's selector and priority, rollback_of; open: the object is left
 * open for more members */

static void
ngx_http_opamp_admin_version_json(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_http_opamp_json_t *j, redisReply *rec, ngx_uint_t open)
{
    redisReply  **f;

    f = rec->element;

    ngx_http_opamp_json_object(j);
    ngx_http_opamp_json_kv(j, "version");
    ngx_http_opamp_json_number(j, (u_char *) f[0]->str, f[0]->len);
    ngx_http_opamp_json_kv(j, "config_hash");
    ngx_http_opamp_json_string(j, (u_char *) f[1]->str, f[1]->len);
    ngx_http_opamp_json_kv(j, "created_ms");
    ngx_http_opamp_json_number(j, (u_char *) f[2]->str, f[2]->len);
    ngx_http_opamp_json_kv(j, "author");
    ngx_http_opamp_json_string(j, (u_char *) f[3]->str, f[3]->len);
    ngx_http_opamp_json_kv(j, "note");
    ngx_http_opamp_json_string(j, (u_char *) f[4]->str, f[4]->len);

    if (ctx->group) {
        ngx_http_opamp_json_kv(j, "selector");
        ngx_http_opamp_json_string(j, (u_char *) f[5]->str, f[5]->len);
        ngx_http_opamp_json_kv(j, "priority");
        ngx_http_opamp_json_number(j, (u_char *) f[6]->str, f[6]->len);
    }

    ngx_http_opamp_json_kv(j, "rollback_of");
    ngx_http_opamp_json_number(j, (u_char *) f[7]->str, f[7]->len);

    if (!open) {
        ngx_http_opamp_json_close(j, '}');
    }
}


/* { name, content type, body, ... } as a config's "files" object */

static void
ngx_http_opamp_admin_files_json(ngx_http_opamp_json_t *j, redisReply *files)
{
    size_t        i;
    redisReply  **el;

    el = files->element;

    ngx_http_opamp_json_object(j);

    for (i = 0; i + 2 < files->elements; i += 3) {
        ngx_http_opamp_json_key(j, el[i]->str, el[i]->len);
        ngx_http_opamp_json_object(j);
        ngx_http_opamp_json_kv(j, "body");
        ngx_http_opamp_json_string(j, (u_char *) el[i + 2]->str,
                                   el[i + 2]->len);

        if (el[i + 1]->len) {
            ngx_http_opamp_json_kv(j, "content_type");
            ngx_http_opamp_json_string(j, (u_char *) el[i + 1]->str,
                                       el[i + 1]->len);
        }

        ngx_http_opamp_json_close(j, '}');
    }

    ngx_http_opamp_json_close(j, '}');
}


static int
ngx_http_opamp_admin_cmp_reply(const void *one, const void *two)
{
    redisReply * const  *a = one, * const *b = two;

    size_t  n;
    int     rc;

    n = ngx_min((*a)->len, (*b)->len);
    rc = ngx_memcmp((*a)->str, (*b)->str, n);

    if (rc != 0) {
        return rc;
    }

    return ((*a)->len < (*b)->len) ? -1 : ((*a)->len > (*b)->len);
}


/*
 * {"from": record, "to": record, "selector"/"priority": {"from", "to"}
 * when they differ, "files": [{"name", "change", "content_type", "diff"
 * or "diff_omitted"}]}: the files added, removed or changed, by name
 */

static ngx_int_t
ngx_http_opamp_admin_diff_json(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_http_opamp_json_t *j, redisReply *reply)
{
    size_t        i, k, na, nb, n;
    ngx_int_t     rc;
    ngx_str_t     name, ta, tb, ba, bb;
    ngx_uint_t    budget;
    redisReply  **el, *fa, *fb, **names, *pa, *pb, *x, *y;
    const char   *reason, *change;

    el = reply->element;

    if (reply->elements != 4) {
        return NGX_DECLINED;
    }

    for (i = 0; i < 4; i++) {
        if (el[i]->type != REDIS_REPLY_ARRAY
            || (i % 2 == 0 && el[i]->elements < NGX_HTTP_OPAMP_REC_FIELDS))
        {
            return NGX_DECLINED;
        }
    }

    fa = el[1];
    fb = el[3];
    na = fa->elements / 3;
    nb = fb->elements / 3;

    /* every name once, in byte order */

    names = ngx_palloc(ctx->request->pool,
                       (na + nb + 1) * sizeof(redisReply *));
    if (names == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    for (i = 0; i < na; i++) {
        names[n++] = fa->element[3 * i];
    }

    for (i = 0; i < nb; i++) {
        for (k = 0; k < na; k++) {
            x = fa->element[3 * k];
            y = fb->element[3 * i];

            if (x->len == y->len && ngx_memcmp(x->str, y->str, x->len) == 0) {
                break;
            }
        }

        if (k == na) {
            names[n++] = fb->element[3 * i];
        }
    }

    ngx_qsort(names, n, sizeof(redisReply *), ngx_http_opamp_admin_cmp_reply);

    ngx_http_opamp_json_object(j);
    ngx_http_opamp_json_kv(j, "from");
    ngx_http_opamp_admin_version_json(ctx, j, el[0], 0);
    ngx_http_opamp_json_kv(j, "to");
    ngx_http_opamp_admin_version_json(ctx, j, el[2], 0);

    if (ctx->group) {
        for (i = 5; i <= 6; i++) {
            x = el[0]->element[i];
            y = el[2]->element[i];

            if (x->len == y->len && ngx_memcmp(x->str, y->str, x->len) == 0) {
                continue;
            }

            if (i == 5) {
                ngx_http_opamp_json_kv(j, "selector");

            } else {
                ngx_http_opamp_json_kv(j, "priority");
            }

            ngx_http_opamp_json_object(j);
            ngx_http_opamp_json_kv(j, "from");
            ngx_http_opamp_json_string(j, (u_char *) x->str, x->len);
            ngx_http_opamp_json_kv(j, "to");
            ngx_http_opamp_json_string(j, (u_char *) y->str, y->len);
            ngx_http_opamp_json_close(j, '}');
        }
    }

    ngx_http_opamp_json_kv(j, "files");
    ngx_http_opamp_json_array(j);

    budget = NGX_HTTP_OPAMP_ADMIN_DIFF_BUDGET;

    for (i = 0; i < n; i++) {
        name.data = (u_char *) names[i]->str;
        name.len = names[i]->len;

        pa = NULL;
        pb = NULL;
        x = NULL;
        y = NULL;
        ngx_str_null(&ta);
        ngx_str_null(&tb);
        ngx_str_null(&ba);
        ngx_str_null(&bb);

        for (k = 0; k < na; k++) {
            x = fa->element[3 * k];

            if (x->len == name.len && ngx_memcmp(x->str, name.data, x->len)
                                      == 0)
            {
                pa = x;
                ta.data = (u_char *) fa->element[3 * k + 1]->str;
                ta.len = fa->element[3 * k + 1]->len;
                ba.data = (u_char *) fa->element[3 * k + 2]->str;
                ba.len = fa->element[3 * k + 2]->len;
                x = fa->element[3 * k + 2];
                break;
            }
        }

        for (k = 0; k < nb; k++) {
            y = fb->element[3 * k];

            if (y->len == name.len && ngx_memcmp(y->str, name.data, y->len)
                                      == 0)
            {
                pb = y;
                tb.data = (u_char *) fb->element[3 * k + 1]->str;
                tb.len = fb->element[3 * k + 1]->len;
                bb.data = (u_char *) fb->element[3 * k + 2]->str;
                bb.len = fb->element[3 * k + 2]->len;
                y = fb->element[3 * k + 2];
                break;
            }
        }

        if (pa == NULL) {
            change = "added";
            ngx_str_null(&ta);
            ngx_str_null(&ba);
            x = NULL;

        } else if (pb == NULL) {
            change = "removed";
            ngx_str_null(&tb);
            ngx_str_null(&bb);
            y = NULL;

        } else {
            if (ta.len == tb.len && ba.len == bb.len
                && ngx_memcmp(ta.data, tb.data, ta.len) == 0
                && ngx_memcmp(ba.data, bb.data, ba.len) == 0)
            {
                continue;
            }

            change = "changed";
        }

        ngx_http_opamp_json_object(j);
        ngx_http_opamp_json_kv(j, "name");
        ngx_http_opamp_json_string(j, name.data, name.len);
        ngx_http_opamp_json_kv(j, "change");
        ngx_http_opamp_json_string(j, (u_char *) change,
                                   ngx_strlen(change));

        if (pa && pb && (ta.len != tb.len
                         || ngx_memcmp(ta.data, tb.data, ta.len) != 0))
        {
            ngx_http_opamp_json_kv(j, "content_type");
            ngx_http_opamp_json_object(j);
            ngx_http_opamp_json_kv(j, "from");
            ngx_http_opamp_json_string(j, ta.data, ta.len);
            ngx_http_opamp_json_kv(j, "to");
            ngx_http_opamp_json_string(j, tb.data, tb.len);
            ngx_http_opamp_json_close(j, '}');
        }

        ngx_http_opamp_json_kv(j, "diff");

        if ((x && !ngx_http_opamp_admin_is_text(x))
            || (y && !ngx_http_opamp_admin_is_text(y)))
        {
            rc = NGX_DECLINED;
            reason = "not text";

        } else {
            rc = ngx_http_opamp_admin_diff_text(j, &name, &ba, &bb, &budget,
                                                &reason);
        }

        if (rc == NGX_DECLINED) {
            ngx_http_opamp_json_literal(j, "null");
            ngx_http_opamp_json_kv(j, "diff_omitted");
            ngx_http_opamp_json_string(j, (u_char *) reason,
                                       ngx_strlen(reason));

        } else if (rc != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_http_opamp_json_close(j, '}');
    }

    ngx_http_opamp_json_close(j, ']');
    ngx_http_opamp_json_close(j, '}');

    return NGX_OK;
}


/* text: UTF-8 without NUL bytes */

static ngx_uint_t
ngx_http_opamp_admin_is_text(redisReply *body)
{
    if (ngx_strlchr((u_char *) body->str, (u_char *) body->str + body->len,
                    '\0')
        != NULL)
    {
        return 0;
    }

    return ngx_http_opamp_utf8_valid((u_char *) body->str, body->len);
}
