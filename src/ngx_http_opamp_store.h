/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Agent state in Redis: the Lua scripts of src/lua/ and the one round trip
 * per AgentToServer that persists a status report and returns what the
 * server owes the agent.  The key layout is docs/redis-schema.md.
 */

#ifndef _NGX_HTTP_OPAMP_STORE_H_INCLUDED_
#define _NGX_HTTP_OPAMP_STORE_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"


/* the status fields of AgentToServer kept in the agent hash, in the order
 * of report.lua's ARGV (docs/redis-schema.md names them) */
typedef enum {
    NGX_HTTP_OPAMP_FIELD_DESCRIPTION = 0,
    NGX_HTTP_OPAMP_FIELD_HEALTH,
    NGX_HTTP_OPAMP_FIELD_EFFECTIVE_CONFIG,
    NGX_HTTP_OPAMP_FIELD_REMOTE_CONFIG_STATUS,
    NGX_HTTP_OPAMP_FIELD_PACKAGE_STATUSES,
    NGX_HTTP_OPAMP_FIELD_CUSTOM_CAPABILITIES,
    NGX_HTTP_OPAMP_FIELD_AVAILABLE_COMPONENTS,
    NGX_HTTP_OPAMP_FIELD_CONN_SETTINGS_STATUS,
    NGX_HTTP_OPAMP_FIELD_COUNT
} ngx_http_opamp_field_e;


/* what the report script concluded about the connection */
/*
 * The layout version of the agent hash (its "schema" field, see
 * docs/redis-schema.md); part of the mark of a settled agent, so that
 * agents settled under an older layout take the long way once, which
 * moves them to this one.  report.lua says the same.
 */
#define NGX_HTTP_OPAMP_SCHEMA  "3"


#define NGX_HTTP_OPAMP_VERDICT_OK         0
#define NGX_HTTP_OPAMP_VERDICT_TAKEOVER   1   /* reconnect: old conn stale */
#define NGX_HTTP_OPAMP_VERDICT_DUPLICATE  2   /* uid held by a live peer */
#define NGX_HTTP_OPAMP_VERDICT_TOO_LARGE  3   /* over opamp_max_agent_state:
                                                 nothing stored */
#define NGX_HTTP_OPAMP_VERDICT_IDENTITY   4   /* the uid is bound to another
                                                 identity: nothing stored */
#define NGX_HTTP_OPAMP_VERDICT_TOKEN      5   /* the credential is refused:
                                                 nothing stored; why in
                                                 holder_channel */


