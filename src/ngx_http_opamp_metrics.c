/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The server's own figures for Prometheus (docs/metrics.md): one shared
 * memory zone holds every counter of the nginx instance, and each worker
 * adds to it with an atomic add, so the per-message path takes no lock
 * and the figures are the sum over the workers.  The zone has a fixed
 * size and layout: a reload finds it again and the counters go on (as
 * stub_status's do); only a restart of nginx sets them back to 0.
 */


#include "ngx_http_opamp_metrics.h"


#define NGX_HTTP_OPAMP_METRICS_ZONE_SIZE    (64 * 1024)

/* the text of one scrape: about 14 KB; what would pass this is a bug */
#define NGX_HTTP_OPAMP_METRICS_OUT_SIZE     (48 * 1024)


/* WebSocket close codes counted by name; others are "other", and a
 * connection that ended without a close frame is "none" */
static ngx_uint_t  ngx_http_opamp_metrics_codes[] = {
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011
};

#define NGX_HTTP_OPAMP_M_NCODES                                              \
    (sizeof(ngx_http_opamp_metrics_codes) / sizeof(ngx_uint_t))
#define NGX_HTTP_OPAMP_M_CODE_NONE   NGX_HTTP_OPAMP_M_NCODES
#define NGX_HTTP_OPAMP_M_CODE_OTHER  (NGX_HTTP_OPAMP_M_NCODES + 1)

/* HTTP statuses of the OpAMP locations counted by number; others are
 * "other" (a bounded label whatever nginx answers) */
static ngx_uint_t  ngx_http_opamp_metrics_statuses[] = {
    101, 200, 204, 400, 401, 403, 404, 405, 408, 413, 415, 426, 429, 444,
    499, 500, 502, 503, 504
};

#define NGX_HTTP_OPAMP_M_NSTATUSES                                           \
    (sizeof(ngx_http_opamp_metrics_statuses) / sizeof(ngx_uint_t))

/* histogram bounds, ms */
static ngx_msec_t  ngx_http_opamp_metrics_redis_le[] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000
};

static ngx_msec_t  ngx_http_opamp_metrics_fanout_le[] = {
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000
};

#define NGX_HTTP_OPAMP_M_NLE  12


typedef struct {
    ngx_atomic_t    buckets[NGX_HTTP_OPAMP_M_NLE + 1];   /* not cumulative;
                                                            the last: +Inf */
    ngx_atomic_t    sum_ms;
} ngx_http_opamp_metrics_histogram_t;


typedef struct {
    ngx_atomic_t    scalars[NGX_HTTP_OPAMP_M_NSCALARS];
    ngx_atomic_t    messages[NGX_HTTP_OPAMP_M_NTRANSPORTS];
    ngx_atomic_t    message_bytes[NGX_HTTP_OPAMP_M_NTRANSPORTS];
    ngx_atomic_t    replies[NGX_HTTP_OPAMP_M_NTRANSPORTS];
    ngx_atomic_t    carries[NGX_HTTP_OPAMP_M_NCARRIES];
    ngx_atomic_t    refused[NGX_HTTP_OPAMP_M_NREFUSED];
    ngx_atomic_t    ws_closed[NGX_HTTP_OPAMP_M_NCODES + 2];
    ngx_atomic_t    http[2][NGX_HTTP_OPAMP_M_NSTATUSES + 1];
    ngx_http_opamp_metrics_histogram_t  redis_latency;
    ngx_http_opamp_metrics_histogram_t  fanout;
} ngx_http_opamp_metrics_t;


typedef struct {
    u_char         *pos;
    u_char         *last;
} ngx_http_opamp_metrics_out_t;


static ngx_int_t ngx_http_opamp_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_opamp_metrics_handler(ngx_http_request_t *r);
static void ngx_http_opamp_metrics_observe(
    ngx_http_opamp_metrics_histogram_t *h, ngx_msec_t *le, ngx_msec_t ms);
static void ngx_http_opamp_metrics_family(ngx_http_opamp_metrics_out_t *o,
    const char *name, const char *type, const char *help);
