/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * hiredis's async API driven by nginx's event loop.
 *
 * Each worker holds two links to Redis: the command link, which carries
 * every command of the module in order, and the pub/sub link, subscribed
 * to the worker's own channel.  A link's socket is wrapped in an nginx
 * connection so that epoll reports it like any other; hiredis never
 * blocks, and neither do we.
 *
 * hiredis 0.14 has no timeouts of its own.  The link keeps its commands
 * in a FIFO with deadlines and one timer on the oldest.  When the oldest
 * outlives opamp_redis_timeout and Redis has answered nothing for that
 * long either, the server or the path to it is stuck: the link is
 * dropped (every pending handler then sees NULL) and connected again
 * with backoff.  A Redis that keeps answering is working through a
 * backlog (a reconnect storm of a whole fleet) and is waited for:
 * dropping the link would throw away the work queued and bring the
 * agents back to queue it again.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include <hiredis/async.h>


#define NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN   100
#define NGX_HTTP_OPAMP_REDIS_BACKOFF_MAX   5000

/* the command buffer a worker keeps between commands, at most */
#define NGX_HTTP_OPAMP_REDIS_FMT_KEEP      65536


typedef enum {
    NGX_HTTP_OPAMP_REDIS_DOWN = 0,
    NGX_HTTP_OPAMP_REDIS_CONNECTING,
    NGX_HTTP_OPAMP_REDIS_HANDSHAKE,
    NGX_HTTP_OPAMP_REDIS_READY
} ngx_http_opamp_redis_state_e;


typedef struct {
    const char                       *name;
    redisAsyncContext                *ac;
    ngx_connection_t                 *conn;

    ngx_http_opamp_redis_state_e      state;

    /* commands sent and not answered yet, oldest first */
    ngx_queue_t                       pending;

    /* connect and handshake deadline, then the oldest command's */
    ngx_event_t                       timer;
    ngx_event_t                       reconnect;
    ngx_msec_t                        backoff;

    /* the handshake replies still awaited: AUTH, SELECT, PING/SUBSCRIBE */
    ngx_uint_t                        handshake;

    /* when Redis last answered a command of the link */
    ngx_msec_t                        answered;

    unsigned                          subscriber:1;
    unsigned                          outage_logged:1;
    unsigned                          timed_out:1;
    unsigned                          writing:1;  /* in the write handler */
} ngx_http_opamp_redis_link_t;


struct ngx_http_opamp_redis_cmd_s {
    ngx_queue_t                       queue;
    ngx_msec_t                        deadline;
    ngx_http_opamp_redis_handler_pt   handler;
    void                             *data;
    ngx_http_opamp_redis_link_t      *link;
};


