/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What the files of the Redis links share, inside the module only: the
 * link, the pending command, the primary the Sentinels named, the
 * worker's links and the link functions of ngx_http_opamp_redis.c
 * (handshake, commands, I/O, timers, reconnect) that the connecting part
 * (ngx_http_opamp_redis_connect.c), the Sentinel part
 * (ngx_http_opamp_redis_sentinel.c), the TLS part
 * (ngx_http_opamp_redis_ssl.c), the WAIT part
 * (ngx_http_opamp_redis_wait.c) and the reply parser
 * (ngx_http_opamp_redis_reply.c) call.
 */

#ifndef _NGX_HTTP_OPAMP_REDIS_LINK_H_INCLUDED_
#define _NGX_HTTP_OPAMP_REDIS_LINK_H_INCLUDED_


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include <hiredis/hiredis.h>


#define NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN   100
#define NGX_HTTP_OPAMP_REDIS_BACKOFF_MAX   5000

#define NGX_HTTP_OPAMP_REDIS_HOST_LEN      255

/* the most a reply may hold on a link that only ever gets small ones:
 * pub/sub messages, the Sentinel's answers, WAIT's count */
#define NGX_HTTP_OPAMP_REDIS_SMALL_REPLY   65536

#define NGX_HTTP_OPAMP_REDIS_COMMAND       0
#define NGX_HTTP_OPAMP_REDIS_PUBSUB        1
#define NGX_HTTP_OPAMP_REDIS_WAIT          2
#define NGX_HTTP_OPAMP_REDIS_SENTINEL      3
#define NGX_HTTP_OPAMP_REDIS_NLINKS        4


typedef enum {
    NGX_HTTP_OPAMP_REDIS_DOWN = 0,
    NGX_HTTP_OPAMP_REDIS_RESOLVING,
    NGX_HTTP_OPAMP_REDIS_CONNECTING,
    NGX_HTTP_OPAMP_REDIS_TLS,
    NGX_HTTP_OPAMP_REDIS_HANDSHAKE,
    NGX_HTTP_OPAMP_REDIS_READY
} ngx_http_opamp_redis_state_e;


typedef struct {
    const char                       *name;
    ngx_uint_t                        kind;

    ngx_connection_t                 *conn;
    redisReader                      *reader;

    /* changes whenever the connection goes: a loop over replies stops */
    ngx_uint_t                        gen;

    /* commands formatted and not yet written: out[pos, len) */
    u_char                           *out;
    size_t                            out_pos;
    size_t                            out_len;
    size_t                            out_size;

    ngx_http_opamp_redis_state_e      state;

    /* commands sent and not answered yet, oldest first */
    ngx_queue_t                       pending;

    /* resolve, connect and handshake deadline, then the oldest command's */
    ngx_event_t                       timer;
    ngx_event_t                       reconnect;
    ngx_msec_t                        backoff;

    /* the handshake replies still awaited */
    ngx_uint_t                        handshake;

    /* when Redis last answered a command of the link */
    ngx_msec_t                        answered;

    /* the most a reply being read may hold in the worker (the bytes
     * not parsed yet and the objects parsed), and what it holds */
    size_t                            max_reply;
    size_t                            reply_mem;

    /* a subscribed link: since when a reply is half-received, and when
     * a PING went out that is not answered yet */
    ngx_msec_t                        partial_since;
    ngx_msec_t                        ping_sent;

    ngx_resolver_ctx_t               *resolving;
    ngx_uint_t                        next_addr;    /* round robin */

    /* where the link connects to now */
    ngx_sockaddr_t                    sockaddr;
    socklen_t                         socklen;
    ngx_str_t                         host;         /* name or address */
    in_port_t                         port;
    u_char                            host_buf[NGX_HTTP_OPAMP_REDIS_HOST_LEN
                                               + 1];
    ngx_str_t                         addr;         /* for logs */
    u_char                            addr_buf[NGX_SOCKADDR_STRLEN];

    ngx_log_t                         log;
    u_char                            why[NGX_MAX_ERROR_STR];

    unsigned                          subscriber:1;
    unsigned                          outage_logged:1;
    unsigned                          blocked:1;    /* socket full */
    unsigned                          waiting:1;    /* for the primary */
    unsigned                          too_big:1;    /* a reply, refused */
    unsigned                          partial:1;
    unsigned                          pinging:1;
} ngx_http_opamp_redis_link_t;


/* the link an event of its own belongs to (its data names no link: see
 * ngx_http_opamp_event_connection) */
