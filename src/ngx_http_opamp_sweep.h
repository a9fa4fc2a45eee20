/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Departed agents go (opamp_agent_retention): a timer in each worker
 * removes, a bounded batch per step, the agents that have not been seen
 * for the retention time (src/lua/remove.lua).
 */

#ifndef _NGX_HTTP_OPAMP_SWEEP_H_INCLUDED_
#define _NGX_HTTP_OPAMP_SWEEP_H_INCLUDED_


#include "ngx_http_opamp.h"


/* opamp_agent_retention time | off */
char *ngx_http_opamp_sweep_retention(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

ngx_int_t ngx_http_opamp_sweep_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf);
void ngx_http_opamp_sweep_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_OPAMP_SWEEP_H_INCLUDED_ */
