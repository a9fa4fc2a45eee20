/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_admin.h"
#include "ngx_http_opamp_gzip.h"
#include "ngx_http_opamp_json.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_selector.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"

#include <jansson.h>
#include <openssl/evp.h>

#include "opamp/v1/opamp.pb-c.h"


#define NGX_HTTP_OPAMP_ADMIN_MAX_LIMIT     1000
#define NGX_HTTP_OPAMP_ADMIN_MAX_FILES     64
#define NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS     16
/* admin_list.lua's fixed arguments (KEYS[1], ARGV[1..9]) before the
 * attribute filters */
#define NGX_HTTP_OPAMP_ADMIN_LIST_FIXED    10


typedef enum {
    NGX_HTTP_OPAMP_ADMIN_LIST = 0,
    NGX_HTTP_OPAMP_ADMIN_AGENT,
    NGX_HTTP_OPAMP_ADMIN_RESTART,
    NGX_HTTP_OPAMP_ADMIN_MESSAGE,
    NGX_HTTP_OPAMP_ADMIN_GROUPS,
    NGX_HTTP_OPAMP_ADMIN_CONFIG,          /* of an agent or a group */
    NGX_HTTP_OPAMP_ADMIN_SETTINGS,        /* of the fleet or an agent */
    NGX_HTTP_OPAMP_ADMIN_PACKAGES         /* of the fleet or an agent */
} ngx_http_opamp_admin_op_e;


typedef struct {
    ngx_http_request_t             *request;
    ngx_http_opamp_redis_cmd_t     *cmd;
    ngx_http_opamp_admin_op_e       op;

    /* the agent (has_uid) or the group the request is about */
    unsigned                        has_uid:1;
    unsigned                        group:1;
    u_char                          uid[NGX_HTTP_OPAMP_UID_LEN];
    u_char                          uid_text[NGX_HTTP_OPAMP_UID_STR_LEN];
    ngx_str_t                       name;

    ngx_str_t                       key;     /* the Redis key concerned */
    ngx_str_t                       agent_key;
    ngx_str_t                       body;
    u_char                          hash[64];   /* config_hash, hex */
    const char                     *reason;     /* of a refusal */
    redisReply                     *written;    /* kept during WAIT */
} ngx_http_opamp_admin_ctx_t;