static void ngx_http_opamp_metrics_histogram(ngx_http_opamp_metrics_out_t *o,
    const char *name, ngx_http_opamp_metrics_histogram_t *h,
    ngx_msec_t *le);
static void ngx_http_opamp_metrics_write(ngx_http_opamp_metrics_out_t *o,
    ngx_http_opamp_metrics_t *m);
static void ngx_http_opamp_metrics_write_fleet(
    ngx_http_opamp_metrics_out_t *o, ngx_http_opamp_metrics_t *m);


/* set in the master when the zone is made (or found again on reload),
 * inherited by the workers; NULL where no OpAMP location exists */
static ngx_http_opamp_metrics_t  *ngx_http_opamp_metrics;

static ngx_str_t  ngx_http_opamp_metrics_zone_name =
    ngx_string("ngx_http_opamp_metrics");

static const char  *ngx_http_opamp_metrics_transports[] = {
    "http", "websocket"
};

static const char  *ngx_http_opamp_metrics_refusals[] = {
    "decode", "limit", "protocol", "unavailable"
};

static const char  *ngx_http_opamp_metrics_parts_names[] = {
    "remote_config", "connection_settings", "packages", "command", "flags",
    "error", "identification", "custom_message"
};


ngx_int_t
ngx_http_opamp_metrics_init_conf(ngx_conf_t *cf)
{
    ngx_shm_zone_t  *shm_zone;

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_opamp_metrics_zone_name,
                                     NGX_HTTP_OPAMP_METRICS_ZONE_SIZE,
                                     &ngx_http_opamp_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_opamp_metrics_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t  *shpool;

    if (data) {
        /* a reload: the counters go on */
        shm_zone->data = data;
        ngx_http_opamp_metrics = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        ngx_http_opamp_metrics = shpool->data;
        return NGX_OK;
    }

    ngx_http_opamp_metrics = ngx_slab_calloc(shpool,
                                             sizeof(ngx_http_opamp_metrics_t));
    if (ngx_http_opamp_metrics == NULL) {
        return NGX_ERROR;
    }

    shpool->data = ngx_http_opamp_metrics;
    shm_zone->data = ngx_http_opamp_metrics;

    return NGX_OK;
}


/* counting */

void
ngx_http_opamp_metrics_add(ngx_uint_t scalar, ngx_atomic_int_t n)
{
    if (ngx_http_opamp_metrics) {
        (void) ngx_atomic_fetch_add(&ngx_http_opamp_metrics->scalars[scalar],
                                    n);
    }
}


void
ngx_http_opamp_metrics_message(ngx_uint_t transport, size_t bytes)
{
    ngx_http_opamp_metrics_t  *m = ngx_http_opamp_metrics;

    if (m) {
        (void) ngx_atomic_fetch_add(&m->messages[transport], 1);
        (void) ngx_atomic_fetch_add(&m->message_bytes[transport],
                                    (ngx_atomic_int_t) bytes);
    }
}


/* what a ServerToAgent carries: a bit per ngx_http_opamp_metrics_carries_e */

ngx_uint_t
ngx_http_opamp_metrics_parts(ngx_http_opamp_s2a_t *s2a)
{
    ngx_uint_t  parts;

    parts = 0;

#define ngx_http_opamp_metrics_part(cond, part)                              \
    if (cond) {                                                              \
        parts |= (ngx_uint_t) 1 << NGX_HTTP_OPAMP_M_CARRIES_##part;          \
    }

    ngx_http_opamp_metrics_part(s2a->remote_config, REMOTE_CONFIG)
    ngx_http_opamp_metrics_part(s2a->connection_settings,
                                CONNECTION_SETTINGS)
    ngx_http_opamp_metrics_part(s2a->packages_available, PACKAGES)
    ngx_http_opamp_metrics_part(s2a->command, COMMAND)
    ngx_http_opamp_metrics_part(s2a->flags, FLAGS)
    ngx_http_opamp_metrics_part(s2a->error_response, ERROR)
    ngx_http_opamp_metrics_part(s2a->agent_identification, IDENTIFICATION)
    ngx_http_opamp_metrics_part(s2a->custom_message, CUSTOM_MESSAGE)

#undef ngx_http_opamp_metrics_part

    return parts;
}


