/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Module glue: directives, configuration create/merge, the content handler
 * that picks a transport, and the worker hooks that open and close the
 * per-worker Redis connections.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_gzip.h"
#include "ngx_http_opamp_http.h"
#include "ngx_http_opamp_identity.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_admin.h"
#include "ngx_http_opamp_admin_dashboard.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_sweep.h"
#include "ngx_http_opamp_host.h"
#include "ngx_http_opamp_rollout.h"
#include "ngx_http_opamp_variables.h"
#include "ngx_http_opamp_websocket.h"


/* the spec allows up to 64 MiB; real agents send a few hundred KB at most,
 * and a gzip bomb inflates to the limit before anything can refuse it */
#if (defined __GLIBC__)
#include <malloc.h>
#define NGX_HTTP_OPAMP_GLIBC          1
/* buffers from this size on are mapped, not taken from the heap */
#define NGX_HTTP_OPAMP_MMAP_THRESHOLD  (32 * 1024)
#endif

#define NGX_HTTP_OPAMP_DEFAULT_MAX_MESSAGE  (4 * 1024 * 1024)
/* a real Collector's full status is 30-40 KB, its effective config a few
 * hundred KB at most */
#define NGX_HTTP_OPAMP_DEFAULT_MAX_STATE    (1024 * 1024)

/* what the fleet's custom messages stream may hold, bytes */
#define NGX_HTTP_OPAMP_DEFAULT_CUSTOM_SIZE  (16 * 1024 * 1024)
#define NGX_HTTP_OPAMP_DEFAULT_RETENTION    (7 * 24 * 3600 * 1000)