static void ngx_http_opamp_admin_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_opamp_admin_route(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *path);
static ngx_int_t ngx_http_opamp_admin_run(ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_list(ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_config_put(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_push(ngx_http_opamp_admin_ctx_t *ctx,
    const char *how, ngx_str_t *value, ngx_str_t *hash);
static ngx_int_t ngx_http_opamp_admin_delete(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_remove(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_simple(ngx_http_opamp_admin_ctx_t *ctx,
    const char *command);
static ngx_int_t ngx_http_opamp_admin_message(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_offer_put(
    ngx_http_opamp_admin_ctx_t *ctx);
static ngx_int_t ngx_http_opamp_admin_eval(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_uint_t script, ngx_uint_t nkeys, int argc, const char **argv,
    size_t *argvlen);
static ngx_int_t ngx_http_opamp_admin_keyed(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_uint_t script);
static void ngx_http_opamp_admin_reply(redisReply *reply, void *data);
static ngx_int_t ngx_http_opamp_admin_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);
static void ngx_http_opamp_admin_agent_json(ngx_http_opamp_json_t *j,
    redisReply *reply, ngx_uint_t full);
static void ngx_http_opamp_admin_config_json(ngx_http_opamp_json_t *j,
    redisReply *reply);
static ngx_int_t ngx_http_opamp_admin_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_http_opamp_json_t *j);
static ngx_int_t ngx_http_opamp_admin_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *reason);
static ngx_int_t ngx_http_opamp_admin_key(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *key, const char *what, ngx_uint_t suffix);

#define NGX_HTTP_OPAMP_ADMIN_KEY_PLAIN  0
#define NGX_HTTP_OPAMP_ADMIN_KEY_AGENT  1     /* ...{<uid>} */
#define NGX_HTTP_OPAMP_ADMIN_KEY_NAME   2     /* ...<group name> */
static void ngx_http_opamp_admin_cleanup(void *data);


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
    ngx_string("healthy"), ngx_null_string
};


/* the fields admin_list.lua returns, in its order */
static const char  *ngx_http_opamp_admin_list_fields[] = {
    "instance_uid", "connected", "expires_ms", "transport", "server_id",
    "worker_pid", "sequence_num", "capabilities", "healthy",
    "first_seen_ms", "last_seen_ms", "attributes", "config_status",
    "config_hash", "desired_config", "desired_hash"
};


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

    ngx_http_set_ctx(r, ctx, ngx_http_opamp_module);

    /* a body in one buffer; bodies past client_body_buffer_size are read
     * from the temporary file */

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_opamp_admin_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
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


/*
 * Paths (docs/admin-api.md):
 *
 *   agents                          GET
 *   agents/<uid>                    GET DELETE
 *   agents/<uid>/restart            POST
 *   agents/<uid>/messages           POST
 *   configs/groups                  GET
 *   configs/groups/<name>           GET PUT DELETE
 *   configs/agents/<uid>            GET PUT DELETE
 *   connection-settings[/agents/<uid>]   GET PUT DELETE
 *   packages[/agents/<uid>]              GET PUT DELETE
 */

static ngx_int_t
ngx_http_opamp_admin_route(ngx_http_request_t *r,
    ngx_http_opamp_admin_ctx_t *ctx, ngx_str_t *path)
{
    u_char     *p, *last, *slash;
    size_t      n;
    ngx_int_t   rc;
    ngx_str_t   seg[4];
    ngx_uint_t  nseg, i;

    p = path->data;
    last = p + path->len;
    nseg = 0;

    while (p < last) {
        if (nseg == 4) {
            goto not_found;
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

#define ngx_http_opamp_seg(i, s)                                             \
    (seg[i].len == sizeof(s) - 1                                             \
     && ngx_strncmp(seg[i].data, s, sizeof(s) - 1) == 0)

#define ngx_http_opamp_any       (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_PUT     \
                                  |NGX_HTTP_DELETE)

    if (nseg == 0) {
        goto not_found;
    }

    if (ngx_http_opamp_seg(0, "agents")) {

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

        goto not_found;
    }

    if (ngx_http_opamp_seg(0, "configs") && nseg >= 2) {

        if (ngx_http_opamp_seg(1, "groups")) {

            if (nseg == 2) {
                ctx->op = NGX_HTTP_OPAMP_ADMIN_GROUPS;
                return ngx_http_opamp_admin_method(ctx,
                           NGX_HTTP_GET|NGX_HTTP_HEAD, "GET, HEAD");
            }

            if (nseg != 3) {
                goto not_found;
            }

            /* group names go into keys: a safe alphabet, bounded */

            if (seg[2].len == 0 || seg[2].len > 128) {
                goto bad_name;
            }

            for (i = 0; i < seg[2].len; i++) {
                n = seg[2].data[i];

                if (!((n >= 'a' && n <= 'z') || (n >= 'A' && n <= 'Z')
                      || (n >= '0' && n <= '9')
                      || n == '.' || n == '_' || n == '-'))
                {
                    goto bad_name;
                }
            }

            ctx->op = NGX_HTTP_OPAMP_ADMIN_CONFIG;
            ctx->group = 1;
            ctx->name = seg[2];

            rc = ngx_http_opamp_admin_key(ctx, &ctx->key, "config:group:",
                                          NGX_HTTP_OPAMP_ADMIN_KEY_NAME);
            if (rc != NGX_OK) {
                return rc;
            }

            return ngx_http_opamp_admin_method(ctx, ngx_http_opamp_any,
                                               "GET, HEAD, PUT, DELETE");
        }

        if (ngx_http_opamp_seg(1, "agents") && nseg == 3) {
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

            return ngx_http_opamp_admin_method(ctx, ngx_http_opamp_any,
                                               "GET, HEAD, PUT, DELETE");
        }

        goto not_found;
    }

    if (ngx_http_opamp_seg(0, "connection-settings")
        || ngx_http_opamp_seg(0, "packages"))
    {
        ctx->op = ngx_http_opamp_seg(0, "packages")
                  ? NGX_HTTP_OPAMP_ADMIN_PACKAGES
                  : NGX_HTTP_OPAMP_ADMIN_SETTINGS;

        if (nseg == 3 && ngx_http_opamp_seg(1, "agents")) {
            rc = ngx_http_opamp_admin_uid(r, ctx, seg[2].data, seg[2].len);
            if (rc != NGX_OK) {
                return rc;
            }

        } else if (nseg != 1) {
            goto not_found;
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

not_found:

    ctx->reason = "no such admin resource";
    return NGX_HTTP_NOT_FOUND;

bad_name:

    ctx->reason = "invalid group name: 1 to 128 of A-Z a-z 0-9 . _ -";
    return NGX_HTTP_BAD_REQUEST;

#undef ngx_http_opamp_seg
#undef ngx_http_opamp_any
}


/* "<prefix><what>", "<prefix><what>{<uid>}" or "<prefix><what><name>";
 * per-agent keys of settings and packages have a ":" before the tag */

static ngx_int_t
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
    ssize_t                      n;
    ngx_int_t                    rc;
    ngx_buf_t                   *b;
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

        } else {
            ctx->body.data = b->pos;
            ctx->body.len = b->last - b->pos;
        }
    }

    rc = ngx_http_opamp_admin_run(ctx);

    if (rc != NGX_DONE) {
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
        return ngx_http_opamp_admin_simple(ctx, NULL);

    case NGX_HTTP_OPAMP_ADMIN_RESTART:
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

    case NGX_HTTP_OPAMP_ADMIN_MESSAGE:
        return ngx_http_opamp_admin_message(ctx);

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


static ngx_int_t
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

static ngx_int_t
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


/* one plain command on ctx->key; NULL: the groups listing script */

static ngx_int_t
ngx_http_opamp_admin_simple(ngx_http_opamp_admin_ctx_t *ctx,
    const char *command)
{
    size_t        argvlen[2];
    const char   *argv[2];

    if (command == NULL) {
        if (ngx_http_opamp_admin_key(ctx, &ctx->key, "groups", 0) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_opamp_admin_keyed(ctx,
                                          NGX_HTTP_OPAMP_SCRIPT_ADMIN_GROUPS);
    }

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


/*
 * GET agents?limit=N&cursor=C&connected=1&healthy=0&config_status=FAILED
 *     &attr=key=value...
 */

static ngx_int_t
ngx_http_opamp_admin_list(ngx_http_opamp_admin_ctx_t *ctx)
{
    int                          argc;
    u_char                      *p, *last, *amp, *eq, *dst, *src;
    u_char                       now[NGX_INT64_LEN], budget[NGX_INT_T_LEN];
    u_char                       limit[NGX_INT_T_LEN];
    u_char                       from[NGX_INT64_LEN];
    size_t                       argvlen[NGX_HTTP_OPAMP_ADMIN_LIST_FIXED
                                         + NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS];
    ngx_int_t                    n, lim;
    ngx_str_t                    name, value, cursor, connected, healthy;
    ngx_str_t                    status, key;
    uint64_t                     ms;
    ngx_msec_t                   timeout;
    ngx_time_t                  *tp;
    const char                  *argv[NGX_HTTP_OPAMP_ADMIN_LIST_FIXED
                                      + NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS];
    ngx_http_request_t          *r;
    ngx_http_opamp_loc_conf_t   *olcf;
    ngx_http_opamp_main_conf_t  *omcf;

    r = ctx->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    ngx_str_set(&cursor, "0");
    ngx_str_null(&connected);
    ngx_str_null(&healthy);
    ngx_str_null(&status);
    lim = 100;
    argc = NGX_HTTP_OPAMP_ADMIN_LIST_FIXED;

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
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        dst = value.data;
        src = eq + 1;
        ngx_unescape_uri(&dst, &src, amp - eq - 1, 0);
        value.len = dst - value.data;

        if (name.len == 5 && ngx_strncmp(name.data, "limit", 5) == 0) {
            lim = ngx_atoi(value.data, value.len);
            if (lim < 1 || lim > NGX_HTTP_OPAMP_ADMIN_MAX_LIMIT) {
                return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                           "limit must be 1 to 1000");
            }

        } else if (name.len == 6 && ngx_strncmp(name.data, "cursor", 6) == 0)
        {
            if (ngx_atoi(value.data, value.len) == NGX_ERROR) {
                return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                           "invalid cursor");
            }

            cursor = value;

        } else if ((name.len == 9
                    && ngx_strncmp(name.data, "connected", 9) == 0)
                   || (name.len == 7
                       && ngx_strncmp(name.data, "healthy", 7) == 0))
        {
            if (value.len != 1 || (value.data[0] != '0'
                                   && value.data[0] != '1'))
            {
                return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                           "connected and healthy take 0 or 1");
            }

            if (name.len == 9) {
                connected = value;

            } else {
                healthy = value;
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
                return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                           "config_status is one of UNSET, APPLIED, "
                           "APPLYING, FAILED");
            }

            status = value;

        } else if (name.len == 4 && ngx_strncmp(name.data, "attr", 4) == 0) {
            eq = ngx_strlchr(value.data, value.data + value.len, '=');

            if (eq == NULL || eq == value.data) {
                return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                           "attr takes key=value");
            }

            if (argc == NGX_HTTP_OPAMP_ADMIN_LIST_FIXED
                        + NGX_HTTP_OPAMP_ADMIN_MAX_ATTRS)
            {
                return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                           "too many attr filters");
            }

            argv[argc] = (const char *) value.data;
            argvlen[argc++] = value.len;

        } else {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                       "unknown parameter: use limit, cursor, connected, "
                       "healthy, config_status, attr");
        }
    }

    if (ngx_http_opamp_admin_key(ctx, &key, "agents", 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tp = ngx_timeofday();

    /* filters may skip most agents: look at ten pages' worth at most */
    n = lim * 10;

    argv[0] = (const char *) key.data;
    argvlen[0] = key.len;
    argv[1] = (const char *) omcf->prefix.data;
    argvlen[1] = omcf->prefix.len;
    argv[2] = (const char *) now;
    argvlen[2] = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec) - now;
    argv[3] = (const char *) cursor.data;
    argvlen[3] = cursor.len;
    argv[4] = (const char *) budget;
    argvlen[4] = ngx_sprintf(budget, "%i", n) - budget;
    argv[5] = (const char *) limit;
    argvlen[5] = ngx_sprintf(limit, "%i", lim) - limit;
    argv[6] = (const char *) (connected.len ? connected.data : (u_char *) "");
    argvlen[6] = connected.len;
    argv[7] = (const char *) (healthy.len ? healthy.data : (u_char *) "");
    argvlen[7] = healthy.len;
    argv[8] = (const char *) (status.len ? status.data : (u_char *) "");
    argvlen[8] = status.len;

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

    return ngx_http_opamp_admin_eval(ctx, NGX_HTTP_OPAMP_SCRIPT_ADMIN_LIST, 1,
                                     argc, argv, argvlen);
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


/*
 * PUT configs/agents/<uid>, configs/groups/<name>:
 *   {"files": {"<name>": {"body": "...", "content_type": "..."}},
 *    "selector": "k=v,k2=v2", "priority": 10}
 */

static ngx_int_t
ngx_http_opamp_admin_config_put(ngx_http_opamp_admin_ctx_t *ctx)
{
    int                          argc;
    u_char                      *p;
    u_char                       now[NGX_INT64_LEN], prio[NGX_INT64_LEN];
    size_t                      *argvlen, len;
    json_t                      *root, *files, *file, *body, *type, *sel;
    json_t                      *pr;
    ngx_int_t                    rc;
    ngx_str_t                    names[NGX_HTTP_OPAMP_ADMIN_MAX_FILES];
    ngx_str_t                    bodies[NGX_HTTP_OPAMP_ADMIN_MAX_FILES];
    ngx_str_t                    types[NGX_HTTP_OPAMP_ADMIN_MAX_FILES];
    ngx_str_t                    selector, groups, version, fleet, sorted;
    ngx_uint_t                   i, k, n;
    const char                  *name, **argv, *reason;
    ngx_time_t                  *tp;
    json_error_t                 error;
    ngx_http_request_t          *r;

    r = ctx->request;

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

    reason = NULL;
    ngx_str_null(&selector);
    ngx_str_set(&sorted, "0");
    n = 0;

    files = json_object_get(root, "files");

    if (!json_is_object(root)) {
        reason = "the body must be a JSON object";
        goto invalid;
    }

    json_object_foreach(root, name, file) {
        if (ngx_strcmp(name, "files") != 0
            && !(ctx->group && (ngx_strcmp(name, "selector") == 0
                                || ngx_strcmp(name, "priority") == 0)))
        {
            reason = ctx->group ? "unknown member: a group config has "
                                  "\"files\", \"selector\" and \"priority\""
                                : "unknown member: an agent config has "
                                  "\"files\" only";
            goto invalid;
        }
    }

    if (!json_is_object(files) || json_object_size(files) == 0) {
        reason = "\"files\" must be an object with at least one file";
        goto invalid;
    }

    if (json_object_size(files) > NGX_HTTP_OPAMP_ADMIN_MAX_FILES) {
        reason = "too many files: at most 64";
        goto invalid;
    }

    json_object_foreach(files, name, file) {
        len = ngx_strlen(name);

        if (len == 0 || len > 256) {
            reason = "a file name must be 1 to 256 bytes";
            goto invalid;
        }

        for (i = 0; i < len; i++) {
            if ((u_char) name[i] < 0x20 || name[i] == 0x7f) {
                reason = "a file name must not contain control characters";
                goto invalid;
            }
        }

        body = json_object_get(file, "body");
        type = json_object_get(file, "content_type");

        if (!json_is_object(file) || !json_is_string(body)
            || (type && !json_is_string(type))
            || json_object_size(file) != (size_t) (type ? 2 : 1))
        {
            reason = "each file must be {\"body\": string, "
                     "\"content_type\": string}";
            goto invalid;
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
            reason = "\"selector\" must be a string";
            goto invalid;
        }

        if (sel) {
            selector.data = (u_char *) json_string_value(sel);
            selector.len = json_string_length(sel);
        }

        if (ngx_http_opamp_selector_check(selector.data, selector.len)
            != NGX_OK)
        {
            reason = "invalid selector: use key=value[,key=value...]";
            goto invalid;
        }

        if (pr && (!json_is_integer(pr)
                   || json_integer_value(pr) < -1000000000
                   || json_integer_value(pr) > 1000000000))
        {
            reason = "\"priority\" must be an integer within +-1e9";
            goto invalid;
        }

        sorted.data = prio;
        sorted.len = ngx_sprintf(prio, "%L",
                                 (int64_t) (pr ? json_integer_value(pr) : 0))
                     - prio;
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

    if (ngx_http_opamp_admin_hash(ctx, names, bodies, types, n) != NGX_OK) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_opamp_admin_key(ctx, &groups, "groups", 0) != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &version, "config_version", 0)
           != NGX_OK
        || ngx_http_opamp_admin_key(ctx, &fleet, "fleet", 0) != NGX_OK)
    {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argv = ngx_palloc(r->pool, (11 + 3 * n) * (sizeof(char *)
                                               + sizeof(size_t)));
    if (argv == NULL) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    argvlen = (size_t *) (argv + 11 + 3 * n);

    tp = ngx_timeofday();

#define ngx_http_opamp_arg(s, l)                                             \
    argv[argc] = (const char *) (s); argvlen[argc++] = (l)

    argc = 0;
    ngx_http_opamp_arg(ctx->key.data, ctx->key.len);
    ngx_http_opamp_arg(groups.data, groups.len);
    ngx_http_opamp_arg(version.data, version.len);

    if (ctx->has_uid) {
        ngx_http_opamp_arg(ctx->agent_key.data, ctx->agent_key.len);
        ngx_http_opamp_arg("agent", 5);
        ngx_http_opamp_arg(ctx->uid_text, NGX_HTTP_OPAMP_UID_STR_LEN);

    } else {
        ngx_http_opamp_arg(ctx->key.data, ctx->key.len);
        ngx_http_opamp_arg("group", 5);
        ngx_http_opamp_arg(ctx->name.data, ctx->name.len);
    }

    ngx_http_opamp_arg(fleet.data, fleet.len);
    ngx_http_opamp_arg(now, ngx_sprintf(now, "%T%03M", tp->sec, tp->msec)
                            - now);
    ngx_http_opamp_arg(ctx->hash, 64);
    ngx_http_opamp_arg(selector.len ? selector.data : (u_char *) "",
                       selector.len);
    ngx_http_opamp_arg(sorted.data, sorted.len);

    for (i = 0; i < n; i++) {
        ngx_http_opamp_arg(names[i].data, names[i].len);
        ngx_http_opamp_arg(bodies[i].data, bodies[i].len);
        ngx_http_opamp_arg(types[i].len ? types[i].data : (u_char *) "",
                           types[i].len);
    }

#undef ngx_http_opamp_arg

    /* hiredis copies the arguments before this returns */

    rc = ngx_http_opamp_admin_eval(ctx,
                                   NGX_HTTP_OPAMP_SCRIPT_ADMIN_CONFIG_SET, 4,
                                   argc, argv, argvlen);

    json_decref(root);

    return rc;

invalid:

    json_decref(root);

    return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST, reason);
}


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


