/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"

#include <ngx_sha1.h>


#define NGX_HTTP_OPAMP_SERVER_CAPABILITIES                                   \
    (NGX_HTTP_OPAMP_SCAP_ACCEPTS_STATUS                                      \
     | NGX_HTTP_OPAMP_SCAP_ACCEPTS_EFFECTIVE_CONFIG                          \
     | NGX_HTTP_OPAMP_SCAP_ACCEPTS_PACKAGES_STATUS                           \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_CONN_SETTINGS)

/* how long an agent should wait when Redis is unreachable: the spec's
 * minimum recommended retry interval */
#define NGX_HTTP_OPAMP_RETRY_AFTER_SEC  30


/* one AgentToServer on its way through Redis */
typedef struct {
    ngx_http_opamp_session_t       *session;
    ngx_http_opamp_store_req_t     *request;
    ngx_http_opamp_report_t         report;
    ngx_str_t                       packed[NGX_HTTP_OPAMP_FIELD_COUNT];
    u_char                          reply_uid[NGX_HTTP_OPAMP_UID_LEN];
    u_char                          cs_hash[20];
    u_char                          cs_hash_hex[40];
    unsigned                        new_uid:1;
} ngx_http_opamp_message_t;


static ngx_int_t ngx_http_opamp_session_report(ngx_http_opamp_session_t *s,
    ngx_http_opamp_a2s_t *msg);
static void ngx_http_opamp_session_reported(ngx_http_opamp_report_t *rep,
    ngx_int_t rc, void *data);
static ngx_int_t ngx_http_opamp_session_reply(ngx_http_opamp_session_t *s,
    ngx_http_opamp_message_t *m);
static ngx_int_t ngx_http_opamp_session_error(ngx_http_opamp_session_t *s,
    u_char *uid, ngx_uint_t type, const char *reason);
static void ngx_http_opamp_session_free_message(
    ngx_http_opamp_message_t *m);
static void ngx_http_opamp_session_new_uid(u_char *uid);
static void ngx_http_opamp_session_conn_settings(
    ngx_http_opamp_session_t *s,
    Opamp__Proto__V1__OpAMPConnectionSettings *ocs);
static void ngx_http_opamp_session_register(ngx_http_opamp_session_t *s);
static void ngx_http_opamp_session_unregister(ngx_http_opamp_session_t *s);
static void ngx_http_opamp_session_pubsub(ngx_str_t *channel,
    ngx_str_t *payload);
static void ngx_http_opamp_session_kick(ngx_http_opamp_report_t *rep);


static ngx_rbtree_t       ngx_http_opamp_sessions;
static ngx_rbtree_node_t  ngx_http_opamp_sessions_sentinel;
static uint64_t           ngx_http_opamp_conn_counter;


ngx_int_t
ngx_http_opamp_session_init_process(ngx_cycle_t *cycle)
{
    ngx_rbtree_init(&ngx_http_opamp_sessions,
                    &ngx_http_opamp_sessions_sentinel,
                    ngx_rbtree_insert_value);

    ngx_http_opamp_redis_set_message_handler(ngx_http_opamp_session_pubsub);

    return NGX_OK;
}


void
ngx_http_opamp_session_exit_process(ngx_cycle_t *cycle)
{
    /* connections are closed by nginx itself; nothing is left to free */
}


ngx_http_opamp_session_t *
ngx_http_opamp_session_create(ngx_http_request_t *r, ngx_uint_t transport)
{
    ngx_http_opamp_session_t  *s;

    s = ngx_pcalloc(r->pool, sizeof(ngx_http_opamp_session_t));
    if (s == NULL) {
        return NULL;
    }

    s->request = r;
    s->connection = r->connection;
    s->conf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);
    s->transport = transport;
    s->conn_number = ++ngx_http_opamp_conn_counter;

    return s;
}


ngx_int_t
ngx_http_opamp_session_message(ngx_http_opamp_session_t *s, u_char *data,
    size_t len)
{
    ngx_int_t                      rc;
    ngx_http_opamp_a2s_t          *msg;
    ngx_http_opamp_proto_alloc_t   alloc;

    msg = ngx_http_opamp_proto_decode_a2s(&alloc, data, len,
                                          s->connection->log);
    if (msg == NULL) {
        if (alloc.exhausted) {
            return ngx_http_opamp_session_bad_request(s,
                       "AgentToServer needs more memory to decode than "
                       "its size allows");
        }

        return ngx_http_opamp_session_bad_request(s,
                   "AgentToServer is not a valid protobuf message");
    }

    if (msg->instance_uid.len != NGX_HTTP_OPAMP_UID_LEN) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: instance_uid of %uz bytes, must be 16",
                      msg->instance_uid.len);
        ngx_http_opamp_proto_free_a2s(&alloc, msg);
        return ngx_http_opamp_session_bad_request(s,
                   "instance_uid must be 16 bytes");
    }

    if (s->has_header_uid
        && ngx_memcmp(s->header_uid, msg->instance_uid.data,
                      NGX_HTTP_OPAMP_UID_LEN) != 0)
    {
        ngx_http_opamp_proto_free_a2s(&alloc, msg);
        return ngx_http_opamp_session_bad_request(s,
                   "OpAMP-Instance-UID header does not match instance_uid");
    }

    rc = ngx_http_opamp_session_report(s, msg);

    ngx_http_opamp_proto_free_a2s(&alloc, msg);

    return rc;
}