/* the names of the parts, for the metrics' labels and $opamp_reply */

const char *
ngx_http_opamp_metrics_part_name(ngx_uint_t part)
{
    return ngx_http_opamp_metrics_parts_names[part];
}


void
ngx_http_opamp_metrics_reply(ngx_uint_t transport, ngx_uint_t parts)
{
    ngx_uint_t                 i;
    ngx_http_opamp_metrics_t  *m = ngx_http_opamp_metrics;

    if (m == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&m->replies[transport], 1);

    for (i = 0; i < NGX_HTTP_OPAMP_M_NCARRIES; i++) {
        if (parts & ((ngx_uint_t) 1 << i)) {
            (void) ngx_atomic_fetch_add(&m->carries[i], 1);
        }
    }
}


/*
 * An error answered to an agent's message, by what its reason says: the
 * reasons are the module's own texts (ngx_http_opamp_session.c), so a new
 * one that names none of these counts as a protocol error.
 */

void
ngx_http_opamp_metrics_error(ngx_uint_t unavailable, const char *reason)
{
    ngx_uint_t  why;

    if (unavailable) {
        why = NGX_HTTP_OPAMP_M_REFUSED_UNAVAILABLE;

    } else if (ngx_strstr(reason, "not a valid") != NULL) {
        why = NGX_HTTP_OPAMP_M_REFUSED_DECODE;

    } else if (ngx_strstr(reason, "exceed") != NULL
               || ngx_strstr(reason, "refused") != NULL
               || ngx_strstr(reason, "memory") != NULL
               || ngx_strstr(reason, "too ") != NULL
               || ngx_strstr(reason, "limit") != NULL)
    {
        why = NGX_HTTP_OPAMP_M_REFUSED_LIMIT;

    } else {
        why = NGX_HTTP_OPAMP_M_REFUSED_PROTOCOL;
    }

    ngx_http_opamp_metrics_refused(why);
}


void
ngx_http_opamp_metrics_refused(ngx_uint_t reason)
{
    if (ngx_http_opamp_metrics) {
        (void) ngx_atomic_fetch_add(&ngx_http_opamp_metrics->refused[reason],
                                    1);
    }
}


/* code 0: the connection ended without a close frame either way */

void
ngx_http_opamp_metrics_ws_closed(ngx_uint_t code)
{
    ngx_uint_t                 i;
    ngx_http_opamp_metrics_t  *m = ngx_http_opamp_metrics;

    if (m == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(
                      &m->scalars[NGX_HTTP_OPAMP_M_WS_OPEN], -1);

    if (code == 0) {
        i = NGX_HTTP_OPAMP_M_CODE_NONE;

    } else {
        for (i = 0; i < NGX_HTTP_OPAMP_M_NCODES; i++) {
            if (ngx_http_opamp_metrics_codes[i] == code) {
                break;
            }
        }

        if (i == NGX_HTTP_OPAMP_M_NCODES) {
            i = NGX_HTTP_OPAMP_M_CODE_OTHER;
        }
    }

    (void) ngx_atomic_fetch_add(&m->ws_closed[i], 1);
}


void
ngx_http_opamp_metrics_redis_latency(ngx_msec_t ms)
{
    if (ngx_http_opamp_metrics) {
        ngx_http_opamp_metrics_observe(
            &ngx_http_opamp_metrics->redis_latency,
            ngx_http_opamp_metrics_redis_le, ms);
    }
}


void
ngx_http_opamp_metrics_fanout_time(ngx_msec_t ms)
{
    if (ngx_http_opamp_metrics) {
        ngx_http_opamp_metrics_observe(&ngx_http_opamp_metrics->fanout,
                                       ngx_http_opamp_metrics_fanout_le, ms);
    }
}


static void
ngx_http_opamp_metrics_observe(ngx_http_opamp_metrics_histogram_t *h,
    ngx_msec_t *le, ngx_msec_t ms)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_OPAMP_M_NLE; i++) {
        if (ms <= le[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&h->buckets[i], 1);
    (void) ngx_atomic_fetch_add(&h->sum_ms, (ngx_atomic_int_t) ms);
}


/*
 * The log phase of every request: the responses of the OpAMP locations by
 * status, plain HTTP messages apart from WebSocket handshakes (a
 * handshake's request is logged when the 101 is out).
 */

ngx_int_t
ngx_http_opamp_metrics_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                  i, kind, status;
    ngx_http_opamp_loc_conf_t  *olcf;

    if (ngx_http_opamp_metrics == NULL) {
        return NGX_OK;
    }

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);

    if (olcf == NULL || !olcf->enable) {
        return NGX_OK;
    }

    kind = (r->method == NGX_HTTP_GET) ? 1 : 0;
    status = r->err_status ? r->err_status : r->headers_out.status;

    for (i = 0; i < NGX_HTTP_OPAMP_M_NSTATUSES; i++) {
        if (ngx_http_opamp_metrics_statuses[i] == status) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&ngx_http_opamp_metrics->http[kind][i], 1);

    return NGX_OK;
}