/* DELETE agents/<uid>: the agent and all that is only its own, as the
 * retention sweep removes it (remove.lua) */

static ngx_int_t
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


/* a value for one agent or the fleet, through admin_push.lua */

static ngx_int_t
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


/* POST agents/<uid>/messages {"capability": "...", "type": "...",
 *                             "data": "..."} */

static ngx_int_t
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


/*
 * PUT connection-settings, packages: a ConnectionSettingsOffers or a
 * PackagesAvailable (with its all_packages_hash), as JSON in the shape GET
 * shows, or as the protobuf message itself with
 * Content-Type: application/x-protobuf.  It must decode either way.
 */

static ngx_int_t
ngx_http_opamp_admin_offer_put(ngx_http_opamp_admin_ctx_t *ctx)
{
    const char                           *reason;
    u_char                               *p;
    size_t                                len;
    json_t                               *root;
    ngx_str_t                             hash, *type;
    const char                           *err;
    json_error_t                          error;
    ngx_http_request_t                   *r;
    ProtobufCMessage                     *m;
    const ProtobufCMessageDescriptor     *d;
    Opamp__Proto__V1__PackagesAvailable  *pa;

    r = ctx->request;

    d = (ctx->op == NGX_HTTP_OPAMP_ADMIN_PACKAGES)
        ? &opamp__proto__v1__packages_available__descriptor
        : &opamp__proto__v1__connection_settings_offers__descriptor;

    type = r->headers_in.content_type ? &r->headers_in.content_type->value
                                      : NULL;

    if (type && type->len >= sizeof("application/x-protobuf") - 1
        && ngx_strncasecmp(type->data, (u_char *) "application/x-protobuf",
                           sizeof("application/x-protobuf") - 1) == 0)
    {
        m = ngx_http_opamp_proto_unpack(d, ctx->body.data, ctx->body.len,
                                        &reason);
        if (m == NULL) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                       ctx->op == NGX_HTTP_OPAMP_ADMIN_PACKAGES
                       ? "the body is not a PackagesAvailable message"
                       : "the body is not a ConnectionSettingsOffers "
                         "message");
        }

    } else {
        root = json_loadb((const char *) ctx->body.data, ctx->body.len,
                          JSON_REJECT_DUPLICATES, &error);
        if (root == NULL) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              "invalid JSON");
        }

        err = "invalid message";
        m = ngx_http_opamp_json_to_message(root, d, &err);
        json_decref(root);

        if (m == NULL) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST, err);
        }

        /* what is stored is the protobuf message, as for any writer */

        len = protobuf_c_message_get_packed_size(m);
        p = ngx_pnalloc(r->pool, len + 1);
        if (p == NULL) {
            protobuf_c_message_free_unpacked(m, NULL);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->body.data = p;
        ctx->body.len = protobuf_c_message_pack(m, p);
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_SETTINGS) {
        protobuf_c_message_free_unpacked(m, NULL);
        return ngx_http_opamp_admin_push(ctx, "set", &ctx->body, NULL);
    }

    pa = (Opamp__Proto__V1__PackagesAvailable *) m;

    if (pa->all_packages_hash.len == 0 || pa->all_packages_hash.len > 64) {
        protobuf_c_message_free_unpacked(m, NULL);
        return ngx_http_opamp_admin_error(r, NGX_HTTP_BAD_REQUEST,
                   "PackagesAvailable needs all_packages_hash (1 to 64 "
                   "bytes)");
    }

    p = ngx_pnalloc(r->pool, 2 * pa->all_packages_hash.len);
    if (p == NULL) {
        protobuf_c_message_free_unpacked(m, NULL);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    hash.data = p;
    hash.len = ngx_hex_dump(p, pa->all_packages_hash.data,
                            pa->all_packages_hash.len) - p;

    protobuf_c_message_free_unpacked(m, NULL);

    return ngx_http_opamp_admin_push(ctx, "offer", &ctx->body, &hash);
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


static ngx_int_t
ngx_http_opamp_admin_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply)
{
    const char              *reason;
    size_t                  i, k;
    redisReply             *e, **el;
    ngx_http_request_t     *r;
    ngx_http_opamp_json_t   j;
    ProtobufCMessage       *m;

    r = ctx->request;

    ngx_http_opamp_json_init(&j, r->pool);

    switch (ctx->op) {

    case NGX_HTTP_OPAMP_ADMIN_LIST:
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
            break;
        }

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

    case NGX_HTTP_OPAMP_ADMIN_AGENT:
        if (r->method & NGX_HTTP_DELETE) {
            if (reply->type != REDIS_REPLY_INTEGER || reply->integer == 0) {
                return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                                  "unknown agent");
            }

            r->headers_out.status = NGX_HTTP_NO_CONTENT;
            r->header_only = 1;
            r->headers_out.content_length_n = 0;
            return ngx_http_send_header(r);
        }

        if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "unknown agent");
        }

        ngx_http_opamp_admin_agent_json(&j, reply, 1);
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);

    case NGX_HTTP_OPAMP_ADMIN_GROUPS:
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
            ngx_http_opamp_json_string(&j, (u_char *) el[0]->str,
                                       el[0]->len);
            ngx_http_opamp_json_kv(&j, "selector");
            ngx_http_opamp_json_string(&j, (u_char *) el[1]->str,
                                       el[1]->len);
            ngx_http_opamp_json_kv(&j, "priority");
            ngx_http_opamp_json_number(&j, (u_char *) el[2]->str,
                                       el[2]->len);
            ngx_http_opamp_json_kv(&j, "config_hash");
            ngx_http_opamp_json_string(&j, (u_char *) el[3]->str,
                                       el[3]->len);
            ngx_http_opamp_json_kv(&j, "updated_ms");
            ngx_http_opamp_json_number(&j, (u_char *) el[4]->str,
                                       el[4]->len);
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

    case NGX_HTTP_OPAMP_ADMIN_RESTART:
    case NGX_HTTP_OPAMP_ADMIN_MESSAGE:
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "unknown agent");
        }

        ngx_http_opamp_json_object(&j);
        ngx_http_opamp_json_kv(&j, "queued");
        ngx_http_opamp_json_literal(&j, "true");
        ngx_http_opamp_json_close(&j, '}');
        return ngx_http_opamp_admin_send(r, NGX_HTTP_ACCEPTED, &j);

    default:
        break;
    }

    /* configs, connection settings, packages */

    if (r->method & NGX_HTTP_DELETE) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "nothing to delete");
        }

        r->headers_out.status = NGX_HTTP_NO_CONTENT;
        r->header_only = 1;
        r->headers_out.content_length_n = 0;
        return ngx_http_send_header(r);
    }

    if (r->method & NGX_HTTP_PUT) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "unknown agent");
        }

        ngx_http_opamp_json_object(&j);

        if (ctx->op == NGX_HTTP_OPAMP_ADMIN_CONFIG) {
            ngx_http_opamp_json_kv(&j, "config_hash");
            ngx_http_opamp_json_string(&j, ctx->hash, 64);
            ngx_http_opamp_json_kv(&j, "config_version");
            ngx_http_opamp_json_int(&j, reply->integer);

        } else {
            ngx_http_opamp_json_kv(&j, "stored");
            ngx_http_opamp_json_literal(&j, "true");
        }

        ngx_http_opamp_json_close(&j, '}');
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
    }

    /* GET */

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_CONFIG) {
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
            return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                              "no such config");
        }

        ngx_http_opamp_admin_config_json(&j, reply);
        return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
    }

    if (ctx->op == NGX_HTTP_OPAMP_ADMIN_SETTINGS) {
        m = NULL;

        if (reply->type == REDIS_REPLY_STRING) {
            m = ngx_http_opamp_proto_unpack(
                    &opamp__proto__v1__connection_settings_offers__descriptor,
                    (u_char *) reply->str, reply->len, &reason);
        }

    } else {
        m = NULL;

        for (i = 0; reply->type == REDIS_REPLY_ARRAY
                    && i + 1 < reply->elements; i += 2)
        {
            e = reply->element[i];

            if (e->len == 5 && ngx_strncmp(e->str, "offer", 5) == 0) {
                e = reply->element[i + 1];
                m = ngx_http_opamp_proto_unpack(
                        &opamp__proto__v1__packages_available__descriptor,
                        (u_char *) e->str, e->len, &reason);
            }
        }
    }

    if (m == NULL) {
        return ngx_http_opamp_admin_error(r, NGX_HTTP_NOT_FOUND,
                                          "nothing stored");
    }

    ngx_http_opamp_json_message(&j, m);
    protobuf_c_message_free_unpacked(m, NULL);

    return ngx_http_opamp_admin_send(r, NGX_HTTP_OK, &j);
}


