/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's audit log (docs/admin-api.md, "Audit log"): every write
 * (PUT, POST, DELETE), refused or done, is appended to <prefix>audit, a
 * Redis stream of at most opamp_admin_audit_entries entries, once its
 * answer is known: who (opamp_admin_author), what (method, path, target),
 * when, the status, the OpAMP-Note header and a refusal's reason.  What
 * an entry holds is bounded, so that a client sending refused requests
 * costs the log one small entry each, and pushes out only the oldest.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_lua.h"


#define NGX_HTTP_OPAMP_AUDIT_MAX_PATH     512
#define NGX_HTTP_OPAMP_AUDIT_MAX_REASON   256
#define NGX_HTTP_OPAMP_AUDIT_LIMIT        100
#define NGX_HTTP_OPAMP_AUDIT_MAX_LIMIT    1000
#define NGX_HTTP_OPAMP_AUDIT_MAX_TARGET   256


static void ngx_http_opamp_admin_audit_done(redisReply *reply, void *data);


void
ngx_http_opamp_admin_audit(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    int                          argc;
    u_char                       ms[NGX_INT64_LEN], st[NGX_INT_T_LEN];
    u_char                       max[NGX_INT_T_LEN], *target;
    size_t                       argvlen[23];
    ngx_str_t                    key, author, note, path;
    ngx_time_t                  *tp;
    const char                  *argv[23];
    ngx_http_opamp_main_conf_t  *omcf;
    ngx_http_opamp_admin_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_opamp_module);

    if (ctx == NULL || ctx->audited
        || !(r->method & (NGX_HTTP_PUT|NGX_HTTP_POST|NGX_HTTP_DELETE)))
    {
        return;
    }

    ctx->audited = 1;

    if (!ngx_http_opamp_redis_ready()) {
        return;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    if (ngx_http_opamp_admin_key(ctx, &key, "audit", 0) != NGX_OK
        || ngx_http_opamp_admin_author(r, &author) != NGX_OK)
    {
        return;
    }

    /* a note refused for its length or encoding: what fits */
    (void) ngx_http_opamp_admin_note(r, &note);

    /* the target: the agent or group the request is about, the fleet */

    target = ngx_pnalloc(r->pool, sizeof("group:") + 128
                                  + NGX_HTTP_OPAMP_UID_STR_LEN);
    if (target == NULL) {
        return;
    }

    if (ctx->has_uid) {
        path.len = ngx_sprintf(target, "agent:%*s",
                               (size_t) NGX_HTTP_OPAMP_UID_STR_LEN,
                               ctx->uid_text)
                   - target;

    } else if (ctx->group) {
        path.len = ngx_sprintf(target, "group:%V", &ctx->name) - target;

    } else if (ctx->op == NGX_HTTP_OPAMP_ADMIN_SETTINGS
               || ctx->op == NGX_HTTP_OPAMP_ADMIN_PACKAGES)
    {
        path.len = ngx_sprintf(target, "fleet") - target;

    } else {
        path.len = 0;
    }

    tp = ngx_timeofday();

#define ngx_http_opamp_arg(s, l)                                             \
    argv[argc] = (const char *) (s); argvlen[argc++] = (l)
#define ngx_http_opamp_lit(s)                                                \
    ngx_http_opamp_arg(s, sizeof(s) - 1)

    argc = 0;
    ngx_http_opamp_lit("XADD");
    ngx_http_opamp_arg(key.data, key.len);
    ngx_http_opamp_lit("MAXLEN");
    ngx_http_opamp_arg(max, ngx_sprintf(max, "%ui", omcf->audit_entries)
                            - max);
    ngx_http_opamp_lit("*");
    ngx_http_opamp_lit("ms");
    ngx_http_opamp_arg(ms, ngx_sprintf(ms, "%T%03M", tp->sec, tp->msec)
                           - ms);
    ngx_http_opamp_lit("author");
    ngx_http_opamp_arg(author.len ? author.data : (u_char *) "", author.len);
    ngx_http_opamp_lit("method");
    ngx_http_opamp_arg(r->method_name.data, r->method_name.len);
    ngx_http_opamp_lit("path");
    ngx_http_opamp_arg(r->unparsed_uri.data,
                       ngx_min(r->unparsed_uri.len,
                               NGX_HTTP_OPAMP_AUDIT_MAX_PATH));
    ngx_http_opamp_lit("target");
    ngx_http_opamp_arg(target, path.len);
    ngx_http_opamp_lit("status");
    ngx_http_opamp_arg(st, ngx_sprintf(st, "%ui", status) - st);
    ngx_http_opamp_lit("note");
    ngx_http_opamp_arg(note.len ? note.data : (u_char *) "", note.len);

    if (reason) {
        ngx_http_opamp_lit("reason");
        ngx_http_opamp_arg(reason, ngx_min(ngx_strlen(reason),
                                           NGX_HTTP_OPAMP_AUDIT_MAX_REASON));
    }

#undef ngx_http_opamp_lit
#undef ngx_http_opamp_arg

    /* after the write's own reply (and WAIT): the same link, in order;
     * nobody waits for it */

    (void) ngx_http_opamp_redis_command(argc, argv, argvlen,
                                        ngx_http_opamp_admin_audit_done,
                                        NULL);
}


