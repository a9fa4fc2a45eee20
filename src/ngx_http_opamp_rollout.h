/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Staged rollouts step on without a leader: a timer in every worker of
 * every host runs src/lua/rollout_tick.lua once a second, which stops a
 * rollout whose gates broke and moves one whose stage has soaked on to
 * the next stage; the script is atomic, so that steps made at once by
 * several workers are one step.
 */

#ifndef _NGX_HTTP_OPAMP_ROLLOUT_H_INCLUDED_
#define _NGX_HTTP_OPAMP_ROLLOUT_H_INCLUDED_


#include "ngx_http_opamp.h"


ngx_int_t ngx_http_opamp_rollout_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf);
void ngx_http_opamp_rollout_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_OPAMP_ROLLOUT_H_INCLUDED_ */
