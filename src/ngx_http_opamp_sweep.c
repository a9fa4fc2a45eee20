/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_sweep.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"


/*
 * Each step examines at most this many index entries of departed agents,
 * so that one script call stays short for Redis however many agents left
 * at once; a full batch is followed by the next one after a short pause,
 * a partial one ends the sweep until the next period.
 */
#define NGX_HTTP_OPAMP_SWEEP_BATCH   100
#define NGX_HTTP_OPAMP_SWEEP_AGAIN   50          /* ms */

/* the period: half the retention, within these bounds */
#define NGX_HTTP_OPAMP_SWEEP_MIN     1000
#define NGX_HTTP_OPAMP_SWEEP_MAX     60000

/*
 * One worker of the fleet sweeps at a time: the one that holds the lease,
 * <prefix>sweep:lease, which each of its steps renews for this many
 * periods.  Every other worker asks once a period (a few Redis
 * microseconds) and takes the lease over when its holder has stopped
 * renewing it: an exited worker, a host gone, a worker cut off from Redis.
 */
#define NGX_HTTP_OPAMP_SWEEP_LEASE   3


static void ngx_http_opamp_sweep_arm(ngx_msec_t delay);
static ngx_msec_t ngx_http_opamp_sweep_jitter(void);
static void ngx_http_opamp_sweep_step(ngx_event_t *ev);
static void ngx_http_opamp_sweep_done(redisReply *reply, void *data);


static ngx_event_t                  ngx_http_opamp_sweep_event;
static ngx_http_opamp_redis_cmd_t  *ngx_http_opamp_sweep_cmd;
/* the last step found the script cache empty: the next sends the source */
static ngx_uint_t                   ngx_http_opamp_sweep_noscript;
static ngx_http_opamp_main_conf_t  *ngx_http_opamp_sweep_conf;
static ngx_msec_t                   ngx_http_opamp_sweep_period;
static ngx_str_t                    ngx_http_opamp_sweep_index;
static ngx_str_t                    ngx_http_opamp_sweep_lease;

/* live agents the last steps kept at the start of the departed range:
 * the next step starts past them, so that they never starve the others */
static ngx_uint_t                   ngx_http_opamp_sweep_skip;


char *
ngx_http_opamp_sweep_retention(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    ngx_str_t  *value;
    ngx_msec_t  ms;

    if (omcf->agent_retention != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        omcf->agent_retention = 0;
        return NGX_CONF_OK;
    }

    ms = ngx_parse_time(&value[1], 0);

    if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"opamp_agent_retention\" \"%V\": use a "
                           "time of at least 1ms or \"off\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    omcf->agent_retention = ms;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_opamp_sweep_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf)
{
    ngx_event_t  *ev;

    ngx_http_opamp_sweep_conf = omcf;
    ngx_http_opamp_sweep_cmd = NULL;
    ngx_http_opamp_sweep_skip = 0;

    if (omcf->agent_retention == 0) {
        return NGX_OK;
    }

    ngx_http_opamp_sweep_period = omcf->agent_retention / 2;

    if (ngx_http_opamp_sweep_period < NGX_HTTP_OPAMP_SWEEP_MIN) {
        ngx_http_opamp_sweep_period = NGX_HTTP_OPAMP_SWEEP_MIN;
    }

    if (ngx_http_opamp_sweep_period > NGX_HTTP_OPAMP_SWEEP_MAX) {
        ngx_http_opamp_sweep_period = NGX_HTTP_OPAMP_SWEEP_MAX;
    }

    ngx_http_opamp_sweep_index.len = omcf->prefix.len + sizeof("agents") - 1;
    ngx_http_opamp_sweep_index.data =
                   ngx_pnalloc(cycle->pool, ngx_http_opamp_sweep_index.len);
    if (ngx_http_opamp_sweep_index.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_sweep_index.data, "%Vagents", &omcf->prefix);

    ngx_http_opamp_sweep_lease.len = omcf->prefix.len
                                     + sizeof("sweep:lease") - 1;
    ngx_http_opamp_sweep_lease.data =
                   ngx_pnalloc(cycle->pool, ngx_http_opamp_sweep_lease.len);
    if (ngx_http_opamp_sweep_lease.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_sweep_lease.data, "%Vsweep:lease",
                &omcf->prefix);

    ev = &ngx_http_opamp_sweep_event;
    ngx_memzero(ev, sizeof(ngx_event_t));

    ngx_http_opamp_event_init(ev, ngx_http_opamp_sweep_step, cycle->log);

    /* a graceful shutdown does not wait for the next sweep */
    ev->cancelable = 1;

    /* workers (and hosts) started together do not sweep together */

    ngx_http_opamp_sweep_arm((ngx_msec_t) ngx_random()
                             % ngx_http_opamp_sweep_period + 1);

    return NGX_OK;
}


void
ngx_http_opamp_sweep_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_opamp_sweep_event.timer_set) {
        ngx_del_timer(&ngx_http_opamp_sweep_event);
    }

    if (ngx_http_opamp_sweep_cmd) {
        ngx_http_opamp_redis_cancel(ngx_http_opamp_sweep_cmd);
        ngx_http_opamp_sweep_cmd = NULL;
    }
}


static void
ngx_http_opamp_sweep_arm(ngx_msec_t delay)
{
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    ngx_add_timer(&ngx_http_opamp_sweep_event, delay);
}


/* the period, 75% to 125% of it */

