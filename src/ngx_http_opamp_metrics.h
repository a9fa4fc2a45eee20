/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The server's own figures: counters and histograms in one shared memory
 * zone, summed over the workers without a lock (atomic adds), and their
 * Prometheus text exposition (the opamp_metrics location handler).
 * docs/metrics.md names every family.
 */

#ifndef _NGX_HTTP_OPAMP_METRICS_H_INCLUDED_
#define _NGX_HTTP_OPAMP_METRICS_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_proto.h"


/* label values of the labelled families, in the order of their slots */

typedef enum {
    NGX_HTTP_OPAMP_M_HTTP = 0,
    NGX_HTTP_OPAMP_M_WEBSOCKET,
    NGX_HTTP_OPAMP_M_NTRANSPORTS
} ngx_http_opamp_metrics_transport_e;

typedef enum {
    NGX_HTTP_OPAMP_M_REFUSED_DECODE = 0,   /* not a valid message */
    NGX_HTTP_OPAMP_M_REFUSED_LIMIT,        /* over a size or count limit */
    NGX_HTTP_OPAMP_M_REFUSED_PROTOCOL,     /* framing, handshake, uid */
    NGX_HTTP_OPAMP_M_REFUSED_UNAVAILABLE,  /* Redis away */
    NGX_HTTP_OPAMP_M_NREFUSED
} ngx_http_opamp_metrics_refused_e;

typedef enum {
    NGX_HTTP_OPAMP_M_CARRIES_REMOTE_CONFIG = 0,
    NGX_HTTP_OPAMP_M_CARRIES_CONNECTION_SETTINGS,
    NGX_HTTP_OPAMP_M_CARRIES_PACKAGES,
    NGX_HTTP_OPAMP_M_CARRIES_COMMAND,
    NGX_HTTP_OPAMP_M_CARRIES_FLAGS,
    NGX_HTTP_OPAMP_M_CARRIES_ERROR,
    NGX_HTTP_OPAMP_M_CARRIES_IDENTIFICATION,
    NGX_HTTP_OPAMP_M_CARRIES_CUSTOM_MESSAGE,
    NGX_HTTP_OPAMP_M_NCARRIES
} ngx_http_opamp_metrics_carries_e;

typedef enum {
    NGX_HTTP_OPAMP_M_REDIS_COMMANDS = 0,
    NGX_HTTP_OPAMP_M_REDIS_ERRORS,         /* error replies */
    NGX_HTTP_OPAMP_M_REDIS_TIMEOUTS,
    NGX_HTTP_OPAMP_M_REDIS_RECONNECTS,     /* links up again after a loss */
    NGX_HTTP_OPAMP_M_REDIS_FAILOVERS,      /* a new primary followed */
    NGX_HTTP_OPAMP_M_REDIS_WAITING,        /* gauge: sent, not answered */
    NGX_HTTP_OPAMP_M_FANOUTS,              /* fleet config changes */
    NGX_HTTP_OPAMP_M_SWEPT,                /* departed agents removed */
    NGX_HTTP_OPAMP_M_WS_OPEN,              /* gauge */
    NGX_HTTP_OPAMP_M_WS_OPENED,
    NGX_HTTP_OPAMP_M_IDENTITY_CONFLICTS,   /* a uid claimed by another
                                              identity */
    NGX_HTTP_OPAMP_M_TOKEN_REFUSALS,       /* a credential refused */
    NGX_HTTP_OPAMP_M_BEATS_IN_WORKER,      /* heartbeats answered without
                                              Redis */
    NGX_HTTP_OPAMP_M_NSCALARS
} ngx_http_opamp_metrics_scalar_e;


/* one of this host's figures, for its record in Redis
 * (src/ngx_http_opamp_host.c) */
typedef struct {
    const char                 *name;
    uint64_t                    value;
} ngx_http_opamp_metrics_figure_t;

#define NGX_HTTP_OPAMP_METRICS_FIGURES  24


ngx_int_t ngx_http_opamp_metrics_init_conf(ngx_conf_t *cf);
ngx_uint_t ngx_http_opamp_metrics_figures(ngx_http_opamp_metrics_figure_t *f);
char *ngx_http_opamp_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_opamp_metrics_log_handler(ngx_http_request_t *r);

void ngx_http_opamp_metrics_add(ngx_uint_t scalar, ngx_atomic_int_t n);
void ngx_http_opamp_metrics_message(ngx_uint_t transport, size_t bytes);
ngx_uint_t ngx_http_opamp_metrics_parts(ngx_http_opamp_s2a_t *s2a);
const char *ngx_http_opamp_metrics_part_name(ngx_uint_t part);
void ngx_http_opamp_metrics_reply(ngx_uint_t transport, ngx_uint_t parts);
void ngx_http_opamp_metrics_refused(ngx_uint_t reason);
void ngx_http_opamp_metrics_error(ngx_uint_t unavailable,
    const char *reason);
void ngx_http_opamp_metrics_ws_closed(ngx_uint_t code);
void ngx_http_opamp_metrics_redis_latency(ngx_msec_t ms);
void ngx_http_opamp_metrics_fanout_time(ngx_msec_t ms);

#define ngx_http_opamp_metrics_inc(scalar)                                   \
    ngx_http_opamp_metrics_add(scalar, 1)


#endif /* _NGX_HTTP_OPAMP_METRICS_H_INCLUDED_ */
