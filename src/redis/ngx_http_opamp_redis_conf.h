/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The Redis configuration, read at configuration time: the opamp_redis
 * URL, the main configuration's Redis fields and the directives of the
 * Redis links.  Included by ngx_http_opamp_redis.h.
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_CONF_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_CONF_H_INCLUDED_


#include "ngx_http_opamp.h"


/* parses "redis://[[user]:password@]host[:port][/db]", "rediss://...",
 * "sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]",
 * "unix:/path[?db=N]" or "host:port" at configuration time */
char *ngx_http_opamp_redis_parse_url(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url);

/* the main configuration's Redis fields: unset, then defaults, resolver
 * and TLS context once the http block is read */
void ngx_http_opamp_redis_create_conf(ngx_http_opamp_main_conf_t *omcf);
char *ngx_http_opamp_redis_init_conf(ngx_conf_t *cf,
    ngx_http_opamp_main_conf_t *omcf);

/* opamp_redis_sentinel_auth [user] password */
char *ngx_http_opamp_redis_sentinel_auth(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* opamp_redis_max_reply: at least 64k */
extern ngx_conf_post_handler_pt  ngx_http_opamp_redis_max_reply_post;

/* opamp_redis_wait replicas timeout | off */
char *ngx_http_opamp_redis_wait(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


#endif /* _NGX_HTTP_OPAMP_REDIS_CONF_H_INCLUDED_ */