static ngx_int_t
ngx_http_opamp_session_report(ngx_http_opamp_session_t *s,
    ngx_http_opamp_a2s_t *msg)
{
    ngx_uint_t                                 i;
    ngx_str_t                                 *f, cs;
    ngx_sha1_t                                 sha1;
    const ProtobufCMessage                    *sub[NGX_HTTP_OPAMP_FIELD_COUNT];
    ngx_http_opamp_message_t                  *m;
    ngx_http_opamp_report_t                   *rep;
    ngx_http_opamp_store_req_t                *req;
    Opamp__Proto__V1__OpAMPConnectionSettings  ocs =
                              OPAMP__PROTO__V1__OP_AMPCONNECTION_SETTINGS__INIT;

    m = ngx_calloc(sizeof(ngx_http_opamp_message_t), s->connection->log);
    if (m == NULL) {
        return NGX_ERROR;
    }

    m->session = s;
    rep = &m->report;

    ngx_memcpy(m->reply_uid, msg->instance_uid.data, NGX_HTTP_OPAMP_UID_LEN);
    ngx_memcpy(rep->uid, msg->instance_uid.data, NGX_HTTP_OPAMP_UID_LEN);

    /* the agent wants an identity from the server: store what it reports
     * under the new one, which it uses from its next message on */

    if (msg->flags & NGX_HTTP_OPAMP_AFLAG_REQUEST_INSTANCE_UID) {
        ngx_http_opamp_session_new_uid(rep->uid);
        m->new_uid = 1;
    }

    rep->sequence_num = msg->sequence_num;
    rep->capabilities = msg->capabilities;
    rep->conn_number = s->conn_number;
    rep->transport = s->transport;
    rep->agent_timeout = s->conf->agent_timeout;
    rep->first_message = (s->messages == 0
                          || s->transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP);
    rep->disconnect = (msg->agent_disconnect != NULL);
    rep->healthy = msg->health ? (msg->health->healthy ? 1 : 0) : 2;

    sub[NGX_HTTP_OPAMP_FIELD_DESCRIPTION] =
        (ProtobufCMessage *) msg->agent_description;
    sub[NGX_HTTP_OPAMP_FIELD_HEALTH] = (ProtobufCMessage *) msg->health;
    sub[NGX_HTTP_OPAMP_FIELD_EFFECTIVE_CONFIG] =
        (ProtobufCMessage *) msg->effective_config;
    sub[NGX_HTTP_OPAMP_FIELD_REMOTE_CONFIG_STATUS] =
        (ProtobufCMessage *) msg->remote_config_status;
    sub[NGX_HTTP_OPAMP_FIELD_PACKAGE_STATUSES] =
        (ProtobufCMessage *) msg->package_statuses;
    sub[NGX_HTTP_OPAMP_FIELD_CUSTOM_CAPABILITIES] =
        (ProtobufCMessage *) msg->custom_capabilities;
    sub[NGX_HTTP_OPAMP_FIELD_AVAILABLE_COMPONENTS] =
        (ProtobufCMessage *) msg->available_components;
    sub[NGX_HTTP_OPAMP_FIELD_CONN_SETTINGS_STATUS] =
        (ProtobufCMessage *) msg->connection_settings_status;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        if (sub[i] == NULL) {
            continue;
        }

        f = &m->packed[i];

        if (ngx_http_opamp_proto_pack(sub[i], f, s->connection->log)
            != NGX_OK)
        {
            ngx_http_opamp_session_free_message(m);
            return NGX_ERROR;
        }

        rep->fields[i] = *f;
    }

    /*
     * The OpAMP connection settings offer carries only what this server
     * decides (the heartbeat interval); its hash tells the script whether
     * the agent has been offered these settings already.
     */

    if (msg->capabilities & NGX_HTTP_OPAMP_ACAP_ACCEPTS_OPAMP_SETTINGS) {
        ngx_http_opamp_session_conn_settings(s, &ocs);

        if (ngx_http_opamp_proto_pack((ProtobufCMessage *) &ocs, &cs,
                                      s->connection->log)
            != NGX_OK)
        {
            ngx_http_opamp_session_free_message(m);
            return NGX_ERROR;
        }

        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, cs.data, cs.len);
        ngx_sha1_final(m->cs_hash, &sha1);
        ngx_free(cs.data);

        ngx_hex_dump(m->cs_hash_hex, m->cs_hash, sizeof(m->cs_hash));

        rep->conn_settings_hash.data = m->cs_hash_hex;
        rep->conn_settings_hash.len = sizeof(m->cs_hash_hex);
    }

    s->busy = 1;

    req = ngx_http_opamp_store_report(rep, ngx_http_opamp_session_reported,
                                      m);
    if (req == NULL) {
        s->busy = 0;
        ngx_http_opamp_session_free_message(m);

        /* Redis is down: the agent keeps its connection and retries */

        s->unavailable = 1;

        if (ngx_http_opamp_session_error(s, msg->instance_uid.data,
                OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_Unavailable,
                "the agent state store is unavailable, retry later")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        s->resume(s);
        return NGX_OK;
    }

    m->request = req;
    s->pending = m;
    s->messages++;

    return NGX_OK;
}


