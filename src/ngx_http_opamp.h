/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Shared types of the OpAMP module: configuration and the constants of the
 * OpAMP protocol that every part of the module uses.
 */

#ifndef _NGX_HTTP_OPAMP_H_INCLUDED_
#define _NGX_HTTP_OPAMP_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_OPAMP_UID_LEN              16
/* canonical UUID text: 8-4-4-4-12 hex digits */
#define NGX_HTTP_OPAMP_UID_STR_LEN          36

/* ServerCapabilities implemented by this module */
#define NGX_HTTP_OPAMP_SCAP_ACCEPTS_STATUS            0x01
#define NGX_HTTP_OPAMP_SCAP_OFFERS_REMOTE_CONFIG      0x02
#define NGX_HTTP_OPAMP_SCAP_ACCEPTS_EFFECTIVE_CONFIG  0x04
#define NGX_HTTP_OPAMP_SCAP_OFFERS_PACKAGES           0x08
#define NGX_HTTP_OPAMP_SCAP_ACCEPTS_PACKAGES_STATUS   0x10
#define NGX_HTTP_OPAMP_SCAP_OFFERS_CONN_SETTINGS      0x20

/* AgentCapabilities the server looks at */
#define NGX_HTTP_OPAMP_ACAP_ACCEPTS_REMOTE_CONFIG     0x02
#define NGX_HTTP_OPAMP_ACAP_ACCEPTS_PACKAGES          0x08
#define NGX_HTTP_OPAMP_ACAP_REPORTS_OWN_TRACES        0x20
#define NGX_HTTP_OPAMP_ACAP_REPORTS_OWN_METRICS       0x40
#define NGX_HTTP_OPAMP_ACAP_REPORTS_OWN_LOGS          0x80
#define NGX_HTTP_OPAMP_ACAP_ACCEPTS_OPAMP_SETTINGS    0x100
#define NGX_HTTP_OPAMP_ACAP_ACCEPTS_OTHER_SETTINGS    0x200
#define NGX_HTTP_OPAMP_ACAP_REPORTS_HEARTBEAT         0x2000

/* AgentToServerFlags */
#define NGX_HTTP_OPAMP_AFLAG_REQUEST_INSTANCE_UID     0x01

/* ServerToAgentFlags */
#define NGX_HTTP_OPAMP_SFLAG_REPORT_FULL_STATE        0x01
#define NGX_HTTP_OPAMP_SFLAG_REPORT_AVAILABLE_COMPONENTS 0x02

#define NGX_HTTP_OPAMP_TRANSPORT_HTTP       0
#define NGX_HTTP_OPAMP_TRANSPORT_WS         1


typedef struct {
    ngx_str_t                   host;        /* name or address, NUL-ended;
                                                empty when unix socket */
    ngx_int_t                   port;
    ngx_str_t                   unix_path;   /* null-terminated */
    ngx_str_t                   password;    /* may be empty */
    ngx_str_t                   username;    /* Redis 6 ACL user, optional */
    ngx_int_t                   database;
    ngx_str_t                   url;         /* as configured, for logs */
    ngx_addr_t                 *addrs;       /* resolved at configuration
                                                time, when no resolver */
    ngx_uint_t                  naddrs;
    ngx_array_t                *sentinels;   /* of ngx_http_opamp_redis_url_t;
                                                NULL: not sentinel:// */
    ngx_str_t                   master_name; /* the Sentinel master name */
    unsigned                    ssl:1;       /* rediss:// */
    unsigned                    name:1;      /* host is not an address */
} ngx_http_opamp_redis_url_t;