static void ngx_http_opamp_redis_connect(ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_http_opamp_redis_handshake_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_opamp_redis_subscribe_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_opamp_redis_up(ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_drop(ngx_http_opamp_redis_link_t *link,
    const char *why);
static void ngx_http_opamp_redis_schedule(ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_opamp_redis_timer_handler(ngx_event_t *ev);
static u_char *ngx_http_opamp_redis_format(int argc, const char **argv,
    const size_t *argvlen, size_t *len);
static void ngx_http_opamp_redis_command_reply(redisAsyncContext *ac,
    void *r, void *privdata);

static void ngx_http_opamp_redis_read_handler(ngx_event_t *ev);
static void ngx_http_opamp_redis_write_handler(ngx_event_t *ev);
static void ngx_http_opamp_redis_add_read(void *privdata);
static void ngx_http_opamp_redis_del_read(void *privdata);
static void ngx_http_opamp_redis_add_write(void *privdata);
static void ngx_http_opamp_redis_del_write(void *privdata);
static void ngx_http_opamp_redis_cleanup(void *privdata);

static char *ngx_http_opamp_redis_parse_unix(ngx_conf_t *cf,
    ngx_str_t *value, ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_parse_tcp(ngx_conf_t *cf,
    ngx_str_t *value, ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_parse_db(ngx_conf_t *cf, ngx_str_t *value,
    u_char *start, u_char *end, ngx_http_opamp_redis_url_t *url);
static ngx_int_t ngx_http_opamp_redis_unescape(ngx_conf_t *cf, u_char *start,
    u_char *end, ngx_str_t *dst);


static ngx_http_opamp_main_conf_t       *ngx_http_opamp_redis_conf;
static ngx_log_t                        *ngx_http_opamp_redis_log;
static ngx_http_opamp_redis_link_t       ngx_http_opamp_redis_cmd_link;
static ngx_http_opamp_redis_link_t       ngx_http_opamp_redis_sub_link;
static ngx_str_t                         ngx_http_opamp_redis_channel;
static ngx_str_t                         ngx_http_opamp_redis_fleet;
static ngx_uint_t                        ngx_http_opamp_redis_exiting;
static u_char                           *ngx_http_opamp_redis_fmt;
static size_t                            ngx_http_opamp_redis_fmt_size;

static ngx_http_opamp_redis_message_pt   ngx_http_opamp_redis_on_message;
static ngx_http_opamp_redis_ready_pt     ngx_http_opamp_redis_on_ready;


ngx_int_t
ngx_http_opamp_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_opamp_main_conf_t *omcf)
{
    ngx_uint_t                    i;
    ngx_http_opamp_redis_link_t  *link, *links[2];

    ngx_http_opamp_redis_conf = omcf;
    ngx_http_opamp_redis_log = cycle->log;
    ngx_http_opamp_redis_exiting = 0;

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

    links[0] = &ngx_http_opamp_redis_cmd_link;
    links[1] = &ngx_http_opamp_redis_sub_link;

    for (i = 0; i < 2; i++) {
        link = links[i];

        ngx_memzero(link, sizeof(ngx_http_opamp_redis_link_t));

        link->name = (i == 0) ? "command" : "pub/sub";
        link->subscriber = (i == 1);
        link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN;
        ngx_queue_init(&link->pending);

        link->timer.handler = ngx_http_opamp_redis_timer_handler;
        link->timer.data = link;
        link->timer.log = cycle->log;

        /* a reconnect attempt must not hold a graceful shutdown back */
        link->reconnect.handler = ngx_http_opamp_redis_reconnect_handler;
        link->reconnect.data = link;
        link->reconnect.log = cycle->log;
        link->reconnect.cancelable = 1;

        ngx_http_opamp_redis_connect(link);
    }

    return NGX_OK;
}


void
ngx_http_opamp_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                    i;
    ngx_http_opamp_redis_link_t  *link, *links[2];

    ngx_http_opamp_redis_exiting = 1;

    links[0] = &ngx_http_opamp_redis_cmd_link;
    links[1] = &ngx_http_opamp_redis_sub_link;

    for (i = 0; i < 2; i++) {
        link = links[i];

        if (link->reconnect.timer_set) {
            ngx_del_timer(&link->reconnect);
        }

        if (link->ac) {
            /* pending handlers are called with NULL, then cleanup runs */
            redisAsyncFree(link->ac);
        }

        if (link->timer.timer_set) {
            ngx_del_timer(&link->timer);
        }
    }

    if (ngx_http_opamp_redis_fmt) {
        ngx_free(ngx_http_opamp_redis_fmt);
        ngx_http_opamp_redis_fmt = NULL;
        ngx_http_opamp_redis_fmt_size = 0;
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
    int                           rc;
    u_char                       *buf;
    size_t                        len;
    ngx_http_opamp_redis_cmd_t   *cmd;
    ngx_http_opamp_redis_link_t  *link;

    link = &ngx_http_opamp_redis_cmd_link;

    if (link->state != NGX_HTTP_OPAMP_REDIS_READY) {
        return NULL;
    }

    buf = ngx_http_opamp_redis_format(argc, argv, argvlen, &len);
    if (buf == NULL) {
        return NULL;
    }

    /*
     * Plain malloc: a command may outlive the request or connection that
     * sent it (its handler is then canceled), so no pool fits.
     */

    cmd = ngx_alloc(sizeof(ngx_http_opamp_redis_cmd_t),
                    ngx_http_opamp_redis_log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->link = link;
    cmd->deadline = ngx_current_msec + ngx_http_opamp_redis_conf->redis_timeout;

    rc = redisAsyncFormattedCommand(link->ac,
                                    ngx_http_opamp_redis_command_reply, cmd,
                                    (const char *) buf, len);

    /* a big one (an admin config upload) does not stay with the worker */

    if (ngx_http_opamp_redis_fmt_size > NGX_HTTP_OPAMP_REDIS_FMT_KEEP) {
        ngx_free(ngx_http_opamp_redis_fmt);
        ngx_http_opamp_redis_fmt = NULL;
        ngx_http_opamp_redis_fmt_size = 0;
    }

    if (rc != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                      "opamp: redis command not sent: %s",
                      link->ac->errstr[0] ? link->ac->errstr : "no memory");
        ngx_free(cmd);
        return NULL;
    }

    ngx_queue_insert_tail(&link->pending, &cmd->queue);

    if (!link->timer.timer_set) {
        ngx_add_timer(&link->timer, ngx_http_opamp_redis_conf->redis_timeout);
    }

    return cmd;
}


/*
 * The command in RESP, in a buffer reused for every command of the
 * worker: hiredis copies it to its output buffer at once.  hiredis's own
 * formatting (redisAsyncCommandArgv) grows an sds string piece by piece
 * and was a measurable share of a worker's time with 40-argument report
 * scripts.
 */

static u_char *
ngx_http_opamp_redis_format(int argc, const char **argv,
    const size_t *argvlen, size_t *len)
{
    int      i;
    u_char  *p;
    size_t   size;

    size = 1 + NGX_INT_T_LEN + 2;

    for (i = 0; i < argc; i++) {
        size += 1 + NGX_SIZE_T_LEN + 2 + argvlen[i] + 2;
    }

    if (size > ngx_http_opamp_redis_fmt_size) {
        size = ngx_max(size, 4096);

        p = ngx_alloc(size, ngx_http_opamp_redis_log);
        if (p == NULL) {
            return NULL;
        }

        if (ngx_http_opamp_redis_fmt) {
            ngx_free(ngx_http_opamp_redis_fmt);
        }

        ngx_http_opamp_redis_fmt = p;
        ngx_http_opamp_redis_fmt_size = size;
    }

    p = ngx_sprintf(ngx_http_opamp_redis_fmt, "*%d" CRLF, argc);

    for (i = 0; i < argc; i++) {
        p = ngx_sprintf(p, "$%uz" CRLF, argvlen[i]);
        p = ngx_cpymem(p, argv[i], argvlen[i]);
        *p++ = CR; *p++ = LF;
    }

    *len = p - ngx_http_opamp_redis_fmt;

    return ngx_http_opamp_redis_fmt;
}


void
ngx_http_opamp_redis_cancel(ngx_http_opamp_redis_cmd_t *cmd)
{
    /* the reply, or the NULL at disconnect, still arrives and frees it */
    cmd->handler = NULL;
    cmd->data = NULL;
}


static void
ngx_http_opamp_redis_command_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    ngx_http_opamp_redis_cmd_t *cmd = privdata;

    ngx_http_opamp_redis_link_t  *link;

    link = cmd->link;
    link->answered = ngx_current_msec;

    ngx_queue_remove(&cmd->queue);

    if (ngx_queue_empty(&link->pending)
        && link->state == NGX_HTTP_OPAMP_REDIS_READY
        && link->timer.timer_set)
    {
        ngx_del_timer(&link->timer);
    }

    if (cmd->handler) {
        cmd->handler(r, cmd->data);
    }

    ngx_free(cmd);
}


static void
ngx_http_opamp_redis_connect(ngx_http_opamp_redis_link_t *link)
{
    int                          fd, on;
    ngx_connection_t            *c;
    redisAsyncContext           *ac;
    ngx_http_opamp_redis_url_t  *url;

    url = &ngx_http_opamp_redis_conf->redis;

    if (url->unix_path.len) {
        ac = redisAsyncConnectUnix((const char *) url->unix_path.data);

    } else {
        /* the host is an address resolved at configuration time, so that
         * hiredis's getaddrinfo() never waits for DNS here */
        ac = redisAsyncConnect((const char *) url->host.data,
                               (int) url->port);
    }

    if (ac == NULL) {
        ngx_http_opamp_redis_drop(link, "no memory");
        return;
    }

    if (ac->err) {
        ngx_http_opamp_redis_drop(link, ac->errstr);
        redisAsyncFree(ac);
        return;
    }

    fd = ac->c.fd;

    c = ngx_get_connection(fd, ngx_http_opamp_redis_log);
    if (c == NULL) {
        ngx_http_opamp_redis_drop(link, "no free nginx connection");
        redisAsyncFree(ac);
        return;
    }

    if (!url->unix_path.len) {
        /* a half-open link would otherwise go unnoticed on pub/sub */
        on = 1;
        (void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(int));
    }

    c->data = link;
    c->read->handler = ngx_http_opamp_redis_read_handler;
    c->write->handler = ngx_http_opamp_redis_write_handler;
    c->read->log = ngx_http_opamp_redis_log;
    c->write->log = ngx_http_opamp_redis_log;

    link->ac = ac;
    link->conn = c;
    link->state = NGX_HTTP_OPAMP_REDIS_CONNECTING;
    link->timed_out = 0;

    ac->data = link;
    ac->ev.data = link;
    ac->ev.addRead = ngx_http_opamp_redis_add_read;
    ac->ev.delRead = ngx_http_opamp_redis_del_read;
    ac->ev.addWrite = ngx_http_opamp_redis_add_write;
    ac->ev.delWrite = ngx_http_opamp_redis_del_write;
    ac->ev.cleanup = ngx_http_opamp_redis_cleanup;

    /* this also waits for the socket to become writable: the connect */
    (void) redisAsyncSetConnectCallback(ac, ngx_http_opamp_redis_connected);

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    ngx_add_timer(&link->timer, ngx_http_opamp_redis_conf->redis_timeout);
}


static void
ngx_http_opamp_redis_connected(const redisAsyncContext *cac, int status)
{
    u_char                        db[NGX_INT_T_LEN];
    size_t                        argvlen[3];
    ngx_uint_t                    argc;
    const char                   *argv[3];
    redisAsyncContext            *ac;
    ngx_http_opamp_redis_url_t   *url;
    ngx_http_opamp_redis_link_t  *link;

    if (status != REDIS_OK) {
        /* hiredis frees the context next; cleanup schedules a retry */
        return;
    }

    ac = (redisAsyncContext *) cac;
    link = ac->data;
    url = &ngx_http_opamp_redis_conf->redis;

    link->state = NGX_HTTP_OPAMP_REDIS_HANDSHAKE;
    link->handshake = 0;

    if (url->password.len) {
        argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = 4;

        if (url->username.len) {
            argv[argc] = (const char *) url->username.data;
            argvlen[argc++] = url->username.len;
        }

        argv[argc] = (const char *) url->password.data;
        argvlen[argc++] = url->password.len;

        if (redisAsyncCommandArgv(ac, ngx_http_opamp_redis_handshake_reply,
                                  (void *) "AUTH", argc, argv, argvlen)
            == REDIS_OK)
        {
            link->handshake++;
        }
    }

    if (link->subscriber) {
        /* pub/sub channels do not belong to a database: no SELECT */
        argv[0] = "SUBSCRIBE";
        argvlen[0] = 9;
        argv[1] = (const char *) ngx_http_opamp_redis_channel.data;
        argvlen[1] = ngx_http_opamp_redis_channel.len;
        argv[2] = (const char *) ngx_http_opamp_redis_fleet.data;
        argvlen[2] = ngx_http_opamp_redis_fleet.len;

        /* one confirmation per channel */

        if (redisAsyncCommandArgv(ac, ngx_http_opamp_redis_subscribe_reply,
                                  link, 3, argv, argvlen)
            == REDIS_OK)
        {
            link->handshake += 2;
        }

        return;
    }

    if (url->database) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) db;
        argvlen[1] = ngx_sprintf(db, "%i", url->database) - db;

        if (redisAsyncCommandArgv(ac, ngx_http_opamp_redis_handshake_reply,
                                  (void *) "SELECT", 2, argv, argvlen)
            == REDIS_OK)
        {
            link->handshake++;
        }
    }

    /* the PONG tells that everything before it succeeded */
    argv[0] = "PING";
    argvlen[0] = 4;

    if (redisAsyncCommandArgv(ac, ngx_http_opamp_redis_handshake_reply,
                              (void *) "PING", 1, argv, argvlen)
        == REDIS_OK)
    {
        link->handshake++;
    }
}


static void
ngx_http_opamp_redis_handshake_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                   *reply = r;
    ngx_http_opamp_redis_link_t  *link;

    link = ac->data;

    if (reply == NULL || link == NULL || link->ac != ac
        || link->state != NGX_HTTP_OPAMP_REDIS_HANDSHAKE)
    {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        if (!link->outage_logged) {
            ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                          "opamp: redis %s on the %s connection to \"%V\" "
                          "failed: %*s; retrying", (char *) privdata,
                          link->name, &ngx_http_opamp_redis_conf->redis.url,
                          (size_t) reply->len, reply->str);

            /* a wrong password stays wrong: one line per outage */
            link->outage_logged = 1;
        }

        /* the replies still on their way are of no interest now */
        link->state = NGX_HTTP_OPAMP_REDIS_CONNECTING;
        redisAsyncDisconnect(ac);
        return;
    }

    if (--link->handshake == 0) {
        ngx_http_opamp_redis_up(link);
    }
}