typedef struct {
    /* in */
    u_char              uid[NGX_HTTP_OPAMP_UID_LEN];
    uint64_t            sequence_num;
    uint64_t            capabilities;
    ngx_str_t           fields[NGX_HTTP_OPAMP_FIELD_COUNT]; /* data NULL:
                                                               omitted */
    uint64_t            conn_number;     /* names the connection */
    uint64_t            prev_sequence_num;  /* with vouched: what Redis
                                               holds, the worker having
                                               answered the ones between
                                               (opamp_heartbeat_recheck) */
    ngx_uint_t          transport;
    ngx_msec_t          agent_timeout;
    size_t              max_state;           /* opamp_max_agent_state */
    size_t              custom_size;     /* opamp_custom_messages_size */
    ngx_str_t           conn_settings_hash;  /* hex; empty: no offer */
    unsigned            first_message:1;     /* first on this connection */
    unsigned            disconnect:1;
    unsigned            healthy:2;           /* 0 no, 1 yes, 2 unknown */
    unsigned            force_config:1;      /* send it even if offered */
    unsigned            vouched:1;           /* prev_sequence_num set */
    unsigned            lease_only:1;        /* with vouched: the worker
                                                knows the agent settled,
                                                Redis only checks that it
                                                still is and renews its
                                                lease (beats.lua "L") */
    ngx_str_t           config_status;       /* empty: not reported */
    ngx_str_t           config_error;
    ngx_str_t           config_hash;         /* hex */
    ngx_str_t           custom_capabilities; /* "+" and names, one per
                                                line; empty: not reported */
    ngx_str_t           message_capability;  /* custom_message; empty:
                                                none */
    ngx_str_t           message_type;
    ngx_str_t           message_data;
    ngx_str_t           packages_hash;       /* "+" and the reported
                                                server_provided_all_packages_
                                                hash in hex; empty: no
                                                package_statuses */
    ngx_str_t           conn_settings_status; /* connection_settings_status
                                                 reported: its status name,
                                                 a space and the hash in
                                                 hex; empty: not reported */
    ngx_str_t           identity;        /* opamp_agent_identity; empty:
                                            none */
    ngx_str_t           server_attributes;  /* opamp_agent_attribute, an
                                               AgentDescription (protobuf);
                                               empty: none */
    ngx_str_t           identity_mark;   /* both digested, hex, for the
                                            beat mark; empty: neither */
    ngx_str_t           token_presented; /* report.lua's ARGV[42]; empty:
                                            no opamp_enrollment_token */
    ngx_str_t           token_mint;      /* the SHA-256 of token, hex, in
                                            token_digest; empty: none */
    u_char              token[43];       /* NGX_HTTP_OPAMP_TOKEN_LEN */
    u_char              token_digest[64];

    /* out, valid in the handler when rc == NGX_OK */
    unsigned            full_state:1;
    unsigned            settled:1;       /* beats.lua's short way took it */
    uint64_t            settled_until;   /* with settled: an offer is due
                                            again then (Unix ms); 0: none */
    unsigned            offer_conn_settings:1;
    ngx_uint_t          verdict;
    ngx_str_t           holder_channel;  /* DUPLICATE / TAKEOVER: where the
                                            other connection lives */
    ngx_str_t           holder_conn;

    /* the config the agent is owed: its hash (hex) and the fields of its
     * config hash in Redis (file:<name>, type:<name>, ...); valid only
     * during the handler call; owed_config is NULL when nothing is owed */
    ngx_str_t           owed_config_hash;
    redisReply         *owed_config;

    /* also valid only during the handler call */
    unsigned            report_components:1;  /* ask for
                                                 available_components */
    ngx_str_t           command;          /* "restart", or empty */
    redisReply         *owed_message;     /* { capability, type, data } */
    ngx_str_t           settings_extra;   /* stored ConnectionSettingsOffers
                                             to merge into the offer */
    ngx_str_t           settings_hash;    /* the offer's hash, hex */
    ngx_str_t           packages;         /* PackagesAvailable, protobuf */

    /* a WebSocket agent's config fields as stored now
     * (NGX_HTTP_OPAMP_VIEW_FIELDS elements: config_version to
     * failed_hash), or NULL; valid during the handler call only.  A check
     * calls its handler with it alone. */
    redisReply         *config_view;
} ngx_http_opamp_report_t;


/* the config fields of an agent that report.lua and check.lua answer
 * (config_fields of src/lua/lib/owed_config.lua) */
#define NGX_HTTP_OPAMP_VIEW_FIELDS  7


/* rc is NGX_OK, or NGX_ERROR when Redis did not answer or failed */
typedef void (*ngx_http_opamp_store_handler_pt)(
    ngx_http_opamp_report_t *rep, ngx_int_t rc, void *data);


ngx_int_t ngx_http_opamp_store_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf);

typedef struct ngx_http_opamp_store_req_s  ngx_http_opamp_store_req_t;


/*
 * Persists rep with one Redis round trip.  rep and the field bytes it
 * points to must stay valid until the handler runs or the request is
 * cancelled.  Returns NULL when Redis cannot be reached now (the handler
 * is then not called).
 */
ngx_http_opamp_store_req_t *ngx_http_opamp_store_report(
    ngx_http_opamp_report_t *rep, ngx_http_opamp_store_handler_pt handler,
    void *data);

/* the handler will not be called and rep is no longer used */
void ngx_http_opamp_store_cancel(ngx_http_opamp_store_req_t *req);

/* one connected WebSocket agent of a config check */
typedef struct {
    u_char              uid[NGX_HTTP_OPAMP_UID_LEN];
    uint64_t            conn_number;
} ngx_http_opamp_check_agent_t;

typedef struct ngx_http_opamp_store_check_s  ngx_http_opamp_store_check_t;

/*
 * Called for each agent i of a check that is owed something (rep valid
 * during the call only), then once more with rep NULL and i the number
 * of agents: the check is over (rc NGX_ERROR when Redis failed).
 */
typedef void (*ngx_http_opamp_store_check_pt)(ngx_uint_t i,
    ngx_http_opamp_report_t *rep, ngx_int_t rc, void *data);

/*
 * A config, group, offer or command changed: asks Redis, in one round
 * trip, what each of n connected WebSocket agents is owed now, and marks
 * it offered.  agents must stay valid until the last handler call.
 * cs_hash: the module's own connection settings hash (40 hex digits), as
 * in a report.  Returns NULL when Redis cannot be reached now.
 */
