/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"

#include <ngx_sha1.h>
#include "ngx_http_opamp_lua.h"


typedef struct {
    const char                     *source;
    size_t                          len;
    u_char                          sha1[40];
} ngx_http_opamp_script_t;


/*
 * The arguments of a call of each script: EVALSHA, sha1, numkeys, then
 * the keys and ARGV its header lists.  report.lua: 5 keys and 42 ARGV;
 * check.lua and beats.lua: their keys and ARGV before the agents, then
 * as many per agent as the _AGENT_ARGC says.
 */
#define NGX_HTTP_OPAMP_REPORT_ARGC       (3 + 5 + 42)
#define NGX_HTTP_OPAMP_CHECK_ARGC        (3 + 2 + 5)
#define NGX_HTTP_OPAMP_BEATS_ARGC        (3 + 1 + 2)


struct ngx_http_opamp_store_req_s {
    ngx_http_opamp_report_t        *rep;
    ngx_http_opamp_store_handler_pt handler;
    void                           *data;
    ngx_uint_t                      retried;   /* NOSCRIPT seen once */
};


/*
 * Heartbeats that may take the short way (src/lua/lib/short_way.lua) go to
 * Redis together: one call for many agents (up to 128 per call) costs
 * Redis a fraction of what one call each does, since a call that comes
 * alone costs Redis a turn of its event loop and the script's set-up
 * (about 20 us, against 5 us an agent in a batch).  A WebSocket heartbeat
 * waits up to opamp_heartbeat_batch_delay for others: a fleet's heartbeats
 * are spread over the interval, so without the wait each would come alone.
 * A plain HTTP poll, whose agent waits for the answer to poll again, and
 * enough heartbeats for a good batch (an agent that waits for each answer
 * before it sends again, under load) go at the end of the event loop's
 * turn.  While a beats.lua
 * call is out, the rest wait for its answer too.  Those that cannot take
 * the short way after all are sent again, one report.lua call each.
 */

#define NGX_HTTP_OPAMP_BEATS_MAX  128

/* waiting heartbeats that need not wait for more: past a few agents a
 * call, the call's own cost is a small part of Redis's */
#define NGX_HTTP_OPAMP_BEATS_ENOUGH  16

/* beats.lua, per agent: uid, sequence_num, its predecessor, the mark its
 * settled must match, what else to check, expires_ms */
#define NGX_HTTP_OPAMP_BEATS_AGENT_ARGC  6

/* check.lua, per agent: uid and the connection id */
#define NGX_HTTP_OPAMP_CHECK_AGENT_ARGC  2

typedef struct ngx_http_opamp_store_beats_s  ngx_http_opamp_store_beats_t;

struct ngx_http_opamp_store_beats_s {
    ngx_http_opamp_store_req_t     *reqs[NGX_HTTP_OPAMP_BEATS_MAX];
    ngx_uint_t                      n;
    ngx_uint_t                      retried;
    ngx_http_opamp_store_beats_t   *next;     /* filled earlier this turn */
};


struct ngx_http_opamp_store_check_s {
    ngx_http_opamp_check_agent_t   *agents;
    ngx_uint_t                      n;
    ngx_msec_t                      agent_timeout;
    u_char                          cs_hash[40];
    ngx_uint_t                      force;
    ngx_http_opamp_store_check_pt   handler;
    void                           *data;
    ngx_uint_t                      retried;
};


static int ngx_http_opamp_store_script_head(const char **argv,
    size_t *argvlen, ngx_uint_t script, const char *nkeys, ngx_uint_t eval);
static ngx_int_t ngx_http_opamp_store_send_report(
    ngx_http_opamp_store_req_t *req, ngx_uint_t eval);
static void ngx_http_opamp_store_parse_owed(ngx_http_opamp_report_t *rep,
    redisReply **e, redisReply *files);
static ngx_int_t ngx_http_opamp_store_send_check(
    ngx_http_opamp_store_check_t *chk, ngx_uint_t eval);
static void ngx_http_opamp_store_check_done(redisReply *reply, void *data);
static redisReply *ngx_http_opamp_store_check_files(redisReply *files,
    redisReply *key);
static ngx_uint_t ngx_http_opamp_store_noscript(redisReply *reply,
    ngx_uint_t *retried, const char *what);
static void ngx_http_opamp_store_report_done(redisReply *reply, void *data);
static void ngx_http_opamp_store_ready(void);
static void ngx_http_opamp_store_ignore(redisReply *reply, void *data);
static void ngx_http_opamp_store_script(ngx_uint_t n, int argc,
    const char **argv, size_t *argvlen);
typedef struct ngx_http_opamp_store_call_s  ngx_http_opamp_store_call_t;
static ngx_int_t ngx_http_opamp_store_call_send(
    ngx_http_opamp_store_call_t *call, ngx_uint_t eval);
static void ngx_http_opamp_store_call_done(redisReply *reply, void *data);
static ngx_http_opamp_redis_cmd_t *ngx_http_opamp_store_run(ngx_uint_t script,
    ngx_uint_t eval, ngx_uint_t nkeys, int argc, const char **argv,
    const size_t *argvlen, ngx_http_opamp_redis_handler_pt handler,
    void *data);
static ngx_int_t ngx_http_opamp_store_queue_beat(
    ngx_http_opamp_store_req_t *req);
static void ngx_http_opamp_store_beats_schedule(void);
static void ngx_http_opamp_store_beats_due(ngx_event_t *ev);
static void ngx_http_opamp_store_beats_flush(ngx_event_t *ev);
static void ngx_http_opamp_store_beats_compact(
    ngx_http_opamp_store_beats_t *b);
static void ngx_http_opamp_store_beats_send_batch(
    ngx_http_opamp_store_beats_t *b);
static ngx_int_t ngx_http_opamp_store_send_beats(
    ngx_http_opamp_store_beats_t *b, ngx_uint_t eval);
static void ngx_http_opamp_store_beats_done(redisReply *reply, void *data);


static ngx_http_opamp_script_t  ngx_http_opamp_scripts[] = {
    { ngx_http_opamp_lua_report, sizeof(ngx_http_opamp_lua_report) - 1,
      "" },
    { ngx_http_opamp_lua_check, sizeof(ngx_http_opamp_lua_check) - 1, "" },
    { ngx_http_opamp_lua_beats, sizeof(ngx_http_opamp_lua_beats) - 1, "" },
    { ngx_http_opamp_lua_disconnect,
      sizeof(ngx_http_opamp_lua_disconnect) - 1, "" },
    { ngx_http_opamp_lua_touch, sizeof(ngx_http_opamp_lua_touch) - 1, "" },
    { ngx_http_opamp_lua_admin_list,
      sizeof(ngx_http_opamp_lua_admin_list) - 1, "" },
    { ngx_http_opamp_lua_admin_groups,
      sizeof(ngx_http_opamp_lua_admin_groups) - 1, "" },
    { ngx_http_opamp_lua_admin_config_set,
      sizeof(ngx_http_opamp_lua_admin_config_set) - 1, "" },
    { ngx_http_opamp_lua_admin_delete,
      sizeof(ngx_http_opamp_lua_admin_delete) - 1, "" },
    { ngx_http_opamp_lua_admin_push,
      sizeof(ngx_http_opamp_lua_admin_push) - 1, "" },
    { ngx_http_opamp_lua_admin_agent,
      sizeof(ngx_http_opamp_lua_admin_agent) - 1, "" },
    { ngx_http_opamp_lua_remove, sizeof(ngx_http_opamp_lua_remove) - 1, "" },
    { ngx_http_opamp_lua_fleet, sizeof(ngx_http_opamp_lua_fleet) - 1, "" },
    { ngx_http_opamp_lua_fanout, sizeof(ngx_http_opamp_lua_fanout) - 1, "" },
    { ngx_http_opamp_lua_offered,
      sizeof(ngx_http_opamp_lua_offered) - 1, "" },
    { ngx_http_opamp_lua_rollout_tick,
      sizeof(ngx_http_opamp_lua_rollout_tick) - 1, "" }
};


