/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's configs: an agent's or a group's remote configuration
 * (its files, and a group's selector and priority), its config_hash, and
 * the listing of the groups.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_selector.h"
#include "ngx_http_opamp_store.h"

#include <jansson.h>
#include <openssl/evp.h>





static const char *ngx_http_opamp_admin_config_read(
    ngx_http_opamp_admin_ctx_t *ctx, json_t *root,
    ngx_http_opamp_admin_config_t *config);
static ngx_int_t ngx_http_opamp_admin_hash(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *names, ngx_str_t *bodies, ngx_str_t *types, ngx_uint_t n);
static int ngx_http_opamp_admin_cmp_str(const void *one, const void *two);
static void ngx_http_opamp_admin_config_json(ngx_http_opamp_json_t *j,
    redisReply *reply);


/* GET configs/groups: admin_groups.lua */

ngx_int_t
ngx_http_opamp_admin_groups(ngx_http_opamp_admin_ctx_t *ctx)
{
    if (ngx_http_opamp_admin_key(ctx, &ctx->key, "groups", 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_opamp_admin_keyed(ctx, NGX_HTTP_OPAMP_SCRIPT_ADMIN_GROUPS);
}


/*
 * PUT configs/agents/<uid>, configs/groups/<name>:
 *   {"files": {"<name>": {"body": "...", "content_type": "..."}},
 *    "selector": "k=v,k2=v2", "priority": 10}
 */

ngx_int_t
ngx_http_opamp_admin_config_put(ngx_http_opamp_admin_ctx_t *ctx)
{
    int                             argc;
    u_char                         *p;
    u_char                          now[NGX_INT64_LEN];
    u_char                          max[NGX_INT_T_LEN];
    size_t                         *argvlen, len;
    json_t                         *root, *plan;
    ngx_int_t                       rc;
    ngx_str_t                       groups, version, fleet, author, note;
    ngx_uint_t                      i, n;
    const char                    **argv, *reason;
    ngx_time_t                     *tp;
    json_error_t                    error;
    ngx_http_request_t             *r;
    ngx_http_opamp_main_conf_t     *omcf;
    ngx_http_opamp_admin_plan_t     rollout;
    ngx_http_opamp_admin_config_t   config;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    if (ngx_http_opamp_admin_author(r, &author) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_opamp_admin_note(r, &note);

    root = json_loadb((const char *) ctx->body.data, ctx->body.len,
                      JSON_REJECT_DUPLICATES, &error);
    if (root == NULL) {
        len = ngx_strlen(error.text);
        p = ngx_pnalloc(r->pool, sizeof("invalid JSON at line , column : ")
                        + 2 * NGX_INT_T_LEN + len);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *ngx_sprintf(p, "invalid JSON at line %d, column %d: %s",
                     error.line, error.column, error.text) = '\0';

        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                          (char *) p);
    }

    reason = ngx_http_opamp_admin_config_read(ctx, root, &config);

    if (reason) {
        json_decref(root);
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST, reason);
    }

    n = config.n;

    if (ngx_http_opamp_admin_hash(ctx, config.names, config.bodies,
                                  config.types, n)
        != NGX_OK)
    {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    plan = ctx->group ? json_object_get(root, "rollout") : NULL;

    if (plan) {
        /* a staged rollout (ngx_http_opamp_admin_rollouts.c) */

        reason = ngx_http_opamp_admin_plan_read(r, plan, &rollout);

        if (reason == NULL) {
            rc = ngx_http_opamp_admin_rollout_start(ctx, &config, &rollout,
                                                    0);
            json_decref(root);
            return rc;
        }

        json_decref(root);
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST, reason);
    }

    if (ngx_http_opamp_admin_key(ctx, &groups, "groups", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &version, "config_version", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK)
    {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv = ngx_palloc(r->pool, (16 + 3 * n) * (sizeof(char *)
                                               + sizeof(size_t)));
    if (argv == NULL) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argvlen = (size_t *) (argv + 16 + 3 * n);

    tp = ngx_timeofday();

#define ngx_http_opamp_arg(s, l)                                             \
    argv[argc] = (const char *) (s); argvlen[argc++] = (l)

    argc = 0;
    ngx_http_opamp_arg(ctx->key.data, ctx->key.len);
    ngx_http_opamp_arg(groups.data, groups.len);
    ngx_http_opamp_arg(version.data, version.len);

    ngx_http_opamp_arg(ctx->has_uid ? ctx->agent_key.data : ctx->key.data,
                       ctx->has_uid ? ctx->agent_key.len : ctx->key.len);
    ngx_http_opamp_arg(ctx->vkey.data, ctx->vkey.len);

    if (ctx->has_uid) {
        ngx_http_opamp_arg("agent", 5);
        ngx_http_opamp_arg(ctx->uid_text, NGX_HTTP_OPAMP_UID_STR_LEN);

    } else {
        ngx_http_opamp_arg("group", 5);
        ngx_http_opamp_arg(ctx->name.data, ctx->name.len);
    }

    ngx_http_opamp_arg(fleet.data, fleet.len);
    ngx_http_opamp_arg(now, ngx_sprintf(now, "%T%03M", tp->sec, tp->msec)
                            - now);
    ngx_http_opamp_arg(ctx->hash, 64);
    ngx_http_opamp_arg(config.selector.len ? config.selector.data
                                         : (u_char *) "",
                       config.selector.len);
    ngx_http_opamp_arg(config.sorted.data, config.sorted.len);
    ngx_http_opamp_arg(omcf->prefix.data, omcf->prefix.len);
    ngx_http_opamp_arg(max, ngx_sprintf(max, "%ui", omcf->config_versions)
                            - max);
    ngx_http_opamp_arg(author.len ? author.data : (u_char *) "", author.len);
    ngx_http_opamp_arg(note.len ? note.data : (u_char *) "", note.len);

    for (i = 0; i < n; i++) {
        ngx_http_opamp_arg(config.names[i].data, config.names[i].len);
        ngx_http_opamp_arg(config.bodies[i].data, config.bodies[i].len);
        ngx_http_opamp_arg(config.types[i].len ? config.types[i].data
                                             : (u_char *) "",
                           config.types[i].len);
    }

#undef ngx_http_opamp_arg

    /* hiredis copies the arguments before this returns */

    rc = ngx_http_opamp_admin_eval(ctx,
                                   NGX_HTTP_OPAMP_SCRIPT_ADMIN_CONFIG_SET, 5,
                                   argc, argv, argvlen);

    json_decref(root);

    return rc;
}


/*
 * The body's members checked, its files in name order for the hash (the
 * strings point into root); NULL, or why the body is refused.
 */

static const char *
ngx_http_opamp_admin_config_read(ngx_http_opamp_admin_ctx_t *ctx,
    json_t *root, ngx_http_opamp_admin_config_t *config)
{
    size_t        len;
    json_t       *files, *file, *body, *type, *sel, *pr;
    ngx_str_t    *names, *bodies, *types;
    ngx_uint_t    i, k, n;
    const char   *name;

    names = config->names;
    bodies = config->bodies;
    types = config->types;

    ngx_str_null(&config->selector);
    ngx_str_set(&config->sorted, "0");
    n = 0;

    files = json_object_get(root, "files");

    if (!json_is_object(root)) {
        return "the body must be a JSON object";
    }

    json_object_foreach(root, name, file) {
        if (ngx_strcmp(name, "files") != 0
            && !(ctx->group && (ngx_strcmp(name, "selector") == 0
                                || ngx_strcmp(name, "priority") == 0
                                || ngx_strcmp(name, "rollout") == 0)))
        {
            return ctx->group ? "unknown member: a group config has "
                                "\"files\", \"selector\", \"priority\" "
                                "and \"rollout\""
                              : "unknown member: an agent config has "
                                "\"files\" only";
        }
    }

    if (!json_is_object(files) || json_object_size(files) == 0) {
        return "\"files\" must be an object with at least one file";
    }

    if (json_object_size(files) > NGX_HTTP_OPAMP_ADMIN_MAX_FILES) {
        return "too many files: at most 64";
    }

    json_object_foreach(files, name, file) {
        len = ngx_strlen(name);

        if (len == 0 || len > 256) {
            return "a file name must be 1 to 256 bytes";
        }

        for (i = 0; i < len; i++) {
            if ((u_char) name[i] < 0x20 || name[i] == 0x7f) {
                return "a file name must not contain control characters";
            }
        }

        body = json_object_get(file, "body");
        type = json_object_get(file, "content_type");

        if (!json_is_object(file) || !json_is_string(body)
            || (type && !json_is_string(type))
            || json_object_size(file) != (size_t) (type ? 2 : 1))
        {
            return "each file must be {\"body\": string, "
                   "\"content_type\": string}";
        }

        names[n].data = (u_char *) name;
        names[n].len = len;
        bodies[n].data = (u_char *) json_string_value(body);
        bodies[n].len = json_string_length(body);

        if (type) {
            types[n].data = (u_char *) json_string_value(type);
            types[n].len = json_string_length(type);

        } else {
            ngx_str_null(&types[n]);
        }

        n++;
    }

    if (ctx->group) {
        sel = json_object_get(root, "selector");
        pr = json_object_get(root, "priority");

        if (sel && !json_is_string(sel)) {
            return "\"selector\" must be a string";
        }

        if (sel) {
            config->selector.data = (u_char *) json_string_value(sel);
            config->selector.len = json_string_length(sel);
        }

        if (ngx_http_opamp_selector_check(config->selector.data,
                                          config->selector.len)
            != NGX_OK)
        {
            return "invalid selector: use key=value[,key=value...]";
        }

        if (pr && (!json_is_integer(pr)
                   || json_integer_value(pr) < -1000000000
                   || json_integer_value(pr) > 1000000000))
        {
            return "\"priority\" must be an integer within +-1e9";
        }

        config->sorted.data = config->prio;
        config->sorted.len = ngx_sprintf(config->prio, "%L",
                                       (int64_t) (pr ? json_integer_value(pr)
                                                     : 0))
                           - config->prio;
    }

    /* files in name order for the hash; bodies and types follow along */

    for (i = 1; i < n; i++) {
        for (k = i; k > 0
                    && ngx_http_opamp_admin_cmp_str(&names[k - 1],
                                                    &names[k]) > 0;
             k--)
        {
            ngx_str_t  t;

            t = names[k]; names[k] = names[k - 1]; names[k - 1] = t;
            t = bodies[k]; bodies[k] = bodies[k - 1]; bodies[k - 1] = t;
            t = types[k]; types[k] = types[k - 1]; types[k - 1] = t;
        }
    }

    config->n = n;

    return NULL;
}


/* SHA-256 over the files as docs/redis-schema.md defines config_hash */

static ngx_int_t
ngx_http_opamp_admin_hash(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *names, ngx_str_t *bodies, ngx_str_t *types, ngx_uint_t n)
{
    u_char        len4[4], len8[8], md[EVP_MAX_MD_SIZE];
    uint64_t      v;
    ngx_uint_t    i, k;
    unsigned int  mdlen;
    EVP_MD_CTX   *md_ctx;

    md_ctx = EVP_MD_CTX_new();
    if (md_ctx == NULL) {
        return NGX_ERROR;
    }

    if (EVP_DigestInit_ex(md_ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md_ctx);
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {

        v = names[i].len;
        for (k = 0; k < 4; k++) {
            len4[3 - k] = (u_char) (v >> (8 * k));
        }

        EVP_DigestUpdate(md_ctx, len4, 4);
        EVP_DigestUpdate(md_ctx, names[i].data, names[i].len);

        v = types[i].len;
        for (k = 0; k < 4; k++) {
            len4[3 - k] = (u_char) (v >> (8 * k));
        }

        EVP_DigestUpdate(md_ctx, len4, 4);
        EVP_DigestUpdate(md_ctx, types[i].data, types[i].len);

        v = bodies[i].len;
        for (k = 0; k < 8; k++) {
            len8[7 - k] = (u_char) (v >> (8 * k));
        }

        EVP_DigestUpdate(md_ctx, len8, 8);
        EVP_DigestUpdate(md_ctx, bodies[i].data, bodies[i].len);
    }

    mdlen = 0;

    if (EVP_DigestFinal_ex(md_ctx, md, &mdlen) != 1 || mdlen != 32) {
        EVP_MD_CTX_free(md_ctx);
        return NGX_ERROR;
    }

    EVP_MD_CTX_free(md_ctx);

    ngx_hex_dump(ctx->hash, md, 32);

    return NGX_OK;
}


static int
ngx_http_opamp_admin_cmp_str(const void *one, const void *two)
{
    const ngx_str_t  *a = one, *b = two;
    size_t            n;
    int               rc;

    n = ngx_min(a->len, b->len);
    rc = ngx_memcmp(a->data, b->data, n);

    if (rc != 0) {
        return rc;
    }

    return (a->len < b->len) ? -1 : (a->len > b->len);
}


/* admin_groups.lua's reply: per group its name, selector, priority,
 * config_hash, updated_ms and file names */

ngx_int_t
ngx_http_opamp_admin_groups_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    size_t                  i, k;
    redisReply             *e, **el;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "groups");
    ngx_http_opamp_json_array(&j);

    for (i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements;
         i++)
    {
        e = reply->element[i];

        if (e->type != REDIS_REPLY_ARRAY || e->elements < 5) {
            continue;
        }

        el = e->element;

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "name");
        ngx_http_opamp_json_string(&j, (u_char *) el[0]->str, el[0]->len);
        ngx_http_opamp_json_kv(&j, "selector");
        ngx_http_opamp_json_string(&j, (u_char *) el[1]->str, el[1]->len);
        ngx_http_opamp_json_kv(&j, "priority");
        ngx_http_opamp_json_number(&j, (u_char *) el[2]->str, el[2]->len);
        ngx_http_opamp_json_kv(&j, "config_hash");
        ngx_http_opamp_json_string(&j, (u_char *) el[3]->str, el[3]->len);
        ngx_http_opamp_json_kv(&j, "updated_ms");
        ngx_http_opamp_json_number(&j, (u_char *) el[4]->str, el[4]->len);
        ngx_http_opamp_json_kv(&j, "files");
        ngx_http_opamp_json_array(&j);

        for (k = 5; k < e->elements; k++) {
            ngx_http_opamp_json_string(&j, (u_char *) el[k]->str,
                                       el[k]->len);
        }

        ngx_http_opamp_json_close(&j, ']');
        ngx_http_opamp_json_close(&j, '}');
    }

    ngx_http_opamp_json_close(&j, ']');
    ngx_http_opamp_json_close(&j, '}');
    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}


/* a config PUT (admin_config_set.lua's config_version and the config's
 * version) or GET (HGETALL);
 * DELETE and an unknown agent are answered by ngx_http_opamp_admin.c */

ngx_int_t
ngx_http_opamp_admin_config_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    ngx_int_t               rc;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    ngx_http_opamp_json_init(&j, r->pool);

    if (r->method & NGX_HTTP_PUT) {
        rc = ngx_http_opamp_admin_script_error(ctx, reply);
        if (rc != NGX_DECLINED) {
            return rc;
        }

        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
            || reply->element[0]->type != REDIS_REPLY_INTEGER
            || reply->element[1]->type != REDIS_REPLY_INTEGER)
        {
            return ngx_http_opamp_admin_error(r,
                                              NGX_HTTP_INTERNAL_SERVER_ERROR,
                                              "the agent state store "
                                              "answered something else");
        }

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "config_hash");
        ngx_http_opamp_json_string(&j, ctx->hash, 64);
        ngx_http_opamp_json_kv(&j, "config_version");
        ngx_http_opamp_json_int(&j, reply->element[0]->integer);
        ngx_http_opamp_json_kv(&j, "version");
        ngx_http_opamp_json_int(&j, reply->element[1]->integer);
        ngx_http_opamp_json_close(&j, '}');
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "no such config");
    }

    ngx_http_opamp_admin_config_json(&j, reply);
    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}


