/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * loadgen: many simulated OpAMP agents in one process, on one epoll loop.
 * Loopback only; every run is bounded by --agents and --duration.
 *
 *   loadgen --mode MODE --port P [options]
 *
 * modes
 *   hold       WebSocket agents connect, report their full status, then
 *              send a heartbeat every --heartbeat seconds until --duration
 *   status     WebSocket agents send the next message as soon as the reply
 *              to the last one arrives (full status first, then compressed
 *              heartbeats; --full-every N: every Nth message the full
 *              status, as after reconnects); counts messages answered per
 *              second
 *   http       plain HTTP agents on keep-alive connections, each posting a
 *              heartbeat as soon as the last reply arrived; counts replies
 *              per second (also fine against a `return 204` location)
 *   fanout     WebSocket agents connect and report, then a config change
 *              is made and the time until each agent has it is measured:
 *              --expect-hash HEX: the clock stops when the agent has
 *              decoded a ServerToAgent whose remote_config carries that
 *              config_hash (without it: at the first message after the
 *              change); --raw: plain WebSocket subscribers (e.g. Nchan)
 *              that send nothing, the clock stops at the first message.
 *              The change: --trigger CMD runs it; or, for several
 *              processes, --ready-file F is written once every agent has
 *              reported, and the change is taken to be made at the
 *              CLOCK_REALTIME time written into --go-file G (by whoever
 *              makes it); --done-file D is written when every agent has
 *              it, then the agents stay --linger S seconds more.
 *              --heartbeat S given: the agents keep heartbeating every S
 *              seconds (spread over the interval) and the round trips are
 *              reported before the change and during it (from the change
 *              until this process's agents all have it)
 *              --ack-delay S: an agent reports APPLIED for each remote
 *              config it had not had, S seconds after it came (as a
 *              supervisor does once its Collector runs it)
 *   reconnect  WebSocket agents connect and report, then all drop at once
 *              and reconnect with the next sequence number; measures the
 *              time until all are answered and counts full-state requests
 *
 * Output: one line of key=value pairs on stdout.
 */

#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "opamp/v1/opamp.pb-c.h"


#define LG_MAX_EVENTS   1024
#define LG_INFLIGHT     256         /* connects in progress at once */
#define LG_PER_SOURCE   1000        /* agents per source address */

extern char **environ;


enum { M_HOLD, M_STATUS, M_HTTP, M_FANOUT, M_RECONNECT };

enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_HTTP, S_CLOSED };


typedef struct {
    int        fd;
    int        state;
    uint32_t   index;
    uint64_t   seq;
    uint8_t    uid[16];
    uint8_t   *buf;          /* unparsed input */
    size_t     len;
    size_t     size;
    double     sent_at;
    double     next_beat;
    unsigned   waiting:1;    /* a reply is owed */
    unsigned   reported:1;   /* first reply arrived */
    unsigned   got_push:1;
    unsigned   full:1;       /* the server asked for the full state */
    double     got_at;       /* fanout: when it decoded the change */
    double     ack_at;       /* --ack-delay: when to report APPLIED */
    unsigned   ack_due:1;
    unsigned   acking:1;     /* the message out is that report */
    uint8_t    cfg_len;
    uint8_t    cfg[32];      /* the config_hash it runs (or will) */
} lg_agent_t;


static struct {
    int          mode;
    int          port;
    const char  *host;
    const char  *path;
    const char  *trigger;
    const char  *http_host;
    long         agents;
    double       duration;
    double       heartbeat;
    int          src_base;
    int          raw;
    unsigned     seed;
    double       linger;
    char        *full;       /* --full: template files, comma-separated */
    long         full_every; /* --full-every N: status mode, every Nth
                                message is the full status (1: all) */
    unsigned long caps;      /* --caps: AgentCapabilities of every message
                                (default: status, remote config, health,
                                heartbeat); the supervisor's: 0x7d47 */
    const char  *ready_file;
    const char  *go_file;
    const char  *done_file;
    const char  *lat_file;
    const char  *base_file;  /* heartbeats "before" count once it exists */
    int          beats;      /* fanout: --heartbeat given */
    double       ack_delay;  /* --ack-delay S: report APPLIED for a new
                                remote config S seconds after it came, as
                                a supervisor does once its Collector
                                runs it (< 0: never) */
    int          nexpect;    /* --expect-hash: its bytes, in expect */
    uint8_t      expect[64];
} opt = {
    M_HOLD, 4320, "127.0.0.1", "/v1/opamp", NULL, "127.0.0.1", 100, 10,
    30, 2, 0, 1, 0, NULL, 0, 0x1 | 0x2 | 0x800 | 0x2000,
    NULL, NULL, NULL, NULL, NULL, 0, -1, 0, { 0 }
};


static int          ep;
static lg_agent_t  *agents;
static long         connected, reported, answered, failed, closed_by_peer;
/* fanout: agents that reported and were closed before the push reached
 * them (the change is not waited for on their account) */
static long         unreached;
static long         full_state_asked, pushes;
static long         connecting, next_connect;
static double       t_start, t_all_connected, t_all_reported, t_trigger;
static double      *latencies;
static long         nlat;