static void
ngx_http_opamp_redis_subscribe_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                   *reply = r;
    ngx_str_t                     channel, payload;
    redisReply                  **el;
    ngx_http_opamp_redis_link_t  *link;

    link = privdata;

    if (reply == NULL || link->ac != ac) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        if (!link->outage_logged) {
            ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                          "opamp: redis SUBSCRIBE to \"%V\" failed: %*s; "
                          "retrying", &ngx_http_opamp_redis_channel,
                          (size_t) reply->len, reply->str);
            link->outage_logged = 1;
        }

        link->state = NGX_HTTP_OPAMP_REDIS_CONNECTING;
        redisAsyncDisconnect(ac);
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
        return;
    }

    el = reply->element;

    if (el[0]->type != REDIS_REPLY_STRING
        || el[1]->type != REDIS_REPLY_STRING)
    {
        return;
    }

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

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_http_opamp_redis_log, 0,
                   "opamp: message on \"%V\": \"%V\"", &channel, &payload);

    if (ngx_http_opamp_redis_on_message) {
        ngx_http_opamp_redis_on_message(&channel, &payload);
    }
}


static void
ngx_http_opamp_redis_up(ngx_http_opamp_redis_link_t *link)
{
    link->state = NGX_HTTP_OPAMP_REDIS_READY;
    link->answered = ngx_current_msec;
    link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN;

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (link->outage_logged) {
        link->outage_logged = 0;
        ngx_log_error(NGX_LOG_NOTICE, ngx_http_opamp_redis_log, 0,
                      "opamp: redis %s connection to \"%V\" restored",
                      link->name, &ngx_http_opamp_redis_conf->redis.url);

    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_http_opamp_redis_log, 0,
                       "opamp: redis %s connection to \"%V\" ready",
                       link->name, &ngx_http_opamp_redis_conf->redis.url);
    }

    if (!link->subscriber && ngx_http_opamp_redis_on_ready) {
        ngx_http_opamp_redis_on_ready();
    }
}


