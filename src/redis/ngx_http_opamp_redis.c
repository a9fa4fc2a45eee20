/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The links to Redis, on nginx's event loop.
 *
 * Each worker holds two links to the Redis primary: the command link,
 * which carries every command of the module in order, and the pub/sub
 * link, subscribed to the worker's own channel and the fleet's; with
 * opamp_redis_wait, a wait link carries the WAITs after admin writes.
 * With "opamp_redis sentinel://..." one more link stays connected to one
 * of the Sentinels: it asks for the primary's address and is subscribed
 * to +switch-master, so that every worker follows a failover without a
 * reload.
 *
 * The socket I/O is our own, on an nginx connection, with nginx's
 * OpenSSL for TLS; hiredis is used only to parse replies (redisReader).
 * Why not hiredis's async I/O: Debian bookworm's hiredis 0.14 has no TLS
 * and a newer one would have to be built from fetched sources; hiredis
 * also connects by itself (getaddrinfo() blocks on a name), while here a
 * name is resolved through nginx's own resolver on every reconnect, and
 * TLS uses the same OpenSSL, protocols, ciphers and certificate files
 * as the rest of nginx.  The reply objects stay hiredis's redisReply, so
 * nothing changes for the rest of the module.
 *
 * Redis has no timeouts of its own here either.  The link keeps its
 * commands in a FIFO with deadlines and one timer on the oldest.  When
 * the oldest outlives opamp_redis_timeout and Redis has answered nothing
 * for that long either, the server or the path to it is stuck: the link
 * is dropped (every pending handler then sees NULL) and connected again
 * with backoff.  A Redis that keeps answering is working through a
 * backlog (a reconnect storm of a whole fleet) and is waited for:
 * dropping the link would throw away the work queued and bring the
 * agents back to queue it again.
 *
 * This file holds the links themselves; how a link connects (where to,
 * the resolver, the socket) is in ngx_http_opamp_redis_connect.c, what
 * asks the Sentinels in ngx_http_opamp_redis_sentinel.c, TLS in
 * ngx_http_opamp_redis_ssl.c, the WAIT after admin writes in
 * ngx_http_opamp_redis_wait.c, the reply parser (hiredis's, its objects
 * counted against the link's bound) in ngx_http_opamp_redis_reply.c,
 * the configuration in ngx_http_opamp_redis_conf.c, and what they share
 * in ngx_http_opamp_redis_link.h.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_redis_link.h"
#include "ngx_http_opamp_redis_connect.h"
#include "ngx_http_opamp_redis_sentinel.h"
#include "ngx_http_opamp_redis_ssl.h"


/* the output buffer a link keeps between commands, at most */
#define NGX_HTTP_OPAMP_REDIS_OUT_KEEP      65536

/* reads per read event before others get a turn */
#define NGX_HTTP_OPAMP_REDIS_READS         32

/* the default of opamp_redis_max_reply, at the least */
#define NGX_HTTP_OPAMP_REDIS_MAX_REPLY     ((size_t) 64 * 1024 * 1024)


static void ngx_http_opamp_redis_auth_reply(redisReply *reply, void *data);
static void ngx_http_opamp_redis_select_reply(redisReply *reply, void *data);
static void ngx_http_opamp_redis_ping_reply(redisReply *reply, void *data);
static void ngx_http_opamp_redis_push(ngx_http_opamp_redis_link_t *link,
    redisReply *reply);
static void ngx_http_opamp_redis_schedule(ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_opamp_redis_timer_handler(ngx_event_t *ev);
static void ngx_http_opamp_redis_keepalive(ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_too_big(ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_dispatch(ngx_http_opamp_redis_link_t *link,
    redisReply *reply);

static ssize_t ngx_http_opamp_redis_write(ngx_http_opamp_redis_link_t *link,
    u_char *buf, size_t size);
static void ngx_http_opamp_redis_flush(ngx_http_opamp_redis_link_t *link);
static u_char *ngx_http_opamp_redis_log_error(ngx_log_t *log, u_char *buf,
    size_t len);


ngx_http_opamp_main_conf_t       *ngx_http_opamp_redis_conf;
ngx_log_t                        *ngx_http_opamp_redis_log;
ngx_http_opamp_redis_link_t       ngx_http_opamp_redis_links[
                                          NGX_HTTP_OPAMP_REDIS_NLINKS];
ngx_http_opamp_redis_primary_t    ngx_http_opamp_redis_primary;
ngx_uint_t                        ngx_http_opamp_redis_next_sentinel;
ngx_uint_t                        ngx_http_opamp_redis_exiting;
ngx_uint_t                        ngx_http_opamp_redis_ups;

static ngx_str_t                         ngx_http_opamp_redis_channel;
static ngx_str_t                         ngx_http_opamp_redis_fleet;
static ngx_http_opamp_redis_message_pt   ngx_http_opamp_redis_on_message;
static ngx_http_opamp_redis_ready_pt     ngx_http_opamp_redis_on_ready;


ngx_int_t
ngx_http_opamp_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf)
{
    size_t                        max_reply;
    ngx_uint_t                    i, n;
    ngx_http_opamp_redis_link_t  *link;

    static const char  *names[] = { "command", "pub/sub", "wait",
                                    "sentinel" };

    ngx_http_opamp_redis_conf = omcf;
    ngx_http_opamp_redis_log = cycle->log;
    ngx_http_opamp_redis_exiting = 0;
    ngx_memzero(&ngx_http_opamp_redis_primary,
                sizeof(ngx_http_opamp_redis_primary_t));

    ngx_http_opamp_redis_channel.len = omcf->prefix.len
                                       + sizeof("worker::") - 1
                                       + omcf->server_id.len + NGX_INT_T_LEN;
    ngx_http_opamp_redis_channel.data =
                   ngx_pnalloc(cycle->pool, ngx_http_opamp_redis_channel.len);
    if (ngx_http_opamp_redis_channel.data == NULL) {
        return NGX_ERROR;
    }

    ngx_http_opamp_redis_channel.len =
        ngx_sprintf(ngx_http_opamp_redis_channel.data, "%Vworker:%V:%P",
                    &omcf->prefix, &omcf->server_id, ngx_pid)
        - ngx_http_opamp_redis_channel.data;

    ngx_http_opamp_redis_fleet.len = omcf->prefix.len + sizeof("fleet") - 1;
    ngx_http_opamp_redis_fleet.data =
                     ngx_pnalloc(cycle->pool, ngx_http_opamp_redis_fleet.len);
    if (ngx_http_opamp_redis_fleet.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ngx_http_opamp_redis_fleet.data, "%Vfleet", &omcf->prefix);

    /* the workers of a host start with different Sentinels */
    ngx_http_opamp_redis_next_sentinel = (ngx_uint_t) ngx_pid;

    /*
     * The largest reply the command link reads back: a config up to
     * opamp_max_message_size with the offers around it, an agent's state
     * up to opamp_max_agent_state with the fields derived from it, a
     * page of the admin listing.  The other links only ever get small
     * replies.
     */

    max_reply = omcf->redis_max_reply;

    if (max_reply == NGX_CONF_UNSET_SIZE) {
        max_reply = ngx_max(NGX_HTTP_OPAMP_REDIS_MAX_REPLY,
                            2 * omcf->max_message_largest);
        max_reply = ngx_max(max_reply, 4 * omcf->max_state_largest);
    }

    for (i = 0; i < NGX_HTTP_OPAMP_REDIS_NLINKS; i++) {
        link = &ngx_http_opamp_redis_links[i];

        ngx_memzero(link, sizeof(ngx_http_opamp_redis_link_t));

        link->name = names[i];
        link->kind = i;
        link->subscriber = (i == NGX_HTTP_OPAMP_REDIS_PUBSUB
                            || i == NGX_HTTP_OPAMP_REDIS_SENTINEL);
        link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN;
        link->max_reply = (i == NGX_HTTP_OPAMP_REDIS_COMMAND)
                          ? max_reply : NGX_HTTP_OPAMP_REDIS_SMALL_REPLY;
        ngx_queue_init(&link->pending);

        link->log = *cycle->log;
        link->log.handler = ngx_http_opamp_redis_log_error;
        link->log.data = link;
        link->log.action = NULL;

        ngx_http_opamp_event_init(&link->timer,
                                  ngx_http_opamp_redis_timer_handler,
                                  cycle->log);

        /* a subscribed link's timer only checks that it is alive: it
         * must not hold a graceful shutdown back */
        link->timer.cancelable = link->subscriber;

        /* a reconnect attempt must not hold a graceful shutdown back */
        ngx_http_opamp_event_init(&link->reconnect,
                                  ngx_http_opamp_redis_reconnect_handler,
                                  cycle->log);
        link->reconnect.cancelable = 1;
    }

    /* the Sentinel link first: the others wait for its answer; the wait
     * link only with opamp_redis_wait */

    for (i = NGX_HTTP_OPAMP_REDIS_NLINKS; i > 0; i--) {
        n = i - 1;

        if ((n == NGX_HTTP_OPAMP_REDIS_SENTINEL && !omcf->redis.sentinels)
            || (n == NGX_HTTP_OPAMP_REDIS_WAIT && !omcf->wait_replicas))
        {
            continue;
        }

        ngx_http_opamp_redis_connect(&ngx_http_opamp_redis_links[n]);
    }

    return NGX_OK;
}


void
ngx_http_opamp_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                    i;
    ngx_http_opamp_redis_link_t  *link;

    ngx_http_opamp_redis_exiting = 1;

    for (i = 0; i < NGX_HTTP_OPAMP_REDIS_NLINKS; i++) {
        link = &ngx_http_opamp_redis_links[i];

        if (link->reconnect.timer_set) {
            ngx_del_timer(&link->reconnect);
        }

        /* pending handlers are called with NULL */
        ngx_http_opamp_redis_close(link);

        if (link->out) {
            ngx_free(link->out);
            link->out = NULL;
            link->out_size = 0;
        }
    }
}


ngx_uint_t
ngx_http_opamp_redis_ready(void)
{
    return ngx_http_opamp_redis_cmd_link.state == NGX_HTTP_OPAMP_REDIS_READY;
}


ngx_str_t *
ngx_http_opamp_redis_worker_channel(void)
{
    return &ngx_http_opamp_redis_channel;
}


ngx_str_t *
ngx_http_opamp_redis_fleet_channel(void)
{
    return &ngx_http_opamp_redis_fleet;
}


void
ngx_http_opamp_redis_set_message_handler(
    ngx_http_opamp_redis_message_pt handler)
{
    ngx_http_opamp_redis_on_message = handler;
}


void
ngx_http_opamp_redis_set_ready_handler(ngx_http_opamp_redis_ready_pt handler)
{
    ngx_http_opamp_redis_on_ready = handler;
}


ngx_http_opamp_redis_cmd_t *
ngx_http_opamp_redis_command(int argc, const char **argv,
    const size_t *argvlen, ngx_http_opamp_redis_handler_pt handler,
    void *data)
{
    ngx_http_opamp_redis_link_t  *link;

    link = &ngx_http_opamp_redis_cmd_link;

    if (link->state != NGX_HTTP_OPAMP_REDIS_READY) {
        return NULL;
    }

    return ngx_http_opamp_redis_send(link, argc, argv, argvlen, handler,
                                     data);
}


void
ngx_http_opamp_redis_cancel(ngx_http_opamp_redis_cmd_t *cmd)
{
    /* the reply, or the NULL at disconnect, still arrives and frees it */
    cmd->handler = NULL;
    cmd->data = NULL;
}


ngx_http_opamp_redis_cmd_t *
ngx_http_opamp_redis_send(ngx_http_opamp_redis_link_t *link, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_opamp_redis_handler_pt handler, void *data)
{
    ngx_http_opamp_redis_cmd_t  *cmd;

    /*
     * Plain malloc: a command may outlive the request or connection that
     * sent it (its handler is then canceled), so no pool fits.
     */

    cmd = ngx_alloc(sizeof(ngx_http_opamp_redis_cmd_t),
                    ngx_http_opamp_redis_log);
    if (cmd == NULL) {
        return NULL;
    }

    if (ngx_http_opamp_redis_append(link, argc, argv, argvlen) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                      "opamp: redis command not sent: no memory");
        ngx_free(cmd);
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->link = link;
    cmd->deadline = ngx_current_msec + ngx_http_opamp_redis_conf->redis_timeout;

    ngx_queue_insert_tail(&link->pending, &cmd->queue);

    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_COMMANDS);
    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_WAITING);

    if (link->state == NGX_HTTP_OPAMP_REDIS_READY && !link->timer.timer_set) {
        ngx_add_timer(&link->timer, ngx_http_opamp_redis_conf->redis_timeout);
    }

    ngx_http_opamp_redis_post_write(link);

    return cmd;
}


