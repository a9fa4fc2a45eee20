/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's handler: the request's path to a resource and its
 * methods, the request body, the Redis keys, scripts and commands the
 * resources run, the reply (after WAIT where configured) and the JSON
 * answers and errors; every write's answer goes to the audit log.  The
 * resources are in ngx_http_opamp_admin_agents.c,
 * ngx_http_opamp_admin_configs.c, ngx_http_opamp_admin_offers.c,
 * ngx_http_opamp_admin_versions.c and ngx_http_opamp_admin_audit.c.
 */


#include "ngx_http_opamp_admin_internal.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_utf8.h"


static void ngx_http_opamp_admin_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_opamp_admin_route(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *path);
static ngx_int_t ngx_http_opamp_admin_route_agents(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg);
static ngx_int_t ngx_http_opamp_admin_route_configs(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg);
static ngx_int_t ngx_http_opamp_admin_route_offers(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg);
static ngx_int_t ngx_http_opamp_admin_route_versions(
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg);
static ngx_int_t ngx_http_opamp_admin_route_rollouts(
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg);
static ngx_int_t ngx_http_opamp_admin_group_name(
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *name);
static ngx_int_t ngx_http_opamp_admin_not_found(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_run(ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_delete(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_simple(ngx_http_opamp_admin_ctx_t *ctx,
    const char *command);
static void ngx_http_opamp_admin_reply(redisReply *reply, void *data);
static ngx_int_t ngx_http_opamp_admin_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);
static void ngx_http_opamp_admin_cleanup(void *data);


ngx_int_t
ngx_http_opamp_admin_handler(ngx_http_request_t *r)
{
    ngx_int_t                    rc;
    ngx_str_t                    path;
    ngx_pool_cleanup_t          *cln;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_opamp_admin_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_opamp_admin_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;

    /* before routing: a refused write is audited too */
    ngx_http_set_ctx(r, ctx, ngx_http_opamp_module);

    /* the path below the location: "agents", "configs/groups/web", ... */

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    path = r->uri;

    if (!clcf->exact_match && path.len >= clcf->name.len
        && ngx_strncmp(path.data, clcf->name.data, clcf->name.len) == 0)
    {
        path.data += clcf->name.len;
        path.len -= clcf->name.len;
    }

    while (path.len && path.data[0] == '/') {
        path.data++;
        path.len--;
    }

    while (path.len && path.data[path.len - 1] == '/') {
        path.len--;
    }

    rc = ngx_http_opamp_admin_route(r, ctx, &path);

    if (rc == NGX_OK && (r->method & (NGX_HTTP_PUT|NGX_HTTP_POST
                                      |NGX_HTTP_DELETE))
        && ngx_http_opamp_admin_note(r, &path) != NGX_OK)
    {
        ctx->reason = "the OpAMP-Note header must be UTF-8 of at most "
                      "256 bytes";
        rc = NGX_HTTP_BAD_REQUEST;
    }

    if (rc == NGX_OK && !ngx_http_opamp_redis_ready()) {
        ctx->reason = "the agent state store is unavailable, retry later";
        rc = NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (rc != NGX_OK) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ctx->reason == NULL) {
            return rc;
        }

        return ngx_http_opamp_admin_error(r, rc, ctx->reason);
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_opamp_admin_cleanup;
    cln->data = ctx;

    /* a body in one buffer; bodies past client_body_buffer_size are read
     * from the temporary file */

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_opamp_admin_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_http_opamp_admin_audit(r, rc, "the request body was refused");
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_opamp_admin_cleanup(void *data)
{
    ngx_http_opamp_admin_ctx_t *ctx = data;

    if (ctx->cmd) {
        ngx_http_opamp_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }

    if (ctx->written) {
        freeReplyObject(ctx->written);
        ctx->written = NULL;
    }
}


static ngx_int_t
ngx_http_opamp_admin_method(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_uint_t allowed, const char *allow)
{
    ngx_http_request_t  *r = ctx->request;

    ngx_table_elt_t  *h;

    if (r->method & allowed) {
        return NGX_OK;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.data = (u_char *) allow;
    h->value.len = ngx_strlen(allow);

    ctx->reason = "method not allowed here";
    return NGX_HTTP_NOT_ALLOWED;
}


static ngx_int_t
ngx_http_opamp_admin_uid(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, u_char *p, size_t len)
{
    if (ngx_http_opamp_uid_parse(ctx->uid, p, len) != 0) {
        ctx->reason = "invalid instance uid: use the canonical UUID form";
        return NGX_HTTP_BAD_REQUEST;
    }

    ngx_http_opamp_uid_format(ctx->uid_text, ctx->uid);
    ctx->has_uid = 1;

    ctx->agent_key.data = ngx_pnalloc(r->pool, 128
                                      + NGX_HTTP_OPAMP_UID_STR_LEN);
    if (ctx->agent_key.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->agent_key.len = ngx_http_opamp_store_agent_key(ctx->agent_key.data,
                                                        ctx->uid)
                         - ctx->agent_key.data;

    return NGX_OK;
}


/* the path's segment i is s, a literal */
#define ngx_http_opamp_seg(i, s)                                             \
    (seg[i].len == sizeof(s) - 1                                             \
     && ngx_strncmp(seg[i].data, s, sizeof(s) - 1) == 0)

#define ngx_http_opamp_any       (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_PUT     \
                                  |NGX_HTTP_DELETE)


/*
 * Paths (docs/admin-api.md):
 *
 *   agents                          GET
 *   agents/<uid>                    GET DELETE
 *   agents/<uid>/restart            POST
 *   agents/<uid>/messages           POST
 *   agents/<uid>/retry-config       POST
 *   agents/<uid>/identity           DELETE
 *   agents/<uid>/token              DELETE
 *   configs/groups                  GET
 *   configs/groups/<name>           GET PUT DELETE
 *   configs/agents/<uid>            GET PUT DELETE
 *   configs/.../versions            GET DELETE
 *   configs/.../versions/<n>        GET
 *   configs/.../diff                GET
 *   configs/.../rollback            POST
 *   audit                           GET
 *   fleet                           GET
 *   hosts                           GET
 *   connection-settings[/agents/<uid>]   GET PUT DELETE
 *   packages[/agents/<uid>]              GET PUT DELETE
 */

static ngx_int_t
ngx_http_opamp_admin_route(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *path)
{
    u_char     *p, *last, *slash;
    ngx_str_t   seg[5];
    ngx_uint_t  nseg;

    p = path->data;
    last = p + path->len;
    nseg = 0;

    while (p < last) {
        if (nseg == 5) {
            return ngx_http_opamp_admin_not_found(ctx);
        }

        slash = ngx_strlchr(p, last, '/');
        if (slash == NULL) {
            slash = last;
        }

        seg[nseg].data = p;
        seg[nseg].len = slash - p;
        nseg++;

        p = slash + 1;
    }

    if (nseg == 0) {
        return ngx_http_opamp_admin_not_found(ctx);
    }

    if (ngx_http_opamp_seg(0, "agents")) {
        return ngx_http_opamp_admin_route_agents(r, ctx, seg, nseg);
    }

    if (ngx_http_opamp_seg(0, "configs") && nseg >= 2) {
        return ngx_http_opamp_admin_route_configs(r, ctx, seg, nseg);
    }

    if (ngx_http_opamp_seg(0, "connection-settings")
        || ngx_http_opamp_seg(0, "packages"))
    {
        return ngx_http_opamp_admin_route_offers(r, ctx, seg, nseg);
    }

    if (ngx_http_opamp_seg(0, "rollouts")) {
        return ngx_http_opamp_admin_route_rollouts(ctx, seg, nseg);
    }

    if (ngx_http_opamp_seg(0, "audit") && nseg == 1) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_AUDIT;

        if (ngx_http_opamp_admin_key(ctx, &ctx->key, "audit", 0) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    if (ngx_http_opamp_seg(0, "fleet") && nseg == 1) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_FLEET;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    if (ngx_http_opamp_seg(0, "hosts") && nseg == 1) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_HOSTS;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    return ngx_http_opamp_admin_not_found(ctx);
}


static ngx_int_t
ngx_http_opamp_admin_route_agents(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg)
{
    ngx_int_t  rc;

    if (nseg == 1) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_LIST;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    rc = ngx_http_opamp_admin_uid(r, ctx, seg[1].data, seg[1].len);
    if (rc != NGX_OK) {
        return rc;
    }

    if (nseg == 2) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_AGENT;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD
                                                |NGX_HTTP_DELETE,
                                           "GET, HEAD, DELETE");
    }

    if (nseg == 3 && ngx_http_opamp_seg(2, "restart")) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_RESTART;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_POST, "POST");
    }

    if (nseg == 3 && ngx_http_opamp_seg(2, "messages")) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_MESSAGE;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_POST, "POST");
    }

    if (nseg == 3 && ngx_http_opamp_seg(2, "retry-config")) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_RETRY;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_POST, "POST");
    }

    if (nseg == 3 && ngx_http_opamp_seg(2, "identity")) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_IDENTITY;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_DELETE, "DELETE");
    }

    if (nseg == 3 && ngx_http_opamp_seg(2, "token")) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_TOKEN;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_DELETE, "DELETE");
    }

    return ngx_http_opamp_admin_not_found(ctx);
}