/* the location handler */

char *
ngx_http_opamp_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_opamp_main_conf_t  *omcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate, or the location has another handler";
    }

    clcf->handler = ngx_http_opamp_metrics_handler;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_opamp_module);
    omcf->used = 1;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_opamp_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_buf_t                    *b;
    ngx_chain_t                   out;
    ngx_http_opamp_metrics_out_t  o;

    static ngx_str_t  type = ngx_string("text/plain; version=0.0.4; "
                                        "charset=utf-8");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "opamp: metrics: method %V, use GET", &r->method_name);
        return NGX_HTTP_NOT_ALLOWED;
    }

    /* the exposition has no parameters: a query string is a mistake that
     * would otherwise go unnoticed (a scrape config's params) */

    if (r->args.len) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "opamp: metrics: unexpected arguments \"%V\"",
                      &r->args);
        return NGX_HTTP_BAD_REQUEST;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_opamp_metrics == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, NGX_HTTP_OPAMP_METRICS_OUT_SIZE);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    o.pos = b->pos;
    o.last = b->end;

    ngx_http_opamp_metrics_write(&o, ngx_http_opamp_metrics);

    if (o.pos == o.last) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "opamp: metrics: the exposition does not fit in %uz "
                      "bytes", (size_t) NGX_HTTP_OPAMP_METRICS_OUT_SIZE);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = o.pos;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = type;
    r->headers_out.content_type_len = type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* exposition */

#define ngx_http_opamp_metrics_printf(o, ...)                                \
    (o)->pos = ngx_slprintf((o)->pos, (o)->last, __VA_ARGS__)


static void
ngx_http_opamp_metrics_family(ngx_http_opamp_metrics_out_t *o,
    const char *name, const char *type, const char *help)
{
    ngx_http_opamp_metrics_printf(o, "# HELP opamp_%s %s\n# TYPE opamp_%s %s\n",
                                  name, help, name, type);
}


static void
ngx_http_opamp_metrics_histogram(ngx_http_opamp_metrics_out_t *o,
    const char *name, ngx_http_opamp_metrics_histogram_t *h, ngx_msec_t *le)
{
    ngx_uint_t        i;
    ngx_atomic_int_t  n;

    n = 0;

    for (i = 0; i < NGX_HTTP_OPAMP_M_NLE; i++) {
        n += h->buckets[i];
        ngx_http_opamp_metrics_printf(o, "opamp_%s_bucket{le=\"%M.%03M\"} %A\n",
                                      name, le[i] / 1000, le[i] % 1000, n);
    }

    n += h->buckets[NGX_HTTP_OPAMP_M_NLE];

    ngx_http_opamp_metrics_printf(o, "opamp_%s_bucket{le=\"+Inf\"} %A\n"
                                  "opamp_%s_sum %A.%03A\n"
                                  "opamp_%s_count %A\n",
                                  name, n, name, h->sum_ms / 1000,
                                  h->sum_ms % 1000, name, n);
}


