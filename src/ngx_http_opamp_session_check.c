/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Offers pushed to connected WebSocket agents without waiting for their
 * next message: the messages on this worker's Redis channels (a config
 * changed for one agent or for the fleet, an agent taken over by another
 * connection), and the config checks they start, many agents of this
 * worker in one script call.
 */


#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_session_internal.h"
#include "ngx_http_opamp_fanout.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"


/* agents per script call: long enough to save round trips, short enough
 * that Redis answers the first agents while it works on the next, and
 * that one call stays within docs/operations.md's Redis time when every
 * agent of it has the largest description allowed */
#define NGX_HTTP_OPAMP_CHECK_BATCH  64


static ngx_http_opamp_check_batch_t *ngx_http_opamp_session_batch(
    ngx_uint_t size);
static void ngx_http_opamp_session_check_batch(
    ngx_http_opamp_check_batch_t *b, ngx_uint_t force);
static void ngx_http_opamp_session_checked(ngx_uint_t i,
    ngx_http_opamp_report_t *rep, ngx_int_t rc, void *data);
static void ngx_http_opamp_session_config_changed(u_char *uid);
static void ngx_http_opamp_session_fanout_done(
    ngx_http_opamp_check_batch_t *b);


/*
 * A config or group changed: ask Redis what this WebSocket agent is owed
 * now, and send it without waiting for the agent's next message.
 */

void
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

ngx_uint_t
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
    b->fanout = 0;
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
        ngx_http_opamp_session_fanout_done(b);
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

        ngx_http_opamp_session_fanout_done(b);
        ngx_free(b);
        return;
    }

    s = b->sessions[i];

    if (s == NULL || s->closed) {
        return;
    }

    if (rep->config_view) {
        ngx_http_opamp_fanout_learn(s, rep->config_view->element, NULL);
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
            ngx_http_opamp_session_sent(s, &s2a);
            (void) s->send(s, out.data, out.len);
            ngx_free(out.data);
        }

        ngx_http_opamp_session_free_owed(&owed);
    }
}


/*
 * uid NULL: every agent of this worker (a group or a fleet offer
 * changed), decided by the worker (ngx_http_opamp_fanout.c); else the
 * sessions of that agent (one, but for a takeover in progress), each
 * checked alone
 */

static void
ngx_http_opamp_session_config_changed(u_char *uid)
{
    ngx_rbtree_key_t               key;
    ngx_rbtree_node_t             *node, *root, *sentinel, *first;
    ngx_http_opamp_session_t      *s;

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

    ngx_http_opamp_fanout_change();
}


/* a fleet change's agents that Redis decides for (check.lua), in batches
 * of sessions that share a location configuration */

void
ngx_http_opamp_session_check_add(ngx_http_opamp_check_batch_t **bp,
    ngx_http_opamp_session_t *s)
{
    ngx_http_opamp_check_batch_t  *b;

    b = *bp;

    if (b && (b->n == b->size || b->sessions[0]->conf != s->conf)) {
        ngx_http_opamp_session_check_batch(b, 0);
        b = NULL;
    }

    if (b == NULL) {
        b = ngx_http_opamp_session_batch(NGX_HTTP_OPAMP_CHECK_BATCH);
        if (b == NULL) {
            *bp = NULL;
            return;
        }

        b->fanout = 1;
        ngx_http_opamp_fanout_begin();
    }

    b->sessions[b->n++] = s;
    *bp = b;
}


void
ngx_http_opamp_session_check_flush(ngx_http_opamp_check_batch_t **bp)
{
    if (*bp) {
        ngx_http_opamp_session_check_batch(*bp, 0);
        *bp = NULL;
    }
}


static void
ngx_http_opamp_session_fanout_done(ngx_http_opamp_check_batch_t *b)
{
    if (b->fanout) {
        ngx_http_opamp_fanout_end();
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

void
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

    /* something changed: settled sessions ask Redis again */
    ngx_http_opamp_session_settled_changed();

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
