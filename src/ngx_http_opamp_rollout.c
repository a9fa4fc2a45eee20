/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_rollout.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"


/* the period of the step, and how far each worker's is spread around it
 * so that the workers of a host do not all call at once */
#define NGX_HTTP_OPAMP_ROLLOUT_PERIOD  1000        /* ms */


static void ngx_http_opamp_rollout_arm(void);
static void ngx_http_opamp_rollout_step(ngx_event_t *ev);
static void ngx_http_opamp_rollout_done(redisReply *reply, void *data);


static ngx_event_t                  ngx_http_opamp_rollout_event;
static ngx_http_opamp_redis_cmd_t  *ngx_http_opamp_rollout_cmd;
static ngx_http_opamp_main_conf_t  *ngx_http_opamp_rollout_conf;
/* the last step found the script cache empty: the next sends the source */
static ngx_uint_t                   ngx_http_opamp_rollout_noscript;

/* <prefix>rollouts, <prefix>fleet:gauges, <prefix>config_version,
 * <prefix>fleet */
static ngx_str_t                    ngx_http_opamp_rollout_keys[4];


ngx_int_t
ngx_http_opamp_rollout_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf)
{
    ngx_uint_t          i;
    ngx_event_t        *ev;
    static const char  *names[] = { "rollouts", "fleet:gauges",
                                    "config_version", "fleet" };

    ngx_http_opamp_rollout_conf = omcf;
    ngx_http_opamp_rollout_cmd = NULL;

    for (i = 0; i < 4; i++) {
        ngx_http_opamp_rollout_keys[i].len = omcf->prefix.len
                                             + ngx_strlen(names[i]);
        ngx_http_opamp_rollout_keys[i].data =
                ngx_pnalloc(cycle->pool, ngx_http_opamp_rollout_keys[i].len);
        if (ngx_http_opamp_rollout_keys[i].data == NULL) {
            return NGX_ERROR;
        }

        ngx_sprintf(ngx_http_opamp_rollout_keys[i].data, "%V%s",
                    &omcf->prefix, names[i]);
    }

    ev = &ngx_http_opamp_rollout_event;
    ngx_memzero(ev, sizeof(ngx_event_t));

    ngx_http_opamp_event_init(ev, ngx_http_opamp_rollout_step, cycle->log);

    /* a graceful shutdown does not wait for the next step */
    ev->cancelable = 1;

    ngx_http_opamp_rollout_arm();

    return NGX_OK;
}


void
ngx_http_opamp_rollout_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_opamp_rollout_event.timer_set) {
        ngx_del_timer(&ngx_http_opamp_rollout_event);
    }

    if (ngx_http_opamp_rollout_cmd) {
        ngx_http_opamp_redis_cancel(ngx_http_opamp_rollout_cmd);
        ngx_http_opamp_rollout_cmd = NULL;
    }
}


/* the period, 75% to 125% of it */

static void
ngx_http_opamp_rollout_arm(void)
{
    ngx_msec_t  p;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    p = NGX_HTTP_OPAMP_ROLLOUT_PERIOD;

    ngx_add_timer(&ngx_http_opamp_rollout_event,
                  p - p / 4 + (ngx_msec_t) ngx_random() % (p / 2 + 1));
}


static void
ngx_http_opamp_rollout_step(ngx_event_t *ev)
{
    u_char       now[NGX_INT64_LEN];
    size_t       argvlen[6];
    ngx_time_t  *tp;
    const char  *argv[6];

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    tp = ngx_timeofday();

    argv[0] = (const char *) ngx_http_opamp_rollout_keys[0].data;
    argvlen[0] = ngx_http_opamp_rollout_keys[0].len;
    argv[1] = (const char *) ngx_http_opamp_rollout_keys[1].data;
    argvlen[1] = ngx_http_opamp_rollout_keys[1].len;
    argv[2] = (const char *) ngx_http_opamp_rollout_keys[2].data;
    argvlen[2] = ngx_http_opamp_rollout_keys[2].len;
    argv[3] = (const char *) now;
    argvlen[3] = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec) - now;
    argv[4] = (const char *) ngx_http_opamp_rollout_conf->prefix.data;
    argvlen[4] = ngx_http_opamp_rollout_conf->prefix.len;
    argv[5] = (const char *) ngx_http_opamp_rollout_keys[3].data;
    argvlen[5] = ngx_http_opamp_rollout_keys[3].len;

    /* EVALSHA: every worker of every host calls once a second, and an
     * EVAL would have Redis hash the script's source each time */
    ngx_http_opamp_rollout_cmd =
        (ngx_http_opamp_rollout_noscript ? ngx_http_opamp_store_eval
                                         : ngx_http_opamp_store_evalsha)(
            NGX_HTTP_OPAMP_SCRIPT_ROLLOUT_TICK, 3, 6, argv, argvlen,
            ngx_http_opamp_rollout_done, NULL);

    if (ngx_http_opamp_rollout_cmd == NULL) {
        /* Redis is away: the next period tries again */
        ngx_http_opamp_rollout_arm();
    }
}


static void
ngx_http_opamp_rollout_done(redisReply *reply, void *data)
{
    ngx_http_opamp_rollout_cmd = NULL;

    /* the script cache was flushed (or Redis restarted): the next step,
     * a period later, sends the source, which caches it again */
    ngx_http_opamp_rollout_noscript = ngx_http_opamp_store_is_noscript(reply);

    if (ngx_http_opamp_rollout_noscript) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "opamp: staged rollout step: the script is not "
                      "cached in redis, sent with the next step");

    } else if (reply && reply->type == REDIS_REPLY_INTEGER
               && reply->integer > 0)
    {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "opamp: %L staged rollout steps made",
                      (int64_t) reply->integer);

    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: staged rollout step failed: %*s",
                      (size_t) reply->len, reply->str);
    }

    ngx_http_opamp_rollout_arm();
}