static void
ngx_http_opamp_session_reported(ngx_http_opamp_report_t *rep, ngx_int_t rc,
    void *data)
{
    ngx_http_opamp_message_t *m = data;

    ngx_http_opamp_session_t  *s;

    s = m->session;
    s->pending = NULL;
    s->busy = 0;

    if (rc != NGX_OK) {
        s->unavailable = 1;

        (void) ngx_http_opamp_session_error(s, m->reply_uid,
                OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_Unavailable,
                "the agent state store did not answer, retry later");

        /* the message was not persisted: ask for all of it next time */
        s->messages = 0;

        ngx_http_opamp_session_free_message(m);
        s->resume(s);
        return;
    }

    switch (rep->verdict) {

    case NGX_HTTP_OPAMP_VERDICT_DUPLICATE:
        ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                      "opamp: instance_uid already held by live connection "
                      "\"%V\", assigning a new instance_uid",
                      &rep->holder_conn);

        ngx_http_opamp_session_new_uid(rep->uid);
        m->new_uid = 1;

        /* nothing was stored: the agent reports again under the new uid,
         * where it is unknown and so is asked for its full state */

        rep->full_state = 0;
        s->messages = 0;
        break;

    case NGX_HTTP_OPAMP_VERDICT_TAKEOVER:
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: agent reconnected, closing its previous "
                      "connection \"%V\"", &rep->holder_conn);

        ngx_http_opamp_session_kick(rep);
        /* fall through */

    default:
        ngx_memcpy(s->uid, rep->uid, NGX_HTTP_OPAMP_UID_LEN);
        s->has_uid = 1;

        if (rep->disconnect) {
            s->disconnected = 1;
        }

        if (s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS && !s->registered) {
            ngx_http_opamp_session_register(s);
        }
    }

    if (ngx_http_opamp_session_reply(s, m) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "opamp: could not build a ServerToAgent");
    }

    ngx_http_opamp_session_free_message(m);

    s->resume(s);
}


