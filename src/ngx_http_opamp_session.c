/*
 * Copyright (C) ngx_http_opamp_module authors
 */


#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_gzip.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"

#include <ngx_sha1.h>


#define NGX_HTTP_OPAMP_SERVER_CAPABILITIES                                   \
    (NGX_HTTP_OPAMP_SCAP_ACCEPTS_STATUS                                      \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_REMOTE_CONFIG                              \
     | NGX_HTTP_OPAMP_SCAP_ACCEPTS_EFFECTIVE_CONFIG                          \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_PACKAGES                                    \
     | NGX_HTTP_OPAMP_SCAP_ACCEPTS_PACKAGES_STATUS                           \
     | NGX_HTTP_OPAMP_SCAP_OFFERS_CONN_SETTINGS)

/* how long an agent should wait when Redis is unreachable: the spec's
 * minimum recommended retry interval */
#define NGX_HTTP_OPAMP_RETRY_AFTER_SEC  30


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
} ngx_http_opamp_owed_t;


/* one AgentToServer on its way through Redis */
typedef struct {
    ngx_http_opamp_session_t       *session;
    ngx_http_opamp_store_req_t     *request;
    ngx_http_opamp_report_t         report;
    u_char                         *stored;   /* the status fields */
    u_char                          reply_uid[NGX_HTTP_OPAMP_UID_LEN];
    u_char                          cs_hash_hex[40];
    u_char                          config_hash_hex[64];
    u_char                          packages_hash_hex[1 + 64];
    u_char                         *text;   /* config error, names */
    unsigned                        new_uid:1;
} ngx_http_opamp_message_t;


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
} ngx_http_opamp_check_batch_t;

/* agents per script call: long enough to save round trips, short enough
 * that Redis answers the first agents while it works on the next */
#define NGX_HTTP_OPAMP_CHECK_BATCH  128


static ngx_int_t ngx_http_opamp_session_report(ngx_http_opamp_session_t *s,
    ngx_http_opamp_a2s_t *msg, ngx_http_opamp_a2s_scan_t *scan);
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
static ngx_rbtree_key_t ngx_http_opamp_session_uid_key(u_char *uid);
static void ngx_http_opamp_session_set_uid(ngx_http_opamp_session_t *s,
    u_char *uid);
static void ngx_http_opamp_session_pubsub(ngx_str_t *channel,
    ngx_str_t *payload);
static void ngx_http_opamp_session_kick(ngx_http_opamp_report_t *rep);
static ngx_int_t ngx_http_opamp_session_config_status(
    ngx_http_opamp_message_t *m, ngx_http_opamp_a2s_t *msg);
static ngx_int_t ngx_http_opamp_session_remote_config(
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__AgentRemoteConfig *arc,
    u_char *hash, ngx_log_t *log);
static void ngx_http_opamp_session_free_remote_config(
    Opamp__Proto__V1__AgentRemoteConfig *arc);
static ngx_int_t ngx_http_opamp_session_cs_hash(ngx_http_opamp_session_t *s,
    u_char *hex);
static void ngx_http_opamp_session_check(ngx_http_opamp_session_t *s,
    ngx_uint_t force);
static ngx_uint_t ngx_http_opamp_session_checkable(
    ngx_http_opamp_session_t *s);
static ngx_http_opamp_check_batch_t *ngx_http_opamp_session_batch(
    ngx_uint_t size);
static void ngx_http_opamp_session_check_batch(
    ngx_http_opamp_check_batch_t *b, ngx_uint_t force);
static void ngx_http_opamp_session_checked(ngx_uint_t i,
    ngx_http_opamp_report_t *rep, ngx_int_t rc, void *data);
static void ngx_http_opamp_session_config_changed(u_char *uid);
static ngx_int_t ngx_http_opamp_session_owed(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o);
static void ngx_http_opamp_session_free_owed(ngx_http_opamp_owed_t *o);
static void ngx_http_opamp_session_offers(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o);
static void ngx_http_opamp_session_extras(ngx_http_opamp_report_t *rep,
    Opamp__Proto__V1__ServerToAgent *s2a, ngx_http_opamp_owed_t *o);


static ngx_rbtree_t       ngx_http_opamp_sessions;
static ngx_rbtree_node_t  ngx_http_opamp_sessions_sentinel;

/* "config <uid>" finds the agent's sessions without walking them all */
static ngx_rbtree_t       ngx_http_opamp_sessions_by_uid;
static ngx_rbtree_node_t  ngx_http_opamp_sessions_by_uid_sentinel;

static uint64_t           ngx_http_opamp_conn_counter;


ngx_int_t
ngx_http_opamp_session_init_process(ngx_cycle_t *cycle)
{
    ngx_rbtree_init(&ngx_http_opamp_sessions,
                    &ngx_http_opamp_sessions_sentinel,
                    ngx_rbtree_insert_value);

    ngx_rbtree_init(&ngx_http_opamp_sessions_by_uid,
                    &ngx_http_opamp_sessions_by_uid_sentinel,
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

    ngx_http_opamp_session_init(s, r, transport);

    return s;
}


void
ngx_http_opamp_session_init(ngx_http_opamp_session_t *s,
    ngx_http_request_t *r, ngx_uint_t transport)
{
    /* a WebSocket lets its request go once the 101 is out */
    s->request = (transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP) ? r : NULL;
    s->connection = r->connection;
    s->conf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);
    s->transport = transport;
    s->conn_number = ++ngx_http_opamp_conn_counter;
}