static ngx_msec_t
ngx_http_opamp_sweep_jitter(void)
{
    ngx_msec_t  p;

    p = ngx_http_opamp_sweep_period;

    return p - p / 4 + (ngx_msec_t) ngx_random() % (p / 2 + 1);
}


static void
ngx_http_opamp_sweep_step(ngx_event_t *ev)
{
    u_char       now[NGX_INT64_LEN], cutoff[NGX_INT64_LEN];
    u_char       batch[NGX_INT_T_LEN], skip[NGX_INT_T_LEN];
    u_char       lease[NGX_INT_T_LEN];
    size_t       argvlen[10];
    uint64_t     ms, retention;
    ngx_str_t   *owner;
    ngx_time_t  *tp;
    const char  *argv[10];

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;
    retention = ngx_http_opamp_sweep_conf->agent_retention;

    owner = ngx_http_opamp_redis_worker_channel();

    argv[0] = (const char *) ngx_http_opamp_sweep_index.data;
    argvlen[0] = ngx_http_opamp_sweep_index.len;
    argv[1] = (const char *) ngx_http_opamp_sweep_lease.data;
    argvlen[1] = ngx_http_opamp_sweep_lease.len;
    argv[2] = (const char *) ngx_http_opamp_sweep_conf->prefix.data;
    argvlen[2] = ngx_http_opamp_sweep_conf->prefix.len;
    argv[3] = "sweep";
    argvlen[3] = 5;
    argv[4] = (const char *) now;
    argvlen[4] = ngx_sprintf(now, "%uL", ms) - now;
    argv[5] = (const char *) cutoff;
    argvlen[5] = ngx_sprintf(cutoff, "%uL",
                             ms > retention ? ms - retention : 0)
                 - cutoff;
    argv[6] = (const char *) batch;
    argvlen[6] = ngx_sprintf(batch, "%d", NGX_HTTP_OPAMP_SWEEP_BATCH)
                 - batch;
    argv[7] = (const char *) skip;
    argvlen[7] = ngx_sprintf(skip, "%ui", ngx_http_opamp_sweep_skip) - skip;
    argv[8] = (const char *) owner->data;
    argvlen[8] = owner->len;
    argv[9] = (const char *) lease;
    argvlen[9] = ngx_sprintf(lease, "%M", ngx_http_opamp_sweep_period
                                          * NGX_HTTP_OPAMP_SWEEP_LEASE)
                 - lease;

    /* EVALSHA: every worker asks each period, and the holder steps again
     * and again through a backlog; an EVAL would send the script's source
     * (tens of kilobytes) and have Redis hash it each time */

    ngx_http_opamp_sweep_cmd =
        (ngx_http_opamp_sweep_noscript ? ngx_http_opamp_store_eval
                                       : ngx_http_opamp_store_evalsha)(
            NGX_HTTP_OPAMP_SCRIPT_REMOVE, 2, 10, argv, argvlen,
            ngx_http_opamp_sweep_done, NULL);

    if (ngx_http_opamp_sweep_cmd == NULL) {
        /* Redis is away: the next period tries again */
        ngx_http_opamp_sweep_arm(ngx_http_opamp_sweep_jitter());
    }
}


static void
ngx_http_opamp_sweep_done(redisReply *reply, void *data)
{
    ngx_msec_t   delay;
    redisReply **e;

    ngx_http_opamp_sweep_cmd = NULL;
    delay = ngx_http_opamp_sweep_jitter();

    /* the script cache was flushed (or Redis restarted): the source goes
     * with the next step, soon */
    ngx_http_opamp_sweep_noscript = ngx_http_opamp_store_is_noscript(reply);

    if (ngx_http_opamp_sweep_noscript) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "opamp: agent retention sweep: the script is not "
                      "cached in redis, sent with the next step");
        ngx_http_opamp_sweep_arm(NGX_HTTP_OPAMP_SWEEP_AGAIN);
        return;
    }

    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 4
        && reply->element[0]->type == REDIS_REPLY_INTEGER
        && reply->element[1]->type == REDIS_REPLY_INTEGER
        && reply->element[2]->type == REDIS_REPLY_INTEGER
        && reply->element[3]->type == REDIS_REPLY_INTEGER)
    {
        e = reply->element;

        if (e[3]->integer == 0) {
            /* another worker holds the lease: ask again next period */
            ngx_http_opamp_sweep_skip = 0;
            ngx_http_opamp_sweep_arm(delay);
            return;
        }

        if (e[0]->integer > 0) {
            ngx_http_opamp_metrics_add(NGX_HTTP_OPAMP_M_SWEPT,
                                       (ngx_atomic_int_t) e[0]->integer);
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "opamp: removed %L departed agents",
                          (int64_t) e[0]->integer);
        }

        if (e[1]->integer >= NGX_HTTP_OPAMP_SWEEP_BATCH) {
            /* more may be waiting: go on soon, past the live ones kept */
            ngx_http_opamp_sweep_skip += (ngx_uint_t) e[2]->integer;
            delay = NGX_HTTP_OPAMP_SWEEP_AGAIN;

        } else {
            ngx_http_opamp_sweep_skip = 0;
        }

    } else {
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "opamp: agent retention sweep failed: %*s",
                          (size_t) reply->len, reply->str);
        }

        ngx_http_opamp_sweep_skip = 0;
    }

    ngx_http_opamp_sweep_arm(delay);
}
