/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * opamp_redis_wait: the replicas' acknowledgement of a write of operator
 * data, for the admin API.  Included by ngx_http_opamp_redis.h.
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_WAIT_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_WAIT_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"


/*
 * After a write of operator data, with opamp_redis_wait: copies the
 * write's reply to *written and sends WAIT with the handler (NGX_AGAIN,
 * *cmd set), or NGX_DECLINED when no wait is configured, or NGX_ERROR.
 */
ngx_int_t ngx_http_opamp_redis_wait_send(redisReply *reply,
    redisReply **written, ngx_http_opamp_redis_handler_pt handler,
    void *data, ngx_http_opamp_redis_cmd_t **cmd);

/* the WAIT answer: NGX_OK, or the HTTP status to answer with *reason */
ngx_int_t ngx_http_opamp_redis_wait_check(redisReply *reply,
    ngx_pool_t *pool, const char **reason);


#endif /* _NGX_HTTP_OPAMP_REDIS_WAIT_H_INCLUDED_ */