/*
 * The command in RESP, straight into the link's output buffer: the
 * arguments are copied before this returns.  hiredis's own formatting
 * grows an sds string piece by piece and was a measurable share of a
 * worker's time with report scripts of 40 arguments and more.
 */

ngx_int_t
ngx_http_opamp_redis_append(ngx_http_opamp_redis_link_t *link, int argc,
    const char **argv, const size_t *argvlen)
{
    int      i;
    u_char  *p;
    size_t   size, need;

    size = 1 + NGX_INT_T_LEN + 2;

    for (i = 0; i < argc; i++) {
        size += 1 + NGX_SIZE_T_LEN + 2 + argvlen[i] + 2;
    }

    if (link->out_size - link->out_len < size) {

        if (link->out_pos) {
            /* what is written goes; TLS accepts a moved write buffer */
            ngx_memmove(link->out, link->out + link->out_pos,
                        link->out_len - link->out_pos);
            link->out_len -= link->out_pos;
            link->out_pos = 0;
        }

        if (link->out_size - link->out_len < size) {
            need = ngx_max(link->out_len + size, 2 * link->out_size);
            need = ngx_max(need, 4096);

            p = ngx_alloc(need, ngx_http_opamp_redis_log);
            if (p == NULL) {
                return NGX_ERROR;
            }

            if (link->out) {
                ngx_memcpy(p, link->out, link->out_len);
                ngx_free(link->out);
            }

            link->out = p;
            link->out_size = need;
        }
    }

    p = ngx_sprintf(link->out + link->out_len, "*%d" CRLF, argc);

    for (i = 0; i < argc; i++) {
        p = ngx_sprintf(p, "$%uz" CRLF, argvlen[i]);
        p = ngx_cpymem(p, argv[i], argvlen[i]);
        *p++ = CR; *p++ = LF;
    }

    link->out_len = p - link->out;

    return NGX_OK;
}