static const char  *ngx_http_opamp_transport_names[] = {
    "http", "websocket"
};


static ngx_http_opamp_main_conf_t  *ngx_http_opamp_store_conf;
static ngx_str_t                    ngx_http_opamp_index_key;
static ngx_str_t                    ngx_http_opamp_version_key;
static ngx_str_t                    ngx_http_opamp_groups_key;

/* the heartbeats of this turn of the event loop (the batch being filled,
 * then those filled before it), and their flush */
static ngx_http_opamp_store_beats_t *ngx_http_opamp_beats;
static ngx_event_t                   ngx_http_opamp_beats_event;
/* the wait of opamp_heartbeat_batch_delay, and whether it is over (or not
 * to be waited: a poll or a full batch is among them) */
static ngx_event_t                   ngx_http_opamp_beats_timer;
static ngx_uint_t                    ngx_http_opamp_beats_due;
static ngx_uint_t                    ngx_http_opamp_beats_waiting;
/* beats.lua calls sent and not yet answered */
static ngx_uint_t                    ngx_http_opamp_beats_sent;
/* the last beat mark digested, its text and digest: plain HTTP agents of
 * the same capabilities have the same text on a worker, so their polls
 * digest it once (a WebSocket agent's names its connection) */
static u_char                        ngx_http_opamp_mark_text[256];
static size_t                        ngx_http_opamp_mark_len;
static u_char                        ngx_http_opamp_mark_hex[16];


ngx_int_t
ngx_http_opamp_store_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf)
{
    u_char                   digest[20];
    ngx_uint_t               i;
    ngx_sha1_t               sha1;
    ngx_http_opamp_script_t *s;

    ngx_http_opamp_store_conf = omcf;

    /* EVALSHA needs the SHA1 of each script; Redis computes the same */

    for (i = 0; i < NGX_HTTP_OPAMP_SCRIPT_COUNT; i++) {
        s = &ngx_http_opamp_scripts[i];

        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, s->source, s->len);
        ngx_sha1_final(digest, &sha1);

        ngx_hex_dump(s->sha1, digest, 20);
    }

    ngx_http_opamp_index_key.len = omcf->prefix.len + sizeof("agents") - 1;
    ngx_http_opamp_index_key.data = ngx_pnalloc(cycle->pool,
                                               ngx_http_opamp_index_key.len);
    if (ngx_http_opamp_index_key.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_index_key.data, "%Vagents", &omcf->prefix);

    ngx_http_opamp_version_key.len = omcf->prefix.len
                                     + sizeof("config_version") - 1;
    ngx_http_opamp_version_key.data =
                  ngx_pnalloc(cycle->pool, ngx_http_opamp_version_key.len);
    if (ngx_http_opamp_version_key.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_version_key.data, "%Vconfig_version",
                &omcf->prefix);

    ngx_http_opamp_groups_key.len = omcf->prefix.len + sizeof("groups") - 1;
    ngx_http_opamp_groups_key.data =
                   ngx_pnalloc(cycle->pool, ngx_http_opamp_groups_key.len);
    if (ngx_http_opamp_groups_key.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_groups_key.data, "%Vgroups", &omcf->prefix);

    ngx_http_opamp_redis_set_ready_handler(ngx_http_opamp_store_ready);

    return NGX_OK;
}


/* "<prefix><kind>{<uid>}": the uid as a Redis Cluster hash tag, so that
 * all of an agent's keys are in one slot */

static u_char *
ngx_http_opamp_store_uid_key(u_char *buf, const char *kind, u_char *uid)
{
    buf = ngx_sprintf(buf, "%V%s{", &ngx_http_opamp_store_conf->prefix, kind);
    ngx_http_opamp_uid_format(buf, uid);
    buf += NGX_HTTP_OPAMP_UID_STR_LEN;
    *buf++ = '}';

    return buf;
}


u_char *
ngx_http_opamp_store_agent_key(u_char *buf, u_char *uid)
{
    return ngx_http_opamp_store_uid_key(buf, "agent:", uid);
}


/* the agent's own status fields, apart from its small fields */

u_char *
ngx_http_opamp_store_status_key(u_char *buf, u_char *uid)
{
    return ngx_http_opamp_store_uid_key(buf, "status:", uid);
}


u_char *
ngx_http_opamp_store_config_key(u_char *buf, u_char *uid)
{
    return ngx_http_opamp_store_uid_key(buf, "config:agent:", uid);
}


u_char *
ngx_http_opamp_store_conn_id(u_char *buf, uint64_t conn_number)
{
    return ngx_sprintf(buf, "%V:%P:%uL",
                       &ngx_http_opamp_store_conf->server_id, ngx_pid,
                       conn_number);
}


ngx_http_opamp_store_req_t *
ngx_http_opamp_store_report(ngx_http_opamp_report_t *rep,
    ngx_http_opamp_store_handler_pt handler, void *data)
{
    ngx_http_opamp_store_req_t  *req;

    req = ngx_alloc(sizeof(ngx_http_opamp_store_req_t), ngx_cycle->log);
    if (req == NULL) {
        return NULL;
    }

    req->rep = rep;
    req->handler = handler;
    req->data = data;
    req->retried = 0;

    if (ngx_http_opamp_store_is_beat(rep)
        && ngx_http_opamp_store_queue_beat(req) == NGX_OK)
    {
        return req;
    }

    if (ngx_http_opamp_store_send_report(req, 0) != NGX_OK) {
        ngx_free(req);
        return NULL;
    }

    return req;
}


void
ngx_http_opamp_store_cancel(ngx_http_opamp_store_req_t *req)
{
    /* freed when Redis answers; until then it only must not call back */

    req->handler = NULL;
    req->rep = NULL;
}


/* a string element of a reply, or an empty string */

static void
ngx_http_opamp_store_reply_str(redisReply *e, ngx_str_t *s)
{
    if (e->type == REDIS_REPLY_STRING && e->len > 0) {
        s->data = (u_char *) e->str;
        s->len = e->len;

    } else {
        ngx_str_null(s);
    }
}


/* an empty argument still needs a pointer */

static ngx_inline u_char *
ngx_http_opamp_store_str(ngx_str_t *s)
{
    return s->len ? s->data : (u_char *) "";
}


/*
 * The start of a call of report.lua, check.lua or beats.lua: EVALSHA and
 * the script's hash, or EVAL and its source after a NOSCRIPT, and the
 * count of its keys.  Returns the number of arguments written.
 */

static int
ngx_http_opamp_store_script_head(const char **argv, size_t *argvlen,
    ngx_uint_t script, const char *nkeys, ngx_uint_t eval)
{
    ngx_http_opamp_script_t  *s;

    s = &ngx_http_opamp_scripts[script];

    if (eval) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = (const char *) s->source;
        argvlen[1] = s->len;

    } else {
        argv[0] = "EVALSHA";
        argvlen[0] = 7;
        argv[1] = (const char *) s->sha1;
        argvlen[1] = 40;
    }

    argv[2] = nkeys;
    argvlen[2] = ngx_strlen(nkeys);

    return 3;
}


