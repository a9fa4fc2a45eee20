/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * A fleet change decided by each worker for the WebSocket agents it
 * holds: what the worker keeps of each agent that takes remote config
 * (its view: the config it is owed and was offered, what it reported,
 * its attributes), one Redis call per change to learn what changed, the
 * frames sent from the worker's memory, and what was decided written to
 * Redis in bulk afterwards (src/lua/fanout.lua, src/lua/offered.lua).
 * Agents the worker cannot vouch for are checked by Redis as before
 * (src/lua/check.lua).
 */

#ifndef _NGX_HTTP_OPAMP_FANOUT_H_INCLUDED_
#define _NGX_HTTP_OPAMP_FANOUT_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_redis.h"


/* one attribute as a selector sees it (lib/attributes.lua) */
typedef struct {
    ngx_str_t                       key;
    ngx_str_t                       value;
} ngx_http_opamp_attr_t;

/* an agent's attributes, sorted by key, one value a key; one allocation
 * with the bytes after the array */
typedef struct {
    ngx_uint_t                      n;
    ngx_http_opamp_attr_t           attr[1];
} ngx_http_opamp_attrs_t;


struct ngx_http_opamp_view_s {
    uint64_t                        version;     /* config_version of the
                                                    fields below */
    uint64_t                        offered_ms;
    ngx_http_opamp_attrs_t         *attrs;       /* NULL: not known */
    u_char                         *desired;     /* desired_config */
    size_t                          desired_len;
    u_char                          desired_hash[32];
    u_char                          offered_hash[32];
    u_char                          reported_hash[32];
    u_char                          failed_hash[32];  /* reported FAILED,
                                                         not offered again */
    unsigned                        known:1;     /* the fields are usable */
    unsigned                        has_desired_hash:1;
    unsigned                        has_offered_hash:1;
    unsigned                        has_failed_hash:1;
    unsigned                        reported:2;  /* 0 none, 1 a SHA-256,
                                                    2 something else */
};


/* the attributes of a description as lib/attributes.lua reads them,
 * the server-set ones of id (NULL: none) winning over the agent's;
 * NULL on failure or when it has none */
ngx_http_opamp_attrs_t *ngx_http_opamp_fanout_attributes(
    Opamp__Proto__V1__AgentDescription *d, ngx_http_opamp_identity_t *id,
    ngx_log_t *log);

/*
 * What a script answered of a WebSocket agent's config fields (e:
 * NGX_HTTP_OPAMP_VIEW_FIELDS elements, config_version to failed_hash;
 * NULL: nothing new), and its
 * attributes when the message carried a description (taken over, or
 * freed).  An agent that takes no remote config has no view.
 */
void ngx_http_opamp_fanout_learn(ngx_http_opamp_session_t *s,
    redisReply **e, ngx_http_opamp_attrs_t *attrs);

/* the session goes: its view with it */
void ngx_http_opamp_fanout_forget(ngx_http_opamp_session_t *s);

/* "config" on the fleet channel: a config, group or fleet offer changed */
void ngx_http_opamp_fanout_change(void);

/* one agent's decision, written with others by the next offered.lua
 * call (src/ngx_http_opamp_fanout_offered.c); flush: that call now */
void ngx_http_opamp_fanout_note(ngx_http_opamp_session_t *s,
    uint64_t version, uint64_t safe_from, const char *what);
void ngx_http_opamp_fanout_flush(void);

/* the time a fleet change takes to reach this worker's agents
 * (opamp_config_fanout_seconds): a part of it starts and ends */
void ngx_http_opamp_fanout_begin(void);
void ngx_http_opamp_fanout_end(void);


#endif /* _NGX_HTTP_OPAMP_FANOUT_H_INCLUDED_ */