/*
 * Commands queued during a turn of the event loop are written together at
 * its end: the socket of a connected link is nearly always writable, so
 * the write event is posted rather than asked of epoll.  Only what the
 * socket did not take waits for epoll.
 */

void
ngx_http_opamp_redis_post_write(ngx_http_opamp_redis_link_t *link)
{
    ngx_event_t  *wev;

    if (link->conn == NULL || link->blocked
        || link->state < NGX_HTTP_OPAMP_REDIS_HANDSHAKE)
    {
        return;
    }

    wev = link->conn->write;

    if (!wev->posted) {
        ngx_post_event(wev, &ngx_posted_events);
    }
}


/*
 * The Redis handshake: AUTH where set, ROLE behind Sentinels (a primary
 * that a Sentinel named may have been demoted since), SELECT, then PING
 * on the command link, SUBSCRIBE on the pub/sub link, and on the
 * Sentinel link the question for the primary.  Sent together; the link
 * is ready when every answer is in.
 */

void
ngx_http_opamp_redis_hello(ngx_http_opamp_redis_link_t *link)
{
    u_char                       db[NGX_INT_T_LEN];
    size_t                       argvlen[3];
    ngx_str_t                   *user, *pass;
    ngx_uint_t                   argc;
    const char                  *argv[3];
    ngx_http_opamp_redis_url_t  *url;

    url = &ngx_http_opamp_redis_conf->redis;

    link->log.action = "talking to redis";
    link->state = NGX_HTTP_OPAMP_REDIS_HANDSHAKE;
    link->handshake = 0;

    link->reader = ngx_http_opamp_redis_reader(link);
    if (link->reader == NULL) {
        ngx_http_opamp_redis_drop(link, "no memory");
        return;
    }

    if (link->kind == NGX_HTTP_OPAMP_REDIS_SENTINEL) {
        user = &ngx_http_opamp_redis_conf->sentinel_username;
        pass = &ngx_http_opamp_redis_conf->sentinel_password;

    } else {
        user = &url->username;
        pass = &url->password;
    }

    if (pass->len) {
        argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = 4;

        if (user->len) {
            argv[argc] = (const char *) user->data;
            argvlen[argc++] = user->len;
        }

        argv[argc] = (const char *) pass->data;
        argvlen[argc++] = pass->len;

        if (ngx_http_opamp_redis_send(link, argc, argv, argvlen,
                                      ngx_http_opamp_redis_auth_reply, link)
            == NULL)
        {
            goto failed;
        }

        link->handshake++;
    }

    if (link->kind == NGX_HTTP_OPAMP_REDIS_SENTINEL) {
        argv[0] = "SENTINEL";
        argvlen[0] = 8;
        argv[1] = "get-master-addr-by-name";
        argvlen[1] = 23;
        argv[2] = (const char *) url->master_name.data;
        argvlen[2] = url->master_name.len;

        if (ngx_http_opamp_redis_send(link, 3, argv, argvlen,
                                      ngx_http_opamp_redis_master_reply, link)
            == NULL)
        {
            goto failed;
        }

        /* the answer, then the confirmation of the SUBSCRIBE it sends */
        link->handshake += 2;
        return;
    }

    if (url->sentinels) {
        argv[0] = "ROLE";
        argvlen[0] = 4;

        if (ngx_http_opamp_redis_send(link, 1, argv, argvlen,
                                      ngx_http_opamp_redis_role_reply, link)
            == NULL)
        {
            goto failed;
        }

        link->handshake++;
    }

    if (link->subscriber) {
        /* pub/sub channels do not belong to a database: no SELECT */
        argv[0] = "SUBSCRIBE";
        argvlen[0] = 9;
        argv[1] = (const char *) ngx_http_opamp_redis_channel.data;
        argvlen[1] = ngx_http_opamp_redis_channel.len;
        argv[2] = (const char *) ngx_http_opamp_redis_fleet.data;
        argvlen[2] = ngx_http_opamp_redis_fleet.len;

        /* no command of the FIFO: its answers are pushed messages, one
         * confirmation per channel */

        if (ngx_http_opamp_redis_append(link, 3, argv, argvlen) != NGX_OK) {
            goto failed;
        }

        link->handshake += 2;
        ngx_http_opamp_redis_post_write(link);
        return;
    }

    if (url->database) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", url->database) - db;

        if (ngx_http_opamp_redis_send(link, 2, argv, argvlen,
                                      ngx_http_opamp_redis_select_reply, link)
            == NULL)
        {
            goto failed;
        }

        link->handshake++;
    }

    /* the PONG tells that everything before it succeeded */
    argv[0] = "PING";
    argvlen[0] = 4;

    if (ngx_http_opamp_redis_send(link, 1, argv, argvlen,
                                  ngx_http_opamp_redis_ping_reply, link)
        == NULL)
    {
        goto failed;
    }

    link->handshake++;
    return;