static ngx_int_t
ngx_http_opamp_store_send_report(ngx_http_opamp_store_req_t *req,
    ngx_uint_t eval)
{
    int                       argc;
    u_char                   *p;
    u_char                    key[128 + NGX_HTTP_OPAMP_UID_STR_LEN];
    u_char                    ckey[128 + NGX_HTTP_OPAMP_UID_STR_LEN];
    u_char                    skey[128 + NGX_HTTP_OPAMP_UID_STR_LEN];
    u_char                    uid[NGX_HTTP_OPAMP_UID_STR_LEN];
    u_char                    conn[NGX_HTTP_OPAMP_CONN_ID_LEN];
    u_char                    now[NGX_INT64_LEN], seq[NGX_INT64_LEN];
    u_char                    prev[NGX_INT64_LEN], caps[NGX_INT64_LEN];
    u_char                    pid[NGX_INT64_LEN], timeout[NGX_INT64_LEN];
    u_char                    mask[NGX_INT_T_LEN];
    u_char                    state[NGX_SIZE_T_LEN];
    u_char                    custom[NGX_SIZE_T_LEN];
    size_t                    argvlen[NGX_HTTP_OPAMP_REPORT_ARGC];
    ngx_str_t                *channel;
    ngx_uint_t                i, bits;
    ngx_time_t               *tp;
    const char               *argv[NGX_HTTP_OPAMP_REPORT_ARGC];
    ngx_http_opamp_report_t  *rep;

    rep = req->rep;
    channel = ngx_http_opamp_redis_worker_channel();
    tp = ngx_timeofday();

#define NGX_HTTP_OPAMP_ARG(s, l)                                             \
    argv[argc] = (const char *) (s); argvlen[argc] = (l); argc++

#define NGX_HTTP_OPAMP_ARG_END(buf, end)                                     \
    NGX_HTTP_OPAMP_ARG(buf, (size_t) ((end) - (buf)))

    argc = ngx_http_opamp_store_script_head(argv, argvlen,
                                            NGX_HTTP_OPAMP_SCRIPT_REPORT,
                                            "5", eval);

    p = ngx_http_opamp_store_agent_key(key, rep->uid);
    NGX_HTTP_OPAMP_ARG_END(key, p);

    p = ngx_http_opamp_store_config_key(ckey, rep->uid);
    NGX_HTTP_OPAMP_ARG_END(ckey, p);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_version_key.data,
                       ngx_http_opamp_version_key.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_groups_key.data,
                       ngx_http_opamp_groups_key.len);

    p = ngx_http_opamp_store_status_key(skey, rep->uid);
    NGX_HTTP_OPAMP_ARG_END(skey, p);

    p = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec);
    NGX_HTTP_OPAMP_ARG_END(now, p);

    ngx_http_opamp_uid_format(uid, rep->uid);
    NGX_HTTP_OPAMP_ARG(uid, NGX_HTTP_OPAMP_UID_STR_LEN);

    p = ngx_sprintf(seq, "%uL", rep->sequence_num);
    NGX_HTTP_OPAMP_ARG_END(seq, p);

    /* the worker answered the heartbeats between itself: Redis holds
     * the sequence_num before them */

    if (rep->vouched) {
        p = ngx_sprintf(prev, "%uL", rep->prev_sequence_num);
        NGX_HTTP_OPAMP_ARG_END(prev, p);

    } else if (rep->sequence_num == 0) {
        NGX_HTTP_OPAMP_ARG("", 0);

    } else {
        p = ngx_sprintf(prev, "%uL", rep->sequence_num - 1);
        NGX_HTTP_OPAMP_ARG_END(prev, p);
    }

    p = ngx_sprintf(caps, "%uL", rep->capabilities);
    NGX_HTTP_OPAMP_ARG_END(caps, p);

    /* a plain HTTP agent has no connection to name: each poll may reach
     * another worker or host */

    if (rep->transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP) {
        NGX_HTTP_OPAMP_ARG("http", 4);

    } else {
        p = ngx_http_opamp_store_conn_id(conn, rep->conn_number);
        NGX_HTTP_OPAMP_ARG_END(conn, p);
    }

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_transport_names[rep->transport],
                       ngx_strlen(
                           ngx_http_opamp_transport_names[rep->transport]));

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_conf->server_id.data,
                       ngx_http_opamp_store_conf->server_id.len);

    p = ngx_sprintf(pid, "%P", ngx_pid);
    NGX_HTTP_OPAMP_ARG_END(pid, p);

    NGX_HTTP_OPAMP_ARG(channel->data, channel->len);

    p = ngx_sprintf(timeout, "%M", rep->agent_timeout);
    NGX_HTTP_OPAMP_ARG_END(timeout, p);

    NGX_HTTP_OPAMP_ARG(rep->first_message ? "1" : "0", 1);
    NGX_HTTP_OPAMP_ARG(rep->disconnect ? "1" : "0", 1);

    if (rep->healthy == 2) {
        NGX_HTTP_OPAMP_ARG("", 0);

    } else {
        NGX_HTTP_OPAMP_ARG(rep->healthy ? "1" : "0", 1);
    }

    NGX_HTTP_OPAMP_ARG(rep->conn_settings_hash.len
                       ? rep->conn_settings_hash.data : (u_char *) "",
                       rep->conn_settings_hash.len);

    bits = 0;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        if (rep->fields[i].data) {
            bits |= (ngx_uint_t) 1 << i;
        }
    }

    p = ngx_sprintf(mask, "%ui", bits);
    NGX_HTTP_OPAMP_ARG_END(mask, p);

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        NGX_HTTP_OPAMP_ARG(rep->fields[i].data ? rep->fields[i].data
                                               : (u_char *) "",
                           rep->fields[i].len);
    }

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_conf->prefix.data,
                       ngx_http_opamp_store_conf->prefix.len);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->config_status),
                       rep->config_status.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->config_error),
                       rep->config_error.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->config_hash),
                       rep->config_hash.len);
    NGX_HTTP_OPAMP_ARG(rep->force_config ? "1" : "0", 1);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->custom_capabilities),
                       rep->custom_capabilities.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->message_capability),
                       rep->message_capability.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->message_type),
                       rep->message_type.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->message_data),
                       rep->message_data.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->packages_hash),
                       rep->packages_hash.len);

    p = ngx_sprintf(state, "%uz", rep->max_state);
    NGX_HTTP_OPAMP_ARG_END(state, p);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->conn_settings_status),
                       rep->conn_settings_status.len);

    p = ngx_sprintf(custom, "%uz", rep->custom_size);
    NGX_HTTP_OPAMP_ARG_END(custom, p);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->identity),
                       rep->identity.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->server_attributes),
                       rep->server_attributes.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->identity_mark),
                       rep->identity_mark.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->token_mint),
                       rep->token_mint.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_str(&rep->token_presented),
                       rep->token_presented.len);

    if (ngx_http_opamp_redis_command(argc, argv, argvlen,
                                     ngx_http_opamp_store_report_done, req)
        == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A message that the short way (report.lua, beats.lua) may take: a
 * heartbeat with nothing in it but its sequence, whatever the agent's
 * capabilities (the script checks the agent's side: settled, nothing
 * waiting).
 */

ngx_uint_t
ngx_http_opamp_store_is_beat(ngx_http_opamp_report_t *rep)
{
    ngx_uint_t  i;

    if (rep->disconnect || rep->healthy != 2 || rep->force_config
        || rep->config_status.len
        || rep->custom_capabilities.len || rep->message_capability.len
        || rep->packages_hash.len)
    {
        return 0;
    }

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        if (rep->fields[i].data) {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_http_opamp_store_queue_beat(ngx_http_opamp_store_req_t *req)
{
    ngx_http_opamp_store_beats_t  *b;

    /* Redis down: the report is refused at once, as alone */

    if (!ngx_http_opamp_redis_ready()) {
        return NGX_DECLINED;
    }

    b = ngx_http_opamp_beats;

    /* a full batch waits for the flush too: sent from here, a failure
     * would call back the session that is still queueing this report */

    if (b == NULL || b->n == NGX_HTTP_OPAMP_BEATS_MAX) {
        b = ngx_alloc(sizeof(ngx_http_opamp_store_beats_t), ngx_cycle->log);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->n = 0;
        b->retried = 0;
        b->next = ngx_http_opamp_beats;
        ngx_http_opamp_beats = b;
    }

    b->reqs[b->n++] = req;

    if (req->rep->transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP
        || ++ngx_http_opamp_beats_waiting >= NGX_HTTP_OPAMP_BEATS_ENOUGH)
    {
        ngx_http_opamp_beats_due = 1;
    }

    ngx_http_opamp_store_beats_schedule();

    return NGX_OK;
}


/*
 * Sends the waiting heartbeats at the end of this turn when they are due
 * and no beats.lua call is out (under load a call carries what came during
 * the round trip before it, so Redis runs fewer, larger calls), or starts
 * the wait that makes them due.
 */

static void
ngx_http_opamp_store_beats_schedule(void)
{
    ngx_event_t  *ev;
    ngx_msec_t    delay;

    if (ngx_http_opamp_beats == NULL) {
        return;
    }

    delay = ngx_http_opamp_store_conf->heartbeat_batch_delay;

    if (delay == 0) {
        ngx_http_opamp_beats_due = 1;
    }

    if (!ngx_http_opamp_beats_due) {
        ev = &ngx_http_opamp_beats_timer;

        if (!ev->timer_set) {
            ngx_http_opamp_event_init(ev, ngx_http_opamp_store_beats_due,
                                      ngx_cycle->log);
            ngx_add_timer(ev, delay);
        }

        return;
    }

    if (ngx_http_opamp_beats_sent) {
        return;
    }

    ev = &ngx_http_opamp_beats_event;

    if (!ev->posted) {
        ngx_http_opamp_event_init(ev, ngx_http_opamp_store_beats_flush,
                                  ngx_cycle->log);
        ngx_post_event(ev, &ngx_posted_events);
    }
}


static void
ngx_http_opamp_store_beats_due(ngx_event_t *ev)
{
    ngx_http_opamp_beats_due = 1;
    ngx_http_opamp_store_beats_schedule();
}


static void
ngx_http_opamp_store_beats_flush(ngx_event_t *ev)
{
    ngx_http_opamp_store_beats_t  *b, *next;

    b = ngx_http_opamp_beats;
    ngx_http_opamp_beats = NULL;
    ngx_http_opamp_beats_due = 0;
    ngx_http_opamp_beats_waiting = 0;

    if (ngx_http_opamp_beats_timer.timer_set) {
        ngx_del_timer(&ngx_http_opamp_beats_timer);
    }

    for ( /* void */ ; b; b = next) {
        next = b->next;
        ngx_http_opamp_store_beats_send_batch(b);
    }
}


static void
ngx_http_opamp_store_beats_send_batch(ngx_http_opamp_store_beats_t *b)
{
    ngx_uint_t                   i;
    ngx_http_opamp_store_req_t  *req;

    ngx_http_opamp_store_beats_compact(b);

    if (b->n > 0 && ngx_http_opamp_store_send_beats(b, 0) == NGX_OK) {
        ngx_http_opamp_beats_sent++;
        return;
    }

    /* Redis went away since they were queued */

    for (i = 0; i < b->n; i++) {
        req = b->reqs[i];
        req->handler(req->rep, NGX_ERROR, req->data);
        ngx_free(req);
    }

    ngx_free(b);
}


/*
 * Drops the heartbeats whose sessions went away (ngx_http_opamp_store_
 * cancel() left them without a report): whatever sends a batch, the first
 * time or again after a NOSCRIPT, must never read their reports.
 */

static void
ngx_http_opamp_store_beats_compact(ngx_http_opamp_store_beats_t *b)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < b->n; i++) {
        if (b->reqs[i]->handler == NULL) {
            ngx_free(b->reqs[i]);
            continue;
        }

        b->reqs[n++] = b->reqs[i];
    }

    b->n = n;
}


static ngx_int_t
ngx_http_opamp_store_send_beats(ngx_http_opamp_store_beats_t *b,
    ngx_uint_t eval)
{
    int                       argc;
    u_char                   *p, *buf;
    u_char                    now[NGX_INT64_LEN];
    size_t                   *argvlen, conn_len, per, len;
    u_char                    digest[20];
    uint64_t                  now_ms;
    ngx_int_t                 rc;
    ngx_str_t                *channel;
    ngx_sha1_t                sha1;
    ngx_uint_t                i, total;
    ngx_time_t               *tp;
    const char              **argv;
    ngx_http_opamp_report_t  *rep;

    channel = ngx_http_opamp_redis_worker_channel();

    total = NGX_HTTP_OPAMP_BEATS_ARGC
            + NGX_HTTP_OPAMP_BEATS_AGENT_ARGC * b->n;

    /* "<server_id>:<pid>:<n>" */
    conn_len = ngx_http_opamp_store_conf->server_id.len
               + 2 * NGX_INT64_LEN + 2;
    /* uid, sequence_num, its predecessor, expires_ms, and the text of
     * the mark (digested in place): capabilities, settings hash (sha1,
     * hex), connection, transport, channel and layout version,
     * separated by spaces */
    per = NGX_HTTP_OPAMP_UID_STR_LEN + 4 * NGX_INT64_LEN + 40 + conn_len
          + sizeof("websocket") + channel->len
          + sizeof(NGX_HTTP_OPAMP_SCHEMA) + 5 + 1 + 40;

    argv = ngx_alloc(total * (sizeof(char *) + sizeof(size_t))
                     + b->n * per, ngx_cycle->log);
    if (argv == NULL) {
        return NGX_ERROR;
    }

    argvlen = (size_t *) &argv[total];
    buf = (u_char *) &argvlen[total];

    argc = ngx_http_opamp_store_script_head(argv, argvlen,
                                            NGX_HTTP_OPAMP_SCRIPT_BEATS,
                                            "1", eval);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_version_key.data,
                       ngx_http_opamp_version_key.len);

    tp = ngx_timeofday();
    now_ms = (uint64_t) tp->sec * 1000 + tp->msec;

    p = ngx_sprintf(now, "%uL", now_ms);
    NGX_HTTP_OPAMP_ARG_END(now, p);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_conf->prefix.data,
                       ngx_http_opamp_store_conf->prefix.len);

    for (i = 0; i < b->n; i++) {
        rep = b->reqs[i]->rep;

        ngx_http_opamp_uid_format(buf, rep->uid);
        NGX_HTTP_OPAMP_ARG(buf, NGX_HTTP_OPAMP_UID_STR_LEN);
        buf += NGX_HTTP_OPAMP_UID_STR_LEN;

        p = ngx_sprintf(buf, "%uL", rep->sequence_num);
        NGX_HTTP_OPAMP_ARG_END(buf, p);
        buf = p;

        if (rep->vouched) {
            p = ngx_sprintf(buf, "%uL", rep->prev_sequence_num);
            NGX_HTTP_OPAMP_ARG_END(buf, p);
            buf = p;

        } else if (rep->sequence_num == 0) {
            NGX_HTTP_OPAMP_ARG("", 0);

        } else {
            p = ngx_sprintf(buf, "%uL", rep->sequence_num - 1);
            NGX_HTTP_OPAMP_ARG_END(buf, p);
            buf = p;
        }

        /* report.lua's beat_mark(): the text, then its digest over it */

        p = ngx_sprintf(buf, "%uL %V ", rep->capabilities,
                        &rep->conn_settings_hash);

        if (rep->transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP) {
            p = ngx_cpymem(p, "http", 4);

        } else {
            p = ngx_http_opamp_store_conn_id(p, rep->conn_number);
        }

        p = ngx_sprintf(p, " %s %V " NGX_HTTP_OPAMP_SCHEMA,
                        ngx_http_opamp_transport_names[rep->transport],
                        channel);

        /* the identity and server-set attributes, when configured: a
         * heartbeat under others takes the long way, which checks them */

        if (rep->identity_mark.len) {
            *p++ = ' ';
            p = ngx_cpymem(p, rep->identity_mark.data,
                           rep->identity_mark.len);
        }

        len = p - buf;

        if (len != ngx_http_opamp_mark_len
            || ngx_memcmp(buf, ngx_http_opamp_mark_text, len) != 0)
        {
            ngx_sha1_init(&sha1);
            ngx_sha1_update(&sha1, buf, len);
            ngx_sha1_final(digest, &sha1);
            ngx_hex_dump(ngx_http_opamp_mark_hex, digest, 8);

            if (len <= sizeof(ngx_http_opamp_mark_text)) {
                ngx_memcpy(ngx_http_opamp_mark_text, buf, len);
                ngx_http_opamp_mark_len = len;

            } else {
                ngx_http_opamp_mark_len = 0;
            }
        }

        p = ngx_cpymem(buf, ngx_http_opamp_mark_hex,
                       sizeof(ngx_http_opamp_mark_hex));
        NGX_HTTP_OPAMP_ARG_END(buf, p);
        buf = p;

        /* what beats.lua checks besides the mark: nothing but the mark
         * for a lease renewal, else the outbox, and the command key too
         * for an agent that accepts restart (AcceptsRestartCommand) */

        if (rep->lease_only) {
            NGX_HTTP_OPAMP_ARG("L", 1);

        } else if (rep->capabilities & 0x400) {
            NGX_HTTP_OPAMP_ARG("1", 1);

        } else {
            NGX_HTTP_OPAMP_ARG("", 0);
        }

        p = ngx_sprintf(buf, "%uL", now_ms + rep->agent_timeout);
        NGX_HTTP_OPAMP_ARG_END(buf, p);
        buf = p;
    }

    rc = (ngx_http_opamp_redis_command(argc, argv, argvlen,
                                       ngx_http_opamp_store_beats_done, b)
          == NULL) ? NGX_ERROR : NGX_OK;

    ngx_free(argv);

    return rc;
}