static ngx_int_t
ngx_http_opamp_session_reply(ngx_http_opamp_session_t *s,
    ngx_http_opamp_message_t *m)
{
    ngx_int_t                                  rc;
    ngx_str_t                                  out;
    ngx_http_opamp_report_t                   *rep;
    Opamp__Proto__V1__ServerToAgent            s2a =
                                   OPAMP__PROTO__V1__SERVER_TO_AGENT__INIT;
    Opamp__Proto__V1__AgentIdentification      ident =
                             OPAMP__PROTO__V1__AGENT_IDENTIFICATION__INIT;
    Opamp__Proto__V1__ConnectionSettingsOffers cso =
                        OPAMP__PROTO__V1__CONNECTION_SETTINGS_OFFERS__INIT;
    Opamp__Proto__V1__OpAMPConnectionSettings  ocs =
                              OPAMP__PROTO__V1__OP_AMPCONNECTION_SETTINGS__INIT;

    rep = &m->report;

    s2a.instance_uid.data = m->reply_uid;
    s2a.instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;

    /* required in the first reply of a connection; a plain HTTP agent
     * cannot tell which reply is its first, so it gets them every time */

    s2a.capabilities = NGX_HTTP_OPAMP_SERVER_CAPABILITIES;

    if (rep->full_state) {
        s2a.flags |= NGX_HTTP_OPAMP_SFLAG_REPORT_FULL_STATE;
    }

    if (m->new_uid) {
        ident.new_instance_uid.data = rep->uid;
        ident.new_instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;
        s2a.agent_identification = &ident;
    }

    if (rep->offer_conn_settings) {
        ngx_http_opamp_session_conn_settings(s, &ocs);
        cso.hash.data = m->cs_hash;
        cso.hash.len = sizeof(m->cs_hash);
        cso.opamp = &ocs;
        s2a.connection_settings = &cso;
    }

    if (ngx_http_opamp_proto_pack((ProtobufCMessage *) &s2a, &out,
                                  s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = s->send(s, out.data, out.len);

    ngx_free(out.data);

    return (rc == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}


ngx_int_t
ngx_http_opamp_session_bad_request(ngx_http_opamp_session_t *s,
    const char *reason)
{
    s->bad_request = 1;

    if (ngx_http_opamp_session_error(s, s->has_uid ? s->uid : NULL,
            OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_BadRequest,
            reason)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    s->bad_request = 0;
    s->resume(s);

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_session_error(ngx_http_opamp_session_t *s, u_char *uid,
    ngx_uint_t type, const char *reason)
{
    ngx_int_t                            rc;
    ngx_str_t                            out;
    Opamp__Proto__V1__ServerToAgent      s2a =
                                   OPAMP__PROTO__V1__SERVER_TO_AGENT__INIT;
    Opamp__Proto__V1__ServerErrorResponse err =
                             OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE__INIT;
    Opamp__Proto__V1__RetryInfo          retry =
                                      OPAMP__PROTO__V1__RETRY_INFO__INIT;

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "opamp: answering %s: %s",
                  type == OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_BadRequest
                  ? "BAD_REQUEST" : "UNAVAILABLE", reason);

    /* an error reply carries nothing but the error and the uid */

    if (uid) {
        s2a.instance_uid.data = uid;
        s2a.instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;
    }

    err.type = type;
    err.error_message = (char *) reason;

    if (type == OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_Unavailable)
    {
        retry.retry_after_nanoseconds =
            (uint64_t) NGX_HTTP_OPAMP_RETRY_AFTER_SEC * 1000000000;
        err.details_case =
            OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE__DETAILS_RETRY_INFO;
        err.retry_info = &retry;
    }

    s2a.error_response = &err;

    if (ngx_http_opamp_proto_pack((ProtobufCMessage *) &s2a, &out,
                                  s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = s->send(s, out.data, out.len);

    ngx_free(out.data);

    return (rc == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}


void
ngx_http_opamp_session_finalize(ngx_http_opamp_session_t *s)
{
    ngx_http_opamp_message_t  *m;

    if (s->closed) {
        return;
    }

    s->closed = 1;

    if (s->pending) {
        m = s->pending;
        ngx_http_opamp_store_cancel(m->request);
        ngx_http_opamp_session_free_message(m);
        s->pending = NULL;
    }

    ngx_http_opamp_session_unregister(s);

    if (s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS && s->has_uid
        && !s->disconnected)
    {
        ngx_http_opamp_store_disconnect(s->uid, s->conn_number);
    }
}


void
ngx_http_opamp_session_touch(ngx_http_opamp_session_t *s)
{
    if (s->has_uid && !s->disconnected && !s->closed) {
        ngx_http_opamp_store_touch(s->uid, s->conn_number,
                                   s->conf->agent_timeout);
    }
}


ngx_http_opamp_session_t *
ngx_http_opamp_session_lookup(uint64_t conn_number)
{
    ngx_rbtree_node_t  *node, *sentinel;

    node = ngx_http_opamp_sessions.root;
    sentinel = ngx_http_opamp_sessions.sentinel;

    while (node != sentinel) {

        if (conn_number < node->key) {
            node = node->left;
            continue;
        }

        if (conn_number > node->key) {
            node = node->right;
            continue;
        }

        return (ngx_http_opamp_session_t *)
                   ((u_char *) node
                    - offsetof(ngx_http_opamp_session_t, node));
    }

    return NULL;
}


static void
ngx_http_opamp_session_register(ngx_http_opamp_session_t *s)
{
    s->node.key = (ngx_rbtree_key_t) s->conn_number;
    ngx_rbtree_insert(&ngx_http_opamp_sessions, &s->node);
    s->registered = 1;
}


static void
ngx_http_opamp_session_unregister(ngx_http_opamp_session_t *s)
{
    if (s->registered) {
        ngx_rbtree_delete(&ngx_http_opamp_sessions, &s->node);
        s->registered = 0;
    }
}


static void
ngx_http_opamp_session_free_message(ngx_http_opamp_message_t *m)
{
    ngx_uint_t                i;
    ngx_http_opamp_report_t  *rep;

    rep = &m->report;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        if (m->packed[i].data) {
            ngx_free(m->packed[i].data);
        }
    }

    if (rep->holder_channel.data) {
        ngx_free(rep->holder_channel.data);
    }

    if (rep->holder_conn.data) {
        ngx_free(rep->holder_conn.data);
    }

    ngx_free(m);
}


static void
ngx_http_opamp_session_new_uid(u_char *uid)
{
    u_char       rnd[10];
    ngx_uint_t   i;
    uint64_t     ms;
    ngx_time_t  *tp;

    /*
     * ngx_random() is seeded per worker by nginx; instance uids need to be
     * unique, not secret, so it is enough beside the millisecond clock.
     */

    for (i = 0; i < sizeof(rnd); i++) {
        rnd[i] = (u_char) (ngx_random() >> 7);
    }

    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;

    ngx_http_opamp_uid_v7(uid, ms, rnd);
}


static void
ngx_http_opamp_session_conn_settings(ngx_http_opamp_session_t *s,
    Opamp__Proto__V1__OpAMPConnectionSettings *ocs)
{
    ocs->heartbeat_interval_seconds = (uint64_t) s->conf->heartbeat_interval;
}


static void
ngx_http_opamp_session_kick(ngx_http_opamp_report_t *rep)
{
    u_char     *p;
    u_char      buf[sizeof("kick ") + NGX_HTTP_OPAMP_UID_STR_LEN + 1
                    + NGX_HTTP_OPAMP_CONN_ID_LEN];
    ngx_str_t   payload;

    if (rep->holder_channel.len == 0
        || rep->holder_conn.len > NGX_HTTP_OPAMP_CONN_ID_LEN)
    {
        return;
    }

    p = ngx_cpymem(buf, "kick ", 5);
    ngx_http_opamp_uid_format(p, rep->uid);
    p += NGX_HTTP_OPAMP_UID_STR_LEN;
    *p++ = ' ';
    p = ngx_cpymem(p, rep->holder_conn.data, rep->holder_conn.len);

    payload.data = buf;
    payload.len = p - buf;

    ngx_http_opamp_store_publish(&rep->holder_channel, &payload);
}


/*
 * Messages on this worker's channel (docs/redis-schema.md):
 *
 *     kick <uid> <server_id>:<pid>:<n>
 */

static void
ngx_http_opamp_session_pubsub(ngx_str_t *channel, ngx_str_t *payload)
{
    u_char                    *p, *last, *conn;
    u_char                     uid[NGX_HTTP_OPAMP_UID_LEN];
    u_char                     own[NGX_HTTP_OPAMP_CONN_ID_LEN];
    size_t                     own_len;
    uint64_t                   n;
    ngx_http_opamp_session_t  *s;

    p = payload->data;
    last = p + payload->len;

    if (payload->len < 5 + NGX_HTTP_OPAMP_UID_STR_LEN + 2
        || ngx_strncmp(p, "kick ", 5) != 0)
    {
        goto invalid;
    }

    p += 5;

    if (ngx_http_opamp_uid_parse(uid, p, NGX_HTTP_OPAMP_UID_STR_LEN) != 0
        || p[NGX_HTTP_OPAMP_UID_STR_LEN] != ' ')
    {
        goto invalid;
    }

    conn = p + NGX_HTTP_OPAMP_UID_STR_LEN + 1;

    /* the connection must be one of this worker's: "<own prefix><n>" */

    own_len = ngx_http_opamp_store_conn_id(own, 0) - own - 1;

    if ((size_t) (last - conn) <= own_len
        || ngx_strncmp(conn, own, own_len) != 0)
    {
        return;
    }

    n = 0;

    for (p = conn + own_len; p < last; p++) {
        if (*p < '0' || *p > '9' || n > (NGX_MAX_UINT32_VALUE * 1000ULL)) {
            goto invalid;
        }

        n = n * 10 + (*p - '0');
    }

    s = ngx_http_opamp_session_lookup(n);

    if (s == NULL || !s->has_uid
        || ngx_memcmp(s->uid, uid, NGX_HTTP_OPAMP_UID_LEN) != 0)
    {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "opamp: another connection took this agent over");

    /* the new connection holds the agent now: no disconnect to record */

    s->disconnected = 1;
    s->close(s, 1008, "instance_uid taken over by another connection");

    return;

invalid:

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "opamp: ignoring invalid message \"%V\" on channel \"%V\"",
                  payload, channel);
}