failed:

    ngx_http_opamp_redis_drop(link, "no memory");
}


/*
 * NGX_OK: a good answer of the handshake; NGX_DONE: the link is up;
 * NGX_ERROR: none, or an error that dropped the link.
 */

ngx_int_t
ngx_http_opamp_redis_hello_step(ngx_http_opamp_redis_link_t *link,
    redisReply *reply, const char *what)
{
    if (reply == NULL || link->state != NGX_HTTP_OPAMP_REDIS_HANDSHAKE) {
        return NGX_ERROR;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        if (!link->outage_logged) {
            ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                          "opamp: redis %s on the %s connection to \"%V\" "
                          "(%V) failed: %*s; retrying", what, link->name,
                          &ngx_http_opamp_redis_conf->redis.url, &link->addr,
                          (size_t) reply->len, reply->str);

            /* a wrong password stays wrong: one line per outage */
            link->outage_logged = 1;
        }

        ngx_http_opamp_redis_drop(link, what);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_opamp_redis_auth_reply(redisReply *reply, void *data)
{
    ngx_http_opamp_redis_link_t *link = data;

    if (ngx_http_opamp_redis_hello_step(link, reply, "AUTH") == NGX_OK
        && --link->handshake == 0)
    {
        ngx_http_opamp_redis_up(link);
    }
}


static void
ngx_http_opamp_redis_select_reply(redisReply *reply, void *data)
{
    ngx_http_opamp_redis_link_t *link = data;

    if (ngx_http_opamp_redis_hello_step(link, reply, "SELECT") == NGX_OK
        && --link->handshake == 0)
    {
        ngx_http_opamp_redis_up(link);
    }
}


static void
ngx_http_opamp_redis_ping_reply(redisReply *reply, void *data)
{
    ngx_http_opamp_redis_link_t *link = data;

    if (ngx_http_opamp_redis_hello_step(link, reply, "PING") == NGX_OK
        && --link->handshake == 0)
    {
        ngx_http_opamp_redis_up(link);
    }
}


/* the messages of a subscribed link */

static void
ngx_http_opamp_redis_push(ngx_http_opamp_redis_link_t *link,
    redisReply *reply)
{
    ngx_str_t     channel, payload;
    redisReply  **el;

    el = reply->element;

    if (el[0]->len == 9 && ngx_strncmp(el[0]->str, "subscribe", 9) == 0) {
        if (link->state == NGX_HTTP_OPAMP_REDIS_HANDSHAKE
            && --link->handshake == 0)
        {
            ngx_http_opamp_redis_up(link);
        }

        return;
    }

    if (el[0]->len != 7 || ngx_strncmp(el[0]->str, "message", 7) != 0
        || el[2]->type != REDIS_REPLY_STRING)
    {
        return;
    }

    channel.data = (u_char *) el[1]->str;
    channel.len = el[1]->len;
    payload.data = (u_char *) el[2]->str;
    payload.len = el[2]->len;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_http_opamp_redis_log, 0,
                   "opamp: %s message on \"%V\": \"%V\"", link->name,
                   &channel, &payload);

    if (link->kind == NGX_HTTP_OPAMP_REDIS_SENTINEL) {
        ngx_http_opamp_redis_switch_master(&payload);
        return;
    }

    if (ngx_http_opamp_redis_on_message) {
        ngx_http_opamp_redis_on_message(&channel, &payload);
    }
}