static void
ngx_http_opamp_store_beats_done(redisReply *reply, void *data)
{
    ngx_http_opamp_store_beats_t *b = data;

    ngx_uint_t                   i, ok;
    redisReply                  *e;
    ngx_http_opamp_store_req_t  *req;

    if (reply && reply->type == REDIS_REPLY_ERROR) {

        if (ngx_http_opamp_store_noscript(reply, &b->retried, "heartbeats"))
        {
            /* sessions may have gone while the call was out */
            ngx_http_opamp_store_beats_compact(b);

            if (b->n > 0 && ngx_http_opamp_store_send_beats(b, 1) == NGX_OK)
            {
                return;
            }
        }

        reply = NULL;
    }

    ok = (reply && reply->type == REDIS_REPLY_ARRAY
          && reply->elements == b->n);

    if (reply && !ok) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: unexpected reply type %d from the redis "
                      "heartbeats script", reply->type);
    }

    for (i = 0; i < b->n; i++) {
        req = b->reqs[i];

        if (req->handler == NULL) {
            ngx_free(req);
            continue;
        }

        if (!ok) {
            req->handler(req->rep, NGX_ERROR, req->data);
            ngx_free(req);
            continue;
        }

        e = reply->element[i];

        if (e->type == REDIS_REPLY_INTEGER && e->integer >= 1) {
            ngx_http_opamp_store_owed_nothing(req->rep);
            req->rep->settled = 1;
            req->rep->settled_until = (e->integer > 1)
                                      ? (uint64_t) e->integer : 0;
            req->handler(req->rep, NGX_OK, req->data);
            ngx_free(req);
            continue;
        }

        /* not settled after all: the long way, alone */

        req->rep->lease_only = 0;

        if (ngx_http_opamp_store_send_report(req, 0) != NGX_OK) {
            req->handler(req->rep, NGX_ERROR, req->data);
            ngx_free(req);
        }
    }

    ngx_free(b);

    ngx_http_opamp_beats_sent--;

    ngx_http_opamp_store_beats_schedule();
}