/* configs/groups[/<name>], configs/agents/<uid> */

static ngx_int_t
ngx_http_opamp_admin_route_configs(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg)
{
    ngx_int_t  rc;

    if (ngx_http_opamp_seg(1, "groups")) {

        if (nseg == 2) {
            ctx->op = NGX_HTTP_OPAMP_ADMIN_GROUPS;
            return ngx_http_opamp_admin_method(ctx,
                       NGX_HTTP_GET|NGX_HTTP_HEAD, "GET, HEAD");
        }

        if (ngx_http_opamp_admin_group_name(ctx, &seg[2]) != NGX_OK) {
            return NGX_HTTP_BAD_REQUEST;
        }

        ctx->op = NGX_HTTP_OPAMP_ADMIN_CONFIG;
        ctx->group = 1;
        ctx->name = seg[2];

        rc = ngx_http_opamp_admin_key(ctx, &ctx->key, "config:group:",
                                      NGX_HTTP_OPAMP_ADMIN_KEY_NAME);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_opamp_admin_key(ctx, &ctx->vkey, "versions:group:",
                                      NGX_HTTP_OPAMP_ADMIN_KEY_NAME);
        if (rc != NGX_OK) {
            return rc;
        }

        if (nseg > 3) {
            return ngx_http_opamp_admin_route_versions(ctx, seg, nseg);
        }

        return ngx_http_opamp_admin_method(ctx, ngx_http_opamp_any,
                                           "GET, HEAD, PUT, DELETE");
    }

    if (ngx_http_opamp_seg(1, "agents") && nseg >= 3) {
        rc = ngx_http_opamp_admin_uid(r, ctx, seg[2].data, seg[2].len);
        if (rc != NGX_OK) {
            return rc;
        }

        ctx->op = NGX_HTTP_OPAMP_ADMIN_CONFIG;

        rc = ngx_http_opamp_admin_key(ctx, &ctx->key, "config:agent:",
                                      NGX_HTTP_OPAMP_ADMIN_KEY_AGENT);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_opamp_admin_key(ctx, &ctx->vkey, "versions:agent:",
                                      NGX_HTTP_OPAMP_ADMIN_KEY_AGENT);
        if (rc != NGX_OK) {
            return rc;
        }

        if (nseg > 3) {
            return ngx_http_opamp_admin_route_versions(ctx, seg, nseg);
        }

        return ngx_http_opamp_admin_method(ctx, ngx_http_opamp_any,
                                           "GET, HEAD, PUT, DELETE");
    }

    return ngx_http_opamp_admin_not_found(ctx);
}


