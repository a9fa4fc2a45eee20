/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_host.h"
#include "ngx_http_opamp_lua.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"


/*
 * Why one worker of the host publishes: the figures are the host's, kept
 * summed over its workers in the metrics zone, so that one writer gives
 * one Redis call per host and period whatever the number of workers, and
 * readers read one hash a host.  Worker 0 is always there (the master
 * starts it again with the same number if it dies); during a reload the
 * old and the new worker 0 both publish for a moment the same figures of
 * the same zone, which is harmless.
 */


/* the fixed fields besides the metrics figures: nginx_version, schema,
 * workers, pid, published_ms */
#define NGX_HTTP_OPAMP_HOST_FIXED    5

/* EVAL, the source, the key count, two keys, ARGV[1..5], then the
 * fields and values */
#define NGX_HTTP_OPAMP_HOST_ARGS                                              \
    (10 + 2 * (NGX_HTTP_OPAMP_HOST_FIXED + NGX_HTTP_OPAMP_METRICS_FIGURES))


static void ngx_http_opamp_host_publish(ngx_event_t *ev);
static void ngx_http_opamp_host_done(redisReply *reply, void *data);
static void ngx_http_opamp_host_arm(ngx_msec_t delay);


static ngx_event_t                  ngx_http_opamp_host_event;
static ngx_http_opamp_redis_cmd_t  *ngx_http_opamp_host_cmd;
static ngx_str_t                    ngx_http_opamp_host_name;
static ngx_str_t                    ngx_http_opamp_host_key;
static ngx_str_t                    ngx_http_opamp_host_index;
static ngx_int_t                    ngx_http_opamp_host_workers;
static ngx_uint_t                   ngx_http_opamp_host_failed;


ngx_int_t
ngx_http_opamp_host_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf)
{
    ngx_event_t      *ev;
    ngx_core_conf_t  *ccf;

    ngx_http_opamp_host_cmd = NULL;
    ngx_http_opamp_host_failed = 0;

    if (ngx_worker != 0) {
        return NGX_OK;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);
    ngx_http_opamp_host_workers = ccf->worker_processes;

    /* opamp_server_id: at most 200 bytes, no whitespace (the key and the
     * index member are bounded by it) */

    ngx_http_opamp_host_name = omcf->server_id;

    ngx_http_opamp_host_key.len = omcf->prefix.len + sizeof("host:") - 1
                                  + omcf->server_id.len;
    ngx_http_opamp_host_key.data = ngx_pnalloc(cycle->pool,
                                               ngx_http_opamp_host_key.len);
    if (ngx_http_opamp_host_key.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_host_key.data, "%Vhost:%V", &omcf->prefix,
                &omcf->server_id);

    ngx_http_opamp_host_index.len = omcf->prefix.len + sizeof("hosts") - 1;
    ngx_http_opamp_host_index.data =
                   ngx_pnalloc(cycle->pool, ngx_http_opamp_host_index.len);
    if (ngx_http_opamp_host_index.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_host_index.data, "%Vhosts", &omcf->prefix);

    ev = &ngx_http_opamp_host_event;
    ngx_memzero(ev, sizeof(ngx_event_t));

    ngx_http_opamp_event_init(ev, ngx_http_opamp_host_publish, cycle->log);

    /* a graceful shutdown does not wait for the next publish */
    ev->cancelable = 1;

    /* soon after start, once the Redis link is up */
    ngx_http_opamp_host_arm(1000);

    return NGX_OK;
}


void
ngx_http_opamp_host_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_opamp_host_event.timer_set) {
        ngx_del_timer(&ngx_http_opamp_host_event);
    }

    if (ngx_http_opamp_host_cmd) {
        ngx_http_opamp_redis_cancel(ngx_http_opamp_host_cmd);
        ngx_http_opamp_host_cmd = NULL;
    }
}


static void
ngx_http_opamp_host_arm(ngx_msec_t delay)
{
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    ngx_add_timer(&ngx_http_opamp_host_event, delay);
}


