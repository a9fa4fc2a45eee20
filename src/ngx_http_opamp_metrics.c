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
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"


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
    ngx_atomic_t    started_ms;      /* the zone made: nginx started */
} ngx_http_opamp_metrics_t;


typedef struct {
    u_char         *pos;
    u_char         *last;
} ngx_http_opamp_metrics_out_t;


/* a scrape waiting for the fleet gauges from Redis */
typedef struct {
    ngx_http_request_t          *request;
    ngx_http_opamp_redis_cmd_t  *cmd;
} ngx_http_opamp_metrics_ctx_t;


static ngx_int_t ngx_http_opamp_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_opamp_metrics_handler(ngx_http_request_t *r);
static void ngx_http_opamp_metrics_fleet_done(redisReply *reply, void *data);
static void ngx_http_opamp_metrics_cleanup(void *data);
static ngx_int_t ngx_http_opamp_metrics_send(ngx_http_request_t *r,
    redisReply *fleet);
static void ngx_http_opamp_metrics_write_fleet_gauges(
    ngx_http_opamp_metrics_out_t *o, redisReply *fleet);
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

    /* made once at start, found again at each reload */
    ngx_http_opamp_metrics->started_ms = (ngx_atomic_uint_t) ngx_time()
                                         * 1000;

    return NGX_OK;
}


/*
 * What the metrics endpoint knows of this host, summed over its workers,
 * for the host's record in Redis (src/ngx_http_opamp_host.c,
 * docs/redis-schema.md): f has room for NGX_HTTP_OPAMP_METRICS_FIGURES;
 * returns how many were written, 0 without the zone.
 */