/* group names go into keys: a safe alphabet, bounded */

static ngx_int_t
ngx_http_opamp_admin_group_name(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *name)
{
    if (ngx_http_opamp_admin_valid_group(name) != NGX_OK) {
        ctx->reason = "invalid group name: 1 to 128 of A-Z a-z 0-9 . _ -";
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_opamp_admin_valid_group(ngx_str_t *name)
{
    u_char      c;
    ngx_uint_t  i;

    if (name->len == 0 || name->len > 128) {
        return NGX_ERROR;
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* rollouts, rollouts/<group>, rollouts/<group>/<action> */

static ngx_int_t
ngx_http_opamp_admin_route_rollouts(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *seg, ngx_uint_t nseg)
{
    if (nseg == 1) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_ROLLOUTS;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    if (nseg > 3) {
        return ngx_http_opamp_admin_not_found(ctx);
    }

    if (ngx_http_opamp_admin_group_name(ctx, &seg[1]) != NGX_OK) {
        return NGX_HTTP_BAD_REQUEST;
    }

    ctx->op = NGX_HTTP_OPAMP_ADMIN_ROLLOUT;
    ctx->group = 1;
    ctx->name = seg[1];

    if (nseg == 2) {
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    if (ngx_http_opamp_admin_rollout_action(&seg[2]) != NGX_OK) {
        return ngx_http_opamp_admin_not_found(ctx);
    }

    ctx->action = seg[2];

    return ngx_http_opamp_admin_method(ctx, NGX_HTTP_POST, "POST");
}


/* configs/.../versions[/<n>], configs/.../diff, configs/.../rollback */

static ngx_int_t
ngx_http_opamp_admin_route_versions(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *seg, ngx_uint_t nseg)
{
    if (ngx_http_opamp_seg(3, "versions") && nseg == 4) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_VERSIONS;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD
                                                |NGX_HTTP_DELETE,
                                           "GET, HEAD, DELETE");
    }

    if (ngx_http_opamp_seg(3, "versions") && nseg == 5) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_VERSION;
        ctx->version = ngx_http_opamp_admin_version_number(seg[4].data,
                                                           seg[4].len);
        if (ctx->version == NGX_ERROR) {
            ctx->reason = "a version is a number from 1";
            return NGX_HTTP_BAD_REQUEST;
        }

        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    if (ngx_http_opamp_seg(3, "diff") && nseg == 4) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_DIFF;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                           "GET, HEAD");
    }

    if (ngx_http_opamp_seg(3, "rollback") && nseg == 4) {
        ctx->op = NGX_HTTP_OPAMP_ADMIN_ROLLBACK;
        return ngx_http_opamp_admin_method(ctx, NGX_HTTP_POST, "POST");
    }

    return ngx_http_opamp_admin_not_found(ctx);
}


/* a version number as the API takes it: 1 to 2^53, decimal, no sign or
 * leading zero (the scripts name fields by its text); NGX_ERROR if not */

ngx_int_t
ngx_http_opamp_admin_version_number(u_char *p, size_t len)
{
    ngx_int_t  n;

    if (len == 0 || len > 15 || p[0] == '0') {
        return NGX_ERROR;
    }

    n = ngx_atoi(p, len);

    return n < 1 ? NGX_ERROR : n;
}


/* connection-settings[/agents/<uid>], packages[/agents/<uid>] */

static ngx_int_t
ngx_http_opamp_admin_route_offers(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *seg, ngx_uint_t nseg)
{
    ngx_int_t  rc;

    ctx->op = ngx_http_opamp_seg(0, "packages")
              ? NGX_HTTP_OPAMP_ADMIN_PACKAGES
              : NGX_HTTP_OPAMP_ADMIN_SETTINGS;

    if (nseg == 3 && ngx_http_opamp_seg(1, "agents")) {
        rc = ngx_http_opamp_admin_uid(r, ctx, seg[2].data, seg[2].len);
        if (rc != NGX_OK) {
            return rc;
        }

    } else if (nseg != 1) {
        return ngx_http_opamp_admin_not_found(ctx);
    }

    rc = ngx_http_opamp_admin_key(ctx, &ctx->key,
                                  ctx->op == NGX_HTTP_OPAMP_ADMIN_PACKAGES
                                  ? "packages" : "connection_settings",
                                  ctx->has_uid
                                  ? NGX_HTTP_OPAMP_ADMIN_KEY_AGENT
                                  : NGX_HTTP_OPAMP_ADMIN_KEY_PLAIN);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_opamp_admin_method(ctx, ngx_http_opamp_any,
                                       "GET, HEAD, PUT, DELETE");
}

#undef ngx_http_opamp_seg
#undef ngx_http_opamp_any


static ngx_int_t
ngx_http_opamp_admin_not_found(ngx_http_opamp_admin_ctx_t *ctx)
{
    ctx->reason = "no such admin resource";
    return NGX_HTTP_NOT_FOUND;
}


/* "<prefix><what>", "<prefix><what>{<uid>}" or "<prefix><what><name>";
 * per-agent keys of settings and packages have a ":" before the tag */

ngx_int_t
ngx_http_opamp_admin_key(ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *key,
    const char *what, ngx_uint_t suffix)
{
    u_char                      *p;
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(ctx->request, ngx_http_opamp_module);

    key->data = ngx_pnalloc(ctx->request->pool, omcf->prefix.len
                            + ngx_strlen(what) + ctx->name.len
                            + NGX_HTTP_OPAMP_UID_STR_LEN + 4);
    if (key->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(key->data, "%V%s", &omcf->prefix, what);

    if (suffix == NGX_HTTP_OPAMP_ADMIN_KEY_AGENT) {
        if (p[-1] != ':') {
            *p++ = ':';
        }

        p = ngx_sprintf(p, "{%*s}", (size_t) NGX_HTTP_OPAMP_UID_STR_LEN,
                        ctx->uid_text);

    } else if (suffix == NGX_HTTP_OPAMP_ADMIN_KEY_NAME) {
        p = ngx_cpymem(p, ctx->name.data, ctx->name.len);
    }

    key->len = p - key->data;

    return NGX_OK;
}


static void
ngx_http_opamp_admin_body(ngx_http_request_t *r)
{
    u_char                      *p;
    ssize_t                      n;
    ngx_int_t                    rc;
    ngx_buf_t                   *b;
    ngx_chain_t                 *cl;
    ngx_http_opamp_admin_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_opamp_module);

    if (r->request_body && r->request_body->bufs) {
        b = r->request_body->bufs->buf;

        if (b->in_file || r->request_body->temp_file) {
            /* past client_body_buffer_size: read it back, it is bounded by
             * client_max_body_size */

            ctx->body.len = (size_t) (b->file_last - b->file_pos);
            ctx->body.data = ngx_pnalloc(r->pool, ctx->body.len + 1);
            if (ctx->body.data == NULL) {
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return;
            }

            n = ngx_read_file(b->file, ctx->body.data, ctx->body.len,
                              b->file_pos);
            if (n != (ssize_t) ctx->body.len) {
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return;
            }

        } else if (r->request_body->bufs->next == NULL) {
            ctx->body.data = b->pos;
            ctx->body.len = b->last - b->pos;

        } else {
            /* what came with the headers and the rest, in two buffers
             * (request_body_in_single_buf does not join them): one */

            ctx->body.len = 0;

            for (cl = r->request_body->bufs; cl; cl = cl->next) {
                ctx->body.len += cl->buf->last - cl->buf->pos;
            }

            ctx->body.data = ngx_pnalloc(r->pool, ctx->body.len + 1);
            if (ctx->body.data == NULL) {
                ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
                return;
            }

            p = ctx->body.data;

            for (cl = r->request_body->bufs; cl; cl = cl->next) {
                p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
            }
        }
    }

    rc = ngx_http_opamp_admin_run(ctx);

    if (rc != NGX_DONE) {
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            ngx_http_opamp_admin_audit(r, rc, NULL);
        }

        ngx_http_finalize_request(r, rc);
    }
}