void
ngx_http_opamp_redis_up(ngx_http_opamp_redis_link_t *link)
{
    /* what was published while a link was down is lost */
    ngx_http_opamp_redis_ups++;

    link->state = NGX_HTTP_OPAMP_REDIS_READY;
    link->answered = ngx_current_msec;
    link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN;

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (!ngx_queue_empty(&link->pending) || link->subscriber) {
        /* a subscribed link's timer checks that it is alive */
        ngx_add_timer(&link->timer, ngx_http_opamp_redis_conf->redis_timeout);
    }

    if (link->outage_logged) {
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_RECONNECTS);
        link->outage_logged = 0;
        ngx_log_error(NGX_LOG_NOTICE, ngx_http_opamp_redis_log, 0,
                      "opamp: redis %s connection to \"%V\" (%V) restored",
                      link->name, &ngx_http_opamp_redis_conf->redis.url,
                      &link->addr);

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_http_opamp_redis_log, 0,
                       "opamp: redis %s connection to \"%V\" (%V) ready",
                       link->name, &ngx_http_opamp_redis_conf->redis.url,
                       &link->addr);
    }

    if (link->kind == NGX_HTTP_OPAMP_REDIS_COMMAND
        && ngx_http_opamp_redis_on_ready)
    {
        ngx_http_opamp_redis_on_ready();
    }
}


/*
 * Closes the connection, if any, and calls every pending handler with
 * NULL.  The link is DOWN afterwards; nothing is scheduled.
 */

void
ngx_http_opamp_redis_close(ngx_http_opamp_redis_link_t *link)
{
    ngx_pool_t                  *pool;
    ngx_queue_t                 *q;
    ngx_connection_t            *c;
    ngx_http_opamp_redis_cmd_t  *cmd;

    link->state = NGX_HTTP_OPAMP_REDIS_DOWN;
    link->gen++;
    link->blocked = 0;
    link->log.action = NULL;

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (link->resolving) {
        ngx_resolve_name_done(link->resolving);
        link->resolving = NULL;
    }

    c = link->conn;

    if (c) {
        link->conn = NULL;

#if (NGX_SSL)
        if (c->ssl) {
            /* no close_notify exchange: Redis does not wait for one */
            SSL_set_quiet_shutdown(c->ssl->connection, 1);
            (void) SSL_shutdown(c->ssl->connection);
            ERR_clear_error();
            SSL_free(c->ssl->connection);
            c->ssl = NULL;
        }
#endif

        pool = c->pool;
        ngx_close_connection(c);

        if (pool) {
            ngx_destroy_pool(pool);
        }
    }

    if (link->reader) {
        redisReaderFree(link->reader);
        link->reader = NULL;
    }

    link->reply_mem = 0;
    link->too_big = 0;
    link->partial = 0;
    link->pinging = 0;

    link->out_pos = 0;
    link->out_len = 0;

    if (link->out_size > NGX_HTTP_OPAMP_REDIS_OUT_KEEP) {
        ngx_free(link->out);
        link->out = NULL;
        link->out_size = 0;
    }

    /* handlers may send again: they find the link down */

    while (!ngx_queue_empty(&link->pending)) {
        q = ngx_queue_head(&link->pending);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_opamp_redis_cmd_t, queue);

        ngx_http_opamp_metrics_add(NGX_HTTP_OPAMP_M_REDIS_WAITING, -1);

        if (cmd->handler) {
            cmd->handler(NULL, cmd->data);
        }

        ngx_free(cmd);
    }
}


/*
 * The link is gone or never came up: log once per outage, retry later.
 */

void
ngx_http_opamp_redis_drop(ngx_http_opamp_redis_link_t *link, const char *why)
{
    ngx_uint_t  was_ready;

    was_ready = (link->state == NGX_HTTP_OPAMP_REDIS_READY);

    ngx_http_opamp_redis_close(link);

    if (ngx_http_opamp_redis_exiting) {
        return;
    }

    if (!link->outage_logged) {
        link->outage_logged = 1;
        ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                      "opamp: redis %s connection to \"%V\" (%V) %s: %s; "
                      "retrying", link->name,
                      &ngx_http_opamp_redis_conf->redis.url, &link->addr,
                      was_ready ? "lost" : "failed",
                      (why && why[0]) ? why : "connection closed");

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_http_opamp_redis_log, 0,
                       "opamp: redis %s connection to \"%V\" failed: %s",
                       link->name, &ngx_http_opamp_redis_conf->redis.url,
                       why ? why : "");
    }

    if (link->kind == NGX_HTTP_OPAMP_REDIS_SENTINEL) {
        /* try the next Sentinel */
        ngx_http_opamp_redis_next_sentinel++;

    } else {
        ngx_http_opamp_redis_sentinel_ask();
    }

    ngx_http_opamp_redis_schedule(link);
}


