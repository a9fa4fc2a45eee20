/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What the files of an agent's OpAMP session share, inside the module
 * only: the live WebSocket sessions of this worker
 * (ngx_http_opamp_session.c), what a ServerToAgent carries beyond the
 * reply itself (ngx_http_opamp_session_offers.c), and the config checks
 * that push it to connected agents (ngx_http_opamp_session_check.c).
 */

#ifndef _NGX_HTTP_OPAMP_SESSION_INTERNAL_H_INCLUDED_
#define _NGX_HTTP_OPAMP_SESSION_INTERNAL_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_store.h"


#define NGX_HTTP_OPAMP_SERVER_CAPABILITIES                                   \
    (NGX_HTTP_OPAMP_SCAP_ACCEPTS_STATUS                                      \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_REMOTE_CONFIG                              \
     | NGX_HTTP_OPAMP_SCAP_ACCEPTS_EFFECTIVE_CONFIG                          \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_PACKAGES                                    \
     | NGX_HTTP_OPAMP_SCAP_ACCEPTS_PACKAGES_STATUS                           \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_CONN_SETTINGS)


/* what one ServerToAgent carries beyond the reply itself: everything the
 * report script says the agent is owed, with what was unpacked for it */
typedef struct {
    Opamp__Proto__V1__AgentRemoteConfig          arc;
    u_char                                       config_hash[32];
    Opamp__Proto__V1__ServerToAgentCommand       cmd;
    Opamp__Proto__V1__CustomMessage              cm;
    Opamp__Proto__V1__ConnectionSettingsOffers   cso;
    Opamp__Proto__V1__OpAMPConnectionSettings    ocs;
    Opamp__Proto__V1__ConnectionSettingsOffers  *stored;
    Opamp__Proto__V1__PackagesAvailable         *packages;
    u_char                                       hash[20];
    /* the operator's headers with the agent's new token (token.c) */
    Opamp__Proto__V1__Headers                    headers;
    Opamp__Proto__V1__Header                     auth;
    Opamp__Proto__V1__Header                   **header_list;
    u_char                                       bearer[sizeof("Bearer ")
                                                        + 43];
} ngx_http_opamp_owed_t;


/*
 * A config check of many WebSocket agents of this worker in one script
 * call (after a group changed, all of the worker's agents): Redis does
 * the work of one call instead of one per agent.
 */
typedef struct {
    ngx_http_opamp_store_check_t   *request;
    ngx_uint_t                      n;
    ngx_uint_t                      size;
    ngx_http_opamp_session_t      **sessions;   /* NULL: gone meanwhile */
    ngx_http_opamp_check_agent_t   *agents;
    unsigned                        fanout:1;   /* a fleet change's */
} ngx_http_opamp_check_batch_t;


/* ngx_http_opamp_session.c: the live WebSocket sessions of this worker,
 * by conn_number and by instance uid */

extern ngx_rbtree_t  ngx_http_opamp_sessions;
extern ngx_rbtree_t  ngx_http_opamp_sessions_by_uid;

ngx_rbtree_key_t ngx_http_opamp_session_uid_key(u_char *uid);

/* ngx_http_opamp_session_offers.c */

ngx_int_t ngx_http_opamp_session_cs_hash(ngx_http_opamp_session_t *s,
    u_char *hex);
ngx_int_t ngx_http_opamp_session_owed(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o);
void ngx_http_opamp_session_free_owed(ngx_http_opamp_owed_t *o);
ngx_int_t ngx_http_opamp_session_config_message(redisReply *files,
    ngx_str_t *hash, ngx_http_opamp_owed_t *o,
    Opamp__Proto__V1__ServerToAgent *s2a, ngx_str_t *out, ngx_log_t *log);

/* ngx_http_opamp_session.c */

void ngx_http_opamp_session_sent(ngx_http_opamp_session_t *s,
    Opamp__Proto__V1__ServerToAgent *s2a);

/* ngx_http_opamp_session_settled.c: heartbeats answered in the worker */

ngx_uint_t ngx_http_opamp_session_settled_answer(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep);
ngx_uint_t ngx_http_opamp_session_settled_mark(void);
void ngx_http_opamp_session_settled_learn(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, ngx_uint_t epoch);
void ngx_http_opamp_session_settled_forget(ngx_http_opamp_session_t *s);
/* a message on the worker's or the fleet's channel */
void ngx_http_opamp_session_settled_changed(void);

/* ngx_http_opamp_session_check.c */

void ngx_http_opamp_session_check(ngx_http_opamp_session_t *s,
    ngx_uint_t force);
ngx_uint_t ngx_http_opamp_session_checkable(ngx_http_opamp_session_t *s);
/* a fleet change's checks: *b filled in batches of one location's
 * sessions, each batch sent when full; flush sends the last */
void ngx_http_opamp_session_check_add(ngx_http_opamp_check_batch_t **b,
    ngx_http_opamp_session_t *s);
void ngx_http_opamp_session_check_flush(ngx_http_opamp_check_batch_t **b);
void ngx_http_opamp_session_pubsub(ngx_str_t *channel, ngx_str_t *payload);


#endif /* _NGX_HTTP_OPAMP_SESSION_INTERNAL_H_INCLUDED_ */
