/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Variables for log_format: which agent a request of an OpAMP location
 * was, and what its reply carried (docs/directives.md, "Variables").
 */

#ifndef _NGX_HTTP_OPAMP_VARIABLES_H_INCLUDED_
#define _NGX_HTTP_OPAMP_VARIABLES_H_INCLUDED_


#include "ngx_http_opamp.h"


ngx_int_t ngx_http_opamp_variables_add(ngx_conf_t *cf);


#endif /* _NGX_HTTP_OPAMP_VARIABLES_H_INCLUDED_ */