/* the answer of the short way: in sequence, owed nothing */

void
ngx_http_opamp_store_owed_nothing(ngx_http_opamp_report_t *rep)
{
    rep->full_state = 0;
    rep->verdict = NGX_HTTP_OPAMP_VERDICT_OK;
    ngx_str_null(&rep->holder_channel);
    ngx_str_null(&rep->holder_conn);
    rep->offer_conn_settings = 0;
    ngx_str_null(&rep->owed_config_hash);
    rep->owed_config = NULL;
    rep->report_components = 0;
    ngx_str_null(&rep->command);
    rep->owed_message = NULL;
    ngx_str_null(&rep->settings_extra);
    ngx_str_null(&rep->settings_hash);
    ngx_str_null(&rep->packages);
}


/*
 * An error answer to a script call.  NOSCRIPT the first time: the script
 * cache was flushed, and the caller sends the source once, which caches
 * it again (returns 1).  Anything else is logged (returns 0).
 */

static ngx_uint_t
ngx_http_opamp_store_noscript(redisReply *reply, ngx_uint_t *retried,
    const char *what)
{
    if (!*retried && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0)
    {
        *retried = 1;
        return 1;
    }

    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "opamp: redis %s script failed: %*s",
                  what, (size_t) reply->len, reply->str);

    return 0;
}