/*
 * An AgentToServer is checked on the wire first (nesting, element counts,
 * wire types, UTF-8), so that nothing a client sends can make protobuf-c
 * recurse or allocate without bound; then only the fields the module reads
 * are decoded, and the status fields are stored as the agent sent them.
 */

ngx_int_t
ngx_http_opamp_session_message(ngx_http_opamp_session_t *s, u_char *data,
    size_t len)
{
    u_char                         reason[128];
    ngx_int_t                      rc;
    ngx_http_opamp_a2s_t          *msg;
    ngx_http_opamp_a2s_scan_t      scan;
    ngx_http_opamp_proto_alloc_t   alloc;

    if (ngx_http_opamp_proto_scan_a2s(&scan, data, len, s->connection->log)
        != NGX_OK)
    {
        if (scan.error == NULL) {
            return NGX_ERROR;
        }

        *ngx_snprintf(reason, sizeof(reason) - 1, "%s: %s",
                      scan.limit ? "AgentToServer refused"
                                 : "AgentToServer is not a valid protobuf "
                                   "message",
                      scan.error) = '\0';

        return ngx_http_opamp_session_bad_request(s, (char *) reason);
    }

    msg = ngx_http_opamp_proto_decode_a2s(&alloc, scan.view.data,
                                          scan.view.len, s->connection->log);
    if (msg == NULL) {
        ngx_http_opamp_proto_scan_free(&scan, data, len);

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
        rc = ngx_http_opamp_session_bad_request(s,
                   "instance_uid must be 16 bytes");
        goto done;
    }

    if (s->has_header_uid
        && ngx_memcmp(s->header_uid, msg->instance_uid.data,
                      NGX_HTTP_OPAMP_UID_LEN) != 0)
    {
        rc = ngx_http_opamp_session_bad_request(s,
                   "OpAMP-Instance-UID header does not match instance_uid");
        goto done;
    }

    rc = ngx_http_opamp_session_report(s, msg, &scan);

done:

    ngx_http_opamp_proto_free_a2s(&alloc, msg);
    ngx_http_opamp_proto_scan_free(&scan, data, len);

    return rc;
}


/* the status fields of the agent hash and their AgentToServer numbers */
static ngx_uint_t  ngx_http_opamp_session_status_fields[] = {
    3,      /* NGX_HTTP_OPAMP_FIELD_DESCRIPTION */
    5,      /* NGX_HTTP_OPAMP_FIELD_HEALTH */
    6,      /* NGX_HTTP_OPAMP_FIELD_EFFECTIVE_CONFIG */
    7,      /* NGX_HTTP_OPAMP_FIELD_REMOTE_CONFIG_STATUS */
    8,      /* NGX_HTTP_OPAMP_FIELD_PACKAGE_STATUSES */
    12,     /* NGX_HTTP_OPAMP_FIELD_CUSTOM_CAPABILITIES */
    14,     /* NGX_HTTP_OPAMP_FIELD_AVAILABLE_COMPONENTS */
    15      /* NGX_HTTP_OPAMP_FIELD_CONN_SETTINGS_STATUS */
};


/* the status fields that report.lua and the other scripts never read */
static ngx_uint_t  ngx_http_opamp_session_compressed[] = {
    0,      /* description: groups' selectors match its attributes */
    1,      /* health */
    0,      /* effective_config: shared by the SHA1 of its bytes */
    1,      /* remote_config_status */
    1,      /* package_statuses */
    1,      /* custom_capabilities */
    0,      /* available_components: the script reads its hash */
    1       /* connection_settings_status */
};


