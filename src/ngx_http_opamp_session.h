/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The OpAMP protocol for one agent connection, whatever the transport:
 * validate an AgentToServer, persist it with one Redis round trip, answer
 * with a ServerToAgent.  Transports (websocket, http) feed it whole
 * messages and give it the three callbacks below.
 */

#ifndef _NGX_HTTP_OPAMP_SESSION_H_INCLUDED_
#define _NGX_HTTP_OPAMP_SESSION_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_identity.h"
#include "ngx_http_opamp_token.h"


typedef struct ngx_http_opamp_session_s  ngx_http_opamp_session_t;

/* what the worker keeps of a WebSocket agent's config
 * (ngx_http_opamp_fanout.h) */
typedef struct ngx_http_opamp_view_s  ngx_http_opamp_view_t;

/* queue one packed ServerToAgent (without transport framing) for the
 * agent; the transport copies the bytes */
typedef ngx_int_t (*ngx_http_opamp_send_pt)(ngx_http_opamp_session_t *s,
    u_char *data, size_t len);

/* the message handed to the session is fully processed (reply sent or
 * given up): a WebSocket transport reads the next message, HTTP ends */
typedef void (*ngx_http_opamp_resume_pt)(ngx_http_opamp_session_t *s);

/* the session wants the connection closed (WebSocket close code).
 * Neither send nor close may free the request before they return: the
 * session goes on using itself after calling them (post an event or wait
 * for the write to finish instead). */
typedef void (*ngx_http_opamp_close_pt)(ngx_http_opamp_session_t *s,
    ngx_uint_t code, const char *reason);


/*
 * What the access log says of a plain HTTP message ($opamp_instance_uid,
 * $opamp_sequence_num, $opamp_reply): kept in the request's pool, since
 * the session goes before the request is logged.
 */
typedef struct {
    u_char                          uid[NGX_HTTP_OPAMP_UID_LEN];
    uint64_t                        sequence_num;
    ngx_uint_t                      reply;      /* parts sent, a bit each:
                                                   ngx_http_opamp_metrics.h */
    unsigned                        has_uid:1;
    unsigned                        replied:1;
} ngx_http_opamp_log_t;


/*
 * The short way in the worker (ngx_http_opamp_session_settled.c): what a
 * WebSocket session keeps after beats.lua found its agent owed nothing,
 * so that the heartbeats after it are answered without Redis.
 */
typedef struct {
    uint64_t                        last_seq;     /* the last answered */
    uint64_t                        stored_seq;   /* the last Redis holds */
    uint64_t                        capabilities;
    ngx_msec_t                      until;        /* Redis again from then */
    ngx_msec_t                      leased;       /* Redis renewed it */
    ngx_msec_t                      last_beat;    /* the last heartbeat */
    ngx_uint_t                      epoch;        /* see settled.c */
    u_char                          cs_hash[40];
    unsigned                        chain:1;      /* the seqs are known */
    unsigned                        valid:1;      /* may answer */
} ngx_http_opamp_settled_t;


struct ngx_http_opamp_session_s {
    ngx_http_request_t             *request;    /* plain HTTP only */
    ngx_connection_t               *connection;
    ngx_http_opamp_loc_conf_t      *conf;
    void                           *transport_data;
    ngx_http_opamp_log_t           *log;        /* NULL: WebSocket */

    ngx_http_opamp_send_pt          send;
    ngx_http_opamp_resume_pt        resume;
    ngx_http_opamp_close_pt         close;

    /* registry of live WebSocket sessions of this worker, keyed by
     * conn_number, and the same sessions by instance uid */
    ngx_rbtree_node_t               node;
    ngx_rbtree_node_t               uid_node;
    u_char                          uid[NGX_HTTP_OPAMP_UID_LEN];

    /* unique per worker, names the connection in Redis */
    uint64_t                        conn_number;
    uint64_t                        messages;

    void                           *pending;    /* Redis command in flight */
    void                           *checking;   /* config check in flight */
    uint64_t                        capabilities;  /* of the last message */
    ngx_http_opamp_view_t          *view;       /* WebSocket agents that
                                                   take remote config */
    ngx_http_opamp_identity_t      *identity;   /* NULL: none configured */
    ngx_http_opamp_token_t         *token;      /* the credential presented;
                                                   NULL: no
                                                   opamp_enrollment_token */

    ngx_http_opamp_settled_t        settled;

    unsigned                        transport:1;
    unsigned                        has_uid:1;
    unsigned                        registered:1;
    unsigned                        busy:1;
    unsigned                        disconnected:1;  /* AgentDisconnect */
    unsigned                        closed:1;
    unsigned                        unavailable:1;   /* reply says so */
    unsigned                        bad_request:1;   /* reply says so */
    unsigned                        forbidden:1;     /* reply says so */
    unsigned                        has_header_uid:1;
    unsigned                        recheck:1;  /* config changed while
                                                   busy */

    /* OpAMP-Instance-UID of a plain HTTP request */
    u_char                          header_uid[NGX_HTTP_OPAMP_UID_LEN];
};


/* a plain HTTP agent's session, in the request pool */
ngx_http_opamp_session_t *ngx_http_opamp_session_create(
    ngx_http_request_t *r, ngx_uint_t transport);

/* a session in zeroed memory of the caller's (a WebSocket keeps it with
 * its own state, beyond the request) */
void ngx_http_opamp_session_init(ngx_http_opamp_session_t *s,
    ngx_http_request_t *r, ngx_uint_t transport);

/*
 * Processes one AgentToServer (the protobuf bytes, without any OpAMP
 * WebSocket header).  Returns NGX_OK when a reply will follow through
 * s->send and then s->resume (maybe before this returns), or NGX_ERROR on
 * a failure that leaves no way to answer.  The bytes may be freed as soon
 * as this returns.
 */
ngx_int_t ngx_http_opamp_session_message(ngx_http_opamp_session_t *s,
    u_char *data, size_t len);

/* answers a message that could not even be read as OpAMP (bad WebSocket
 * header) with a ServerErrorResponse BAD_REQUEST */
ngx_int_t ngx_http_opamp_session_bad_request(ngx_http_opamp_session_t *s,
    const char *reason);

/* the connection is gone: cancel pending work, unregister, and for a
 * WebSocket agent record the disconnection in Redis */
void ngx_http_opamp_session_finalize(ngx_http_opamp_session_t *s);

/* a WebSocket agent is alive (it answered a ping) though it sent no
 * message for a while: renew its lease in Redis; fire and forget */
void ngx_http_opamp_session_touch(ngx_http_opamp_session_t *s);

/* the live WebSocket session of this worker with conn_number, or NULL */
ngx_http_opamp_session_t *ngx_http_opamp_session_lookup(
    uint64_t conn_number);

/* per-worker setup and teardown (registry, pub/sub message handler) */
ngx_int_t ngx_http_opamp_session_init_process(ngx_cycle_t *cycle);
void ngx_http_opamp_session_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_OPAMP_SESSION_H_INCLUDED_ */
