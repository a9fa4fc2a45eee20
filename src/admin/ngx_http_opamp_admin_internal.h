/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What the files of the admin API share, inside the module only: the
 * request's context, and the helpers of ngx_http_opamp_admin.c (routing,
 * Redis keys, the scripts and commands, the answers) that the resources
 * call: the agents (ngx_http_opamp_admin_agents.c), the configs and groups
 * (ngx_http_opamp_admin_configs.c), the connection settings and packages
 * offered to agents (ngx_http_opamp_admin_offers.c), the configs' versions
 * (ngx_http_opamp_admin_versions.c, their diffs in
 * ngx_http_opamp_admin_diff.c), the audit log
 * (ngx_http_opamp_admin_audit.c) and the fleet's gauges and inventory
 * (ngx_http_opamp_admin_fleet.c).
 */

#ifndef _NGX_HTTP_OPAMP_ADMIN_INTERNAL_H_INCLUDED_
#define _NGX_HTTP_OPAMP_ADMIN_INTERNAL_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_admin.h"
#include "ngx_http_opamp_json.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_uid.h"


typedef enum {
    NGX_HTTP_OPAMP_ADMIN_LIST = 0,
    NGX_HTTP_OPAMP_ADMIN_AGENT,
    NGX_HTTP_OPAMP_ADMIN_RESTART,
    NGX_HTTP_OPAMP_ADMIN_RETRY,           /* a failed config offered again */
    NGX_HTTP_OPAMP_ADMIN_IDENTITY,        /* an identity binding released */
    NGX_HTTP_OPAMP_ADMIN_TOKEN,           /* an agent's token revoked */
    NGX_HTTP_OPAMP_ADMIN_MESSAGE,
    NGX_HTTP_OPAMP_ADMIN_GROUPS,
    NGX_HTTP_OPAMP_ADMIN_CONFIG,          /* of an agent or a group */
    NGX_HTTP_OPAMP_ADMIN_SETTINGS,        /* of the fleet or an agent */
    NGX_HTTP_OPAMP_ADMIN_PACKAGES,        /* of the fleet or an agent */
    NGX_HTTP_OPAMP_ADMIN_VERSIONS,        /* a config's history */
    NGX_HTTP_OPAMP_ADMIN_VERSION,         /* one version of it */
    NGX_HTTP_OPAMP_ADMIN_DIFF,            /* two versions compared */
    NGX_HTTP_OPAMP_ADMIN_ROLLBACK,        /* an earlier version put back */
    NGX_HTTP_OPAMP_ADMIN_AUDIT,           /* the audit log */
    NGX_HTTP_OPAMP_ADMIN_FLEET,           /* gauges and inventory */
    NGX_HTTP_OPAMP_ADMIN_HOSTS,           /* the hosts' own figures */
    NGX_HTTP_OPAMP_ADMIN_ROLLOUTS,        /* the rollouts in progress */
    NGX_HTTP_OPAMP_ADMIN_ROLLOUT,         /* one group's: shown, steered */
    NGX_HTTP_OPAMP_ADMIN_ROLLOUT_START    /* a group's PUT with a plan */
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

    ngx_str_t                       vkey;     /* the config's history */
    ngx_int_t                       version;  /* of the path, or 0 */
    ngx_str_t                       action;   /* of a rollout */
    unsigned                        audited:1;
} ngx_http_opamp_admin_ctx_t;


/* what a version's author and note are cut to */
#define NGX_HTTP_OPAMP_ADMIN_MAX_AUTHOR    128
#define NGX_HTTP_OPAMP_ADMIN_MAX_NOTE      256


/* ngx_http_opamp_admin_key()'s suffix */
#define NGX_HTTP_OPAMP_ADMIN_KEY_PLAIN  0
#define NGX_HTTP_OPAMP_ADMIN_KEY_AGENT  1     /* ...{<uid>} */
#define NGX_HTTP_OPAMP_ADMIN_KEY_NAME   2     /* ...<group name> */


/* ngx_http_opamp_admin.c: keys, Redis, answers */

ngx_int_t ngx_http_opamp_admin_key(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_str_t *key, const char *what, ngx_uint_t suffix);
ngx_int_t ngx_http_opamp_admin_eval(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_uint_t script, ngx_uint_t nkeys, int argc, const char **argv,
    size_t *argvlen);
ngx_int_t ngx_http_opamp_admin_eval_source(ngx_http_opamp_admin_ctx_t *ctx,
    const char *source, size_t len, ngx_uint_t nkeys, int argc,
    const char **argv, size_t *argvlen);
ngx_int_t ngx_http_opamp_admin_author(ngx_http_request_t *r,
    ngx_str_t *author);
ngx_int_t ngx_http_opamp_admin_note(ngx_http_request_t *r, ngx_str_t *note);
ngx_int_t ngx_http_opamp_admin_version_number(u_char *p, size_t len);
ngx_int_t ngx_http_opamp_admin_valid_group(ngx_str_t *name);
ngx_int_t ngx_http_opamp_admin_keyed(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_uint_t script);
ngx_int_t ngx_http_opamp_admin_push(ngx_http_opamp_admin_ctx_t *ctx,
    const char *how, ngx_str_t *value, ngx_str_t *hash);