/*
 * The link is gone or never came up: log once per outage, retry later.
 */

static void
ngx_http_opamp_redis_drop(ngx_http_opamp_redis_link_t *link, const char *why)
{
    ngx_uint_t  was_ready;

    was_ready = (link->state == NGX_HTTP_OPAMP_REDIS_READY);

    link->state = NGX_HTTP_OPAMP_REDIS_DOWN;

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    if (ngx_http_opamp_redis_exiting) {
        return;
    }

    if (!link->outage_logged) {
        link->outage_logged = 1;
        ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                      "opamp: redis %s connection to \"%V\" %s: %s; "
                      "retrying", link->name,
                      &ngx_http_opamp_redis_conf->redis.url,
                      was_ready ? "lost" : "failed",
                      (why && why[0]) ? why : "connection closed");

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_http_opamp_redis_log, 0,
                       "opamp: redis %s connection to \"%V\" failed: %s",
                       link->name, &ngx_http_opamp_redis_conf->redis.url,
                       why ? why : "");
    }

    ngx_http_opamp_redis_schedule(link);
}


static void
ngx_http_opamp_redis_schedule(ngx_http_opamp_redis_link_t *link)
{
    ngx_msec_t  delay;

    if (link->reconnect.timer_set || ngx_exiting || ngx_quit
        || ngx_terminate)
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
    ngx_http_opamp_redis_link_t *link = ev->data;

    if (ngx_http_opamp_redis_exiting || link->ac) {
        return;
    }

    ngx_http_opamp_redis_connect(link);
}