ngx_uint_t
ngx_http_opamp_metrics_figures(ngx_http_opamp_metrics_figure_t *f)
{
    ngx_uint_t                 i, n, refused;
    ngx_atomic_t              *s;
    ngx_http_opamp_metrics_t  *m;

    m = ngx_http_opamp_metrics;

    if (m == NULL) {
        return 0;
    }

    s = m->scalars;
    n = 0;

#define ngx_http_opamp_figure(nm, v)                                          \
    f[n].name = nm;                                                           \
    f[n++].value = (uint64_t) (v)

    ngx_http_opamp_figure("started_ms", m->started_ms);
    ngx_http_opamp_figure("websocket_connections",
                          s[NGX_HTTP_OPAMP_M_WS_OPEN]);
    ngx_http_opamp_figure("websocket_connections_opened",
                          s[NGX_HTTP_OPAMP_M_WS_OPENED]);
    ngx_http_opamp_figure("agent_messages_http",
                          m->messages[NGX_HTTP_OPAMP_M_HTTP]);
    ngx_http_opamp_figure("agent_messages_websocket",
                          m->messages[NGX_HTTP_OPAMP_M_WEBSOCKET]);
    ngx_http_opamp_figure("agent_message_bytes_http",
                          m->message_bytes[NGX_HTTP_OPAMP_M_HTTP]);
    ngx_http_opamp_figure("agent_message_bytes_websocket",
                          m->message_bytes[NGX_HTTP_OPAMP_M_WEBSOCKET]);
    ngx_http_opamp_figure("server_messages_http",
                          m->replies[NGX_HTTP_OPAMP_M_HTTP]);
    ngx_http_opamp_figure("server_messages_websocket",
                          m->replies[NGX_HTTP_OPAMP_M_WEBSOCKET]);

    refused = 0;

    for (i = 0; i < NGX_HTTP_OPAMP_M_NREFUSED; i++) {
        refused += m->refused[i];
    }

    ngx_http_opamp_figure("refused", refused);
    ngx_http_opamp_figure("redis_commands",
                          s[NGX_HTTP_OPAMP_M_REDIS_COMMANDS]);
    ngx_http_opamp_figure("redis_errors", s[NGX_HTTP_OPAMP_M_REDIS_ERRORS]);
    ngx_http_opamp_figure("redis_timeouts",
                          s[NGX_HTTP_OPAMP_M_REDIS_TIMEOUTS]);
    ngx_http_opamp_figure("redis_reconnects",
                          s[NGX_HTTP_OPAMP_M_REDIS_RECONNECTS]);
    ngx_http_opamp_figure("redis_failovers",
                          s[NGX_HTTP_OPAMP_M_REDIS_FAILOVERS]);
    ngx_http_opamp_figure("redis_waiting",
                          s[NGX_HTTP_OPAMP_M_REDIS_WAITING]);
    ngx_http_opamp_figure("fanouts", s[NGX_HTTP_OPAMP_M_FANOUTS]);
    ngx_http_opamp_figure("fanout_ms", m->fanout.sum_ms);
    ngx_http_opamp_figure("swept", s[NGX_HTTP_OPAMP_M_SWEPT]);

#undef ngx_http_opamp_figure

    return n;
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

    } else if (ngx_strstr(reason, "not a valid") != NULL
               || ngx_strstr(reason, "not valid") != NULL)
    {
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
    u_char                        since[NGX_INT64_LEN];
    size_t                        argvlen[3];
    uint64_t                      ms, timeout;
    ngx_int_t                     rc;
    ngx_str_t                     index, gauges;
    ngx_time_t                   *tp;
    const char                   *argv[3];
    ngx_http_cleanup_t           *cln;
    ngx_http_opamp_main_conf_t   *omcf;
    ngx_http_opamp_metrics_ctx_t *ctx;

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

    omcf = ngx_http_get_module_main_conf(r, ngx_http_opamp_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_opamp_metrics_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->request = r;

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_opamp_metrics_cleanup;
    cln->data = ctx;

    /* the fleet gauges: a few Redis steps whatever the fleet's size */

    index.len = omcf->prefix.len + sizeof("agents") - 1;
    gauges.len = omcf->prefix.len + sizeof("fleet:gauges") - 1;

    index.data = ngx_pnalloc(r->pool, index.len + gauges.len);
    if (index.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    gauges.data = ngx_sprintf(index.data, "%Vagents", &omcf->prefix);
    ngx_sprintf(gauges.data, "%Vfleet:gauges", &omcf->prefix);

    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;
    timeout = omcf->max_agent_timeout ? omcf->max_agent_timeout : 90000;

    argv[0] = (const char *) index.data;
    argvlen[0] = index.len;
    argv[1] = (const char *) gauges.data;
    argvlen[1] = gauges.len;
    argv[2] = (const char *) since;
    argvlen[2] = ngx_sprintf(since, "%uL", ms > timeout ? ms - timeout : 0)
                 - since;

    ctx->cmd = ngx_http_opamp_store_eval(NGX_HTTP_OPAMP_SCRIPT_FLEET, 2, 3,
                                         argv, argvlen,
                                         ngx_http_opamp_metrics_fleet_done,
                                         ctx);
    if (ctx->cmd == NULL) {
        /* Redis is away: the server's own figures, opamp_fleet_up 0 */
        return ngx_http_opamp_metrics_send(r, NULL);
    }

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_opamp_metrics_fleet_done(redisReply *reply, void *data)
{
    ngx_http_opamp_metrics_ctx_t *ctx = data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    ctx->cmd = NULL;
    r = ctx->request;
    c = r->connection;

    if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "opamp: metrics: fleet gauges failed: %*s",
                      (size_t) reply->len, reply->str);
    }

    rc = ngx_http_opamp_metrics_send(r, reply);

    ngx_http_finalize_request(r, rc);

    /* a Redis callback, not an event of this connection */

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_opamp_metrics_cleanup(void *data)
{
    ngx_http_opamp_metrics_ctx_t *ctx = data;

    if (ctx->cmd) {
        ngx_http_opamp_redis_cancel(ctx->cmd);
        ctx->cmd = NULL;
    }
}


/* fleet: the answer of fleet.lua, or NULL (or an error) when Redis was
 * not there */

static ngx_int_t
ngx_http_opamp_metrics_send(ngx_http_request_t *r, redisReply *fleet)
{
    size_t                        size;
    ngx_int_t                     rc;
    ngx_buf_t                    *b;
    ngx_uint_t                    i;
    ngx_chain_t                   out;
    redisReply                   *h;
    ngx_http_opamp_metrics_out_t  o;

    static ngx_str_t  type = ngx_string("text/plain; version=0.0.4; "
                                        "charset=utf-8");

    if (fleet && (fleet->type != REDIS_REPLY_ARRAY || fleet->elements != 3
                  || fleet->element[0]->type != REDIS_REPLY_INTEGER
                  || fleet->element[1]->type != REDIS_REPLY_INTEGER
                  || fleet->element[2]->type != REDIS_REPLY_ARRAY))
    {
        fleet = NULL;
    }

    /* each gauge field is written at most once, its name (a group's,
     * escaped) twice at most as long */

    size = NGX_HTTP_OPAMP_METRICS_OUT_SIZE;

    if (fleet) {
        h = fleet->element[2];

        for (i = 0; i < h->elements; i++) {
            if (h->element[i]->type == REDIS_REPLY_STRING) {
                size += 2 * h->element[i]->len + 128;
            }
        }
    }

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    o.pos = b->pos;
    o.last = b->end;

    ngx_http_opamp_metrics_write(&o, ngx_http_opamp_metrics);
    ngx_http_opamp_metrics_write_fleet_gauges(&o, fleet);

    if (o.pos == o.last) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "opamp: metrics: the exposition does not fit in %uz "
                      "bytes", size);
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
                                  "schema=\"" NGX_HTTP_OPAMP_SCHEMA "\"} 1\n",
                                  NGINX_VERSION);

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

    ngx_http_opamp_metrics_family(o, "identity_conflicts_total", "counter",
        "Messages refused or given a new instance_uid because their uid "
        "is bound to another agent identity.");
    ngx_http_opamp_metrics_printf(o, "opamp_identity_conflicts_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_IDENTITY_CONFLICTS]);

    ngx_http_opamp_metrics_family(o, "token_refusals_total", "counter",
        "Requests and messages refused for their credential: none or a "
        "malformed one (401), or one that is not the agent's token nor "
        "an enrollment credential it may use (403).");
    ngx_http_opamp_metrics_printf(o, "opamp_token_refusals_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_TOKEN_REFUSALS]);

    ngx_http_opamp_metrics_family(o, "heartbeats_in_worker_total", "counter",
        "WebSocket heartbeats of settled agents answered by the worker "
        "without Redis (opamp_heartbeat_recheck).");
    ngx_http_opamp_metrics_printf(o, "opamp_heartbeats_in_worker_total %A\n",
                                  s[NGX_HTTP_OPAMP_M_BEATS_IN_WORKER]);
}


/* the fleet gauges: fleet.lua's answer (lib/gauges.lua names the fields) */

static int64_t
ngx_http_opamp_metrics_gauge(redisReply *h, const char *name)
{
    size_t       len;
    ngx_uint_t   i;
    redisReply  *k, *v;

    len = ngx_strlen(name);

    for (i = 0; i + 1 < h->elements; i += 2) {
        k = h->element[i];
        v = h->element[i + 1];

        if (k->type == REDIS_REPLY_STRING && (size_t) k->len == len
            && ngx_strncmp(k->str, name, len) == 0
            && v->type == REDIS_REPLY_STRING)
        {
            return ngx_atoof((u_char *) v->str, v->len);
        }
    }

    return 0;
}


/* a label value as the exposition format wants it: \, " and newline
 * escaped */

static void
ngx_http_opamp_metrics_label(ngx_http_opamp_metrics_out_t *o, u_char *v,
    size_t len)
{
    u_char  *end;

    for (end = v + len; v < end && o->pos + 2 < o->last; v++) {
        if (*v == '\\' || *v == '"') {
            *o->pos++ = '\\';
            *o->pos++ = *v;

        } else if (*v == '\n') {
            *o->pos++ = '\\';
            *o->pos++ = 'n';

        } else {
            *o->pos++ = *v;
        }
    }
}


static void
ngx_http_opamp_metrics_groups(ngx_http_opamp_metrics_out_t *o,
    redisReply *h, const char *family, const char *field)
{
    size_t       len;
    int64_t      n;
    ngx_uint_t   i;
    redisReply  *k, *v;

    len = ngx_strlen(field);

    for (i = 0; i + 1 < h->elements; i += 2) {
        k = h->element[i];
        v = h->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING
            || (size_t) k->len <= len
            || ngx_strncmp(k->str, field, len) != 0)
        {
            continue;
        }

        n = ngx_atoof((u_char *) v->str, v->len);

        ngx_http_opamp_metrics_printf(o, "opamp_%s{group=\"", family);
        ngx_http_opamp_metrics_label(o, (u_char *) k->str + len,
                                     k->len - len);
        ngx_http_opamp_metrics_printf(o, "\"} %L\n", n < 0 ? 0 : n);
    }
}


static void
ngx_http_opamp_metrics_write_fleet_gauges(ngx_http_opamp_metrics_out_t *o,
    redisReply *fleet)
{
    ngx_uint_t   i, k;
    redisReply  *h;

    static const char  *dims[][6] = {
        { "agents_by_transport", "transport",
          "transport:", "websocket", "http", NULL },
        { "agents_by_health", "health",
          "health:", "healthy", "unhealthy", "unknown" },
        { "agents_by_owed_config", "state",
          "owed:", "running", "not_running", "none" },
    };

    static const char  *helps[] = {
        "Agents known, by the transport of their last message.",
        "Agents known, by the health they reported last (unknown: none "
        "reported).",
        "Agents known that are owed a remote config, by whether they run "
        "it (reported APPLIED for its hash); none: owed no config.",
    };

    static const char  *statuses[] = {
        "APPLIED", "APPLYING", "FAILED", "UNSET"
    };

    u_char  name[64];

    ngx_http_opamp_metrics_family(o, "fleet_up", "gauge",
        "1 when the fleet gauges below were read from Redis for this "
        "scrape, 0 when Redis did not answer.");
    ngx_http_opamp_metrics_printf(o, "opamp_fleet_up %d\n", fleet ? 1 : 0);

    if (fleet == NULL) {
        return;
    }

    h = fleet->element[2];

    ngx_http_opamp_metrics_family(o, "fleet_agents", "gauge",
        "Agents known to the fleet (the index in Redis).");
    ngx_http_opamp_metrics_printf(o, "opamp_fleet_agents %L\n",
                                  (int64_t) fleet->element[0]->integer);

    ngx_http_opamp_metrics_family(o, "fleet_agents_live", "gauge",
        "Agents seen within the longest opamp_agent_timeout.");
    ngx_http_opamp_metrics_printf(o, "opamp_fleet_agents_live %L\n",
                                  (int64_t) fleet->element[1]->integer);

    for (k = 0; k < 3; k++) {
        ngx_http_opamp_metrics_printf(o,
            "# HELP opamp_fleet_%s %s\n# TYPE opamp_fleet_%s gauge\n",
            dims[k][0], helps[k], dims[k][0]);

        for (i = 3; i < 6 && dims[k][i]; i++) {
            ngx_snprintf(name, sizeof(name), "%s%s%Z", dims[k][2],
                         dims[k][i]);
            ngx_http_opamp_metrics_printf(o,
                "opamp_fleet_%s{%s=\"%s\"} %L\n", dims[k][0], dims[k][1],
                dims[k][i], ngx_http_opamp_metrics_gauge(h, (char *) name));
        }
    }

    ngx_http_opamp_metrics_family(o, "fleet_agents_by_config_status",
        "gauge", "Agents known, by the status of the remote config they "
        "reported last (UNSET: none reported).");

    for (i = 0; i < 4; i++) {
        ngx_snprintf(name, sizeof(name), "status:%s%Z", statuses[i]);
        ngx_http_opamp_metrics_printf(o,
            "opamp_fleet_agents_by_config_status{status=\"%s\"} %L\n",
            statuses[i], ngx_http_opamp_metrics_gauge(h, (char *) name));
    }

    ngx_http_opamp_metrics_family(o, "fleet_group_agents", "gauge",
        "Agents whose config comes from a group, by group.");
    ngx_http_opamp_metrics_groups(o, h, "fleet_group_agents", "group:");

    ngx_http_opamp_metrics_family(o, "fleet_group_agents_failed", "gauge",
        "Agents of a group that reported FAILED, by group.");
    ngx_http_opamp_metrics_groups(o, h, "fleet_group_agents_failed",
                                  "group_failed:");

    ngx_http_opamp_metrics_family(o, "fleet_group_agents_not_running",
        "gauge", "Agents of a group that do not run its config, by group.");
    ngx_http_opamp_metrics_groups(o, h, "fleet_group_agents_not_running",
                                  "group_not_running:");
}