/* fanout: the change is made (t_trigger known); heartbeat round trips
 * before it (from all reported) and during it (until all have it) */
static int          armed, beats_phase;     /* 0 not yet, 1 before, 2 during */
static long         other_configs, beat_ended_by_push, acks;
static double      *beat_lat[3];
static long         nbeat[3];
#define LG_MAX_BEATS  (1 << 20)
static uint8_t     *full_msg, *beat_msg;
static size_t       full_len, beat_len;

/* --full: full status messages read from files (a Collector's, made by
 * bench/collector.pl), agent i sending file i % n: a few builds and
 * configs across the fleet */
#define LG_MAX_FULL  16
#define LG_MAX_MSG   (256 * 1024)
static uint8_t     *full_msgs[LG_MAX_FULL];
static size_t       full_lens[LG_MAX_FULL];
static int          nfull;
static uint8_t      lg_msg[LG_MAX_MSG], lg_out[LG_MAX_MSG + 1024];

#define LG_FULL(a)      (nfull ? full_msgs[(a)->index % nfull] : full_msg)
#define LG_FULL_LEN(a)  (nfull ? full_lens[(a)->index % nfull] : full_len)


static double
now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static void
die(const char *what)
{
    perror(what);
    exit(2);
}


/* --- messages (the project's protobuf-c code) ---------------------------- */

static uint8_t *
pack_a2s(int full, size_t *len)
{
    uint8_t                               *out;
    Opamp__Proto__V1__AgentToServer        a2s =
                                   OPAMP__PROTO__V1__AGENT_TO_SERVER__INIT;
    Opamp__Proto__V1__AgentDescription     desc =
                                   OPAMP__PROTO__V1__AGENT_DESCRIPTION__INIT;
    Opamp__Proto__V1__KeyValue             kv[2], *kvs[2];
    Opamp__Proto__V1__AnyValue             v[2];
    Opamp__Proto__V1__ComponentHealth      health =
                                   OPAMP__PROTO__V1__COMPONENT_HEALTH__INIT;
    Opamp__Proto__V1__AvailableComponents  comps =
                               OPAMP__PROTO__V1__AVAILABLE_COMPONENTS__INIT;
    Opamp__Proto__V1__AvailableComponents__ComponentsEntry  ce =
              OPAMP__PROTO__V1__AVAILABLE_COMPONENTS__COMPONENTS_ENTRY__INIT;
    Opamp__Proto__V1__AvailableComponents__ComponentsEntry *ces[1];
    Opamp__Proto__V1__ComponentDetails     cd =
                                  OPAMP__PROTO__V1__COMPONENT_DETAILS__INIT;
    static uint8_t                         uid[16];

    a2s.instance_uid.data = uid;          /* patched per agent */
    a2s.instance_uid.len = 16;
    a2s.sequence_num = 1;                 /* patched per message */
    a2s.capabilities = opt.caps;

    if (full) {
        opamp__proto__v1__key_value__init(&kv[0]);
        opamp__proto__v1__key_value__init(&kv[1]);
        opamp__proto__v1__any_value__init(&v[0]);
        opamp__proto__v1__any_value__init(&v[1]);
        v[0].value_case = OPAMP__PROTO__V1__ANY_VALUE__VALUE_STRING_VALUE;
        v[0].string_value = "bench";
        v[1].value_case = OPAMP__PROTO__V1__ANY_VALUE__VALUE_STRING_VALUE;
        v[1].string_value = "loadgen.example";
        kv[0].key = "service.name";
        kv[0].value = &v[0];
        kv[1].key = "host.name";
        kv[1].value = &v[1];
        kvs[0] = &kv[0];
        kvs[1] = &kv[1];
        desc.n_identifying_attributes = 1;
        desc.identifying_attributes = &kvs[0];
        desc.n_non_identifying_attributes = 1;
        desc.non_identifying_attributes = &kvs[1];
        a2s.agent_description = &desc;

        health.healthy = 1;
        health.status = "ok";
        a2s.health = &health;

        /* ReportsAvailableComponents: a list, as a collector sends one
         * (the same for every agent: stored once, shared) */
        if (opt.caps & 0x4000) {
            ce.key = "receivers";
            ce.value = &cd;
            ces[0] = &ce;
            comps.n_components = 1;
            comps.components = ces;
            comps.hash.data = (uint8_t *) "loadgen-components-1";
            comps.hash.len = 20;
            a2s.available_components = &comps;
        }
    }

    *len = opamp__proto__v1__agent_to_server__get_packed_size(&a2s);
    out = malloc(*len);
    if (out == NULL) {
        die("malloc");
    }

    opamp__proto__v1__agent_to_server__pack(&a2s, out);

    return out;
}


/* full status templates from files: each a packed AgentToServer that
 * starts as make_msg() expects (uid field, then sequence_num 1) */