static void
ngx_http_opamp_redis_timer_handler(ngx_event_t *ev)
{
    ngx_http_opamp_redis_link_t *link = ev->data;

    ngx_msec_t                   timeout;
    ngx_queue_t                 *q;
    ngx_http_opamp_redis_cmd_t  *cmd;

    if (link->ac == NULL) {
        return;
    }

    if (link->state == NGX_HTTP_OPAMP_REDIS_READY) {

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

    /* drop the link: every pending handler sees NULL, cleanup retries */
    link->timed_out = 1;
    redisAsyncFree(link->ac);
}


static void
ngx_http_opamp_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c = ev->data;
    ngx_http_opamp_redis_link_t  *link = c->data;

    if (link->ac) {
        redisAsyncHandleRead(link->ac);
    }
}


static void
ngx_http_opamp_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t             *c = ev->data;
    ngx_http_opamp_redis_link_t  *link = c->data;

    if (link->ac) {
        link->writing = 1;
        redisAsyncHandleWrite(link->ac);
        link->writing = 0;
    }
}


/*
 * Level-triggered events: hiredis reads at most one buffer per call, so
 * an edge-triggered read event could leave replies unread in the socket.
 */

static void
ngx_http_opamp_redis_add_read(void *privdata)
{
    ngx_http_opamp_redis_link_t *link = privdata;

    ngx_event_t  *rev;

    rev = link->conn->read;

    if (!rev->active) {
        if (ngx_add_event(rev, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                          "opamp: redis read event not added");
        }
    }
}