/* starts the Redis side of the request: NGX_DONE, or a finished status */

static ngx_int_t
ngx_http_opamp_admin_run(ngx_http_opamp_admin_ctx_t *ctx)
{
    ngx_http_request_t  *r;

    r = ctx->request;

    switch (ctx->op) {

    case NGX_HTTP_OPAMP_ADMIN_LIST:
        return ngx_http_opamp_admin_list(ctx);

    case NGX_HTTP_OPAMP_ADMIN_AGENT:
        ctx->key = ctx->agent_key;

        if (r->method & NGX_HTTP_DELETE) {
            return ngx_http_opamp_admin_remove(ctx);
        }

        /* the agent's hash with the content it shares resolved */

        return ngx_http_opamp_admin_keyed(ctx,
                                          NGX_HTTP_OPAMP_SCRIPT_ADMIN_AGENT);

    case NGX_HTTP_OPAMP_ADMIN_GROUPS:
        return ngx_http_opamp_admin_groups(ctx);

    case NGX_HTTP_OPAMP_ADMIN_RESTART:
        return ngx_http_opamp_admin_restart(ctx);

    case NGX_HTTP_OPAMP_ADMIN_MESSAGE:
        return ngx_http_opamp_admin_message(ctx);

    case NGX_HTTP_OPAMP_ADMIN_RETRY:
        return ngx_http_opamp_admin_retry(ctx);

    case NGX_HTTP_OPAMP_ADMIN_IDENTITY:
        return ngx_http_opamp_admin_release(ctx);

    case NGX_HTTP_OPAMP_ADMIN_TOKEN:
        return ngx_http_opamp_admin_revoke(ctx);

    case NGX_HTTP_OPAMP_ADMIN_VERSIONS:
    case NGX_HTTP_OPAMP_ADMIN_VERSION:
    case NGX_HTTP_OPAMP_ADMIN_DIFF:
    case NGX_HTTP_OPAMP_ADMIN_ROLLBACK:
        return ngx_http_opamp_admin_versions(ctx);

    case NGX_HTTP_OPAMP_ADMIN_AUDIT:
        return ngx_http_opamp_admin_audit_list(ctx);

    case NGX_HTTP_OPAMP_ADMIN_FLEET:
        return ngx_http_opamp_admin_fleet(ctx);

    case NGX_HTTP_OPAMP_ADMIN_HOSTS:
        return ngx_http_opamp_admin_hosts(ctx);

    case NGX_HTTP_OPAMP_ADMIN_ROLLOUTS:
    case NGX_HTTP_OPAMP_ADMIN_ROLLOUT:
        return ngx_http_opamp_admin_rollouts(ctx);

    default:
        break;
    }

    /* a config, connection settings or packages */

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
        return ngx_http_opamp_admin_simple(ctx,
                   ctx->op == NGX_HTTP_OPAMP_ADMIN_SETTINGS ? "GET"
                                                            : "HGETALL");
    }

    if (r->method & NGX_HTTP_DELETE) {
        return ngx_http_opamp_admin_delete(ctx);
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_CONFIG) {
        return ngx_http_opamp_admin_config_put(ctx);
    }

    return ngx_http_opamp_admin_offer_put(ctx);
}