static void
load_full(char *list)
{
    char    *name;
    FILE    *f;
    size_t   n;

    for (name = strtok(list, ","); name && nfull < LG_MAX_FULL;
         name = strtok(NULL, ","))
    {
        f = fopen(name, "rb");
        if (f == NULL) {
            die(name);
        }

        full_msgs[nfull] = malloc(LG_MAX_MSG);
        if (full_msgs[nfull] == NULL) {
            die("malloc");
        }

        n = fread(full_msgs[nfull], 1, LG_MAX_MSG - 64, f);
        fclose(f);

        if (n < 20 || full_msgs[nfull][0] != 0x0a
            || full_msgs[nfull][1] != 16 || full_msgs[nfull][18] != 0x10
            || full_msgs[nfull][19] != 1)
        {
            fprintf(stderr, "%s: not a template (uid, then sequence_num "
                    "1)\n", name);
            exit(2);
        }

        full_lens[nfull++] = n;
    }
}


/* the uid and sequence number of a packed template, for one agent: the
 * uid is the first field (tag 0x0a, length 16), the sequence number the
 * second (tag 0x10, a varint); the template's varint is 1 byte (1) */

static size_t
make_msg(lg_agent_t *a, const uint8_t *tmpl, size_t tlen, uint8_t *out)
{
    size_t    n;
    uint64_t  v;

    memcpy(out, tmpl, 2);
    memcpy(out + 2, a->uid, 16);
    n = 18;
    out[n++] = 0x10;
    v = a->seq;

    do {
        out[n++] = (uint8_t) ((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);

    memcpy(out + n, tmpl + 20, tlen - 20);

    return n + tlen - 20;
}


/* --- sockets ------------------------------------------------------------ */

static void
agent_write(lg_agent_t *a, const uint8_t *data, size_t len)
{
    ssize_t  n;

    /* loopback with small messages: a short write means trouble */
    n = send(a->fd, data, len, MSG_NOSIGNAL);
    if (n != (ssize_t) len) {
        failed++;
        a->state = S_CLOSED;
        close(a->fd);
    }
}


/* a WebSocket message of the OpAMP header and msg[1..mlen-1] */

static void
send_frame(lg_agent_t *a, uint8_t *msg, size_t mlen)
{
    uint8_t  *frame;
    size_t    n;
    int       i;

    frame = lg_out;
    msg[0] = 0;                          /* the OpAMP header */

    n = 0;
    frame[n++] = 0x82;

    if (mlen < 126) {
        frame[n++] = 0x80 | (uint8_t) mlen;

    } else if (mlen < 65536) {
        frame[n++] = 0x80 | 126;
        frame[n++] = (uint8_t) (mlen >> 8);
        frame[n++] = (uint8_t) mlen;

    } else {
        frame[n++] = 0x80 | 127;
        for (i = 7; i >= 0; i--) {
            frame[n++] = (uint8_t) (mlen >> (8 * i));
        }
    }

    memset(frame + n, 0, 4);             /* a zero mask key */
    n += 4;
    memcpy(frame + n, msg, mlen);

    a->sent_at = now();
    a->waiting = 1;
    agent_write(a, frame, n + mlen);
}


static void
send_ws(lg_agent_t *a, int full)
{
    size_t  mlen;

    mlen = make_msg(a, full ? LG_FULL(a) : beat_msg,
                    full ? LG_FULL_LEN(a) : beat_len, lg_msg + 1);
    a->acking = 0;
    send_frame(a, lg_msg, mlen + 1);
}


/* the supervisor's report once its Collector runs the new config */

static void
send_applied(lg_agent_t *a)
{
    size_t                               mlen;
    Opamp__Proto__V1__AgentToServer      a2s =
                                   OPAMP__PROTO__V1__AGENT_TO_SERVER__INIT;
    Opamp__Proto__V1__RemoteConfigStatus rcs =
                              OPAMP__PROTO__V1__REMOTE_CONFIG_STATUS__INIT;

    a2s.instance_uid.data = a->uid;
    a2s.instance_uid.len = 16;
    a2s.sequence_num = a->seq;
    a2s.capabilities = opt.caps;
    rcs.last_remote_config_hash.data = a->cfg;
    rcs.last_remote_config_hash.len = a->cfg_len;
    rcs.status =
        OPAMP__PROTO__V1__REMOTE_CONFIG_STATUSES__RemoteConfigStatuses_APPLIED;
    a2s.remote_config_status = &rcs;

    mlen = opamp__proto__v1__agent_to_server__pack(&a2s, lg_msg + 1);
    a->ack_due = 0;
    a->acking = 1;
    acks++;
    send_frame(a, lg_msg, mlen + 1);
}


static void
send_http(lg_agent_t *a)
{
    char      head[512];
    uint8_t  *req, *msg;
    size_t    mlen;
    int       hlen;

    req = lg_out;
    msg = lg_msg;

    /* like a real agent: all its status first and when asked again,
     * heartbeats in between */
    if (a->seq == 0 || a->full) {
        a->full = 0;
        mlen = make_msg(a, LG_FULL(a), LG_FULL_LEN(a), msg);

    } else {
        mlen = make_msg(a, beat_msg, beat_len, msg);
    }

    hlen = snprintf(head, sizeof(head),
                    "POST %s HTTP/1.1\r\nHost: %s\r\n"
                    "Content-Type: application/x-protobuf\r\n"
                    "Content-Length: %zu\r\n\r\n",
                    opt.path, opt.http_host, mlen);

    memcpy(req, head, hlen);
    memcpy(req + hlen, msg, mlen);

    a->sent_at = now();
    a->waiting = 1;
    agent_write(a, req, hlen + mlen);
}


static void
start_connect(lg_agent_t *a)
{
    int                 fd, one, sndbuf = 262144;
    struct linger       lg;
    struct sockaddr_in  src, dst;
    struct epoll_event  ev;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        die("socket");
    }

    one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    /* close with a reset: tens of thousands of client sockets in
     * TIME_WAIT would use up the ports of the next run */
    lg.l_onoff = 1;
    lg.l_linger = 0;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));

    /* a Collector's full status (tens of KB) in one send() */
    if (nfull) {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    }

    /* spread the agents over 127.0.0.X so that ports never run out */
    memset(&src, 0, sizeof(src));
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000000
                                | (opt.src_base + a->index / LG_PER_SOURCE));

    /* the port is chosen at connect(), against the whole 4-tuple: a
     * bind() that picks it searches every port bound on the address and
     * made the connect phase quadratic in kernel time */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));

    if (bind(fd, (struct sockaddr *) &src, sizeof(src)) < 0) {
        die("bind");
    }

    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons(opt.port);
    inet_pton(AF_INET, opt.host, &dst.sin_addr);

    if (connect(fd, (struct sockaddr *) &dst, sizeof(dst)) < 0
        && errno != EINPROGRESS)
    {
        die("connect");
    }

    a->fd = fd;
    a->state = S_CONNECTING;
    a->len = 0;
    a->waiting = 0;
    connecting++;

    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = a;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        die("epoll_ctl");
    }
}