/* a config hash: file:<name>, type:<name>, hash, selector, ... */

static void
ngx_http_opamp_admin_config_json(ngx_http_opamp_json_t *j, redisReply *reply)
{
    size_t       i, k;
    redisReply **el;

    el = reply->element;

    ngx_http_opamp_json_object(j);

    for (i = 0; i + 1 < reply->elements; i += 2) {
        if (el[i]->len > 5 && ngx_strncmp(el[i]->str, "file:", 5) == 0) {
            continue;
        }

        if (el[i]->len > 5 && ngx_strncmp(el[i]->str, "type:", 5) == 0) {
            continue;
        }

        if (el[i]->len == 4 && ngx_strncmp(el[i]->str, "hash", 4) == 0) {
            ngx_http_opamp_json_kv(j, "config_hash");

        } else {
            ngx_http_opamp_json_key(j, el[i]->str, el[i]->len);
        }

        if ((el[i]->len == 8 && ngx_strncmp(el[i]->str, "priority", 8) == 0)
            || (el[i]->len == 7 && ngx_strncmp(el[i]->str, "version", 7) == 0)
            || (el[i]->len == 10
                && ngx_strncmp(el[i]->str, "updated_ms", 10) == 0))
        {
            ngx_http_opamp_json_number(j, (u_char *) el[i + 1]->str,
                                       el[i + 1]->len);

        } else {
            ngx_http_opamp_json_string(j, (u_char *) el[i + 1]->str,
                                       el[i + 1]->len);
        }
    }

    ngx_http_opamp_json_kv(j, "files");
    ngx_http_opamp_json_object(j);

    for (i = 0; i + 1 < reply->elements; i += 2) {
        if (el[i]->len <= 5 || ngx_strncmp(el[i]->str, "file:", 5) != 0) {
            continue;
        }

        ngx_http_opamp_json_key(j, el[i]->str + 5, el[i]->len - 5);
        ngx_http_opamp_json_object(j);
        ngx_http_opamp_json_kv(j, "body");
        ngx_http_opamp_json_string(j, (u_char *) el[i + 1]->str,
                                   el[i + 1]->len);

        for (k = 0; k + 1 < reply->elements; k += 2) {
            if (el[k]->len == el[i]->len
                && ngx_strncmp(el[k]->str, "type:", 5) == 0
                && ngx_strncmp(el[k]->str + 5, el[i]->str + 5,
                               el[i]->len - 5) == 0)
            {
                ngx_http_opamp_json_kv(j, "content_type");
                ngx_http_opamp_json_string(j, (u_char *) el[k + 1]->str,
                                           el[k + 1]->len);
            }
        }

        ngx_http_opamp_json_close(j, '}');
    }

    ngx_http_opamp_json_close(j, '}');
    ngx_http_opamp_json_close(j, '}');
}