static void
ngx_http_opamp_redis_del_read(void *privdata)
{
    ngx_http_opamp_redis_link_t *link = privdata;

    ngx_event_t  *rev;

    rev = link->conn->read;

    if (rev->active) {
        (void) ngx_del_event(rev, NGX_READ_EVENT, 0);
    }
}


/*
 * Commands queued during a turn of the event loop are written together at
 * its end: the socket of a connected link is nearly always writable, so
 * the write event is posted rather than asked of epoll (two epoll_ctl and
 * a turn saved per write).  Only what the socket did not take, and the
 * connect, wait for epoll.
 */

static void
ngx_http_opamp_redis_add_write(void *privdata)
{
    ngx_http_opamp_redis_link_t *link = privdata;

    ngx_event_t  *wev;

    wev = link->conn->write;

    if (wev->active || wev->posted) {
        return;
    }

    if (!link->writing && link->ac
        && (link->ac->c.flags & REDIS_CONNECTED))
    {
        ngx_post_event(wev, &ngx_posted_events);
        return;
    }

    if (ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_opamp_redis_log, 0,
                      "opamp: redis write event not added");
    }
}


static void
ngx_http_opamp_redis_del_write(void *privdata)
{
    ngx_http_opamp_redis_link_t *link = privdata;

    ngx_event_t  *wev;

    wev = link->conn->write;

    if (wev->active) {
        (void) ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }

    if (wev->posted) {
        ngx_delete_posted_event(wev);
    }
}