static void
connect_more(void)
{
    while (connecting < LG_INFLIGHT && next_connect < opt.agents) {
        start_connect(&agents[next_connect++]);
    }
}


static void
connected_now(lg_agent_t *a)
{
    char                req[512];
    int                 n;
    struct epoll_event  ev;

    connecting--;
    connected++;

    ev.events = EPOLLIN;
    ev.data.ptr = a;
    epoll_ctl(ep, EPOLL_CTL_MOD, a->fd, &ev);

    if (opt.mode == M_HTTP) {
        a->state = S_HTTP;
        send_http(a);
        return;
    }

    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                 opt.path, opt.http_host);

    a->state = S_HANDSHAKE;
    agent_write(a, (uint8_t *) req, n);
}


static void
buf_append(lg_agent_t *a, const uint8_t *data, size_t n)
{
    if (a->len + n > a->size) {
        a->size = (a->len + n) * 2;
        a->buf = realloc(a->buf, a->size);
        if (a->buf == NULL) {
            die("realloc");
        }
    }

    memcpy(a->buf + a->len, data, n);
    a->len += n;
}


static void
buf_consume(lg_agent_t *a, size_t n)
{
    memmove(a->buf, a->buf + n, a->len - n);
    a->len -= n;

    if (a->len == 0 && a->size > 4096) {
        free(a->buf);
        a->buf = NULL;
        a->size = 0;
    }
}


/* fanout: is this the change the agent waits for?  A remote_config with
 * the expected config_hash and at least one file, decoded */

static int
is_change(Opamp__Proto__V1__ServerToAgent *s2a)
{
    ProtobufCBinaryData  *h;

    if (s2a == NULL || s2a->remote_config == NULL) {
        return 0;
    }

    h = &s2a->remote_config->config_hash;

    if ((int) h->len == opt.nexpect
        && memcmp(h->data, opt.expect, h->len) == 0
        && s2a->remote_config->config != NULL
        && s2a->remote_config->config->n_config_map > 0)
    {
        return 1;
    }

    if (armed) {
        other_configs++;
    }

    return 0;
}


static void check_go(void);