#define ngx_http_opamp_redis_link_of(ev, field)                              \
    ((ngx_http_opamp_redis_link_t *)                                         \
        ((u_char *) (ev) - offsetof(ngx_http_opamp_redis_link_t, field)))


struct ngx_http_opamp_redis_cmd_s {
    ngx_queue_t                       queue;
    ngx_msec_t                        deadline;
    ngx_http_opamp_redis_handler_pt   handler;
    void                             *data;
    ngx_http_opamp_redis_link_t      *link;
};


/* the primary named by the Sentinels */
typedef struct {
    ngx_str_t                         host;
    in_port_t                         port;
    u_char                            buf[NGX_HTTP_OPAMP_REDIS_HOST_LEN + 1];
    ngx_uint_t                        known;
} ngx_http_opamp_redis_primary_t;


extern ngx_http_opamp_main_conf_t      *ngx_http_opamp_redis_conf;
extern ngx_log_t                       *ngx_http_opamp_redis_log;
extern ngx_http_opamp_redis_link_t      ngx_http_opamp_redis_links[
                                                NGX_HTTP_OPAMP_REDIS_NLINKS];
extern ngx_http_opamp_redis_primary_t   ngx_http_opamp_redis_primary;
extern ngx_uint_t                       ngx_http_opamp_redis_next_sentinel;
extern ngx_uint_t                       ngx_http_opamp_redis_exiting;


#define ngx_http_opamp_redis_cmd_link                                         \
    ngx_http_opamp_redis_links[NGX_HTTP_OPAMP_REDIS_COMMAND]
#define ngx_http_opamp_redis_sub_link                                         \
    ngx_http_opamp_redis_links[NGX_HTTP_OPAMP_REDIS_PUBSUB]
#define ngx_http_opamp_redis_wait_link                                        \
    ngx_http_opamp_redis_links[NGX_HTTP_OPAMP_REDIS_WAIT]
#define ngx_http_opamp_redis_sentinel_link                                    \
    ngx_http_opamp_redis_links[NGX_HTTP_OPAMP_REDIS_SENTINEL]

#define ngx_http_opamp_redis_sentinel_mode()                                  \
    (ngx_http_opamp_redis_conf->redis.sentinels != NULL)


/* the events of a link's connection, from connect() on */
void ngx_http_opamp_redis_read_handler(ngx_event_t *ev);
void ngx_http_opamp_redis_write_handler(ngx_event_t *ev);

/* the handshake once connected (and TLS is up); hello_step checks one
 * of its replies */
void ngx_http_opamp_redis_hello(ngx_http_opamp_redis_link_t *link);
ngx_int_t ngx_http_opamp_redis_hello_step(ngx_http_opamp_redis_link_t *link,
    redisReply *reply, const char *what);

/* the handshake is done: commands may go */
void ngx_http_opamp_redis_up(ngx_http_opamp_redis_link_t *link);

/* closes the connection; every pending handler sees NULL */
void ngx_http_opamp_redis_close(ngx_http_opamp_redis_link_t *link);

/* closes, logs the outage once, connects again later with backoff */
void ngx_http_opamp_redis_drop(ngx_http_opamp_redis_link_t *link,
    const char *why);

/* the primary moved: closes and connects to the new one now */
void ngx_http_opamp_redis_move(ngx_http_opamp_redis_link_t *link);

/* a command on the given link, whatever its state, with a deadline; its
 * handler is called once; NULL only without memory */
ngx_http_opamp_redis_cmd_t *ngx_http_opamp_redis_send(
    ngx_http_opamp_redis_link_t *link, int argc, const char **argv,
    const size_t *argvlen, ngx_http_opamp_redis_handler_pt handler,
    void *data);

/* a command without a handler, in RESP into the link's output buffer;
 * post_write has the buffer written at the end of the event loop's turn */
ngx_int_t ngx_http_opamp_redis_append(ngx_http_opamp_redis_link_t *link,
    int argc, const char **argv, const size_t *argvlen);
void ngx_http_opamp_redis_post_write(ngx_http_opamp_redis_link_t *link);

/* a reply parser whose objects count against link->max_reply
 * (ngx_http_opamp_redis_reply.c); link->too_big tells a refusal from a
 * lack of memory */
redisReader *ngx_http_opamp_redis_reader(ngx_http_opamp_redis_link_t *link);

/* reads from the link's socket, plain or TLS */
ssize_t ngx_http_opamp_redis_recv(ngx_http_opamp_redis_link_t *link,
    u_char *buf, size_t size);


#endif /* _NGX_HTTP_OPAMP_REDIS_LINK_H_INCLUDED_ */