/* the primary moved: no error, connect to the new one now */

void
ngx_http_opamp_redis_move(ngx_http_opamp_redis_link_t *link)
{
    ngx_http_opamp_redis_close(link);

    link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN;

    ngx_http_opamp_redis_connect(link);
}


static void
ngx_http_opamp_redis_schedule(ngx_http_opamp_redis_link_t *link)
{
    ngx_msec_t  delay;

    if (link->reconnect.timer_set || link->state != NGX_HTTP_OPAMP_REDIS_DOWN
        || ngx_exiting || ngx_quit || ngx_terminate)
    {
        return;
    }

    /* jitter of up to a quarter keeps the workers of a fleet of nginx
     * hosts from reconnecting to a restarted Redis all at once */
    delay = link->backoff - link->backoff / 4
            + (ngx_msec_t) ngx_random() % (link->backoff / 2 + 1);

    ngx_add_timer(&link->reconnect, delay);

    link->backoff *= 2;
    if (link->backoff > NGX_HTTP_OPAMP_REDIS_BACKOFF_MAX) {
        link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MAX;
    }
}


static void
ngx_http_opamp_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_opamp_redis_link_t *link = ngx_http_opamp_redis_link_of(ev,
                                                                 reconnect);

    ngx_http_opamp_redis_connect(link);
}


static void
ngx_http_opamp_redis_timer_handler(ngx_event_t *ev)
{
    ngx_http_opamp_redis_link_t *link = ngx_http_opamp_redis_link_of(ev,
                                                                     timer);

    ngx_msec_t                   timeout;
    ngx_queue_t                 *q;
    ngx_http_opamp_redis_cmd_t  *cmd;

    if (link->state == NGX_HTTP_OPAMP_REDIS_DOWN) {
        return;
    }

    if (link->state == NGX_HTTP_OPAMP_REDIS_READY) {

        if (link->subscriber) {
            ngx_http_opamp_redis_keepalive(link);
            return;
        }

        if (ngx_queue_empty(&link->pending)) {
            return;
        }

        q = ngx_queue_head(&link->pending);
        cmd = ngx_queue_data(q, ngx_http_opamp_redis_cmd_t, queue);

        if ((ngx_msec_int_t) (cmd->deadline - ngx_current_msec) > 0) {
            /* the command that set this timer was answered in time */
            ngx_add_timer(&link->timer, cmd->deadline - ngx_current_msec);
            return;
        }

        timeout = ngx_http_opamp_redis_conf->redis_timeout;

        if (ngx_current_msec - link->answered < timeout) {
            /* late, but Redis is answering: a backlog, not a failure */
            ngx_add_timer(&link->timer,
                          link->answered + timeout - ngx_current_msec);
            return;
        }
    }

    /* every pending handler sees NULL, then a retry */
    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_TIMEOUTS);
    ngx_http_opamp_redis_drop(link, "timed out");
}


/*
 * A subscribed link sends nothing unless a message comes, so a peer gone
 * without a word (a host down, a route dropped) would be noticed only by
 * the kernel's keepalive, two hours by default.  A link silent for
 * opamp_redis_timeout is sent a PING (a subscribed RESP2 connection
 * answers ["pong", ""]) and dropped when the answer does not come within
 * opamp_redis_timeout more; a reply that started to arrive must be whole
 * within opamp_redis_timeout too.
 */

static void
ngx_http_opamp_redis_keepalive(ngx_http_opamp_redis_link_t *link)
{
    ngx_msec_t   timeout, next;
    const char  *argv[1];
    size_t       argvlen[1];

    timeout = ngx_http_opamp_redis_conf->redis_timeout;

    if (link->partial
        && ngx_current_msec - link->partial_since >= timeout)
    {
        ngx_snprintf(link->why, sizeof(link->why) - 1,
                     "a reply still incomplete after %M ms "
                     "(opamp_redis_timeout)%Z", timeout);
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_TIMEOUTS);
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    if (link->pinging) {

        if (ngx_current_msec - link->ping_sent >= timeout) {
            ngx_snprintf(link->why, sizeof(link->why) - 1,
                         "no answer to PING within %M ms "
                         "(opamp_redis_timeout)%Z", timeout);
            ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_TIMEOUTS);
            ngx_http_opamp_redis_drop(link, (char *) link->why);
            return;
        }

        next = link->ping_sent + timeout;

    } else if (ngx_current_msec - link->answered >= timeout) {
        argv[0] = "PING";
        argvlen[0] = 4;

        if (ngx_http_opamp_redis_append(link, 1, argv, argvlen) != NGX_OK) {
            ngx_http_opamp_redis_drop(link, "no memory");
            return;
        }

        ngx_http_opamp_redis_post_write(link);

        link->pinging = 1;
        link->ping_sent = ngx_current_msec;
        next = ngx_current_msec + timeout;

    } else {
        next = link->answered + timeout;
    }

    if (link->partial
        && (ngx_msec_int_t) (link->partial_since + timeout - next) < 0)
    {
        next = link->partial_since + timeout;
    }

    if ((ngx_msec_int_t) (next - ngx_current_msec) <= 0) {
        next = ngx_current_msec + 1;
    }

    ngx_add_timer(&link->timer, next - ngx_current_msec);
}


/* I/O */