static void
got_message(lg_agent_t *a, const uint8_t *p, size_t n)
{
    int                               push;
    double                            t;
    Opamp__Proto__V1__ServerToAgent  *s2a;

    t = now();
    s2a = NULL;

    if (!opt.raw && n > 0 && p[0] == 0) {
        s2a = opamp__proto__v1__server_to_agent__unpack(NULL, n - 1, p + 1);

        if (s2a && (s2a->flags & 1)) {
            full_state_asked++;
        }
    }

    if (opt.mode == M_FANOUT && a->reported && !a->got_push) {
        /* the go file is written before the change is made: a message
         * that came before the loop looked at it is still the change's */
        if (opt.go_file && !armed) {
            check_go();
        }

        push = (!opt.raw && opt.nexpect) ? is_change(s2a) : armed;

        if (push) {
            a->got_push = 1;
            a->got_at = t;
            pushes++;

            /* a heartbeat out: its round trip ends here, as an agent
             * that cannot tell a push from a reply would see it */
            if (a->waiting) {
                beat_ended_by_push++;
            }
        }
    }

    /* a config it does not run yet: APPLIED for it later */
    if (s2a && opt.ack_delay >= 0 && s2a->remote_config
        && s2a->remote_config->config_hash.len <= sizeof(a->cfg)
        && (s2a->remote_config->config_hash.len != a->cfg_len
            || memcmp(s2a->remote_config->config_hash.data, a->cfg,
                      a->cfg_len) != 0))
    {
        a->cfg_len = (uint8_t) s2a->remote_config->config_hash.len;
        memcpy(a->cfg, s2a->remote_config->config_hash.data, a->cfg_len);
        a->ack_due = 1;
        a->ack_at = t + opt.ack_delay;
    }

    if (s2a) {
        opamp__proto__v1__server_to_agent__free_unpacked(s2a, NULL);
    }

    if (opt.raw || !a->waiting) {
        return;
    }

    a->waiting = 0;
    answered++;

    if (opt.mode == M_FANOUT && a->reported) {
        if (beats_phase > 0 && !a->acking
            && nbeat[beats_phase] < LG_MAX_BEATS)
        {
            beat_lat[beats_phase][nbeat[beats_phase]++] = t - a->sent_at;
        }

    } else if (nlat < opt.agents * 4) {
        latencies[nlat++] = t - a->sent_at;
    }

    a->seq++;

    if (!a->reported) {
        a->reported = 1;
        reported++;

        /* heartbeats spread over the interval, as a fleet's are */
        if (opt.mode == M_FANOUT) {
            a->next_beat = t + opt.heartbeat * (random() / (RAND_MAX + 1.0));
            return;
        }
    }

    if (opt.mode == M_STATUS && t - t_start < opt.duration + 1e9) {
        send_ws(a, opt.full_every && a->seq % opt.full_every == 0);

    } else if (!a->acking) {
        /* the APPLIED report leaves the heartbeats' schedule alone */
        a->next_beat = t + opt.heartbeat;
    }

    a->acking = 0;
}


static void
parse_ws(lg_agent_t *a)
{
    uint8_t   pong[8];
    size_t    off, len;
    uint8_t  *b;
    int       op;

    for ( ;; ) {
        b = a->buf;

        if (a->len < 2) {
            return;
        }

        op = b[0] & 0x0f;
        len = b[1] & 0x7f;
        off = 2;

        if (len == 126) {
            if (a->len < 4) {
                return;
            }

            len = ((size_t) b[2] << 8) | b[3];
            off = 4;

        } else if (len == 127) {
            if (a->len < 10) {
                return;
            }

            len = 0;
            for (int i = 0; i < 8; i++) {
                len = (len << 8) | b[2 + i];
            }

            off = 10;
        }

        if (a->len < off + len) {
            return;
        }

        if (op == 2 || op == 1) {
            got_message(a, b + off, len);

        } else if (op == 9) {
            pong[0] = 0x8a;
            pong[1] = 0x80;
            memset(pong + 2, 0, 4);
            agent_write(a, pong, 6);

        } else if (op == 8) {
            closed_by_peer++;
            unreached += (a->reported && !a->got_push);
            a->state = S_CLOSED;
            close(a->fd);
            return;
        }

        buf_consume(a, off + len);
    }
}


static void
parse_http(lg_agent_t *a)
{
    char                             *end, *cl;
    size_t                            head, body;
    Opamp__Proto__V1__ServerToAgent  *s2a;

    for ( ;; ) {
        if (a->len < 4) {
            return;
        }

        end = memmem(a->buf, a->len, "\r\n\r\n", 4);
        if (end == NULL) {
            return;
        }

        head = (uint8_t *) end - a->buf + 4;
        body = 0;

        cl = memmem(a->buf, head, "Content-Length: ", 16);
        if (cl) {
            body = strtoul(cl + 16, NULL, 10);
        }

        if (a->len < head + body) {
            return;
        }

        if (memcmp(a->buf, "HTTP/1.1 2", 10) != 0) {
            failed++;

        } else if (body > 0) {
            s2a = opamp__proto__v1__server_to_agent__unpack(NULL, body,
                                                            a->buf + head);
            if (s2a) {
                if (s2a->flags & 1) {
                    full_state_asked++;
                    a->full = 1;
                }

                opamp__proto__v1__server_to_agent__free_unpacked(s2a, NULL);
            }
        }

        buf_consume(a, head + body);

        a->waiting = 0;
        answered++;

        if (nlat < opt.agents * 64) {
            latencies[nlat++] = now() - a->sent_at;
        }

        a->seq++;

        if (now() - t_start < opt.duration) {
            send_http(a);
        }
    }
}


static void
on_readable(lg_agent_t *a)
{
    uint8_t   tmp[65536];
    ssize_t   n;
    uint8_t  *end;

    for ( ;; ) {
        n = recv(a->fd, tmp, sizeof(tmp), 0);

        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            if (a->state != S_CLOSED) {
                closed_by_peer++;
                unreached += (a->reported && !a->got_push);
                a->state = S_CLOSED;
                close(a->fd);

                /* keep-alive ended (keepalive_requests): poll on anew */
                if (opt.mode == M_HTTP && now() - t_start < opt.duration) {
                    connected--;
                    start_connect(a);
                }
            }

            return;
        }

        if (n < 0) {
            return;
        }

        buf_append(a, tmp, n);

        if (a->state == S_HANDSHAKE) {
            end = memmem(a->buf, a->len, "\r\n\r\n", 4);
            if (end == NULL) {
                continue;
            }

            if (memcmp(a->buf, "HTTP/1.1 101", 12) != 0) {
                failed++;
                a->state = S_CLOSED;
                close(a->fd);
                return;
            }

            buf_consume(a, end - a->buf + 4);
            a->state = S_OPEN;

            if (!opt.raw) {
                send_ws(a, 1);

            } else {
                reported++;
                a->reported = 1;
            }
        }

        if (a->state == S_OPEN) {
            parse_ws(a);

        } else if (a->state == S_HTTP) {
            parse_http(a);
        }

        if (a->state == S_CLOSED) {
            return;
        }
    }
}


