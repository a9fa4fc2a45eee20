/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API (docs/admin-api.md): a JSON handler for an `opamp_admin`
 * location, for operators and control planes to see the fleet and tell it
 * what to run.  Everything goes through the same Redis the agents' state
 * lives in, so any worker of any host answers the same.
 */

#ifndef _NGX_HTTP_OPAMP_ADMIN_H_INCLUDED_
#define _NGX_HTTP_OPAMP_ADMIN_H_INCLUDED_


#include "ngx_http_opamp.h"


ngx_int_t ngx_http_opamp_admin_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_OPAMP_ADMIN_H_INCLUDED_ */