/* one agent: the flat HGETALL (full) or admin_list.lua's field list */

static void
ngx_http_opamp_admin_agent_json(ngx_http_opamp_json_t *j, redisReply *reply,
    ngx_uint_t full)
{
    const char         *reason;
    size_t             i, n;
    int64_t            expires;
    ngx_str_t          name, value, connected, exp;
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

    /* first the fields that make "connected" mean live */

    for (i = 0; i < n; i++) {
        if (full) {
            name.data = (u_char *) el[2 * i]->str;
            name.len = el[2 * i]->len;
            value.data = (u_char *) el[2 * i + 1]->str;
            value.len = el[2 * i + 1]->len;

        } else {
            name.data = (u_char *) ngx_http_opamp_admin_list_fields[i];
            name.len = ngx_strlen(name.data);
            value.data = (u_char *) el[i]->str;
            value.len = el[i]->len;
        }

        if (name.len == 9 && ngx_strncmp(name.data, "connected", 9) == 0) {
            connected = value;

        } else if (name.len == 10
                   && ngx_strncmp(name.data, "expires_ms", 10) == 0)
        {
            exp = value;
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

    for (i = 0; i < n; i++) {
        if (full) {
            name.data = (u_char *) el[2 * i]->str;
            name.len = el[2 * i]->len;
            value.data = (u_char *) el[2 * i + 1]->str;
            value.len = el[2 * i + 1]->len;

        } else {
            name.data = (u_char *) ngx_http_opamp_admin_list_fields[i];
            name.len = ngx_strlen(name.data);
            value.data = (u_char *) el[i]->str;
            value.len = el[i]->len;
        }

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

        if (name.len == 10 && ngx_strncmp(name.data, "attributes", 10) == 0
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


static ngx_int_t
ngx_http_opamp_admin_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_http_opamp_json_t *j)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (j->failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

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


static ngx_int_t
ngx_http_opamp_admin_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason)
{
    ngx_table_elt_t        *h;
    ngx_http_opamp_json_t   j;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "opamp: admin request answered %ui: %s", status, reason);

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