static void
ngx_http_opamp_store_report_done(redisReply *reply, void *data)
{
    ngx_http_opamp_store_req_t *req = data;

    ngx_int_t                 rc;
    redisReply               *e;
    ngx_http_opamp_report_t  *rep;

    rep = req->rep;

    if (req->handler == NULL) {
        ngx_free(req);
        return;
    }

    rc = NGX_ERROR;

    if (reply == NULL) {
        goto done;
    }

    if (reply->type == REDIS_REPLY_ERROR) {

        if (ngx_http_opamp_store_noscript(reply, &req->retried, "report")
            && ngx_http_opamp_store_send_report(req, 1) == NGX_OK)
        {
            return;
        }

        goto done;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 14) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: unexpected reply type %d from the redis "
                      "report script", reply->type);
        goto done;
    }

    e = reply->element[0];
    rep->full_state = (e->type == REDIS_REPLY_INTEGER && e->integer == 1);

    e = reply->element[1];
    rep->verdict = (e->type == REDIS_REPLY_INTEGER) ? (ngx_uint_t) e->integer
                                                    : 0;

    /* the holder strings are copied: the reply dies after this call */

    ngx_str_null(&rep->holder_channel);
    ngx_str_null(&rep->holder_conn);

    if (rep->verdict != NGX_HTTP_OPAMP_VERDICT_OK) {
        e = reply->element[2];

        if (e->type == REDIS_REPLY_STRING && e->len > 0) {
            rep->holder_channel.data = ngx_alloc(e->len, ngx_cycle->log);
            if (rep->holder_channel.data) {
                rep->holder_channel.len = e->len;
                ngx_memcpy(rep->holder_channel.data, e->str, e->len);
            }
        }

        e = reply->element[3];

        if (e->type == REDIS_REPLY_STRING && e->len > 0) {
            rep->holder_conn.data = ngx_alloc(e->len, ngx_cycle->log);
            if (rep->holder_conn.data) {
                rep->holder_conn.len = e->len;
                ngx_memcpy(rep->holder_conn.data, e->str, e->len);
            }
        }
    }

    e = reply->element[6];

    ngx_http_opamp_store_parse_owed(rep, &reply->element[4],
                                    (e->type == REDIS_REPLY_ARRAY) ? e : NULL);

    e = reply->element[13];
    rep->config_view = (e->type == REDIS_REPLY_ARRAY
                        && e->elements == NGX_HTTP_OPAMP_VIEW_FIELDS)
                       ? e : NULL;

    rc = NGX_OK;

done:

    req->handler(rep, rc, req->data);

    ngx_free(req);
}


/*
 * What the agent is owed, from the nine elements of a script answer that
 * start at e (report.lua: elements 5 to 13; check.lua: the same, from the
 * second element of an entry), files being the owed config's fields.
 * Strings stay in the reply: the handler uses them at once.
 */

static void
ngx_http_opamp_store_parse_owed(ngx_http_opamp_report_t *rep,
    redisReply **e, redisReply *files)
{
    rep->offer_conn_settings = (e[0]->type == REDIS_REPLY_INTEGER
                                && e[0]->integer == 1);

    ngx_str_null(&rep->owed_config_hash);
    rep->owed_config = NULL;

    if (e[1]->type == REDIS_REPLY_STRING && e[1]->len > 0
        && files && files->elements > 0)
    {
        rep->owed_config_hash.data = (u_char *) e[1]->str;
        rep->owed_config_hash.len = e[1]->len;
        rep->owed_config = files;
    }

    rep->report_components = (e[3]->type == REDIS_REPLY_INTEGER
                              && e[3]->integer == 1);

    ngx_http_opamp_store_reply_str(e[4], &rep->command);

    rep->owed_message = (e[5]->type == REDIS_REPLY_ARRAY
                         && e[5]->elements == 3) ? e[5] : NULL;

    ngx_http_opamp_store_reply_str(e[6], &rep->settings_extra);
    ngx_http_opamp_store_reply_str(e[7], &rep->settings_hash);
    ngx_http_opamp_store_reply_str(e[8], &rep->packages);
}


ngx_http_opamp_store_check_t *
ngx_http_opamp_store_check(ngx_http_opamp_check_agent_t *agents,
    ngx_uint_t n, ngx_msec_t agent_timeout, u_char *cs_hash,
    ngx_uint_t force, ngx_http_opamp_store_check_pt handler, void *data)
{
    ngx_http_opamp_store_check_t  *chk;

    chk = ngx_alloc(sizeof(ngx_http_opamp_store_check_t), ngx_cycle->log);
    if (chk == NULL) {
        return NULL;
    }

    chk->agents = agents;
    chk->n = n;
    chk->agent_timeout = agent_timeout;
    ngx_memcpy(chk->cs_hash, cs_hash, sizeof(chk->cs_hash));
    chk->force = force;
    chk->handler = handler;
    chk->data = data;
    chk->retried = 0;

    if (ngx_http_opamp_store_send_check(chk, 0) != NGX_OK) {
        ngx_free(chk);
        return NULL;
    }

    return chk;
}


/*
 * check.lua: the config_version and groups keys; now, the key prefix,
 * the agent timeout, the module's connection settings hash and force;
 * then a uid and a connection id per agent.
 */

static ngx_int_t
ngx_http_opamp_store_send_check(ngx_http_opamp_store_check_t *chk,
    ngx_uint_t eval)
{
    int                       argc;
    u_char                   *p, *buf;
    u_char                    now[NGX_INT64_LEN], timeout[NGX_INT64_LEN];
    size_t                   *argvlen, conn_len;
    ngx_int_t                 rc;
    ngx_uint_t                i, total;
    ngx_time_t               *tp;
    const char              **argv;

    total = NGX_HTTP_OPAMP_CHECK_ARGC
            + NGX_HTTP_OPAMP_CHECK_AGENT_ARGC * chk->n;

    /* "<server_id>:<pid>:<n>" */
    conn_len = ngx_http_opamp_store_conf->server_id.len
               + 2 * NGX_INT64_LEN + 2;

    argv = ngx_alloc(total * (sizeof(char *) + sizeof(size_t))
                     + chk->n * (NGX_HTTP_OPAMP_UID_STR_LEN + conn_len),
                     ngx_cycle->log);
    if (argv == NULL) {
        return NGX_ERROR;
    }

    argvlen = (size_t *) &argv[total];
    buf = (u_char *) &argvlen[total];

    argc = ngx_http_opamp_store_script_head(argv, argvlen,
                                            NGX_HTTP_OPAMP_SCRIPT_CHECK,
                                            "2", eval);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_version_key.data,
                       ngx_http_opamp_version_key.len);
    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_groups_key.data,
                       ngx_http_opamp_groups_key.len);

    tp = ngx_timeofday();
    p = ngx_sprintf(now, "%T%03M", tp->sec, tp->msec);
    NGX_HTTP_OPAMP_ARG_END(now, p);

    NGX_HTTP_OPAMP_ARG(ngx_http_opamp_store_conf->prefix.data,
                       ngx_http_opamp_store_conf->prefix.len);

    p = ngx_sprintf(timeout, "%M", chk->agent_timeout);
    NGX_HTTP_OPAMP_ARG_END(timeout, p);

    NGX_HTTP_OPAMP_ARG(chk->cs_hash, sizeof(chk->cs_hash));
    NGX_HTTP_OPAMP_ARG(chk->force ? "1" : "0", 1);

    for (i = 0; i < chk->n; i++) {
        ngx_http_opamp_uid_format(buf, chk->agents[i].uid);
        NGX_HTTP_OPAMP_ARG(buf, NGX_HTTP_OPAMP_UID_STR_LEN);
        buf += NGX_HTTP_OPAMP_UID_STR_LEN;

        p = ngx_http_opamp_store_conn_id(buf, chk->agents[i].conn_number);
        NGX_HTTP_OPAMP_ARG_END(buf, p);
        buf = p;
    }

    rc = (ngx_http_opamp_redis_command(argc, argv, argvlen,
                                       ngx_http_opamp_store_check_done, chk)
          == NULL) ? NGX_ERROR : NGX_OK;

    ngx_free(argv);

    return rc;
}