static int
cmp_double(const void *x, const void *y)
{
    double  a = *(const double *) x, b = *(const double *) y;

    return (a > b) - (a < b);
}


static double
pct_of(double *v, long n, double p)
{
    if (n == 0) {
        return 0;
    }

    return v[(long) (p * (n - 1))] * 1000;
}


static double
pct(double p)
{
    return pct_of(latencies, nlat, p);
}


/* the change's time, written by whoever made it: CLOCK_REALTIME seconds */

static void
check_go(void)
{
    FILE             *f;
    double            tr;
    struct timespec   ts;

    f = fopen(opt.go_file, "r");
    if (f == NULL) {
        return;
    }

    if (fscanf(f, "%lf", &tr) == 1) {
        clock_gettime(CLOCK_REALTIME, &ts);
        t_trigger = now() - (ts.tv_sec + ts.tv_nsec / 1e9 - tr);
        armed = 1;
    }

    fclose(f);
}


static void
write_file(const char *name, long v)
{
    FILE  *f;
    char   tmp[4096];

    /* written whole, then renamed: a reader never sees half of it */
    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    f = fopen(tmp, "w");
    if (f == NULL) {
        die(tmp);
    }

    fprintf(f, "%ld\n", v);
    fclose(f);

    if (rename(tmp, name) < 0) {
        die(name);
    }
}


static void
run_trigger(void)
{
    pid_t  pid;
    char  *argv[] = { "/bin/sh", "-c", (char *) opt.trigger, NULL };

    t_trigger = now();
    armed = 1;

    if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) != 0) {
        die("posix_spawn");
    }
}


enum { STOP_NONE, STOP_REPORTED, STOP_PUSHED, STOP_ARMED };

static void
loop(double until, int stop)
{
    int                  i, n;
    double               t, last_sweep;
    lg_agent_t          *a;
    struct epoll_event   evs[LG_MAX_EVENTS];

    last_sweep = 0;

    for ( ;; ) {
        connect_more();

        t = now();

        if (t >= until) {
            return;
        }

        if (opt.go_file && !armed) {
            check_go();
        }

        /* the round trips "before" from when the baseline starts */
        if (beats_phase == -1 && access(opt.base_file, F_OK) == 0) {
            beats_phase = 1;
        }

        if (stop == STOP_REPORTED && reported + failed >= opt.agents) {
            return;
        }

        if (stop == STOP_PUSHED && pushes + unreached >= reported) {
            return;
        }

        if (stop == STOP_ARMED && armed) {
            return;
        }

        n = epoll_wait(ep, evs, LG_MAX_EVENTS, 50);

        for (i = 0; i < n; i++) {
            a = evs[i].data.ptr;

            if (a->state == S_CONNECTING) {
                if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                    failed++;
                    connecting--;
                    a->state = S_CLOSED;
                    close(a->fd);
                    continue;
                }

                connected_now(a);

                if (connected == opt.agents) {
                    t_all_connected = now();
                }

                continue;
            }

            if (a->state != S_CLOSED) {
                on_readable(a);
            }
        }

        t = now();

        /* heartbeats: a sweep every 100 ms is plenty at intervals of
         * seconds; one per event loop turn made the connect phase of tens
         * of thousands of agents quadratic.  Raw subscribers send nothing:
         * Nchan closes a subscriber that sends it an OpAMP frame. */
        if ((opt.mode == M_HOLD || opt.mode == M_FANOUT) && !opt.raw
            && (opt.mode == M_HOLD || opt.beats || opt.ack_delay >= 0)
            && t - last_sweep >= 0.1)
        {
            last_sweep = t;

            for (long k = 0; k < next_connect; k++) {
                a = &agents[k];

                if (a->state != S_OPEN || !a->reported || a->waiting) {
                    continue;
                }

                if (a->ack_due && a->ack_at <= t) {
                    send_applied(a);

                } else if ((opt.mode == M_HOLD || opt.beats)
                           && a->next_beat <= t)
                {
                    send_ws(a, 0);
                }
            }
        }
    }
}