/*
 * hiredis frees the context: after an error, a disconnect, or our own
 * redisAsyncFree().  Pending handlers have been called with NULL by now;
 * hiredis closes the socket itself right after this returns.
 */

static void
ngx_http_opamp_redis_cleanup(void *privdata)
{
    ngx_http_opamp_redis_link_t *link = privdata;

    const char        *why;
    ngx_connection_t  *c;

    c = link->conn;

    if (c) {
        if (c->read->active) {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        if (c->write->active) {
            (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
        }

        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }

        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
        }

        c->fd = (ngx_socket_t) -1;
        ngx_free_connection(c);
        link->conn = NULL;
    }

    why = link->timed_out ? "timed out"
                          : (link->ac && link->ac->errstr[0])
                            ? link->ac->errstr : NULL;

    link->ac = NULL;

    ngx_http_opamp_redis_drop(link, why);
}


/* configuration */


char *
ngx_http_opamp_redis_parse_url(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url)
{
    ngx_memzero(url, sizeof(ngx_http_opamp_redis_url_t));

    url->url = *value;

    if (value->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: empty redis address");
        return NGX_CONF_ERROR;
    }

    if (value->len >= 5 && ngx_strncmp(value->data, "unix:", 5) == 0) {
        return ngx_http_opamp_redis_parse_unix(cf, value, url);
    }

    return ngx_http_opamp_redis_parse_tcp(cf, value, url);
}