/* DELETE a config, connection settings or packages: admin_delete.lua */

static ngx_int_t
ngx_http_opamp_admin_delete(ngx_http_opamp_admin_ctx_t *ctx)
{
    size_t              argvlen[7];
    ngx_str_t           groups, version, fleet;
    const char         *argv[7];
    ngx_http_request_t *r;

    r = ctx->request;

    if (ngx_http_opamp_admin_key(ctx, &groups, "groups", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &version, "config_version", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv[0] = (const char *) ctx->key.data;
    argvlen[0] = ctx->key.len;
    argv[1] = (const char *) groups.data;
    argvlen[1] = groups.len;
    argv[2] = (const char *) version.data;
    argvlen[2] = version.len;

    if (ctx->has_uid) {
        argv[3] = (const char *) ctx->agent_key.data;
        argvlen[3] = ctx->agent_key.len;
        argv[4] = "agent";
        argv[5] = (const char *) ctx->uid_text;
        argvlen[5] = NGX_HTTP_OPAMP_UID_STR_LEN;

    } else {
        argv[3] = (const char *) ctx->key.data;
        argvlen[3] = ctx->key.len;
        argv[4] = ctx->group ? "group" : "fleet";
        argv[5] = (const char *) (ctx->name.len ? ctx->name.data
                                                : (u_char *) "");
        argvlen[5] = ctx->name.len;
    }

    argvlen[4] = 5;
    argv[6] = (const char *) fleet.data;
    argvlen[6] = fleet.len;

    (void) r;

    return ngx_http_opamp_admin_eval(ctx, NGX_HTTP_OPAMP_SCRIPT_ADMIN_DELETE,
                                     4, 7, argv, argvlen);
}


/* a script of the admin API's own (src/lua/admin_version*.lua, ...):
 * EVAL, as ngx_http_opamp_store_eval() runs the others */

ngx_int_t
ngx_http_opamp_admin_eval_source(ngx_http_opamp_admin_ctx_t *ctx,
    const char *source, size_t len, ngx_uint_t nkeys, int argc,
    const char **argv, size_t *argvlen)
{
    int           i;
    u_char        n[NGX_INT_T_LEN];
    size_t       *lens;
    const char  **args;

    args = ngx_palloc(ctx->request->pool,
                      (argc + 3) * (sizeof(char *) + sizeof(size_t)));
    if (args == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    lens = (size_t *) (args + argc + 3);

    args[0] = "EVAL";
    lens[0] = 4;
    args[1] = source;
    lens[1] = len;
    args[2] = (const char *) n;
    lens[2] = ngx_sprintf(n, "%ui", nkeys) - n;

    for (i = 0; i < argc; i++) {
        args[i + 3] = argv[i];
        lens[i + 3] = argvlen[i];
    }

    ctx->cmd = ngx_http_opamp_redis_command(argc + 3, args, lens,
                                            ngx_http_opamp_admin_reply, ctx);
    if (ctx->cmd == NULL) {
        return ngx_http_opamp_admin_error(ctx->request,
                                          NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "the agent state store is "
                                          "unavailable, retry later");
    }

    return NGX_DONE;
}


/* who makes a change: opamp_admin_author's value, cut to 128 bytes */

ngx_int_t
ngx_http_opamp_admin_author(ngx_http_request_t *r, ngx_str_t *author)
{
    ngx_http_opamp_loc_conf_t  *olcf;

    ngx_str_null(author);

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (olcf->admin_author == NULL) {
        return NGX_OK;
    }

    if (ngx_http_complex_value(r, olcf->admin_author, author) != NGX_OK) {
        return NGX_ERROR;
    }

    if (author->len > NGX_HTTP_OPAMP_ADMIN_MAX_AUTHOR) {
        author->len = NGX_HTTP_OPAMP_ADMIN_MAX_AUTHOR;
    }

    return NGX_OK;
}


/*
 * The request's OpAMP-Note header: NGX_OK (empty when there is none), or
 * NGX_DECLINED when it is longer than 256 bytes or not UTF-8 (*note is
 * then what the audit log keeps of it: its first 256 bytes).
 */

ngx_int_t
ngx_http_opamp_admin_note(ngx_http_request_t *r, ngx_str_t *note)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    ngx_str_null(note);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("OpAMP-Note") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "OpAMP-Note",
                               sizeof("OpAMP-Note") - 1) == 0)
        {
            *note = h[i].value;

            if (note->len > NGX_HTTP_OPAMP_ADMIN_MAX_NOTE) {
                note->len = NGX_HTTP_OPAMP_ADMIN_MAX_NOTE;
                return NGX_DECLINED;
            }

            return ngx_http_opamp_utf8_valid(note->data, note->len)
                   ? NGX_OK : NGX_DECLINED;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_opamp_admin_eval(ngx_http_opamp_admin_ctx_t *ctx, ngx_uint_t script,
    ngx_uint_t nkeys, int argc, const char **argv, size_t *argvlen)
{
    ctx->cmd = ngx_http_opamp_store_eval(script, nkeys, argc, argv, argvlen,
                                         ngx_http_opamp_admin_reply, ctx);
    if (ctx->cmd == NULL) {
        return ngx_http_opamp_admin_error(ctx->request,
                                          NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "the agent state store is "
                                          "unavailable, retry later");
    }

    return NGX_DONE;
}


/* a script of KEYS[1] = ctx->key and ARGV[1] = the key prefix */

ngx_int_t
ngx_http_opamp_admin_keyed(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_uint_t script)
{
    size_t                       argvlen[2];
    const char                  *argv[2];
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(ctx->request, ngx_http_opamp_module);

    argv[0] = (const char *) ctx->key.data;
    argvlen[0] = ctx->key.len;
    argv[1] = (const char *) omcf->prefix.data;
    argvlen[1] = omcf->prefix.len;

    return ngx_http_opamp_admin_eval(ctx, script, 1, 2, argv, argvlen);
}


/* one plain command on ctx->key */

static ngx_int_t
ngx_http_opamp_admin_simple(ngx_http_opamp_admin_ctx_t *ctx,
    const char *command)
{
    size_t        argvlen[2];
    const char   *argv[2];

    argv[0] = command;
    argvlen[0] = ngx_strlen(command);
    argv[1] = (const char *) ctx->key.data;
    argvlen[1] = ctx->key.len;

    ctx->cmd = ngx_http_opamp_redis_command(2, argv, argvlen,
                                            ngx_http_opamp_admin_reply, ctx);
    if (ctx->cmd == NULL) {
        return ngx_http_opamp_admin_error(ctx->request,
                                          NGX_HTTP_SERVICE_UNAVAILABLE,
                                          "the agent state store is "
                                          "unavailable, retry later");
    }

    return NGX_DONE;
}


/* a value for one agent or the fleet, through admin_push.lua */

ngx_int_t
ngx_http_opamp_admin_push(ngx_http_opamp_admin_ctx_t *ctx, const char *how,
    ngx_str_t *value, ngx_str_t *hash)
{
    size_t       argvlen[8];
    ngx_str_t    fleet, version;
    const char  *argv[8];

    if (ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &version, "config_version", 0)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv[0] = (const char *) ctx->key.data;
    argvlen[0] = ctx->key.len;
    argv[1] = (const char *) (ctx->has_uid ? ctx->agent_key.data
                                           : (u_char *) "");
    argvlen[1] = ctx->has_uid ? ctx->agent_key.len : 0;
    argv[2] = (const char *) version.data;
    argvlen[2] = version.len;
    argv[3] = how;
    argvlen[3] = ngx_strlen(how);
    argv[4] = (const char *) value->data;
    argvlen[4] = value->len;
    argv[5] = (const char *) (hash ? hash->data : (u_char *) "");
    argvlen[5] = hash ? hash->len : 0;
    argv[6] = (const char *) (ctx->has_uid ? ctx->uid_text : (u_char *) "");
    argvlen[6] = ctx->has_uid ? NGX_HTTP_OPAMP_UID_STR_LEN : 0;
    argv[7] = (const char *) fleet.data;
    argvlen[7] = fleet.len;

    return ngx_http_opamp_admin_eval(ctx, NGX_HTTP_OPAMP_SCRIPT_ADMIN_PUSH, 3,
                                     8, argv, argvlen);
}


static void
ngx_http_opamp_admin_reply(redisReply *reply, void *data)
{
    ngx_http_opamp_admin_ctx_t *ctx = data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    ctx->cmd = NULL;
    r = ctx->request;

    /*
     * opamp_redis_wait: a write of operator data is answered once enough
     * replicas have it (WAIT on the same connection, right after it); its
     * reply is kept meanwhile.
     */

    if (ctx->written == NULL && reply && reply->type != REDIS_REPLY_ERROR
        && (r->method & (NGX_HTTP_PUT|NGX_HTTP_POST|NGX_HTTP_DELETE)))
    {
        rc = ngx_http_opamp_redis_wait_send(reply, &ctx->written,
                                            ngx_http_opamp_admin_reply, ctx,
                                            &ctx->cmd);
        if (rc == NGX_AGAIN) {
            return;
        }

        if (rc == NGX_ERROR) {
            reply = NULL;
        }
    }

    if (ctx->written) {
        rc = ngx_http_opamp_redis_wait_check(reply, r->pool, &ctx->reason);
        reply = ctx->written;

        if (rc != NGX_OK) {
            rc = ngx_http_opamp_admin_error(r, rc, ctx->reason);

        } else {
            rc = ngx_http_opamp_admin_answer(ctx, reply);
        }

        freeReplyObject(ctx->written);
        ctx->written = NULL;

    } else if (reply == NULL) {
        rc = ngx_http_opamp_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        "the agent state store did not "
                                        "answer, retry later");

    } else if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "opamp: admin redis command failed: %*s",
                      (size_t) reply->len, reply->str);
        rc = ngx_http_opamp_admin_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                        "the agent state store failed");

    } else {
        rc = ngx_http_opamp_admin_answer(ctx, reply);
    }

    c = r->connection;

    ngx_http_finalize_request(r, rc);

    /* a Redis callback, not an event of this connection: run what the
     * finalization posted, as ngx_http_upstream does */

    ngx_http_run_posted_requests(c);
}


