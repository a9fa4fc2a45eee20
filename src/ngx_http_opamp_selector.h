/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Group selectors, "k=v,k2=v2": the check of what an operator writes in
 * the admin API.  report.lua and check.lua parse them again in Redis
 * (src/lua/lib/owed_config.lua) to match agents.
 */

#ifndef _NGX_HTTP_OPAMP_SELECTOR_H_INCLUDED_
#define _NGX_HTTP_OPAMP_SELECTOR_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/*
 * NGX_OK when p..p+len is empty or key=value pairs joined by commas: no
 * empty pair, no empty key, no "=" in a key (a value may hold one), no
 * comma at the end; NGX_ERROR otherwise.
 */
ngx_int_t ngx_http_opamp_selector_check(u_char *p, size_t len);


#endif /* _NGX_HTTP_OPAMP_SELECTOR_H_INCLUDED_ */