static ngx_int_t
ngx_http_opamp_session_report(ngx_http_opamp_session_t *s,
    ngx_http_opamp_a2s_t *msg, ngx_http_opamp_a2s_scan_t *scan)
{
    u_char                      *p;
    size_t                       size, len;
    ngx_int_t                    rc;
    ngx_uint_t                   i, n;
    ngx_http_opamp_message_t    *m;
    ngx_http_opamp_report_t     *rep;
    ngx_http_opamp_store_req_t  *req;

    /* one message cannot hold more than the agent may keep in Redis */

    size = 0;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        size += scan->field[ngx_http_opamp_session_status_fields[i]].len;
    }

    if (size > s->conf->max_agent_state) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: status fields of %uz bytes exceed "
                      "opamp_max_agent_state", size);
        return ngx_http_opamp_session_bad_request(s,
                   "agent state exceeds opamp_max_agent_state");
    }

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
    rep->max_state = s->conf->max_agent_state;
    rep->first_message = (s->messages == 0
                          || s->transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP);
    rep->disconnect = (msg->agent_disconnect != NULL);
    rep->healthy = msg->health ? (msg->health->healthy ? 1 : 0) : 2;

    /* a WebSocket agent that connects again gets its config again, even if
     * it was offered on an earlier connection and never acknowledged */
    rep->force_config = (s->messages == 0
                         && s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS);

    s->capabilities = msg->capabilities;

    if (ngx_http_opamp_session_config_status(m, msg) != NGX_OK) {
        ngx_http_opamp_session_free_message(m);
        return NGX_ERROR;
    }

    /* the status fields as the agent sent them, so that any protobuf
     * library decodes what is stored; copied, because the message's
     * buffer goes before Redis answers (and a NOSCRIPT resends them) */

    m->stored = ngx_alloc(size ? size : 1, s->connection->log);
    if (m->stored == NULL) {
        ngx_http_opamp_session_free_message(m);
        return NGX_ERROR;
    }

    p = m->stored;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        n = ngx_http_opamp_session_status_fields[i];

        if (scan->count[n] == 0) {
            continue;
        }

        rep->fields[i].data = p;

        /* what the scripts never read is stored compressed where that
         * saves bytes: an agent's health tree is most of what is its
         * own in Redis (docs/redis-schema.md) */

        if (ngx_http_opamp_session_compressed[i]) {
            rc = ngx_http_opamp_stored_deflate(s->connection->log,
                                               &scan->field[n], p, &len);
            if (rc == NGX_ERROR) {
                ngx_http_opamp_session_free_message(m);
                return NGX_ERROR;
            }

            if (rc == NGX_OK) {
                rep->fields[i].len = len;
                p += len;
                continue;
            }
        }

        rep->fields[i].len = scan->field[n].len;
        p = ngx_cpymem(p, scan->field[n].data, scan->field[n].len);
    }

    /*
     * The module's own part of the connection settings offer (the
     * heartbeat interval); the script adds what operators stored and
     * hashes both, to tell whether the agent has been offered them.
     */

    if (ngx_http_opamp_session_cs_hash(s, m->cs_hash_hex) != NGX_OK) {
        ngx_http_opamp_session_free_message(m);
        return NGX_ERROR;
    }

    rep->conn_settings_hash.data = m->cs_hash_hex;
    rep->conn_settings_hash.len = sizeof(m->cs_hash_hex);

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

    case NGX_HTTP_OPAMP_VERDICT_TOO_LARGE:
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: agent state would exceed "
                      "opamp_max_agent_state, nothing stored");

        /* its sequence was not stored: the next message is out of
         * sequence and the agent is asked for all of its state again */

        ngx_http_opamp_session_free_message(m);

        if (ngx_http_opamp_session_bad_request(s,
                "agent state exceeds opamp_max_agent_state")
            != NGX_OK)
        {
            s->resume(s);
        }

        return;

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
        ngx_http_opamp_session_set_uid(s, rep->uid);

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

    /* a config changed while this message was in Redis */

    if (s->recheck && s->registered && !s->closed) {
        s->recheck = 0;
        ngx_http_opamp_session_check(s, 0);
    }

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
    ngx_http_opamp_owed_t                      owed;
    Opamp__Proto__V1__CustomCapabilities       ccap =
                               OPAMP__PROTO__V1__CUSTOM_CAPABILITIES__INIT;

    rep = &m->report;

    s2a.instance_uid.data = m->reply_uid;
    s2a.instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;

    /* required in the first reply of a connection; a plain HTTP agent
     * cannot tell which reply is its first, so it gets them every time */

    s2a.capabilities = NGX_HTTP_OPAMP_SERVER_CAPABILITIES;

    /* the server's custom capabilities go with its capabilities */

    if (s->conf->custom_capabilities && rep->first_message) {
        ccap.n_capabilities = s->conf->custom_capabilities->nelts;
        ccap.capabilities = s->conf->custom_capabilities->elts;
        s2a.custom_capabilities = &ccap;
    }

    if (rep->full_state) {
        s2a.flags |= NGX_HTTP_OPAMP_SFLAG_REPORT_FULL_STATE;

        /* a round trip for the agent, worth seeing when it repeats */

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: asking the agent for its full state");
    }

    if (m->new_uid) {
        ident.new_instance_uid.data = rep->uid;
        ident.new_instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;
        s2a.agent_identification = &ident;
    }

    if (rep->report_components) {
        s2a.flags |= NGX_HTTP_OPAMP_SFLAG_REPORT_AVAILABLE_COMPONENTS;
    }

    rc = ngx_http_opamp_session_owed(s, rep, &s2a, &owed);

    if (rc == NGX_OK) {
        rc = ngx_http_opamp_proto_pack((ProtobufCMessage *) &s2a, &out,
                                       s->connection->log);
    }

    ngx_http_opamp_session_free_owed(&owed);

    if (rc != NGX_OK) {
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
    ngx_uint_t                     i;
    ngx_http_opamp_message_t      *m;
    ngx_http_opamp_check_batch_t  *b;

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

    if (s->checking) {
        b = s->checking;

        /* the batch goes on for the others and skips this one */

        for (i = 0; i < b->n; i++) {
            if (b->sessions[i] == s) {
                b->sessions[i] = NULL;
            }
        }

        s->checking = NULL;
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

    s->uid_node.key = ngx_http_opamp_session_uid_key(s->uid);
    ngx_rbtree_insert(&ngx_http_opamp_sessions_by_uid, &s->uid_node);

    s->registered = 1;
}


static void
ngx_http_opamp_session_unregister(ngx_http_opamp_session_t *s)
{
    if (s->registered) {
        ngx_rbtree_delete(&ngx_http_opamp_sessions, &s->node);
        ngx_rbtree_delete(&ngx_http_opamp_sessions_by_uid, &s->uid_node);
        s->registered = 0;
    }
}


/* the two halves of a uid folded: random in UUIDv4 and in UUIDv7 alike */

static ngx_rbtree_key_t
ngx_http_opamp_session_uid_key(u_char *uid)
{
    uint64_t  a, b;

    ngx_memcpy(&a, uid, 8);
    ngx_memcpy(&b, uid + 8, 8);

    return (ngx_rbtree_key_t) (a ^ b);
}


/* the uid of the last message; an agent may change it on its connection
 * (after the server gave it a new one) */

static void
ngx_http_opamp_session_set_uid(ngx_http_opamp_session_t *s, u_char *uid)
{
    if (s->has_uid && ngx_memcmp(s->uid, uid, NGX_HTTP_OPAMP_UID_LEN) == 0) {
        return;
    }

    if (s->registered) {
        ngx_rbtree_delete(&ngx_http_opamp_sessions_by_uid, &s->uid_node);
    }

    ngx_memcpy(s->uid, uid, NGX_HTTP_OPAMP_UID_LEN);
    s->has_uid = 1;

    if (s->registered) {
        s->uid_node.key = ngx_http_opamp_session_uid_key(s->uid);
        ngx_rbtree_insert(&ngx_http_opamp_sessions_by_uid, &s->uid_node);
    }
}


static void
ngx_http_opamp_session_free_message(ngx_http_opamp_message_t *m)
{
    ngx_http_opamp_report_t  *rep;

    rep = &m->report;

    if (m->stored) {
        ngx_free(m->stored);
    }

    if (rep->holder_channel.data) {
        ngx_free(rep->holder_channel.data);
    }

    if (rep->holder_conn.data) {
        ngx_free(rep->holder_conn.data);
    }

    if (m->text) {
        ngx_free(m->text);
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


/*
 * The hash of the module's own part of the connection settings offer
 * (the heartbeat interval), 40 hex digits: the script adds what
 * operators stored and hashes both, to tell whether the agent has been
 * offered them.
 */

static ngx_int_t
ngx_http_opamp_session_cs_hash(ngx_http_opamp_session_t *s, u_char *hex)
{
    u_char                                     digest[20];
    ngx_str_t                                  cs;
    ngx_sha1_t                                 sha1;
    Opamp__Proto__V1__OpAMPConnectionSettings  ocs =
                              OPAMP__PROTO__V1__OP_AMPCONNECTION_SETTINGS__INIT;

    /* it depends on the heartbeat interval only: the last one is kept,
     * so that a message does not pack and hash the same bytes again */

    static time_t  last_interval = -1;
    static u_char  last_hex[40];

    if (s->conf->heartbeat_interval == last_interval) {
        ngx_memcpy(hex, last_hex, sizeof(last_hex));
        return NGX_OK;
    }

    ngx_http_opamp_session_conn_settings(s, &ocs);

    if (ngx_http_opamp_proto_pack((ProtobufCMessage *) &ocs, &cs,
                                  s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, cs.data, cs.len);
    ngx_sha1_final(digest, &sha1);
    ngx_free(cs.data);

    ngx_hex_dump(hex, digest, sizeof(digest));

    ngx_memcpy(last_hex, hex, sizeof(last_hex));
    last_interval = s->conf->heartbeat_interval;

    return NGX_OK;
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
 * What the report script needs of the message besides the status fields:
 * the reported RemoteConfigStatus as text, the custom capability names
 * and the custom message (the script reads the attributes that group
 * selectors match from the description itself).  Copied into the
 * message: the decoded AgentToServer is freed before Redis answers.
 */

static ngx_int_t
ngx_http_opamp_session_config_status(ngx_http_opamp_message_t *m,
    ngx_http_opamp_a2s_t *msg)
{
    u_char                               *p;
    size_t                                i, len, elen;
    ngx_http_opamp_report_t              *rep;
    Opamp__Proto__V1__CustomMessage      *cm;
    Opamp__Proto__V1__CustomCapabilities *cc;
    Opamp__Proto__V1__RemoteConfigStatus *rcs;

    static const char  *statuses[] = {
        "UNSET", "APPLIED", "APPLYING", "FAILED"
    };

    rep = &m->report;
    rcs = msg->remote_config_status;

    len = 0;
    elen = 0;

    if (rcs && rcs->error_message) {
        elen = ngx_strlen(rcs->error_message);
    }

    cc = msg->custom_capabilities;

    if (cc) {
        len += 1;

        for (i = 0; i < cc->n_capabilities; i++) {
            len += ngx_strlen(cc->capabilities[i]) + 1;
        }
    }

    cm = msg->custom_message;

    if (cm && cm->capability && cm->capability[0]) {
        len += ngx_strlen(cm->capability) + ngx_strlen(cm->type)
               + cm->data.len;
    }

    if (len + elen == 0) {
        goto status;
    }

    m->text = ngx_alloc(len + elen, ngx_cycle->log);
    if (m->text == NULL) {
        return NGX_ERROR;
    }

    p = m->text;

    if (cc) {
        rep->custom_capabilities.data = p;
        *p++ = '+';

        for (i = 0; i < cc->n_capabilities; i++) {
            if (i) {
                *p++ = '\n';
            }

            p = ngx_cpymem(p, cc->capabilities[i],
                           ngx_strlen(cc->capabilities[i]));
        }

        rep->custom_capabilities.len = p - rep->custom_capabilities.data;
    }

    if (cm && cm->capability && cm->capability[0]) {
        rep->message_capability.data = p;
        rep->message_capability.len = ngx_strlen(cm->capability);
        p = ngx_cpymem(p, cm->capability, rep->message_capability.len);

        rep->message_type.data = p;
        rep->message_type.len = ngx_strlen(cm->type);
        p = ngx_cpymem(p, cm->type, rep->message_type.len);

        rep->message_data.data = p;
        rep->message_data.len = cm->data.len;
        p = ngx_cpymem(p, cm->data.data, cm->data.len);
    }

    if (elen) {
        rep->config_error.data = p;
        rep->config_error.len = elen;
        p = ngx_cpymem(p, rcs->error_message, elen);
    }

status:

    if (msg->package_statuses) {
        len = ngx_min(
                  msg->package_statuses->server_provided_all_packages_hash.len,
                  (sizeof(m->packages_hash_hex) - 1) / 2);

        m->packages_hash_hex[0] = '+';
        rep->packages_hash.data = m->packages_hash_hex;
        rep->packages_hash.len = ngx_hex_dump(m->packages_hash_hex + 1,
            msg->package_statuses->server_provided_all_packages_hash.data,
            len)
            - m->packages_hash_hex;
    }

    if (rcs == NULL) {
        return NGX_OK;
    }

    rep->config_status.data = (u_char *) (((size_t) rcs->status < 4)
                                          ? statuses[rcs->status]
                                          : "UNSET");
    rep->config_status.len = ngx_strlen(rep->config_status.data);

    len = ngx_min(rcs->last_remote_config_hash.len,
                  sizeof(m->config_hash_hex) / 2);

    rep->config_hash.data = m->config_hash_hex;
    rep->config_hash.len = ngx_hex_dump(m->config_hash_hex,
                                        rcs->last_remote_config_hash.data,
                                        len)
                           - m->config_hash_hex;

    return NGX_OK;
}


/*
 * Builds the AgentRemoteConfig from the fields of a config hash in Redis
 * (docs/redis-schema.md): "file:<name>" bodies, "type:<name>" content
 * types, "hash" the SHA-256 in hex.  The bodies point into the reply;
 * names and types are copied, as protobuf-c wants them NUL-terminated.
 */

static ngx_int_t
ngx_http_opamp_session_remote_config(ngx_http_opamp_report_t *rep,
    Opamp__Proto__V1__AgentRemoteConfig *arc, u_char *hash, ngx_log_t *log)
{
    size_t                                      i, j, n;
    redisReply                                **el, *name, *value;
    Opamp__Proto__V1__AgentConfigMap           *map;
    Opamp__Proto__V1__AgentConfigFile          *file;
    Opamp__Proto__V1__AgentConfigMap__ConfigMapEntry  *entry;

    el = rep->owed_config->element;
    n = rep->owed_config->elements / 2;

    map = ngx_calloc(sizeof(Opamp__Proto__V1__AgentConfigMap)
                     + n * sizeof(void *), log);
    if (map == NULL) {
        return NGX_ERROR;
    }

    opamp__proto__v1__agent_config_map__init(map);
    map->config_map = (Opamp__Proto__V1__AgentConfigMap__ConfigMapEntry **)
                          (map + 1);
    arc->config = map;

    for (i = 0; i < n; i++) {
        name = el[2 * i];
        value = el[2 * i + 1];

        if (name->type != REDIS_REPLY_STRING || name->len <= 5
            || ngx_strncmp(name->str, "file:", 5) != 0
            || value->type != REDIS_REPLY_STRING)
        {
            continue;
        }

        entry = ngx_calloc(sizeof(*entry) + sizeof(*file) + name->len - 4,
                           log);
        if (entry == NULL) {
            return NGX_ERROR;
        }

        map->config_map[map->n_config_map++] = entry;

        file = (Opamp__Proto__V1__AgentConfigFile *) (entry + 1);

        opamp__proto__v1__agent_config_map__config_map_entry__init(entry);
        opamp__proto__v1__agent_config_file__init(file);

        entry->key = (char *) (file + 1);
        ngx_memcpy(entry->key, name->str + 5, name->len - 5);
        entry->value = file;

        file->body.data = (uint8_t *) value->str;
        file->body.len = value->len;

        /* its "type:<name>" field, wherever it is in the reply */

        for (j = 0; j < n; j++) {
            if (el[2 * j]->type == REDIS_REPLY_STRING
                && el[2 * j]->len == name->len
                && ngx_strncmp(el[2 * j]->str, "type:", 5) == 0
                && ngx_strncmp(el[2 * j]->str + 5, name->str + 5,
                               name->len - 5) == 0
                && el[2 * j + 1]->type == REDIS_REPLY_STRING
                && el[2 * j + 1]->len > 0)
            {
                file->content_type = ngx_alloc(el[2 * j + 1]->len + 1, log);
                if (file->content_type == NULL) {
                    file->content_type = (char *) protobuf_c_empty_string;
                    return NGX_ERROR;
                }

                ngx_memcpy(file->content_type, el[2 * j + 1]->str,
                           el[2 * j + 1]->len);
                file->content_type[el[2 * j + 1]->len] = '\0';
                break;
            }
        }
    }

    if (rep->owed_config_hash.len != 64
        || ngx_http_opamp_hex_decode(hash, rep->owed_config_hash.data, 64)
           != 0)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "opamp: the config hash \"%V\" in redis is not 64 hex "
                      "digits", &rep->owed_config_hash);
        return NGX_ERROR;
    }

    arc->config_hash.data = hash;
    arc->config_hash.len = 32;

    return NGX_OK;
}


static void
ngx_http_opamp_session_free_remote_config(
    Opamp__Proto__V1__AgentRemoteConfig *arc)
{
    size_t                                             i;
    Opamp__Proto__V1__AgentConfigMap                  *map;
    Opamp__Proto__V1__AgentConfigMap__ConfigMapEntry  *entry;

    map = arc->config;

    if (map == NULL) {
        return;
    }

    for (i = 0; i < map->n_config_map; i++) {
        entry = map->config_map[i];

        if (entry->value->content_type != protobuf_c_empty_string) {
            ngx_free(entry->value->content_type);
        }

        ngx_free(entry);
    }

    ngx_free(map);
    arc->config = NULL;
}


/*
 * The connection settings and packages the script says the agent is owed.
 * Settings stored by operators are filtered by the agent's capabilities
 * (the spec: offer only what the agent declares it accepts); the module
 * adds its heartbeat interval.  Both are unpacked from the reply with
 * protobuf-c; a value that does not decode is logged and left out.
 */

static void
ngx_http_opamp_session_offers(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o)
{
    uint64_t                                     caps;
    const char                                  *reason;
    Opamp__Proto__V1__ConnectionSettingsOffers  *st;

    opamp__proto__v1__connection_settings_offers__init(&o->cso);
    opamp__proto__v1__op_ampconnection_settings__init(&o->ocs);

    caps = s->capabilities;

    if (rep->packages.len) {
        o->packages = (Opamp__Proto__V1__PackagesAvailable *)
                      ngx_http_opamp_proto_unpack(
                          &opamp__proto__v1__packages_available__descriptor,
                          rep->packages.data, rep->packages.len, &reason);

        if (o->packages) {
            s2a->packages_available = o->packages;

        } else {
            ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                          "opamp: the packages offer in redis is not a "
                          "PackagesAvailable message");
        }
    }

    if (!rep->offer_conn_settings || rep->settings_hash.len != 40
        || ngx_http_opamp_hex_decode(o->hash, rep->settings_hash.data, 40)
           != 0)
    {
        return;
    }

    if (rep->settings_extra.len) {
        o->stored = (Opamp__Proto__V1__ConnectionSettingsOffers *)
                    ngx_http_opamp_proto_unpack(
                        &opamp__proto__v1__connection_settings_offers__descriptor,
                        rep->settings_extra.data, rep->settings_extra.len,
                        &reason);

        if (o->stored == NULL) {
            ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                          "opamp: the connection settings in redis are not "
                          "a ConnectionSettingsOffers message");
            return;
        }
    }

    st = o->stored;

    if (caps & NGX_HTTP_OPAMP_ACAP_ACCEPTS_OPAMP_SETTINGS) {
        if (st && st->opamp) {
            o->cso.opamp = st->opamp;

        } else {
            o->cso.opamp = &o->ocs;
        }

        ngx_http_opamp_session_conn_settings(s, o->cso.opamp);

    } else if (caps & NGX_HTTP_OPAMP_ACAP_REPORTS_HEARTBEAT) {

        /*
         * The spec tells the heartbeat interval to agents that report
         * heartbeats in OpAMPConnectionSettings.heartbeat_interval_seconds
         * (opamp-go applies it for ReportsHeartbeat alone); such an agent
         * gets the interval and nothing else of the OpAMP settings.
         */

        o->cso.opamp = &o->ocs;
        ngx_http_opamp_session_conn_settings(s, o->cso.opamp);
    }

    if (st) {
        if (caps & NGX_HTTP_OPAMP_ACAP_REPORTS_OWN_TRACES) {
            o->cso.own_traces = st->own_traces;
        }

        if (caps & NGX_HTTP_OPAMP_ACAP_REPORTS_OWN_METRICS) {
            o->cso.own_metrics = st->own_metrics;
        }

        if (caps & NGX_HTTP_OPAMP_ACAP_REPORTS_OWN_LOGS) {
            o->cso.own_logs = st->own_logs;
        }

        if (caps & NGX_HTTP_OPAMP_ACAP_ACCEPTS_OTHER_SETTINGS) {
            o->cso.n_other_connections = st->n_other_connections;
            o->cso.other_connections = st->other_connections;
        }
    }

    o->cso.hash.data = o->hash;
    o->cso.hash.len = sizeof(o->hash);

    s2a->connection_settings = &o->cso;
}


/* fills s2a with everything the agent is owed; free_owed() afterwards,
 * whatever this returns */

static ngx_int_t
ngx_http_opamp_session_owed(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o)
{
    ngx_memzero(o, sizeof(ngx_http_opamp_owed_t));
    opamp__proto__v1__agent_remote_config__init(&o->arc);
    opamp__proto__v1__server_to_agent_command__init(&o->cmd);
    opamp__proto__v1__custom_message__init(&o->cm);

    ngx_http_opamp_session_offers(s, rep, s2a, o);
    ngx_http_opamp_session_extras(rep, s2a, o);

    if (rep->owed_config == NULL) {
        return NGX_OK;
    }

    if (ngx_http_opamp_session_remote_config(rep, &o->arc, o->config_hash,
                                             s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    s2a->remote_config = &o->arc;

    return NGX_OK;
}


static void
ngx_http_opamp_session_free_owed(ngx_http_opamp_owed_t *o)
{
    ngx_http_opamp_session_free_remote_config(&o->arc);

    if (o->stored) {
        opamp__proto__v1__connection_settings_offers__free_unpacked(
            o->stored, NULL);
    }

    if (o->packages) {
        opamp__proto__v1__packages_available__free_unpacked(o->packages,
                                                            NULL);
    }
}


/* the command and the custom message the script says the agent is owed;
 * they point into the Redis reply, whose strings hiredis NUL-terminates */

static void
ngx_http_opamp_session_extras(ngx_http_opamp_report_t *rep,
    Opamp__Proto__V1__ServerToAgent *s2a, ngx_http_opamp_owed_t *o)
{
    redisReply                             **el;
    Opamp__Proto__V1__CustomMessage         *cm;
    Opamp__Proto__V1__ServerToAgentCommand  *cmd;

    cm = &o->cm;
    cmd = &o->cmd;

    if (rep->command.len == sizeof("restart") - 1
        && ngx_strncmp(rep->command.data, "restart", 7) == 0)
    {
        cmd->type = OPAMP__PROTO__V1__COMMAND_TYPE__CommandType_Restart;
        s2a->command = cmd;
    }

    if (rep->owed_message) {
        el = rep->owed_message->element;

        if (el[0]->type == REDIS_REPLY_STRING
            && el[1]->type == REDIS_REPLY_STRING
            && el[2]->type == REDIS_REPLY_STRING)
        {
            cm->capability = el[0]->str;
            cm->type = el[1]->str;
            cm->data.data = (uint8_t *) el[2]->str;
            cm->data.len = el[2]->len;
            s2a->custom_message = cm;
        }
    }
}


/*
 * A config or group changed: ask Redis what this WebSocket agent is owed
 * now, and send it without waiting for the agent's next message.
 */

static void
ngx_http_opamp_session_check(ngx_http_opamp_session_t *s, ngx_uint_t force)
{
    ngx_http_opamp_check_batch_t  *b;

    if (!ngx_http_opamp_session_checkable(s)) {
        return;
    }

    b = ngx_http_opamp_session_batch(1);
    if (b == NULL) {
        return;
    }

    b->sessions[0] = s;
    b->n = 1;

    ngx_http_opamp_session_check_batch(b, force);
}


/* whether a check can start now; one that must wait is marked for later */

static ngx_uint_t
ngx_http_opamp_session_checkable(ngx_http_opamp_session_t *s)
{
    if (!s->has_uid || s->closed || s->disconnected) {
        return 0;
    }

    if (s->busy || s->checking) {
        /* the answer to the message in flight may predate the change */
        s->recheck = 1;
        return 0;
    }

    return 1;
}


static ngx_http_opamp_check_batch_t *
ngx_http_opamp_session_batch(ngx_uint_t size)
{
    ngx_http_opamp_check_batch_t  *b;

    b = ngx_alloc(sizeof(ngx_http_opamp_check_batch_t)
                  + size * (sizeof(ngx_http_opamp_session_t *)
                            + sizeof(ngx_http_opamp_check_agent_t)),
                  ngx_cycle->log);
    if (b == NULL) {
        return NULL;
    }

    b->request = NULL;
    b->n = 0;
    b->size = size;
    b->agents = (ngx_http_opamp_check_agent_t *) &b[1];
    b->sessions = (ngx_http_opamp_session_t **) &b->agents[size];

    return b;
}


/* b holds sessions of one location configuration */

static void
ngx_http_opamp_session_check_batch(ngx_http_opamp_check_batch_t *b,
    ngx_uint_t force)
{
    u_char                     cs_hash[40];
    ngx_uint_t                 i;
    ngx_http_opamp_session_t  *s;

    s = b->sessions[0];

    for (i = 0; i < b->n; i++) {
        ngx_memcpy(b->agents[i].uid, b->sessions[i]->uid,
                   NGX_HTTP_OPAMP_UID_LEN);
        b->agents[i].conn_number = b->sessions[i]->conn_number;
    }

    if (ngx_http_opamp_session_cs_hash(s, cs_hash) == NGX_OK) {
        b->request = ngx_http_opamp_store_check(b->agents, b->n,
                                                s->conf->agent_timeout,
                                                cs_hash, force,
                                                ngx_http_opamp_session_checked,
                                                b);
    }

    if (b->request == NULL) {
        /* Redis is down: the agents are asked for their full state later
         * and get what they are owed then */
        ngx_free(b);
        return;
    }

    for (i = 0; i < b->n; i++) {
        b->sessions[i]->checking = b;
    }
}


static void
ngx_http_opamp_session_checked(ngx_uint_t i, ngx_http_opamp_report_t *rep,
    ngx_int_t rc, void *data)
{
    ngx_http_opamp_check_batch_t *b = data;

    ngx_str_t                         out;
    ngx_http_opamp_owed_t             owed;
    ngx_http_opamp_session_t         *s;
    Opamp__Proto__V1__ServerToAgent   s2a =
                                   OPAMP__PROTO__V1__SERVER_TO_AGENT__INIT;

    if (rep == NULL) {

        /* the batch is over */

        for (i = 0; i < b->n; i++) {
            s = b->sessions[i];

            if (s == NULL) {
                continue;
            }

            s->checking = NULL;

            if (s->recheck && !s->closed && !s->busy) {
                s->recheck = 0;
                ngx_http_opamp_session_check(s, 0);
            }
        }

        ngx_free(b);
        return;
    }

    s = b->sessions[i];

    if (s == NULL || s->closed) {
        return;
    }

    if (rep->owed_config || rep->command.len || rep->owed_message
        || rep->offer_conn_settings || rep->packages.len)
    {
        s2a.instance_uid.data = s->uid;
        s2a.instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;
        s2a.capabilities = NGX_HTTP_OPAMP_SERVER_CAPABILITIES;

        if (ngx_http_opamp_session_owed(s, rep, &s2a, &owed) == NGX_OK
            && ngx_http_opamp_proto_pack((ProtobufCMessage *) &s2a, &out,
                                         s->connection->log)
               == NGX_OK)
        {
            (void) s->send(s, out.data, out.len);
            ngx_free(out.data);
        }

        ngx_http_opamp_session_free_owed(&owed);
    }
}


/*
 * uid NULL: every agent of this worker (a group changed), in batches of
 * agents that share a location configuration; else the sessions of that
 * agent (one, but for a takeover in progress), each checked alone
 */

static void
ngx_http_opamp_session_config_changed(u_char *uid)
{
    ngx_rbtree_key_t               key;
    ngx_rbtree_node_t             *node, *root, *sentinel, *first;
    ngx_http_opamp_session_t      *s;
    ngx_http_opamp_check_batch_t  *b;

    if (uid) {
        key = ngx_http_opamp_session_uid_key(uid);
        root = ngx_http_opamp_sessions_by_uid.root;
        sentinel = ngx_http_opamp_sessions_by_uid.sentinel;

        /* the leftmost node of the key: equal keys sit side by side in
         * order, whatever rotations did to them */

        first = NULL;

        for (node = root; node != sentinel; /* void */) {
            if (key <= node->key) {
                if (key == node->key) {
                    first = node;
                }

                node = node->left;

            } else {
                node = node->right;
            }
        }

        /* starting a check neither closes a session nor changes a tree */

        for (node = first;
             node && node->key == key;
             node = ngx_rbtree_next(&ngx_http_opamp_sessions_by_uid, node))
        {
            s = (ngx_http_opamp_session_t *)
                    ((u_char *) node
                     - offsetof(ngx_http_opamp_session_t, uid_node));

            if (ngx_memcmp(s->uid, uid, NGX_HTTP_OPAMP_UID_LEN) == 0) {
                ngx_http_opamp_session_check(s, 0);
            }
        }

        return;
    }

    root = ngx_http_opamp_sessions.root;
    sentinel = ngx_http_opamp_sessions.sentinel;

    if (root == sentinel) {
        return;
    }

    b = NULL;

    for (node = ngx_rbtree_min(root, sentinel);
         node;
         node = ngx_rbtree_next(&ngx_http_opamp_sessions, node))
    {
        s = (ngx_http_opamp_session_t *)
                ((u_char *) node - offsetof(ngx_http_opamp_session_t, node));

        if (!ngx_http_opamp_session_checkable(s)) {
            continue;
        }

        if (b && (b->n == b->size || b->sessions[0]->conf != s->conf)) {
            ngx_http_opamp_session_check_batch(b, 0);
            b = NULL;
        }

        if (b == NULL) {
            b = ngx_http_opamp_session_batch(NGX_HTTP_OPAMP_CHECK_BATCH);
            if (b == NULL) {
                return;
            }
        }

        b->sessions[b->n++] = s;
    }

    if (b) {
        ngx_http_opamp_session_check_batch(b, 0);
    }
}


/*
 * Messages on this worker's channel and on the fleet channel
 * (docs/redis-schema.md):
 *
 *     kick <uid> <server_id>:<pid>:<n>
 *     config <uid>
 *     config                              (fleet channel)
 */

static void
ngx_http_opamp_session_pubsub(ngx_str_t *channel, ngx_str_t *payload)
{
    u_char                    *p, *last, *conn;
    u_char                     uid[NGX_HTTP_OPAMP_UID_LEN];
    u_char                     own[NGX_HTTP_OPAMP_CONN_ID_LEN];
    size_t                     own_len;
    uint64_t                   n;
    ngx_str_t                 *fleet;
    ngx_http_opamp_session_t  *s;

    p = payload->data;
    last = p + payload->len;

    fleet = ngx_http_opamp_redis_fleet_channel();

    if (channel->len == fleet->len
        && ngx_strncmp(channel->data, fleet->data, fleet->len) == 0)
    {
        if (payload->len == 6 && ngx_strncmp(p, "config", 6) == 0) {
            ngx_http_opamp_session_config_changed(NULL);
            return;
        }

        /* later versions may say more on the fleet channel */
        return;
    }

    if (payload->len == 7 + NGX_HTTP_OPAMP_UID_STR_LEN
        && ngx_strncmp(p, "config ", 7) == 0)
    {
        if (ngx_http_opamp_uid_parse(uid, p + 7, NGX_HTTP_OPAMP_UID_STR_LEN)
            != 0)
        {
            goto invalid;
        }

        ngx_http_opamp_session_config_changed(uid);
        return;
    }

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
