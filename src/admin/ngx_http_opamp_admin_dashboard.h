/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * opamp_dashboard (docs/dashboard.md): the fleet's web page, built into
 * the module (src/dashboard/), that reads the admin API and nothing else.
 */

#ifndef _NGX_HTTP_OPAMP_ADMIN_DASHBOARD_H_INCLUDED_
#define _NGX_HTTP_OPAMP_ADMIN_DASHBOARD_H_INCLUDED_


#include "ngx_http_opamp.h"


char *ngx_http_opamp_dashboard_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


#endif /* _NGX_HTTP_OPAMP_ADMIN_DASHBOARD_H_INCLUDED_ */