static void
ngx_http_opamp_metrics_write(ngx_http_opamp_metrics_out_t *o,
    ngx_http_opamp_metrics_t *m)
{
    ngx_uint_t     i, k;
    ngx_atomic_t  *s;

    static const char  *kinds[] = { "message", "upgrade" };

    s = m->scalars;

    ngx_http_opamp_metrics_family(o, "build_info", "gauge",
        "The module's build: nginx version and Redis schema version.");
    ngx_http_opamp_metrics_printf(o, "opamp_build_info{nginx_version=\"%s\","
                                  "schema=\"3\"} 1\n", NGINX_VERSION);

    ngx_http_opamp_metrics_family(o, "websocket_connections", "gauge",
        "WebSocket agent connections open now.");
    ngx_http_opamp_metrics_printf(o, "opamp_websocket_connections %A\n",
                                  s[NGX_HTTP_OPAMP_M_WS_OPEN]);

    ngx_http_opamp_metrics_family(o, "websocket_connections_opened_total",
        "counter", "WebSocket agent connections opened (handshake done).");
    ngx_http_opamp_metrics_printf(o,
                                  "opamp_websocket_connections_opened_total "
                                  "%A\n", s[NGX_HTTP_OPAMP_M_WS_OPENED]);

    ngx_http_opamp_metrics_family(o, "websocket_connections_closed_total",
        "counter", "WebSocket agent connections closed, by the close code "
        "sent or received first (none: no close frame).");

    for (i = 0; i < NGX_HTTP_OPAMP_M_NCODES; i++) {
        ngx_http_opamp_metrics_printf(o,
            "opamp_websocket_connections_closed_total{code=\"%ui\"} %A\n",
            ngx_http_opamp_metrics_codes[i], m->ws_closed[i]);
    }

    ngx_http_opamp_metrics_printf(o,
        "opamp_websocket_connections_closed_total{code=\"none\"} %A\n"
        "opamp_websocket_connections_closed_total{code=\"other\"} %A\n",
        m->ws_closed[NGX_HTTP_OPAMP_M_CODE_NONE],
        m->ws_closed[NGX_HTTP_OPAMP_M_CODE_OTHER]);

    ngx_http_opamp_metrics_family(o, "http_responses_total", "counter",
        "Responses of the OpAMP locations: plain HTTP messages (POST) and "
        "WebSocket handshakes (GET), by status.");

    for (k = 0; k < 2; k++) {
        for (i = 0; i < NGX_HTTP_OPAMP_M_NSTATUSES; i++) {
            ngx_http_opamp_metrics_printf(o,
                "opamp_http_responses_total{kind=\"%s\",code=\"%ui\"} %A\n",
                kinds[k], ngx_http_opamp_metrics_statuses[i], m->http[k][i]);
        }

        ngx_http_opamp_metrics_printf(o,
            "opamp_http_responses_total{kind=\"%s\",code=\"other\"} %A\n",
            kinds[k], m->http[k][NGX_HTTP_OPAMP_M_NSTATUSES]);
    }

    ngx_http_opamp_metrics_family(o, "agent_messages_total", "counter",
        "AgentToServer messages decoded, by transport.");

    for (i = 0; i < NGX_HTTP_OPAMP_M_NTRANSPORTS; i++) {
        ngx_http_opamp_metrics_printf(o,
            "opamp_agent_messages_total{transport=\"%s\"} %A\n",
            ngx_http_opamp_metrics_transports[i], m->messages[i]);
    }

    ngx_http_opamp_metrics_family(o, "agent_message_bytes_total", "counter",
        "Bytes of AgentToServer messages (after gunzip), by transport.");

    for (i = 0; i < NGX_HTTP_OPAMP_M_NTRANSPORTS; i++) {
        ngx_http_opamp_metrics_printf(o,
            "opamp_agent_message_bytes_total{transport=\"%s\"} %A\n",
            ngx_http_opamp_metrics_transports[i], m->message_bytes[i]);
    }

    ngx_http_opamp_metrics_family(o, "server_messages_total", "counter",
        "ServerToAgent messages sent, by transport.");

    for (i = 0; i < NGX_HTTP_OPAMP_M_NTRANSPORTS; i++) {
        ngx_http_opamp_metrics_printf(o,
            "opamp_server_messages_total{transport=\"%s\"} %A\n",
            ngx_http_opamp_metrics_transports[i], m->replies[i]);
    }

    ngx_http_opamp_metrics_family(o, "server_message_parts_total", "counter",
        "ServerToAgent messages sent that carry a part (a message may carry "
        "several).");

    for (i = 0; i < NGX_HTTP_OPAMP_M_NCARRIES; i++) {
        ngx_http_opamp_metrics_printf(o,
            "opamp_server_message_parts_total{part=\"%s\"} %A\n",
            ngx_http_opamp_metrics_parts_names[i], m->carries[i]);
    }

    ngx_http_opamp_metrics_family(o, "refused_total", "counter",
        "Agent messages refused, by reason.");

    for (i = 0; i < NGX_HTTP_OPAMP_M_NREFUSED; i++) {
        ngx_http_opamp_metrics_printf(o,
            "opamp_refused_total{reason=\"%s\"} %A\n",
            ngx_http_opamp_metrics_refusals[i], m->refused[i]);
    }

    ngx_http_opamp_metrics_write_fleet(o, m);
}