static void
ngx_http_opamp_admin_audit_done(redisReply *reply, void *data)
{
    if (reply == NULL) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "opamp: an admin write was not audited: the agent "
                      "state store did not answer");
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: an admin write was not audited: %*s",
                      (size_t) reply->len, reply->str);
    }
}


/* GET audit?limit=N&cursor=C&target=T: admin_audit.lua */

ngx_int_t
ngx_http_opamp_admin_audit_list(ngx_http_opamp_admin_ctx_t *ctx)
{
    u_char              *p, *last, n[NGX_INT_T_LEN];
    size_t               argvlen[4];
    ngx_int_t            limit;
    ngx_str_t            cursor, target, value;
    const char          *argv[4];
    ngx_http_request_t  *r;

    r = ctx->request;

    limit = NGX_HTTP_OPAMP_AUDIT_LIMIT;

    if (ngx_http_arg(r, (u_char *) "limit", 5, &value) == NGX_OK) {
        limit = ngx_atoi(value.data, value.len);

        if (limit < 1 || limit > NGX_HTTP_OPAMP_AUDIT_MAX_LIMIT) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "limit must be 1 to 1000");
        }
    }

    ngx_str_null(&cursor);

    if (ngx_http_arg(r, (u_char *) "cursor", 6, &cursor) == NGX_OK) {
        /* a stream entry id: <ms>-<seq> */

        last = cursor.data + cursor.len;
        p = ngx_strlchr(cursor.data, last, '-');

        if (cursor.len > 41 || p == NULL || p == cursor.data || p + 1 == last
            || ngx_atoi(cursor.data, p - cursor.data) == NGX_ERROR
            || ngx_atoi(p + 1, last - p - 1) == NGX_ERROR)
        {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "invalid cursor");
        }
    }

    ngx_str_null(&target);

    if (ngx_http_arg(r, (u_char *) "target", 6, &value) == NGX_OK) {
        if (value.len > NGX_HTTP_OPAMP_AUDIT_MAX_TARGET) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "target is too long");
        }

        /* "group:web", "agent:<uid>": ':' may come percent-encoded */

        target.data = ngx_pnalloc(r->pool, value.len);
        if (target.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = target.data;
        ngx_unescape_uri(&p, &value.data, value.len, NGX_UNESCAPE_URI);
        target.len = p - target.data;
    }

    argv[0] = (const char *) ctx->key.data;
    argvlen[0] = ctx->key.len;
    argv[1] = (const char *) (cursor.len ? cursor.data : (u_char *) "");
    argvlen[1] = cursor.len;
    argv[2] = (const char *) n;
    argvlen[2] = ngx_sprintf(n, "%i", limit) - n;
    argv[3] = (const char *) (target.len ? target.data : (u_char *) "");
    argvlen[3] = target.len;

    return ngx_http_opamp_admin_eval_source(ctx, ngx_http_opamp_lua_admin_audit,
               sizeof(ngx_http_opamp_lua_admin_audit) - 1, 1, 4, argv,
               argvlen);
}


/* {"entries": [{"id", "ms", "author", "method", "path", "target",
 * "status", "note", "reason"}], "next_cursor": ...} */

ngx_int_t
ngx_http_opamp_admin_audit_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    size_t                  i, k;
    redisReply             *e, **f;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;

    r = ctx->request;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0
        || reply->element[0]->type != REDIS_REPLY_STRING)
    {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                          "the agent state store answered "
                                          "something else");
    }

    ngx_http_opamp_json_init(&j, r->pool);

    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "entries");
    ngx_http_opamp_json_array(&j);

    for (i = 1; i < reply->elements; i++) {
        e = reply->element[i];

        if (e->type != REDIS_REPLY_ARRAY || e->elements == 0) {
            continue;
        }

        f = e->element;

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "id");
        ngx_http_opamp_json_string(&j, (u_char *) f[0]->str, f[0]->len);

        for (k = 1; k + 1 < e->elements; k += 2) {
            ngx_http_opamp_json_key(&j, f[k]->str, f[k]->len);

            if ((f[k]->len == 2 && ngx_strncmp(f[k]->str, "ms", 2) == 0)
                || (f[k]->len == 6
                    && ngx_strncmp(f[k]->str, "status", 6) == 0))
            {
                ngx_http_opamp_json_number(&j, (u_char *) f[k + 1]->str,
                                           f[k + 1]->len);

            } else {
                ngx_http_opamp_json_string(&j, (u_char *) f[k + 1]->str,
                                           f[k + 1]->len);
            }
        }

        ngx_http_opamp_json_close(&j, '}');
    }

    ngx_http_opamp_json_close(&j, ']');
    ngx_http_opamp_json_kv(&j, "next_cursor");

    e = reply->element[0];

    if (e->len) {
        ngx_http_opamp_json_string(&j, (u_char *) e->str, e->len);

    } else {
        ngx_http_opamp_json_literal(&j, "null");
    }

    ngx_http_opamp_json_close(&j, '}');

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}