static ngx_int_t ngx_http_opamp_handler(ngx_http_request_t *r);
static void *ngx_http_opamp_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_opamp_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_opamp_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_opamp_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_opamp(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_opamp_admin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_opamp_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_opamp_prefix(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_opamp_server_id(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_opamp_check_size(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_opamp_check_time(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_opamp_custom_capabilities(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_opamp_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_opamp_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_opamp_init_process(ngx_cycle_t *cycle);
static void ngx_http_opamp_exit_process(ngx_cycle_t *cycle);


static ngx_conf_post_handler_pt  ngx_http_opamp_size_post =
    ngx_http_opamp_check_size;
static ngx_conf_post_handler_pt  ngx_http_opamp_time_post =
    ngx_http_opamp_check_time;


/* opamp_config_versions, opamp_admin_audit_entries: what one script call
 * trims at most when the bound is lowered */
static ngx_conf_num_bounds_t  ngx_http_opamp_versions_bounds = {
    ngx_conf_check_num_bounds, 1, 1000
};

static ngx_conf_num_bounds_t  ngx_http_opamp_audit_bounds = {
    ngx_conf_check_num_bounds, 1, 1000000
};

/* opamp_heartbeat_batch_delay: a heartbeat's answer waits at most this
 * long; a second is already late for an agent that measures it */
static ngx_conf_num_bounds_t  ngx_http_opamp_batch_delay_bounds = {
    ngx_conf_check_num_bounds, 0, 1000
};


static ngx_conf_enum_t  ngx_http_opamp_identity_conflicts[] = {
    { ngx_string("refuse"), NGX_HTTP_OPAMP_IDENTITY_REFUSE },
    { ngx_string("new_uid"), NGX_HTTP_OPAMP_IDENTITY_NEW_UID },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_opamp_commands[] = {

    { ngx_string("opamp"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_opamp,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_opamp_admin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_admin_author"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, admin_author),
      NULL },

    { ngx_string("opamp_config_versions"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, config_versions),
      &ngx_http_opamp_versions_bounds },

    { ngx_string("opamp_admin_audit_entries"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, audit_entries),
      &ngx_http_opamp_audit_bounds },

    { ngx_string("opamp_dashboard"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE12,
      ngx_http_opamp_dashboard_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_opamp_metrics_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_opamp_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_redis_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_opamp_prefix,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, redis_timeout),
      &ngx_http_opamp_time_post },

    { ngx_string("opamp_redis_max_reply"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, redis_max_reply),
      &ngx_http_opamp_redis_max_reply_post },

    { ngx_string("opamp_redis_sentinel_auth"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_opamp_redis_sentinel_auth,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_redis_wait"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_opamp_redis_wait,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

#if (NGX_SSL)

    { ngx_string("opamp_redis_ssl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl),
      NULL },

    { ngx_string("opamp_redis_ssl_protocols"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_protocols),
      &ngx_http_opamp_redis_ssl_protocols },

    { ngx_string("opamp_redis_ssl_ciphers"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_ciphers),
      NULL },

    { ngx_string("opamp_redis_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_verify),
      NULL },

    { ngx_string("opamp_redis_ssl_verify_depth"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_verify_depth),
      NULL },

    { ngx_string("opamp_redis_ssl_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_trusted_certificate),
      NULL },

    { ngx_string("opamp_redis_ssl_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_certificate),
      NULL },

    { ngx_string("opamp_redis_ssl_certificate_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_certificate_key),
      NULL },

    { ngx_string("opamp_redis_ssl_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_name),
      NULL },

    { ngx_string("opamp_redis_ssl_server_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, ssl_server_name),
      NULL },

#endif

    { ngx_string("opamp_server_id"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_opamp_server_id,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_heartbeat_batch_delay"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_opamp_main_conf_t, heartbeat_batch_delay),
      &ngx_http_opamp_batch_delay_bounds },

    { ngx_string("opamp_agent_retention"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_opamp_sweep_retention,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_max_message_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, max_message_size),
      &ngx_http_opamp_size_post },

    { ngx_string("opamp_max_agent_state"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, max_agent_state),
      &ngx_http_opamp_size_post },

    { ngx_string("opamp_custom_messages_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, custom_messages_size),
      &ngx_http_opamp_size_post },

    { ngx_string("opamp_heartbeat_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, heartbeat_interval),
      NULL },

    { ngx_string("opamp_agent_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, agent_timeout),
      &ngx_http_opamp_time_post },

    { ngx_string("opamp_heartbeat_recheck"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, heartbeat_recheck),
      NULL },

    { ngx_string("opamp_send_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, send_timeout),
      &ngx_http_opamp_time_post },

    { ngx_string("opamp_send_queue_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, send_queue_limit),
      &ngx_http_opamp_size_post },

    { ngx_string("opamp_gzip_min_length"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, gzip_min_length),
      NULL },

    { ngx_string("opamp_agent_identity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, identity),
      NULL },

    { ngx_string("opamp_agent_identity_conflict"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, identity_conflict),
      &ngx_http_opamp_identity_conflicts },

    { ngx_string("opamp_agent_attribute"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_opamp_identity_attribute,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("opamp_enrollment_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, enrollment_token),
      NULL },

    { ngx_string("opamp_token_reenroll"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_opamp_loc_conf_t, token_reenroll),
      NULL },

    { ngx_string("opamp_custom_capabilities"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_opamp_custom_capabilities,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_opamp_module_ctx = {
    ngx_http_opamp_preconfiguration,       /* preconfiguration */
    ngx_http_opamp_postconfiguration,      /* postconfiguration */

    ngx_http_opamp_create_main_conf,       /* create main configuration */
    ngx_http_opamp_init_main_conf,         /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_opamp_create_loc_conf,        /* create location configuration */
    ngx_http_opamp_merge_loc_conf          /* merge location configuration */
};


ngx_module_t  ngx_http_opamp_module = {
    NGX_MODULE_V1,
    &ngx_http_opamp_module_ctx,            /* module context */
    ngx_http_opamp_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_opamp_init_process,           /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_opamp_exit_process,           /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_opamp_handler(ngx_http_request_t *r)
{
    /*
     * The spec tells the transports apart by Content-Type; a GET can only
     * be a WebSocket initiation and a POST only a plain HTTP message, and
     * the method gives a clearer error to a confused client.
     */

    if (r->method == NGX_HTTP_GET) {
        return ngx_http_opamp_websocket_handler(r);
    }

    if (r->method == NGX_HTTP_POST) {
        return ngx_http_opamp_http_handler(r);
    }

    return ngx_http_opamp_http_error(r, NGX_HTTP_NOT_ALLOWED,
                                     "use POST for plain HTTP or GET with "
                                     "a WebSocket upgrade");
}


static void *
ngx_http_opamp_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_opamp_main_conf_t));
    if (omcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     omcf->redis = { 0 };
     *     omcf->prefix = { 0, NULL };
     *     omcf->server_id = { 0, NULL };
     *     omcf->used = 0;
     *     omcf->max_agent_timeout = 0;
     *     omcf->max_message_largest = 0;
     *     omcf->max_state_largest = 0;
     */

    omcf->configured = NGX_CONF_UNSET;
    omcf->redis_timeout = NGX_CONF_UNSET_MSEC;
    omcf->agent_retention = NGX_CONF_UNSET_MSEC;
    omcf->heartbeat_batch_delay = NGX_CONF_UNSET_MSEC;
    omcf->config_versions = NGX_CONF_UNSET_UINT;
    omcf->audit_entries = NGX_CONF_UNSET_UINT;

    ngx_http_opamp_redis_create_conf(omcf);

    return omcf;
}


static char *
ngx_http_opamp_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    ngx_str_t  dflt = ngx_string("127.0.0.1:6379");

    if (omcf->configured == NGX_CONF_UNSET) {
        if (ngx_http_opamp_redis_parse_url(cf, &dflt, &omcf->redis)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

        omcf->configured = 0;
    }

    if (omcf->prefix.data == NULL) {
        ngx_str_set(&omcf->prefix, "opamp:");
    }

    ngx_conf_init_msec_value(omcf->redis_timeout, 5000);

    /* a week: see opamp_agent_retention in docs/directives.md */
    ngx_conf_init_msec_value(omcf->agent_retention,
                             NGX_HTTP_OPAMP_DEFAULT_RETENTION);

    /* see opamp_heartbeat_batch_delay in docs/directives.md */
    ngx_conf_init_msec_value(omcf->heartbeat_batch_delay, 50);

    ngx_conf_init_uint_value(omcf->config_versions, 50);
    ngx_conf_init_uint_value(omcf->audit_entries, 10000);

    if (ngx_http_opamp_redis_init_conf(cf, omcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (omcf->server_id.data == NULL) {
        omcf->server_id = cf->cycle->hostname;
    }

    if (omcf->used && ngx_http_opamp_metrics_init_conf(cf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_opamp_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_opamp_variables_add(cf);
}


/* the responses of the OpAMP locations are counted when they are logged */

static ngx_int_t
ngx_http_opamp_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt         *h;
    ngx_http_core_main_conf_t   *cmcf;
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_opamp_module);

    if (!omcf->used) {
        return NGX_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_opamp_metrics_log_handler;

    return NGX_OK;
}


static void *
ngx_http_opamp_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_opamp_loc_conf_t  *olcf;

    olcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_opamp_loc_conf_t));
    if (olcf == NULL) {
        return NULL;
    }

    olcf->enable = NGX_CONF_UNSET;
    olcf->max_message_size = NGX_CONF_UNSET_SIZE;
    olcf->max_agent_state = NGX_CONF_UNSET_SIZE;
    olcf->custom_messages_size = NGX_CONF_UNSET_SIZE;
    olcf->heartbeat_interval = NGX_CONF_UNSET;
    olcf->agent_timeout = NGX_CONF_UNSET_MSEC;
    olcf->heartbeat_recheck = NGX_CONF_UNSET_MSEC;
    olcf->send_timeout = NGX_CONF_UNSET_MSEC;
    olcf->send_queue_limit = NGX_CONF_UNSET_SIZE;
    olcf->gzip_min_length = NGX_CONF_UNSET_SIZE;
    olcf->custom_capabilities = NGX_CONF_UNSET_PTR;
    olcf->admin_author = NGX_CONF_UNSET_PTR;
    olcf->identity = NGX_CONF_UNSET_PTR;
    olcf->identity_conflict = NGX_CONF_UNSET_UINT;
    olcf->server_attributes = NGX_CONF_UNSET_PTR;
    olcf->enrollment_token = NGX_CONF_UNSET_PTR;
    olcf->token_reenroll = NGX_CONF_UNSET;

    /* dashboard_api, _metrics, _etag: zeroed, set by opamp_dashboard for
     * its own location only, as the handler it sets is not inherited */

    return olcf;
}


static char *
ngx_http_opamp_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_opamp_loc_conf_t *prev = parent;
    ngx_http_opamp_loc_conf_t *conf = child;

    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_opamp_main_conf_t  *omcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_size_value(conf->max_message_size,
                              prev->max_message_size,
                              NGX_HTTP_OPAMP_DEFAULT_MAX_MESSAGE);
    ngx_conf_merge_size_value(conf->max_agent_state, prev->max_agent_state,
                              NGX_HTTP_OPAMP_DEFAULT_MAX_STATE);
    ngx_conf_merge_size_value(conf->custom_messages_size,
                              prev->custom_messages_size,
                              NGX_HTTP_OPAMP_DEFAULT_CUSTOM_SIZE);
    ngx_conf_merge_sec_value(conf->heartbeat_interval,
                             prev->heartbeat_interval, 30);
    ngx_conf_merge_msec_value(conf->agent_timeout, prev->agent_timeout,
                              90000);
    /* see ngx_http_opamp_session_settled.c */
    ngx_conf_merge_msec_value(conf->heartbeat_recheck,
                              prev->heartbeat_recheck, 300000);
    ngx_conf_merge_msec_value(conf->send_timeout, prev->send_timeout,
                              60000);
    ngx_conf_merge_size_value(conf->send_queue_limit,
                              prev->send_queue_limit, 16 * 1024 * 1024);
    ngx_conf_merge_size_value(conf->gzip_min_length,
                              prev->gzip_min_length, 256);
    ngx_conf_merge_ptr_value(conf->custom_capabilities,
                             prev->custom_capabilities, NULL);
    ngx_conf_merge_ptr_value(conf->admin_author, prev->admin_author, NULL);
    ngx_conf_merge_ptr_value(conf->identity, prev->identity, NULL);
    ngx_conf_merge_uint_value(conf->identity_conflict,
                              prev->identity_conflict,
                              NGX_HTTP_OPAMP_IDENTITY_REFUSE);
    /* as proxy_set_header: a level's list replaces the outer one */
    ngx_conf_merge_ptr_value(conf->server_attributes,
                             prev->server_attributes, NULL);
    ngx_conf_merge_ptr_value(conf->enrollment_token, prev->enrollment_token,
                             NULL);
    ngx_conf_merge_value(conf->token_reenroll, prev->token_reenroll, 0);

    /*
     * In an OpAMP location opamp_max_message_size is the body limit (it
     * applies after gunzip too); nginx's own client_max_body_size check
     * runs first, so it must not stop a message the module would take.
     */

    if (conf->enable) {
        /* a live agent was seen within the longest timeout of any OpAMP
         * location: where the admin API's live listing starts */

        omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_opamp_module);

        if (conf->agent_timeout > omcf->max_agent_timeout) {
            omcf->max_agent_timeout = conf->agent_timeout;
        }

        /* what the command link must be able to read back: the default
         * of opamp_redis_max_reply grows with them */

        omcf->max_message_largest = ngx_max(omcf->max_message_largest,
                                            conf->max_message_size);
        omcf->max_state_largest = ngx_max(omcf->max_state_largest,
                                          conf->max_agent_state);

        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

        if (clcf->client_max_body_size != 0
            && clcf->client_max_body_size < (off_t) conf->max_message_size)
        {
            clcf->client_max_body_size = conf->max_message_size;
        }
    }

    if (conf->heartbeat_interval < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"opamp_heartbeat_interval\" must be "
                           "at least 1s");
        return NGX_CONF_ERROR;
    }

    if (conf->enable
        && conf->agent_timeout <= (ngx_msec_t) conf->heartbeat_interval
                                  * 1000)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"opamp_agent_timeout\" %M must be longer than "
                           "\"opamp_heartbeat_interval\" %T, or every "
                           "agent would count as disconnected between two "
                           "heartbeats",
                           conf->agent_timeout, conf->heartbeat_interval);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_opamp_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_opamp_main_conf_t  *omcf;

    if (olcf->enable != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    olcf->enable = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_opamp_handler;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_opamp_module);
    omcf->used = 1;

    return NGX_CONF_OK;
}


/* the admin API shares the workers' Redis connections with agents */

static char *
ngx_http_opamp_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_opamp_main_conf_t  *omcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate, or the location has another handler";
    }

    clcf->handler = ngx_http_opamp_admin_handler;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_opamp_module);
    omcf->used = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    ngx_str_t  *value;

    if (omcf->configured != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_opamp_redis_parse_url(cf, &value[1], &omcf->redis)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    omcf->configured = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    u_char     *p;
    ngx_str_t  *value;

    if (omcf->prefix.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /*
     * Braces would turn part of the prefix into a Redis Cluster hash tag
     * and move every key of the fleet to one slot; whitespace and quotes
     * make keys that other tools quote wrongly.
     */

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (*p == '{' || *p == '}' || *p <= ' ' || *p == '"' || *p == 0x7f)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid character in \"opamp_redis_prefix\" "
                               "\"%V\": braces, spaces, quotes and control "
                               "characters are not allowed", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (value[1].len > 64) {
        return "is longer than 64 characters";
    }

    omcf->prefix = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_server_id(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    u_char     *p;
    ngx_str_t  *value;

    if (omcf->server_id.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* it is a field of pub/sub messages, which spaces separate */

    if (value[1].len == 0 || value[1].len > 200) {
        return "must be 1 to 200 characters long";
    }

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (*p <= ' ' || *p == 0x7f) {
            return "must not contain whitespace or control characters";
        }
    }

    omcf->server_id = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_check_size(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp < 1024) {
        return "must be at least 1k";
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_check_time(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *mp = data;

    if (*mp == 0) {
        return "must be greater than zero";
    }

    return NGX_CONF_OK;
}


/*
 * The names go into ServerToAgent.custom_capabilities as C strings, so
 * they are kept NUL-terminated; the spec names them in reverse DNS form.
 */

static char *
ngx_http_opamp_custom_capabilities(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_opamp_loc_conf_t *olcf = conf;

    char        **name;
    u_char       *p;
    ngx_str_t    *value;
    ngx_uint_t    i;

    if (olcf->custom_capabilities != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    olcf->custom_capabilities = ngx_array_create(cf->pool,
                                                 cf->args->nelts - 1,
                                                 sizeof(char *));
    if (olcf->custom_capabilities == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        for (p = value[i].data; p < value[i].data + value[i].len; p++) {
            if (*p <= ' ' || *p == 0x7f) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid custom capability \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }
        }

        name = ngx_array_push(olcf->custom_capabilities);
        if (name == NULL) {
            return NGX_CONF_ERROR;
        }

        /* ngx_conf_parse() leaves every argument NUL-terminated */
        *name = (char *) value[i].data;
    }

    return NGX_CONF_OK;
}


ngx_connection_t  ngx_http_opamp_event_connection;


static ngx_int_t
ngx_http_opamp_init_process(ngx_cycle_t *cycle)
{
    ngx_http_opamp_main_conf_t  *omcf;

    ngx_http_opamp_event_connection.fd = (ngx_socket_t) -1;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    omcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_opamp_module);
    if (omcf == NULL || !omcf->used) {
        return NGX_OK;
    }

#if (NGX_HTTP_OPAMP_GLIBC)
    /*
     * A worker holding thousands of agents sees each one's full status
     * (a Collector's is ~40 KB) pass through a few buffers of its size
     * while small long-lived allocations (sessions, connections) are made
     * beside them; from glibc's heap the freed space stays in the worker:
     * 27.5 KB per held Collector in make bench.  From mmap it goes back at
     * once (2 KB per agent), at the cost of a system call per such buffer,
     * which only full reports need.
     */
    (void) mallopt(M_MMAP_THRESHOLD, NGX_HTTP_OPAMP_MMAP_THRESHOLD);
#endif

    if (ngx_http_opamp_session_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_opamp_store_init_process(cycle, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_opamp_sweep_init_process(cycle, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_opamp_rollout_init_process(cycle, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_opamp_host_init_process(cycle, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_opamp_redis_init_process(cycle, omcf);
}


static void
ngx_http_opamp_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_opamp_module);
    if (omcf == NULL || !omcf->used) {
        return;
    }

    ngx_http_opamp_session_exit_process(cycle);
    ngx_http_opamp_sweep_exit_process(cycle);
    ngx_http_opamp_rollout_exit_process(cycle);
    ngx_http_opamp_host_exit_process(cycle);
    ngx_http_opamp_redis_exit_process(cycle);
    ngx_http_opamp_stored_deflate_end();
}


#if (NGX_HTTP_OPAMP_FAULTS)

/*
 * Fault injection for test builds (make test-asan compiles with
 * -DNGX_HTTP_OPAMP_FAULTS=1): paths that only an allocation failure
 * reaches are tested by naming their failure points, comma-separated, in
 * OPAMP_FAULTS.  Never compiled into a production build.
 */

ngx_uint_t
ngx_http_opamp_fault(const char *point)
{
    char  *v;

    v = getenv("OPAMP_FAULTS");

    return (v != NULL && ngx_strstr(v, point) != NULL);
}

#endif