static void
ngx_http_opamp_store_check_done(redisReply *reply, void *data)
{
    ngx_http_opamp_store_check_t *chk = data;

    size_t                    nids;
    ngx_int_t                 rc;
    ngx_uint_t                i, k, idx;
    redisReply               *list, *files, *views, *e, *cfg, **ids, view;
    ngx_http_opamp_report_t   rep;

    if (chk->handler == NULL) {
        ngx_free(chk);
        return;
    }

    rc = NGX_ERROR;

    if (reply == NULL) {
        goto done;
    }

    if (reply->type == REDIS_REPLY_ERROR) {

        if (ngx_http_opamp_store_noscript(reply, &chk->retried,
                                          "config check")
            && ngx_http_opamp_store_send_check(chk, 1) == NGX_OK)
        {
            return;
        }

        goto done;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_ARRAY
        || reply->element[1]->type != REDIS_REPLY_ARRAY
        || reply->element[2]->type != REDIS_REPLY_ARRAY)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: unexpected reply type %d from the redis "
                      "config check script", reply->type);
        goto done;
    }

    list = reply->element[0];
    files = reply->element[1];

    /* what the worker keeps of each agent, before what is owed: an
     * offer's fields are in it already */

    views = reply->element[2];

    for (i = 0; i < views->elements && chk->handler; i++) {
        e = views->element[i];

        if (e->type != REDIS_REPLY_ARRAY
            || e->elements != NGX_HTTP_OPAMP_VIEW_FIELDS + 1
            || e->element[0]->type != REDIS_REPLY_INTEGER
            || e->element[0]->integer < 1
            || (ngx_uint_t) e->element[0]->integer > chk->n)
        {
            continue;
        }

        idx = (ngx_uint_t) e->element[0]->integer - 1;

        ngx_memzero(&rep, sizeof(ngx_http_opamp_report_t));
        ngx_memcpy(rep.uid, chk->agents[idx].uid, NGX_HTTP_OPAMP_UID_LEN);
        view.type = REDIS_REPLY_ARRAY;
        view.elements = NGX_HTTP_OPAMP_VIEW_FIELDS;
        view.element = &e->element[1];
        rep.config_view = &view;

        chk->handler(idx, &rep, NGX_OK, chk->data);
    }

    for (i = 0; i < list->elements && chk->handler; i++) {
        e = list->element[i];

        if (e->type != REDIS_REPLY_ARRAY || e->elements != 10) {
            continue;
        }

        /* one agent's answer, or the same answer for several agents */

        if (e->element[0]->type == REDIS_REPLY_ARRAY) {
            ids = e->element[0]->element;
            nids = e->element[0]->elements;

        } else {
            ids = &e->element[0];
            nids = 1;
        }

        cfg = ngx_http_opamp_store_check_files(files, e->element[3]);

        for (k = 0; k < nids && chk->handler; k++) {

            if (ids[k]->type != REDIS_REPLY_INTEGER || ids[k]->integer < 1
                || (ngx_uint_t) ids[k]->integer > chk->n)
            {
                continue;
            }

            idx = (ngx_uint_t) ids[k]->integer - 1;

            ngx_memzero(&rep, sizeof(ngx_http_opamp_report_t));
            ngx_memcpy(rep.uid, chk->agents[idx].uid,
                       NGX_HTTP_OPAMP_UID_LEN);

            ngx_http_opamp_store_parse_owed(&rep, &e->element[1], cfg);

            chk->handler(idx, &rep, NGX_OK, chk->data);
        }
    }

    rc = NGX_OK;

done:

    /* the end of the batch, also when Redis failed */

    if (chk->handler) {
        chk->handler(chk->n, NULL, rc, chk->data);
    }

    ngx_free(chk);
}


/* the fields of the config named key in { key, fields, ... } */

static redisReply *
ngx_http_opamp_store_check_files(redisReply *files, redisReply *key)
{
    ngx_uint_t   i;
    redisReply  *k;

    if (key->type != REDIS_REPLY_STRING || key->len == 0) {
        return NULL;
    }

    for (i = 0; i + 1 < files->elements; i += 2) {
        k = files->element[i];

        if (k->type == REDIS_REPLY_STRING && k->len == key->len
            && ngx_memcmp(k->str, key->str, key->len) == 0
            && files->element[i + 1]->type == REDIS_REPLY_ARRAY)
        {
            return files->element[i + 1];
        }
    }

    return NULL;
}


/*
 * The arguments that disconnect.lua and touch.lua share: the agent key,
 * now, and the connection that must still hold the agent.
 */

typedef struct {
    u_char       key[128 + NGX_HTTP_OPAMP_UID_STR_LEN];
    u_char       conn[NGX_HTTP_OPAMP_CONN_ID_LEN];
    u_char       now[NGX_INT64_LEN];
    size_t       argvlen[7];
    const char  *argv[7];
} ngx_http_opamp_store_lease_t;


static void
ngx_http_opamp_store_lease_args(ngx_http_opamp_store_lease_t *l, u_char *uid,
    uint64_t conn_number)
{
    u_char      *p;
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    l->argv[1] = (const char *) l->key;
    p = ngx_http_opamp_store_agent_key(l->key, uid);
    l->argvlen[1] = p - l->key;

    l->argv[2] = (const char *) l->now;
    p = ngx_sprintf(l->now, "%T%03M", tp->sec, tp->msec);
    l->argvlen[2] = p - l->now;

    l->argv[3] = (const char *) l->conn;
    p = ngx_http_opamp_store_conn_id(l->conn, conn_number);
    l->argvlen[3] = p - l->conn;
}


void
ngx_http_opamp_store_disconnect(u_char *uid, uint64_t conn_number,
    ngx_uint_t has_seq, uint64_t last_seq)
{
    u_char                        seq[NGX_INT64_LEN];
    ngx_http_opamp_store_lease_t  l;

    ngx_http_opamp_store_lease_args(&l, uid, conn_number);

    l.argv[4] = (const char *) seq;
    l.argvlen[4] = has_seq ? (size_t) (ngx_sprintf(seq, "%uL", last_seq)
                                       - seq)
                           : 0;

    ngx_http_opamp_store_script(NGX_HTTP_OPAMP_SCRIPT_DISCONNECT, 5, l.argv,
                                l.argvlen);
}


void
ngx_http_opamp_store_touch(u_char *uid, uint64_t conn_number,
    ngx_msec_t agent_timeout)
{
    u_char                        timeout[NGX_INT64_LEN];
    u_char                        text[NGX_HTTP_OPAMP_UID_STR_LEN];
    ngx_http_opamp_store_lease_t  l;

    ngx_http_opamp_store_lease_args(&l, uid, conn_number);

    l.argv[4] = (const char *) timeout;
    l.argvlen[4] = ngx_sprintf(timeout, "%M", agent_timeout) - timeout;

    /* the fleet index moves in the same step, and only for an agent that
     * is still there: a DELETE or the retention sweep may have removed it
     * while its connection lived on */

    l.argv[5] = (const char *) ngx_http_opamp_index_key.data;
    l.argvlen[5] = ngx_http_opamp_index_key.len;

    ngx_http_opamp_uid_format(text, uid);
    l.argv[6] = (const char *) text;
    l.argvlen[6] = NGX_HTTP_OPAMP_UID_STR_LEN;

    ngx_http_opamp_store_script(NGX_HTTP_OPAMP_SCRIPT_TOUCH, 7, l.argv,
                                l.argvlen);
}


/*
 * Runs a fire-and-forget script: argv[1..] are the key and ARGV; the
 * command name, SHA1 and key count are filled in here.  The scripts were
 * loaded when the connection became ready; a NOSCRIPT after an operator's
 * SCRIPT FLUSH loses this one update and loads them again.
 */

/*
 * A fire-and-forget script call (disconnect, touch) is kept until Redis
 * answers: after SCRIPT FLUSH its NOSCRIPT is answered by sending the
 * source once with EVAL, so that no agent stays marked connected.
 */