static void
ngx_http_opamp_metrics_write_fleet(ngx_http_opamp_metrics_out_t *o,
    ngx_http_opamp_metrics_t *m)
{
    ngx_atomic_t  *s;

    s = m->scalars;

    ngx_http_opamp_metrics_family(o, "redis_commands_total", "counter",
        "Commands sent to Redis (scripts, pub/sub, Sentinel, WAIT).");
    ngx_http_opamp_metrics_printf(o, "opamp_redis_commands_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_REDIS_COMMANDS]);

    ngx_http_opamp_metrics_family(o, "redis_errors_total", "counter",
        "Error replies from Redis.");
    ngx_http_opamp_metrics_printf(o, "opamp_redis_errors_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_REDIS_ERRORS]);

    ngx_http_opamp_metrics_family(o, "redis_timeouts_total", "counter",
        "Redis links given up after opamp_redis_timeout.");
    ngx_http_opamp_metrics_printf(o, "opamp_redis_timeouts_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_REDIS_TIMEOUTS]);

    ngx_http_opamp_metrics_family(o, "redis_reconnects_total", "counter",
        "Redis links up again after a loss.");
    ngx_http_opamp_metrics_printf(o, "opamp_redis_reconnects_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_REDIS_RECONNECTS]);

    ngx_http_opamp_metrics_family(o, "redis_failovers_total", "counter",
        "New Redis primaries followed (Sentinel, or a read-only primary).");
    ngx_http_opamp_metrics_printf(o, "opamp_redis_failovers_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_REDIS_FAILOVERS]);

    ngx_http_opamp_metrics_family(o, "redis_commands_waiting", "gauge",
        "Commands sent to Redis and not answered yet.");
    ngx_http_opamp_metrics_printf(o, "opamp_redis_commands_waiting %A\n",
                                  s[NGX_HTTP_OPAMP_M_REDIS_WAITING]);

    ngx_http_opamp_metrics_family(o, "redis_latency_seconds", "histogram",
        "Time from sending a command to Redis to its reply (ms "
        "resolution).");
    ngx_http_opamp_metrics_histogram(o, "redis_latency_seconds",
                                     &m->redis_latency,
                                     ngx_http_opamp_metrics_redis_le);

    ngx_http_opamp_metrics_family(o, "config_fanouts_total", "counter",
        "Fleet config changes (groups) fanned out to this instance's "
        "WebSocket agents.");
    ngx_http_opamp_metrics_printf(o, "opamp_config_fanouts_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_FANOUTS]);

    ngx_http_opamp_metrics_family(o, "config_fanout_seconds", "histogram",
        "Time from a fleet config change reaching a worker to the last of "
        "its agents being sent what it is owed.");
    ngx_http_opamp_metrics_histogram(o, "config_fanout_seconds", &m->fanout,
                                     ngx_http_opamp_metrics_fanout_le);

    ngx_http_opamp_metrics_family(o, "departed_agents_swept_total", "counter",
        "Departed agents removed by the retention sweep.");
    ngx_http_opamp_metrics_printf(o, "opamp_departed_agents_swept_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_SWEPT]);
}