static void
ngx_http_opamp_host_publish(ngx_event_t *ev)
{
    u_char                           *p, *last;
    u_char                            nkeys[NGX_INT_T_LEN];
    u_char                            now[NGX_INT64_LEN];
    u_char                            ttl[NGX_INT_T_LEN];
    u_char                            forget[NGX_INT_T_LEN];
    u_char                            max[NGX_INT_T_LEN];
    u_char                            buf[(NGX_HTTP_OPAMP_HOST_FIXED
                                           + NGX_HTTP_OPAMP_METRICS_FIGURES)
                                          * (NGX_INT64_LEN + 1)];
    int                               argc;
    size_t                            argvlen[NGX_HTTP_OPAMP_HOST_ARGS];
    uint64_t                          ms;
    ngx_uint_t                        i, n;
    ngx_time_t                       *tp;
    const char                       *argv[NGX_HTTP_OPAMP_HOST_ARGS];
    ngx_http_opamp_metrics_figure_t   f[NGX_HTTP_OPAMP_METRICS_FIGURES];

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (ngx_http_opamp_host_cmd) {
        /* the previous publish has not been answered yet */
        ngx_http_opamp_host_arm(NGX_HTTP_OPAMP_HOST_PERIOD);
        return;
    }

    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = ngx_http_opamp_lua_host;
    argvlen[1] = sizeof(ngx_http_opamp_lua_host) - 1;
    argv[2] = (const char *) nkeys;
    argvlen[2] = ngx_sprintf(nkeys, "2") - nkeys;
    argv[3] = (const char *) ngx_http_opamp_host_key.data;
    argvlen[3] = ngx_http_opamp_host_key.len;
    argv[4] = (const char *) ngx_http_opamp_host_index.data;
    argvlen[4] = ngx_http_opamp_host_index.len;
    argv[5] = (const char *) ngx_http_opamp_host_name.data;
    argvlen[5] = ngx_http_opamp_host_name.len;
    argv[6] = (const char *) now;
    argvlen[6] = ngx_sprintf(now, "%uL", ms) - now;
    argv[7] = (const char *) ttl;
    argvlen[7] = ngx_sprintf(ttl, "%d", NGX_HTTP_OPAMP_HOST_TTL) - ttl;
    argv[8] = (const char *) forget;
    argvlen[8] = ngx_sprintf(forget, "%d", NGX_HTTP_OPAMP_HOST_FORGET)
                 - forget;
    argv[9] = (const char *) max;
    argvlen[9] = ngx_sprintf(max, "%d", NGX_HTTP_OPAMP_HOST_MAX) - max;

    argc = 10;

    argv[argc] = "nginx_version";
    argvlen[argc++] = sizeof("nginx_version") - 1;
    argv[argc] = NGINX_VERSION;
    argvlen[argc++] = sizeof(NGINX_VERSION) - 1;
    argv[argc] = "schema";
    argvlen[argc++] = sizeof("schema") - 1;
    argv[argc] = NGX_HTTP_OPAMP_SCHEMA;
    argvlen[argc++] = sizeof(NGX_HTTP_OPAMP_SCHEMA) - 1;

    p = buf;
    last = buf + sizeof(buf);

    argv[argc] = "workers";
    argvlen[argc++] = sizeof("workers") - 1;
    argv[argc] = (const char *) p;
    argvlen[argc++] = ngx_slprintf(p, last, "%i",
                                   ngx_http_opamp_host_workers) - p;
    p += argvlen[argc - 1];

    argv[argc] = "pid";
    argvlen[argc++] = sizeof("pid") - 1;
    argv[argc] = (const char *) p;
    argvlen[argc++] = ngx_slprintf(p, last, "%P", ngx_parent) - p;
    p += argvlen[argc - 1];

    argv[argc] = "published_ms";
    argvlen[argc++] = sizeof("published_ms") - 1;
    argv[argc] = (const char *) now;
    argvlen[argc++] = argvlen[6];

    n = ngx_http_opamp_metrics_figures(f);

    for (i = 0; i < n; i++) {
        argv[argc] = f[i].name;
        argvlen[argc++] = ngx_strlen(f[i].name);
        argv[argc] = (const char *) p;
        argvlen[argc++] = ngx_slprintf(p, last, "%uL", f[i].value) - p;
        p += argvlen[argc - 1];
    }

    /* a rare call: EVAL with the source saves the NOSCRIPT dance */

    ngx_http_opamp_host_cmd = ngx_http_opamp_redis_command(argc, argv,
                                  argvlen, ngx_http_opamp_host_done, NULL);

    /* Redis away: the next period tries again, its record expires
     * meanwhile, and readers see the host as stale */

    ngx_http_opamp_host_arm(NGX_HTTP_OPAMP_HOST_PERIOD);
}


static void
ngx_http_opamp_host_done(redisReply *reply, void *data)
{
    ngx_http_opamp_host_cmd = NULL;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        /* said once until a publish succeeds again */

        if (!ngx_http_opamp_host_failed) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "opamp: publishing the host's figures failed: %*s",
                          (size_t) reply->len, reply->str);
        }

        ngx_http_opamp_host_failed = 1;
        return;
    }

    if (reply) {
        ngx_http_opamp_host_failed = 0;
    }
}
