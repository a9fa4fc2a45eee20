/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Each nginx host's own figures in Redis, for the admin API's GET hosts
 * and the dashboard: one worker of the host (worker 0) writes what the
 * metrics endpoint knows of the whole host into <prefix>host:<server_id>
 * every few seconds, with an expiry, and the host's name into
 * <prefix>hosts (src/lua/host.lua, docs/redis-schema.md).
 */

#ifndef _NGX_HTTP_OPAMP_HOST_H_INCLUDED_
#define _NGX_HTTP_OPAMP_HOST_H_INCLUDED_


#include "ngx_http_opamp.h"


/* the period of a host's publish, the life of its record, how long a host
 * no longer heard of stays listed (as stale), and how many are listed */
#define NGX_HTTP_OPAMP_HOST_PERIOD    5000
#define NGX_HTTP_OPAMP_HOST_TTL       (3 * NGX_HTTP_OPAMP_HOST_PERIOD)
#define NGX_HTTP_OPAMP_HOST_FORGET    3600000
#define NGX_HTTP_OPAMP_HOST_MAX       128


ngx_int_t ngx_http_opamp_host_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf);
void ngx_http_opamp_host_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_OPAMP_HOST_H_INCLUDED_ */