int
main(int argc, char **argv)
{
    int            c;
    long           i;
    struct rlimit  rl;

    static struct option  longopts[] = {
        { "mode", 1, NULL, 'm' }, { "port", 1, NULL, 'p' },
        { "host", 1, NULL, 'H' }, { "path", 1, NULL, 'P' },
        { "agents", 1, NULL, 'n' }, { "duration", 1, NULL, 'd' },
        { "heartbeat", 1, NULL, 'b' }, { "src-base", 1, NULL, 's' },
        { "trigger", 1, NULL, 't' }, { "raw", 0, NULL, 'r' },
        { "linger", 1, NULL, 'l' },
        { "seed", 1, NULL, 'S' }, { "full", 1, NULL, 'F' },
        { "full-every", 1, NULL, 'E' }, { "caps", 1, NULL, 'C' },
        { "expect-hash", 1, NULL, 'X' }, { "ready-file", 1, NULL, 'R' },
        { "go-file", 1, NULL, 'G' }, { "done-file", 1, NULL, 'D' },
        { "lat-file", 1, NULL, 'L' }, { "ack-delay", 1, NULL, 'A' },
        { "base-file", 1, NULL, 'B' },
        { NULL, 0, NULL, 0 }
    };

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            opt.mode = !strcmp(optarg, "hold") ? M_HOLD
                     : !strcmp(optarg, "status") ? M_STATUS
                     : !strcmp(optarg, "http") ? M_HTTP
                     : !strcmp(optarg, "fanout") ? M_FANOUT
                     : !strcmp(optarg, "reconnect") ? M_RECONNECT : -1;
            if (opt.mode < 0) {
                fprintf(stderr, "unknown mode %s\n", optarg);
                return 2;
            }
            break;
        case 'p': opt.port = atoi(optarg); break;
        case 'H': opt.host = optarg; break;
        case 'P': opt.path = optarg; break;
        case 'n': opt.agents = atol(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'b': opt.heartbeat = atof(optarg); opt.beats = 1; break;
        case 's': opt.src_base = atoi(optarg); break;
        case 't': opt.trigger = optarg; break;
        case 'l': opt.linger = atof(optarg); break;
        case 'r': opt.raw = 1; break;
        case 'S': opt.seed = (unsigned) atoi(optarg); break;
        case 'F': opt.full = optarg; break;
        case 'E': opt.full_every = atol(optarg); break;
        case 'C': opt.caps = strtoul(optarg, NULL, 0); break;
        case 'R': opt.ready_file = optarg; break;
        case 'G': opt.go_file = optarg; break;
        case 'D': opt.done_file = optarg; break;
        case 'L': opt.lat_file = optarg; break;
        case 'A': opt.ack_delay = atof(optarg); break;
        case 'B': opt.base_file = optarg; break;
        case 'X':
            for (opt.nexpect = 0;
                 opt.nexpect < 64 && optarg[2 * opt.nexpect]
                 && sscanf(optarg + 2 * opt.nexpect, "%2hhx",
                           &opt.expect[opt.nexpect]) == 1;
                 opt.nexpect++)
            { /* void */ }
            break;
        default:
            return 2;
        }
    }

    /* bounded: loopback only, at most 1M agents, at most an hour */
    if (opt.agents < 1 || opt.agents > 1000000 || opt.duration > 3600
        || strncmp(opt.host, "127.", 4) != 0)
    {
        fprintf(stderr, "agents 1..1000000, duration <= 3600, host 127.x\n");
        return 2;
    }

    rl.rlim_cur = rl.rlim_max = opt.agents + 64;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);

        if ((long) rl.rlim_cur < opt.agents + 16) {
            fprintf(stderr, "RLIMIT_NOFILE %ld is too low for %ld agents\n",
                    (long) rl.rlim_cur, opt.agents);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN);

    ep = epoll_create1(0);
    if (ep < 0) {
        die("epoll_create1");
    }

    if (opt.mode == M_FANOUT && opt.trigger == NULL && opt.go_file == NULL) {
        fprintf(stderr, "fanout needs --trigger or --go-file\n");
        return 2;
    }

    agents = calloc(opt.agents, sizeof(lg_agent_t));
    latencies = calloc(opt.agents * 64 + 16, sizeof(double));
    beat_lat[1] = calloc(LG_MAX_BEATS, sizeof(double));
    beat_lat[2] = calloc(LG_MAX_BEATS, sizeof(double));
    if (agents == NULL || latencies == NULL || beat_lat[1] == NULL
        || beat_lat[2] == NULL)
    {
        die("calloc");
    }

    srandom(opt.seed);

    for (i = 0; i < opt.agents; i++) {
        agents[i].index = (uint32_t) i;
        agents[i].seq = 0;

        for (c = 0; c < 16; c++) {
            agents[i].uid[c] = (uint8_t) random();
        }

        agents[i].uid[6] = (agents[i].uid[6] & 0x0f) | 0x40;
    }

    full_msg = pack_a2s(1, &full_len);
    beat_msg = pack_a2s(0, &beat_len);

    if (opt.full) {
        load_full(opt.full);
    }

    t_start = now();

    if (opt.mode == M_HTTP || opt.mode == M_STATUS) {
        loop(t_start + opt.duration, STOP_NONE);

        qsort(latencies, nlat, sizeof(double), cmp_double);
        printf("mode=%s agents=%ld connected=%ld answered=%ld failed=%ld "
               "seconds=%.2f rate=%.0f p50_ms=%.2f p99_ms=%.2f "
               "full_state_asked=%ld\n",
               opt.mode == M_HTTP ? "http" : "status", opt.agents, connected,
               answered, failed, now() - t_start,
               answered / (now() - t_start), pct(0.5), pct(0.99),
               full_state_asked);
        return 0;
    }

    /* connect everybody and wait for each first reply */
    loop(t_start + opt.duration, STOP_REPORTED);
    t_all_reported = now();

    qsort(latencies, nlat, sizeof(double), cmp_double);

    if (opt.mode == M_HOLD) {
        printf("mode=hold agents=%ld connected=%ld reported=%ld failed=%ld "
               "connect_s=%.3f connect_rate=%.0f\n", opt.agents, connected,
               reported, failed, t_all_reported - t_start,
               reported / (t_all_reported - t_start));
        fflush(stdout);

        /* hold them, heartbeating, for the rest of the duration */
        nlat = 0;
        loop(t_start + opt.duration, STOP_NONE);
        printf("held=%ld closed_by_peer=%ld heartbeats=%ld\n",
               connected - closed_by_peer, closed_by_peer, answered);
        return 0;
    }

    if (opt.mode == M_FANOUT) {
        printf("ready=%ld ", reported);
        fflush(stdout);
        nlat = 0;
        beats_phase = opt.base_file ? -1 : 1;

        if (opt.ready_file) {
            write_file(opt.ready_file, reported);
        }

        if (opt.trigger) {
            run_trigger();

        } else {
            loop(t_start + opt.duration, STOP_ARMED);
        }

        if (armed) {
            beats_phase = 2;
            loop(t_trigger + opt.duration, STOP_PUSHED);
        }

        beats_phase = 0;

        if (opt.done_file) {
            write_file(opt.done_file, pushes);
        }

        for (i = 0; i < opt.agents; i++) {
            if (agents[i].got_push) {
                latencies[nlat++] = agents[i].got_at - t_trigger;
            }
        }

        qsort(latencies, nlat, sizeof(double), cmp_double);
        qsort(beat_lat[1], nbeat[1], sizeof(double), cmp_double);
        qsort(beat_lat[2], nbeat[2], sizeof(double), cmp_double);

        printf("mode=fanout agents=%ld received=%ld p50_ms=%.1f "
               "p99_ms=%.1f max_ms=%.1f failed=%ld closed=%ld "
               "other_configs=%ld armed=%d acks=%ld", opt.agents, pushes,
               pct(0.5), pct(0.99), nlat ? latencies[nlat - 1] * 1000 : 0,
               failed, closed_by_peer, other_configs, armed, acks);

        if (opt.beats) {
            printf(" hb_before_n=%ld hb_before_p50_ms=%.2f "
                   "hb_before_p99_ms=%.2f hb_during_n=%ld "
                   "hb_during_p50_ms=%.2f hb_during_p99_ms=%.2f "
                   "beat_ended_by_push=%ld",
                   nbeat[1], pct_of(beat_lat[1], nbeat[1], 0.5),
                   pct_of(beat_lat[1], nbeat[1], 0.99), nbeat[2],
                   pct_of(beat_lat[2], nbeat[2], 0.5),
                   pct_of(beat_lat[2], nbeat[2], 0.99), beat_ended_by_push);
        }

        printf("\n");
        fflush(stdout);

        /* every latency, for percentiles over several processes: "p"
         * the change, "b" heartbeats before it, "d" during it (ms) */
        if (opt.lat_file) {
            FILE  *f = fopen(opt.lat_file, "w");

            if (f == NULL) {
                die(opt.lat_file);
            }

            for (i = 0; i < nlat; i++) {
                fprintf(f, "p %.3f\n", latencies[i] * 1000);
            }

            for (c = 1; c <= 2; c++) {
                for (i = 0; i < nbeat[c]; i++) {
                    fprintf(f, "%c %.3f\n", c == 1 ? 'b' : 'd',
                            beat_lat[c][i] * 1000);
                }
            }

            fclose(f);
        }

        /* still connected, so that the server's cost of the fan-out can
         * be read apart from that of the agents leaving */
        if (opt.linger > 0) {
            loop(now() + opt.linger, STOP_NONE);
        }

        return 0;
    }

    /* reconnect: drop everybody at once, come back with seq + 1 */
    full_state_asked = 0;

    for (i = 0; i < opt.agents; i++) {
        if (agents[i].state != S_CLOSED) {
            close(agents[i].fd);
        }

        agents[i].state = S_IDLE;
        agents[i].reported = 0;
        agents[i].waiting = 0;
        free(agents[i].buf);
        agents[i].buf = NULL;
        agents[i].size = agents[i].len = 0;
    }

    beat_msg = full_msg;      /* a restarted agent reports all again... */
    full_msg = pack_a2s(0, &full_len);   /* ...but these only continue */

    reported = connected = failed = 0;
    next_connect = 0;
    connecting = 0;
    nlat = 0;

    double  t0 = now();

    t_start = t0;
    loop(t0 + opt.duration, STOP_REPORTED);

    printf("mode=reconnect agents=%ld back=%ld seconds=%.3f "
           "full_state_asked=%ld failed=%ld\n", opt.agents, reported,
           now() - t0, full_state_asked, failed);

    return 0;
}