static char *
ngx_http_opamp_redis_parse_unix(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url)
{
    u_char     *p, *last, *query, *arg, *amp, *eq;
    ngx_str_t   name;

    p = value->data + 5;
    last = value->data + value->len;

    query = ngx_strlchr(p, last, '?');
    if (query == NULL) {
        query = last;
    }

    if (query == p || *p != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis unix socket address \"%V\": "
                           "an absolute path is required", value);
        return NGX_CONF_ERROR;
    }

    url->unix_path.len = query - p;
    url->unix_path.data = ngx_pnalloc(cf->pool, url->unix_path.len + 1);
    if (url->unix_path.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(url->unix_path.data, p, url->unix_path.len);
    url->unix_path.data[url->unix_path.len] = '\0';

    for (arg = query + 1; arg < last; arg = amp + 1) {
        amp = ngx_strlchr(arg, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(arg, amp, '=');
        if (eq == NULL) {
            goto invalid;
        }

        name.data = arg;
        name.len = eq - arg;

        if (name.len == 2 && ngx_strncmp(name.data, "db", 2) == 0) {
            if (ngx_http_opamp_redis_parse_db(cf, value, eq + 1, amp, url)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else if (name.len == 8
                   && ngx_strncmp(name.data, "password", 8) == 0)
        {
            if (ngx_http_opamp_redis_unescape(cf, eq + 1, amp, &url->password)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else if (name.len == 4 && ngx_strncmp(name.data, "user", 4) == 0) {
            if (ngx_http_opamp_redis_unescape(cf, eq + 1, amp, &url->username)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else {
            goto invalid;
        }
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "opamp: invalid redis unix socket address \"%V\": "
                       "only \"db\", \"user\" and \"password\" parameters "
                       "are known", value);
    return NGX_CONF_ERROR;
}


static char *
ngx_http_opamp_redis_parse_tcp(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url)
{
    u_char     *p, *last, *at, *colon, *slash, *addr;
    size_t      len;
    ngx_url_t   u;

    p = value->data;
    last = value->data + value->len;

    if (value->len >= 8 && ngx_strncmp(p, "redis://", 8) == 0) {
        p += 8;

        /* the database: the last "/" after the host */
        slash = ngx_strlchr(p, last, '/');

        at = NULL;
        for (addr = p; addr < (slash ? slash : last); addr++) {
            if (*addr == '@') {
                at = addr;     /* the last "@": passwords may contain "@" */
            }
        }

        if (at) {
            colon = ngx_strlchr(p, at, ':');

            if (colon) {
                if (ngx_http_opamp_redis_unescape(cf, p, colon,
                                                  &url->username)
                    != NGX_OK
                    || ngx_http_opamp_redis_unescape(cf, colon + 1, at,
                                                     &url->password)
                       != NGX_OK)
                {
                    return NGX_CONF_ERROR;
                }

            } else if (ngx_http_opamp_redis_unescape(cf, p, at,
                                                     &url->password)
                       != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            p = at + 1;
        }

        if (slash) {
            if (ngx_http_opamp_redis_parse_db(cf, value, slash + 1, last, url)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            last = slash;
        }

    } else if (ngx_strlchr(p, last, '/') || ngx_strlchr(p, last, '@')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis address \"%V\": use "
                           "\"host:port\", \"redis://[[user]:password@]host"
                           "[:port][/db]\" or \"unix:/path\"", value);
        return NGX_CONF_ERROR;
    }

    if (p == last) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: no host in redis address \"%V\"", value);
        return NGX_CONF_ERROR;
    }

    /*
     * Resolve now, as nginx does for upstream servers: hiredis would call
     * getaddrinfo() in the worker, which blocks on DNS.
     */

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.data = p;
    u.url.len = last - p;
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis address \"%V\": %s",
                           value, u.err ? u.err : "cannot parse");
        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0 || u.family == AF_UNIX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis address \"%V\": host not "
                           "found", value);
        return NGX_CONF_ERROR;
    }

    addr = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (addr == NULL) {
        return NGX_CONF_ERROR;
    }

    len = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, addr,
                        NGX_SOCKADDR_STRLEN, 0);
    addr[len] = '\0';

    url->host.data = addr;
    url->host.len = len;
    url->port = u.port;

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_redis_parse_db(ngx_conf_t *cf, ngx_str_t *value,
    u_char *start, u_char *end, ngx_http_opamp_redis_url_t *url)
{
    if (start == end) {
        return NGX_CONF_OK;
    }

    url->database = ngx_atoi(start, end - start);

    if (url->database == NGX_ERROR || url->database > 1000000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid database number in redis address "
                           "\"%V\"", value);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* "%40" and the like in user names and passwords, as in any URL */

static ngx_int_t
ngx_http_opamp_redis_unescape(ngx_conf_t *cf, u_char *start, u_char *end,
    ngx_str_t *dst)
{
    u_char  *src, *d;

    dst->data = ngx_pnalloc(cf->pool, end - start + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    src = start;
    d = dst->data;

    ngx_unescape_uri(&d, &src, end - start, 0);

    dst->len = d - dst->data;
    dst->data[dst->len] = '\0';

    return NGX_OK;
}