ngx_http_opamp_store_check_t *ngx_http_opamp_store_check(
    ngx_http_opamp_check_agent_t *agents, ngx_uint_t n,
    ngx_msec_t agent_timeout, u_char *cs_hash, ngx_uint_t force,
    ngx_http_opamp_store_check_pt handler, void *data);

/* marks the agent disconnected if connection conn_number still holds it,
 * storing last_seq when has_seq (heartbeats the worker answered itself);
 * fire and forget */
void ngx_http_opamp_store_disconnect(u_char *uid, uint64_t conn_number,
    ngx_uint_t has_seq, uint64_t last_seq);

/* a message that may take the short way: a heartbeat with nothing in it
 * but its sequence */
ngx_uint_t ngx_http_opamp_store_is_beat(ngx_http_opamp_report_t *rep);

/* fills rep's out fields with the answer of the short way: in sequence,
 * owed nothing */
void ngx_http_opamp_store_owed_nothing(ngx_http_opamp_report_t *rep);

/* renews the lease of a live WebSocket agent; fire and forget */
void ngx_http_opamp_store_touch(u_char *uid, uint64_t conn_number,
    ngx_msec_t agent_timeout);

/* "<prefix>config:agent:{<uuid>}" into buf (at least prefix + 64) */
u_char *ngx_http_opamp_store_config_key(u_char *buf, u_char *uid);
u_char *ngx_http_opamp_store_status_key(u_char *buf, u_char *uid);

/* formats "<server_id>:<pid>:<n>" into buf (NGX_HTTP_OPAMP_CONN_ID_LEN),
 * returns the end */
u_char *ngx_http_opamp_store_conn_id(u_char *buf, uint64_t conn_number);

#define NGX_HTTP_OPAMP_CONN_ID_LEN  (256 + 2 * NGX_INT64_LEN + 2)

/* publishes payload on a worker channel; fire and forget */
void ngx_http_opamp_store_publish(ngx_str_t *channel, ngx_str_t *payload);

/* the embedded Lua scripts (src/lua/NAME.lua), see ngx_http_opamp_store.c */
enum {
    NGX_HTTP_OPAMP_SCRIPT_REPORT = 0,
    NGX_HTTP_OPAMP_SCRIPT_CHECK,
    NGX_HTTP_OPAMP_SCRIPT_BEATS,
    NGX_HTTP_OPAMP_SCRIPT_DISCONNECT,
    NGX_HTTP_OPAMP_SCRIPT_TOUCH,
    NGX_HTTP_OPAMP_SCRIPT_ADMIN_LIST,
    NGX_HTTP_OPAMP_SCRIPT_ADMIN_GROUPS,
    NGX_HTTP_OPAMP_SCRIPT_ADMIN_CONFIG_SET,
    NGX_HTTP_OPAMP_SCRIPT_ADMIN_DELETE,
    NGX_HTTP_OPAMP_SCRIPT_ADMIN_PUSH,
    NGX_HTTP_OPAMP_SCRIPT_ADMIN_AGENT,
    NGX_HTTP_OPAMP_SCRIPT_REMOVE,
    NGX_HTTP_OPAMP_SCRIPT_FLEET,
    NGX_HTTP_OPAMP_SCRIPT_FANOUT,
    NGX_HTTP_OPAMP_SCRIPT_OFFERED,
    NGX_HTTP_OPAMP_SCRIPT_ROLLOUT_TICK,
    NGX_HTTP_OPAMP_SCRIPT_COUNT
};

/* runs an embedded script with EVAL; argv holds the nkeys keys, then the
 * arguments; see ngx_http_opamp_redis_command() for the rest */
ngx_http_opamp_redis_cmd_t *ngx_http_opamp_store_eval(ngx_uint_t script,
    ngx_uint_t nkeys, int argc, const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data);

/* the same with EVALSHA: a NOSCRIPT answer goes to the handler, which
 * tells it with ngx_http_opamp_store_is_noscript() */
ngx_http_opamp_redis_cmd_t *ngx_http_opamp_store_evalsha(ngx_uint_t script,
    ngx_uint_t nkeys, int argc, const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data);
ngx_uint_t ngx_http_opamp_store_is_noscript(redisReply *reply);

/* "<prefix>agent:{<uuid>}" into buf (at least prefix + 64 bytes) */
u_char *ngx_http_opamp_store_agent_key(u_char *buf, u_char *uid);


#endif /* _NGX_HTTP_OPAMP_STORE_H_INCLUDED_ */