ngx_int_t ngx_http_opamp_admin_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_http_opamp_json_t *j);
ngx_int_t ngx_http_opamp_admin_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *reason);
ngx_int_t ngx_http_opamp_admin_no_content(ngx_http_request_t *r);

/* ngx_http_opamp_admin_agents.c */

ngx_int_t ngx_http_opamp_admin_list(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_remove(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_restart(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_retry(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_release(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_revoke(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_message(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_list_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);
ngx_int_t ngx_http_opamp_admin_agent_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);
ngx_int_t ngx_http_opamp_admin_queued_answer(
    ngx_http_opamp_admin_ctx_t *ctx, redisReply *reply);

/* ngx_http_opamp_admin_configs.c */

ngx_int_t ngx_http_opamp_admin_groups(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_config_put(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_groups_answer(
    ngx_http_opamp_admin_ctx_t *ctx, redisReply *reply);
ngx_int_t ngx_http_opamp_admin_config_answer(
    ngx_http_opamp_admin_ctx_t *ctx, redisReply *reply);

/* ngx_http_opamp_admin_versions.c */

ngx_int_t ngx_http_opamp_admin_versions(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_versions_answer(
    ngx_http_opamp_admin_ctx_t *ctx, redisReply *reply);

/* ngx_http_opamp_admin_diff.c: a unified diff of two texts into j as a
 * JSON string, or NGX_DECLINED with the reason it is not shown; *budget
 * is the work the request may still spend, lowered by what this took */
ngx_int_t ngx_http_opamp_admin_diff_text(ngx_http_opamp_json_t *j,
    ngx_str_t *name, ngx_str_t *a, ngx_str_t *b, ngx_uint_t *budget,
    const char **reason);

#define NGX_HTTP_OPAMP_ADMIN_DIFF_BUDGET   4000000

/* ngx_http_opamp_admin_audit.c */

void ngx_http_opamp_admin_audit(ngx_http_request_t *r, ngx_uint_t status,
    const char *reason);
ngx_int_t ngx_http_opamp_admin_audit_list(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_audit_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);

/* ngx_http_opamp_admin_fleet.c */

ngx_int_t ngx_http_opamp_admin_fleet(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_fleet_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);
ngx_int_t ngx_http_opamp_admin_hosts(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_hosts_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);

/* ngx_http_opamp_admin_configs.c, ngx_http_opamp_admin_rollouts.c */

#define NGX_HTTP_OPAMP_ADMIN_MAX_FILES     64


/* a config as PUT: its files (pointing into the JSON body), a group's
 * selector and priority */

typedef struct {
    ngx_str_t                    names[NGX_HTTP_OPAMP_ADMIN_MAX_FILES];
    ngx_str_t                    bodies[NGX_HTTP_OPAMP_ADMIN_MAX_FILES];
    ngx_str_t                    types[NGX_HTTP_OPAMP_ADMIN_MAX_FILES];
    ngx_uint_t                   n;
    ngx_str_t                    selector;
    ngx_str_t                    sorted;     /* the priority, as text */
    u_char                       prio[NGX_INT64_LEN];
} ngx_http_opamp_admin_config_t;


/* a staged rollout's plan, as the words src/lua/rollout_start.lua keeps */

typedef struct {
    ngx_str_t                    stages;     /* "c1 f0.100000 f1.000000" */
    ngx_str_t                    soak;       /* ms per stage */
    ngx_str_t                    gates;      /* "<gate> <limit>[ <ms>]\n" */
    ngx_str_t                    on_gate;    /* pause, rollback */
} ngx_http_opamp_admin_plan_t;


/* ngx_http_opamp_admin_rollouts.c */

const char *ngx_http_opamp_admin_plan_read(ngx_http_request_t *r,
    json_t *plan, ngx_http_opamp_admin_plan_t *out);
ngx_int_t ngx_http_opamp_admin_rollout_start(ngx_http_opamp_admin_ctx_t *ctx,
    ngx_http_opamp_admin_config_t *config, ngx_http_opamp_admin_plan_t *plan,
    ngx_int_t version);
ngx_int_t ngx_http_opamp_admin_rollouts(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_rollout_action(ngx_str_t *action);
ngx_int_t ngx_http_opamp_admin_rollouts_answer(
    ngx_http_opamp_admin_ctx_t *ctx, redisReply *reply);
ngx_int_t ngx_http_opamp_admin_script_error(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);

/* ngx_http_opamp_admin_offers.c */

ngx_int_t ngx_http_opamp_admin_offer_put(ngx_http_opamp_admin_ctx_t *ctx);
ngx_int_t ngx_http_opamp_admin_offer_answer(ngx_http_opamp_admin_ctx_t *ctx,
    redisReply *reply);


#endif /* _NGX_HTTP_OPAMP_ADMIN_INTERNAL_H_INCLUDED_ */