/* the reply of the request's script or command, as the resource shows it */

static ngx_int_t
ngx_http_opamp_admin_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    ngx_http_request_t  *r;

    r = ctx->request;

    switch (ctx->op) {

    case NGX_HTTP_OPAMP_ADMIN_LIST:
        return ngx_http_opamp_admin_list_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_AGENT:
        return ngx_http_opamp_admin_agent_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_GROUPS:
        return ngx_http_opamp_admin_groups_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_RESTART:
    case NGX_HTTP_OPAMP_ADMIN_MESSAGE:
    case NGX_HTTP_OPAMP_ADMIN_RETRY:
        return ngx_http_opamp_admin_queued_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_VERSIONS:
    case NGX_HTTP_OPAMP_ADMIN_VERSION:
    case NGX_HTTP_OPAMP_ADMIN_DIFF:
    case NGX_HTTP_OPAMP_ADMIN_ROLLBACK:
        return ngx_http_opamp_admin_versions_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_AUDIT:
        return ngx_http_opamp_admin_audit_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_FLEET:
        return ngx_http_opamp_admin_fleet_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_HOSTS:
        return ngx_http_opamp_admin_hosts_answer(ctx, reply);

    case NGX_HTTP_OPAMP_ADMIN_ROLLOUTS:
    case NGX_HTTP_OPAMP_ADMIN_ROLLOUT:
    case NGX_HTTP_OPAMP_ADMIN_ROLLOUT_START:
        return ngx_http_opamp_admin_rollouts_answer(ctx, reply);

    default:
        break;
    }

    /* configs, connection settings, packages */

    if (r->method & NGX_HTTP_DELETE) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "nothing to delete");
        }

        return ngx_http_opamp_admin_no_content(r);
    }

    if ((r->method & NGX_HTTP_PUT)
        && reply->type == REDIS_REPLY_INTEGER && reply->integer == 0)
    {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "unknown agent");
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_CONFIG) {
        return ngx_http_opamp_admin_config_answer(ctx, reply);
    }

    return ngx_http_opamp_admin_offer_answer(ctx, reply);
}