void
ngx_http_opamp_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c = ev->data;
    ngx_http_opamp_redis_link_t  *link = c->data;

    u_char       buf[16384];
    void        *r;
    size_t       held;
    ssize_t      n;
    ngx_uint_t   i, gen;

    switch (link->state) {

    case NGX_HTTP_OPAMP_REDIS_CONNECTING:
        ngx_http_opamp_redis_connect_done(link);
        return;

#if (NGX_SSL)
    case NGX_HTTP_OPAMP_REDIS_TLS:
        ngx_http_opamp_redis_tls_handshake(link);
        return;
#endif

    case NGX_HTTP_OPAMP_REDIS_HANDSHAKE:
    case NGX_HTTP_OPAMP_REDIS_READY:
        break;

    default:
        return;
    }

    gen = link->gen;

    /* edge-triggered: read until the socket is empty, or give others a
     * turn and come back */

    for (i = 0; i < NGX_HTTP_OPAMP_REDIS_READS; i++) {

        n = ngx_http_opamp_redis_recv(link, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            return;
        }

        if (n == 0) {
            ngx_http_opamp_redis_drop(link, "connection closed by the server");
            return;
        }

        if (n < 0) {
            ngx_http_opamp_redis_drop(link, (char *) link->why);
            return;
        }

        if (redisReaderFeed(link->reader, (const char *) buf, n) != REDIS_OK)
        {
            ngx_http_opamp_redis_drop(link, "no memory");
            return;
        }

        for ( ;; ) {
            r = NULL;

            if (redisReaderGetReply(link->reader, &r) != REDIS_OK) {

                if (link->too_big) {
                    ngx_http_opamp_redis_too_big(link);
                    return;
                }

                ngx_snprintf(link->why, sizeof(link->why) - 1,
                             "protocol error: %s%Z", link->reader->errstr);
                ngx_http_opamp_redis_drop(link, (char *) link->why);
                return;
            }

            if (r == NULL) {
                break;
            }

            link->reply_mem = 0;
            link->partial = 0;

            ngx_http_opamp_redis_dispatch(link, r);

            freeReplyObject(r);

            if (link->gen != gen) {
                /* the link went while a handler ran */
                return;
            }
        }

        /* what a reply not yet whole holds: its bytes and its objects */

        held = link->reply_mem + (link->reader->len - link->reader->pos);

        if (held > link->max_reply) {
            ngx_http_opamp_redis_too_big(link);
            return;
        }

        if (held && !link->partial) {
            link->partial = 1;
            link->partial_since = ngx_current_msec;
        }
    }

    ngx_post_event(ev, &ngx_posted_events);
}


static void
ngx_http_opamp_redis_dispatch(ngx_http_opamp_redis_link_t *link,
    redisReply *reply)
{
    ngx_uint_t                   readonly;
    ngx_queue_t                 *q;
    ngx_http_opamp_redis_cmd_t  *cmd;

    link->answered = ngx_current_msec;

    if (link->subscriber
        && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2
        && reply->element[0]->type == REDIS_REPLY_STRING
        && reply->element[0]->len == 4
        && ngx_strncmp(reply->element[0]->str, "pong", 4) == 0)
    {
        /* the answer to the keepalive's PING */
        link->pinging = 0;
        return;
    }

    if (link->subscriber
        && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3
        && reply->element[0]->type == REDIS_REPLY_STRING
        && reply->element[1]->type == REDIS_REPLY_STRING)
    {
        ngx_http_opamp_redis_push(link, reply);
        return;
    }

    if (ngx_queue_empty(&link->pending)) {

        if (reply->type == REDIS_REPLY_ERROR) {
            /* SUBSCRIBE refused */
            (void) ngx_http_opamp_redis_hello_step(link, reply, "SUBSCRIBE");
        }

        return;
    }

    q = ngx_queue_head(&link->pending);
    ngx_queue_remove(q);
    cmd = ngx_queue_data(q, ngx_http_opamp_redis_cmd_t, queue);

    ngx_http_opamp_metrics_add(NGX_HTTP_OPAMP_M_REDIS_WAITING, -1);
    ngx_http_opamp_metrics_redis_latency(ngx_current_msec
                           - (cmd->deadline
                              - ngx_http_opamp_redis_conf->redis_timeout));

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_ERRORS);
    }

    if (ngx_queue_empty(&link->pending)
        && link->state == NGX_HTTP_OPAMP_REDIS_READY
        && link->timer.timer_set)
    {
        ngx_del_timer(&link->timer);
    }

    /* a demoted primary: the writes go nowhere until we find the new one */
    readonly = (reply->type == REDIS_REPLY_ERROR && reply->len >= 8
                && ngx_strncmp(reply->str, "READONLY", 8) == 0);

    if (cmd->handler) {
        cmd->handler(reply, cmd->data);
    }

    ngx_free(cmd);

    if (readonly && link->state == NGX_HTTP_OPAMP_REDIS_READY) {
        if (ngx_http_opamp_redis_conf->redis.sentinels == NULL) {
            /* with Sentinel, counted when the new primary is named */
            ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_FAILOVERS);
        }

        ngx_http_opamp_redis_primary.known = 0;
        ngx_http_opamp_redis_drop(link, "the server is a replica now "
                                        "(READONLY)");

        if (ngx_http_opamp_redis_sub_link.state != NGX_HTTP_OPAMP_REDIS_DOWN)
        {
            ngx_http_opamp_redis_close(&ngx_http_opamp_redis_sub_link);
            ngx_http_opamp_redis_connect(&ngx_http_opamp_redis_sub_link);
        }
    }
}


/*
 * A reply that would hold more than the link's bound: a server that
 * sends a huge reply (or garbage that reads as one) is dropped before it
 * grows the worker, the bytes of the reply so far are freed with the
 * parser, and the link connects again with backoff.
 */