#define NGX_HTTP_OPAMP_CALL_ARGS  8

struct ngx_http_opamp_store_call_s {
    ngx_uint_t   script;
    int          argc;
    ngx_uint_t   retried;
    size_t       lens[NGX_HTTP_OPAMP_CALL_ARGS];
    u_char      *args[NGX_HTTP_OPAMP_CALL_ARGS];
};


static void
ngx_http_opamp_store_script(ngx_uint_t n, int argc, const char **argv,
    size_t *argvlen)
{
    int                           i;
    u_char                       *p;
    size_t                        size;
    ngx_http_opamp_store_call_t  *call;

    /* argv[0] is unused: argv[1..] are the key and the arguments */

    if (argc - 1 > NGX_HTTP_OPAMP_CALL_ARGS) {
        return;
    }

    size = sizeof(ngx_http_opamp_store_call_t);

    for (i = 1; i < argc; i++) {
        size += argvlen[i];
    }

    call = ngx_alloc(size, ngx_cycle->log);
    if (call == NULL) {
        return;
    }

    call->script = n;
    call->argc = argc - 1;
    call->retried = 0;

    p = (u_char *) &call[1];

    for (i = 1; i < argc; i++) {
        call->args[i - 1] = p;
        call->lens[i - 1] = argvlen[i];
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    if (ngx_http_opamp_store_call_send(call, 0) != NGX_OK) {
        ngx_free(call);
    }
}


static ngx_int_t
ngx_http_opamp_store_call_send(ngx_http_opamp_store_call_t *call,
    ngx_uint_t eval)
{
    int                       i;
    size_t                    lens[NGX_HTTP_OPAMP_CALL_ARGS + 3];
    const char               *args[NGX_HTTP_OPAMP_CALL_ARGS + 3];
    ngx_http_opamp_script_t  *s;

    s = &ngx_http_opamp_scripts[call->script];

    if (eval) {
        args[0] = "EVAL";
        lens[0] = 4;
        args[1] = s->source;
        lens[1] = s->len;

    } else {
        args[0] = "EVALSHA";
        lens[0] = 7;
        args[1] = (const char *) s->sha1;
        lens[1] = 40;
    }

    args[2] = "1";
    lens[2] = 1;

    for (i = 0; i < call->argc; i++) {
        args[i + 3] = (const char *) call->args[i];
        lens[i + 3] = call->lens[i];
    }

    return ngx_http_opamp_redis_command(call->argc + 3, args, lens,
                                        ngx_http_opamp_store_call_done, call)
           ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_opamp_store_call_done(redisReply *reply, void *data)
{
    ngx_http_opamp_store_call_t *call = data;

    if (reply && reply->type == REDIS_REPLY_ERROR
        && ngx_http_opamp_store_noscript(reply, &call->retried, "lease")
        && ngx_http_opamp_store_call_send(call, 1) == NGX_OK)
    {
        return;
    }

    ngx_free(call);
}


void
ngx_http_opamp_store_publish(ngx_str_t *channel, ngx_str_t *payload)
{
    size_t       argvlen[3];
    const char  *argv[3];

    argv[0] = "PUBLISH";
    argvlen[0] = 7;
    argv[1] = (const char *) channel->data;
    argvlen[1] = channel->len;
    argv[2] = (const char *) payload->data;
    argvlen[2] = payload->len;

    (void) ngx_http_opamp_redis_command(3, argv, argvlen,
                                        ngx_http_opamp_store_ignore, NULL);
}


static void
ngx_http_opamp_store_ready(void)
{
    size_t       argvlen[3];
    ngx_uint_t   i;
    const char  *argv[3];

    /*
     * Load every script as soon as the command connection is up: commands
     * run in order on one connection, so later EVALSHAs find them even
     * right after a Redis restart emptied the script cache.
     */

    for (i = 0; i < NGX_HTTP_OPAMP_SCRIPT_COUNT; i++) {
        argv[0] = "SCRIPT";
        argvlen[0] = 6;
        argv[1] = "LOAD";
        argvlen[1] = 4;
        argv[2] = ngx_http_opamp_scripts[i].source;
        argvlen[2] = ngx_http_opamp_scripts[i].len;

        (void) ngx_http_opamp_redis_command(3, argv, argvlen,
                                            ngx_http_opamp_store_ignore,
                                            NULL);
    }
}


static void
ngx_http_opamp_store_ignore(redisReply *reply, void *data)
{
    if (reply && reply->type == REDIS_REPLY_ERROR) {

        if (reply->len >= 8 && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0)
        {
            ngx_http_opamp_store_ready();
        }

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: redis command failed: %*s",
                      (size_t) reply->len, reply->str);
    }
}


/*
 * Runs one of the embedded scripts with EVAL: for rare calls (the admin
 * API), where sending the source each time costs nothing and saves the
 * NOSCRIPT dance.  argv[0..] are the keys and then the arguments.
 */

ngx_http_opamp_redis_cmd_t *
ngx_http_opamp_store_eval(ngx_uint_t script, ngx_uint_t nkeys, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data)
{
    return ngx_http_opamp_store_run(script, 1, nkeys, argc, argv, argvlen,
                                    handler, data);
}


/*
 * The same with EVALSHA, for calls made often whatever happens (a timer's):
 * Redis hashes the source of every EVAL (tens of microseconds for the
 * larger scripts).  A NOSCRIPT answer goes to the handler
 * (ngx_http_opamp_store_is_noscript()), whose next call uses EVAL.
 */

ngx_http_opamp_redis_cmd_t *
ngx_http_opamp_store_evalsha(ngx_uint_t script, ngx_uint_t nkeys, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data)
{
    return ngx_http_opamp_store_run(script, 0, nkeys, argc, argv, argvlen,
                                    handler, data);
}


ngx_uint_t
ngx_http_opamp_store_is_noscript(redisReply *reply)
{
    return reply && reply->type == REDIS_REPLY_ERROR && reply->len >= 8
           && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0;
}


static ngx_http_opamp_redis_cmd_t *
ngx_http_opamp_store_run(ngx_uint_t script, ngx_uint_t eval,
    ngx_uint_t nkeys, int argc, const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data)
{
    int                          i;
    u_char                       n[NGX_INT_T_LEN];
    size_t                      *lens;
    const char                 **args;
    ngx_http_opamp_redis_cmd_t  *cmd;

    if (script >= NGX_HTTP_OPAMP_SCRIPT_COUNT) {
        return NULL;
    }

    args = ngx_alloc((argc + 3) * (sizeof(char *) + sizeof(size_t)),
                     ngx_cycle->log);
    if (args == NULL) {
        return NULL;
    }

    lens = (size_t *) (args + argc + 3);

    if (eval) {
        args[0] = "EVAL";
        lens[0] = 4;
        args[1] = ngx_http_opamp_scripts[script].source;
        lens[1] = ngx_http_opamp_scripts[script].len;

    } else {
        args[0] = "EVALSHA";
        lens[0] = 7;
        args[1] = (const char *) ngx_http_opamp_scripts[script].sha1;
        lens[1] = 40;
    }

    args[2] = (const char *) n;
    lens[2] = ngx_sprintf(n, "%ui", nkeys) - n;

    for (i = 0; i < argc; i++) {
        args[i + 3] = argv[i];
        lens[i + 3] = argvlen[i];
    }

    /* hiredis formats the command at once: the arrays may go now */
    cmd = ngx_http_opamp_redis_command(argc + 3, args, lens, handler, data);

    ngx_free(args);

    return cmd;
}
