/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Behind "opamp_redis sentinel://...": the Sentinel link asks for the
 * primary's address (SENTINEL GET-MASTER-ADDR-BY-NAME) and follows
 * +switch-master; each link to a primary checks with ROLE that the
 * server it reached is still the primary.
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_SENTINEL_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_SENTINEL_H_INCLUDED_


#include "ngx_http_opamp_redis_link.h"


/* handshake replies: ROLE on a link to the primary, the primary's address
 * on the Sentinel link */
void ngx_http_opamp_redis_role_reply(redisReply *reply, void *data);
void ngx_http_opamp_redis_master_reply(redisReply *reply, void *data);

/* a +switch-master message on the Sentinel link */
void ngx_http_opamp_redis_switch_master(ngx_str_t *payload);

/* asks the Sentinels again for the primary */
void ngx_http_opamp_redis_sentinel_ask(void);


#endif /* _NGX_HTTP_OPAMP_REDIS_SENTINEL_H_INCLUDED_ */