static void
ngx_http_opamp_redis_too_big(ngx_http_opamp_redis_link_t *link)
{
    ngx_snprintf(link->why, sizeof(link->why) - 1,
                 "a reply of more than %uz bytes%s%Z", link->max_reply,
                 link->kind == NGX_HTTP_OPAMP_REDIS_COMMAND
                 ? " (opamp_redis_max_reply)" : "");

    ngx_http_opamp_redis_drop(link, (char *) link->why);
}


void
ngx_http_opamp_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c = ev->data;
    ngx_http_opamp_redis_link_t  *link = c->data;

    switch (link->state) {

    case NGX_HTTP_OPAMP_REDIS_CONNECTING:
        ngx_http_opamp_redis_connect_done(link);
        return;

#if (NGX_SSL)
    case NGX_HTTP_OPAMP_REDIS_TLS:
        ngx_http_opamp_redis_tls_handshake(link);
        return;
#endif

    case NGX_HTTP_OPAMP_REDIS_HANDSHAKE:
    case NGX_HTTP_OPAMP_REDIS_READY:
        link->blocked = 0;
        ngx_http_opamp_redis_flush(link);
        return;

    default:
        return;
    }
}


static void
ngx_http_opamp_redis_flush(ngx_http_opamp_redis_link_t *link)
{
    ssize_t  n;

    while (link->out_pos < link->out_len) {

        n = ngx_http_opamp_redis_write(link, link->out + link->out_pos,
                                       link->out_len - link->out_pos);

        if (n == NGX_AGAIN) {
            /* the rest when epoll says the socket has room */
            link->blocked = 1;
            return;
        }

        if (n < 0) {
#if (NGX_SSL)
            if (link->conn->ssl) {
                ngx_http_opamp_redis_tls_alert(link);
            }
#endif
            ngx_http_opamp_redis_drop(link, (char *) link->why);
            return;
        }

        link->out_pos += n;
    }

    link->out_pos = 0;
    link->out_len = 0;

    /* a big one (an admin config upload) does not stay with the worker */

    if (link->out_size > NGX_HTTP_OPAMP_REDIS_OUT_KEEP) {
        ngx_free(link->out);
        link->out = NULL;
        link->out_size = 0;
    }
}


/* > 0: bytes; 0: closed; NGX_AGAIN; NGX_ERROR with link->why set */

ssize_t
ngx_http_opamp_redis_recv(ngx_http_opamp_redis_link_t *link, u_char *buf,
    size_t size)
{
    ssize_t     n;
    ngx_err_t   err;
#if (NGX_SSL)
    int         sslerr;

    if (link->conn->ssl) {
        ERR_clear_error();

        n = SSL_read(link->conn->ssl->connection, buf, (int) size);

        if (n > 0) {
            return n;
        }

        sslerr = SSL_get_error(link->conn->ssl->connection, (int) n);

        if (sslerr == SSL_ERROR_WANT_READ || sslerr == SSL_ERROR_WANT_WRITE)
        {
            return NGX_AGAIN;
        }

        if (sslerr == SSL_ERROR_ZERO_RETURN) {
            return 0;
        }

        (void) ngx_http_opamp_redis_tls_error(link, "TLS read failed",
                                              sslerr);
        return NGX_ERROR;
    }
#endif

    for ( ;; ) {
        n = recv(link->conn->fd, buf, size, 0);

        if (n >= 0) {
            return n;
        }

        err = ngx_socket_errno;

        if (err == NGX_EAGAIN) {
            return NGX_AGAIN;
        }

        if (err != NGX_EINTR) {
            *ngx_strerror(err, link->why, sizeof(link->why) - 1) = '\0';
            return NGX_ERROR;
        }
    }
}


static ssize_t
ngx_http_opamp_redis_write(ngx_http_opamp_redis_link_t *link, u_char *buf,
    size_t size)
{
    ssize_t     n;
    ngx_err_t   err;
#if (NGX_SSL)
    int         sslerr;

    if (link->conn->ssl) {
        ERR_clear_error();

        /* partial writes are on, so a big command goes in records */
        n = SSL_write(link->conn->ssl->connection, buf,
                      (int) ngx_min(size, 65536));

        if (n > 0) {
            return n;
        }

        sslerr = SSL_get_error(link->conn->ssl->connection, (int) n);

        if (sslerr == SSL_ERROR_WANT_WRITE || sslerr == SSL_ERROR_WANT_READ)
        {
            return NGX_AGAIN;
        }

        (void) ngx_http_opamp_redis_tls_error(link, "TLS write failed",
                                              sslerr);
        return NGX_ERROR;
    }
#endif

    for ( ;; ) {
        n = send(link->conn->fd, buf, size, 0);

        if (n >= 0) {
            return n;
        }

        err = ngx_socket_errno;

        if (err == NGX_EAGAIN) {
            return NGX_AGAIN;
        }

        if (err != NGX_EINTR) {
            *ngx_strerror(err, link->why, sizeof(link->why) - 1) = '\0';
            return NGX_ERROR;
        }
    }
}


/* what nginx adds to a line logged on a link's connection */

static u_char *
ngx_http_opamp_redis_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_http_opamp_redis_link_t *link = log->data;

    u_char  *p;

    p = buf;

    if (log->action) {
        p = ngx_snprintf(p, len, " while %s", log->action);
        len -= p - buf;
    }

    return ngx_snprintf(p, len, ", redis %s connection to %V",
                        link->name, &link->addr);
}