typedef struct {
    ngx_flag_t                  configured;  /* opamp_redis seen */
    ngx_http_opamp_redis_url_t  redis;
    ngx_str_t                   prefix;      /* key namespace, "opamp:" */
    ngx_msec_t                  redis_timeout;
    ngx_str_t                   server_id;   /* hostname, in the channel */
    ngx_flag_t                  used;        /* some location has opamp */
    ngx_msec_t                  agent_retention;    /* 0: off */
    ngx_msec_t                  heartbeat_batch_delay;  /* 0: the turn */
    ngx_msec_t                  max_agent_timeout;  /* of the opamp
                                                       locations */
    size_t                      max_message_largest;  /* of the opamp */
    size_t                      max_state_largest;    /* locations */

    /* Sentinel, resolver, TLS and WAIT: ngx_http_opamp_redis*.c */
    ngx_str_t                   sentinel_username;
    ngx_str_t                   sentinel_password;
    ngx_resolver_t             *resolver;    /* NULL: none configured */
    ngx_msec_t                  resolver_timeout;
    ngx_int_t                   wait_replicas;  /* 0: no WAIT */
    ngx_msec_t                  wait_timeout;
    size_t                      redis_max_reply;  /* unset: derived */

    /* the admin API's history and audit log: src/admin/ */
    ngx_uint_t                  config_versions;
    ngx_uint_t                  audit_entries;

    ngx_flag_t                  ssl;
    ngx_flag_t                  ssl_verify;
    ngx_uint_t                  ssl_verify_depth;
    ngx_uint_t                  ssl_protocols;
    ngx_str_t                   ssl_ciphers;
    ngx_str_t                   ssl_trusted_certificate;
    ngx_str_t                   ssl_certificate;
    ngx_str_t                   ssl_certificate_key;
    ngx_str_t                   ssl_name;
    ngx_flag_t                  ssl_server_name;
#if (NGX_SSL)
    ngx_ssl_t                  *ssl_ctx;
#endif
} ngx_http_opamp_main_conf_t;


typedef struct {
    ngx_flag_t                  enable;
    size_t                      max_message_size;
    size_t                      max_agent_state;
    size_t                      custom_messages_size;
    time_t                      heartbeat_interval;
    ngx_msec_t                  agent_timeout;
    ngx_msec_t                  heartbeat_recheck;  /* 0: every heartbeat
                                                       goes to Redis */
    ngx_msec_t                  send_timeout;
    size_t                      send_queue_limit;
    size_t                      gzip_min_length;
    ngx_array_t                *custom_capabilities;  /* of char *;
                                                         NULL: none */
    ngx_http_complex_value_t   *admin_author;  /* NULL: none */

    /* who the agent is by what nginx verified: ngx_http_opamp_identity.c */
    ngx_http_complex_value_t   *identity;      /* NULL: none */
    ngx_uint_t                  identity_conflict;
    ngx_array_t                *server_attributes;  /* of ngx_http_opamp_
                                                       server_attr_t; NULL:
                                                       none */

    /* per-agent tokens: ngx_http_opamp_token.c */
    ngx_http_complex_value_t   *enrollment_token;  /* NULL: none */
    ngx_flag_t                  token_reenroll;

    ngx_str_t                   dashboard_api;      /* opamp_dashboard: */
    ngx_str_t                   dashboard_metrics;  /* the page's paths, */
    ngx_str_t                   dashboard_etag;     /* its ETag */
} ngx_http_opamp_loc_conf_t;


extern ngx_module_t  ngx_http_opamp_module;

/*
 * What ev->data of the module's own timers and posted events points at:
 * nginx's debug lines for timers read ev->data as a connection (its fd),
 * so an event that belongs to no connection names this one, whose fd is
 * -1, as nginx's cache manager does with its own events.
 */
extern ngx_connection_t  ngx_http_opamp_event_connection;

#define ngx_http_opamp_event_init(ev, h, lg)                                 \
    (ev)->data = &ngx_http_opamp_event_connection;                           \
    (ev)->handler = (h);                                                     \
    (ev)->log = (lg)


#if (NGX_HTTP_OPAMP_FAULTS)
/* test builds only: whether the failure point is named in the environment
 * variable OPAMP_FAULTS (passed to workers with "env OPAMP_FAULTS;") */
ngx_uint_t ngx_http_opamp_fault(const char *point);
#endif


#endif /* _NGX_HTTP_OPAMP_H_INCLUDED_ */
