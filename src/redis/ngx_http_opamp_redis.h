/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Per-worker Redis connections on nginx's event loop: one command
 * connection and one pub/sub connection (and one to a Sentinel behind
 * "sentinel://"), opened in init_process, reconnected with backoff and
 * jitter, closed in exit_process.  Plain TCP, unix sockets or TLS with
 * nginx's OpenSSL; hiredis parses the replies.  Nothing here ever blocks
 * the worker.
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_H_INCLUDED_


#include "ngx_http_opamp.h"
#include <hiredis/hiredis.h>
#include "ngx_http_opamp_redis_conf.h"


typedef struct ngx_http_opamp_redis_cmd_s  ngx_http_opamp_redis_cmd_t;

/*
 * Called once per command: reply is NULL when the command failed without
 * an answer (connection lost, command timed out, worker exiting).
 * A reply of type REDIS_REPLY_ERROR is passed through as is.  The reply is
 * owned by hiredis and valid only during the call.
 */
typedef void (*ngx_http_opamp_redis_handler_pt)(redisReply *reply,
    void *data);

/* Called for every message on the worker's subscribed channels. */
typedef void (*ngx_http_opamp_redis_message_pt)(ngx_str_t *channel,
    ngx_str_t *payload);

/* Called each time the command connection becomes ready (after AUTH and
 * SELECT), so that scripts can be loaded again. */
typedef void (*ngx_http_opamp_redis_ready_pt)(void);


ngx_int_t ngx_http_opamp_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf);
void ngx_http_opamp_redis_exit_process(ngx_cycle_t *cycle);

/* whether the command connection is up and ready for commands */
ngx_uint_t ngx_http_opamp_redis_ready(void);

/* how many times a connection became ready, of any link */
extern ngx_uint_t  ngx_http_opamp_redis_ups;

/*
 * Sends one command.  Returns NULL when Redis is not reachable right now
 * (the handler is then never called).  Otherwise the handler is called
 * exactly once, unless ngx_http_opamp_redis_cancel() was called first.
 * Each command is bounded by opamp_redis_timeout.
 */
ngx_http_opamp_redis_cmd_t *ngx_http_opamp_redis_command(int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data);

/* The handler of a command will not be called: its owner went away. */
void ngx_http_opamp_redis_cancel(ngx_http_opamp_redis_cmd_t *cmd);

/* The channel this worker is subscribed to, "<prefix>worker:<id>". */
ngx_str_t *ngx_http_opamp_redis_worker_channel(void);

/* The channel every worker is subscribed to, "<prefix>fleet". */
ngx_str_t *ngx_http_opamp_redis_fleet_channel(void);

void ngx_http_opamp_redis_set_message_handler(
    ngx_http_opamp_redis_message_pt handler);
void ngx_http_opamp_redis_set_ready_handler(
    ngx_http_opamp_redis_ready_pt handler);

#if (NGX_SSL)
extern ngx_conf_bitmask_t  ngx_http_opamp_redis_ssl_protocols[];
#endif

/* WAIT after writes of operator data: it uses the types above */
#include "ngx_http_opamp_redis_wait.h"


#endif /* _NGX_HTTP_OPAMP_REDIS_H_INCLUDED_ */