/* a DELETE done: 204 */

ngx_int_t
ngx_http_opamp_admin_no_content(ngx_http_request_t *r)
{
    ngx_http_opamp_admin_audit(r, NGX_HTTP_NO_CONTENT, NULL);

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->header_only = 1;
    r->headers_out.content_length_n = 0;
    return ngx_http_send_header(r);
}


ngx_int_t
ngx_http_opamp_admin_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_http_opamp_json_t *j)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (j->failed) {
        ngx_http_opamp_admin_audit(r, NGX_HTTP_INTERNAL_SERVER_ERROR, NULL);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_opamp_admin_audit(r, status, NULL);

    /* a newline, for curl users */
    j->comma = 0;
    ngx_http_opamp_json_literal(j, "\n");

    if (j->failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = j->len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    if (r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = j->data;
    b->last = j->data + j->len;
    b->memory = 1;
    b->last_buf = (r == r->main);
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_opamp_admin_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_table_elt_t        *h;
    ngx_http_opamp_json_t   j;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "opamp: admin request answered %ui: %s", status, reason);

    ngx_http_opamp_admin_audit(r, status, reason);

    if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h) {
            h->hash = 1;
            ngx_str_set(&h->key, "Retry-After");
            ngx_str_set(&h->value, "5");
        }
    }

    ngx_http_opamp_json_init(&j, r->pool);
    ngx_http_opamp_json_object(&j);
    ngx_http_opamp_json_kv(&j, "error");
    ngx_http_opamp_json_string(&j, (u_char *) reason, ngx_strlen(reason));
    ngx_http_opamp_json_close(&j, '}');

    return ngx_http_opamp_admin_send(r, status, &j);
}
