/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What a worker decided at a fleet change (src/ngx_http_opamp_fanout.c),
 * written to Redis in bulk after the frames went out: up to 256 agents
 * per src/lua/offered.lua call.  The agents of a change share a few kinds
 * of decision (the config each group owes, offered or not), so a call
 * carries each kind once and three short arguments per agent: Redis
 * converts every argument of a call into a Lua string, which was a fifth
 * of the script's time with six per agent.
 */


#include "ngx_http_opamp_fanout.h"
#include "ngx_http_opamp_session_internal.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"


/* agents per offered.lua call: a few hundred microseconds of Redis */
#define NGX_HTTP_OPAMP_OFFERED_BATCH  256

/* kinds of decision per call; a batch that would need more is sent
 * first (a fan-out makes one or two per group owed) */
#define NGX_HTTP_OPAMP_OFFERED_KINDS  16

/* an agent's arguments: instance uid, connection number, kind */
#define NGX_HTTP_OPAMP_OFFERED_ARGC   3

/* KEYS[1], ARGV[1..5] and four arguments a kind, in front of the agents'
 * (which start here in the argument arrays; the head is filled last) */
#define NGX_HTTP_OPAMP_OFFERED_HEAD   (6 + 4 * NGX_HTTP_OPAMP_OFFERED_KINDS)

/* "group:" and the longest group name (docs/redis-schema.md) */
#define NGX_HTTP_OPAMP_OFFERED_DESIRED_MAX  (6 + 128)


/* one kind of decision: what offered.lua's ARGV says of it */
typedef struct {
    uint64_t                        from;
    unsigned                        has_from:1;   /* else "" */
    unsigned                        no_view:1;    /* desired "-" */
    unsigned                        has_hash:1;
    size_t                          desired_len;
    u_char                          desired[NGX_HTTP_OPAMP_OFFERED_DESIRED_MAX];
    u_char                          hash[32];
    const char                     *what;
} ngx_http_opamp_offered_kind_t;


static ngx_uint_t ngx_http_opamp_offered_kind(ngx_http_opamp_view_t *v,
    uint64_t version, uint64_t safe_from, const char *what);
static void ngx_http_opamp_offered_written(redisReply *reply, void *data);


/* the decisions waiting for the next call: their arguments, the bytes in
 * one allocation after the arrays */
static ngx_uint_t                   ngx_http_opamp_offered_n;
static u_char                      *ngx_http_opamp_offered_pos;
static const char                 **ngx_http_opamp_offered_argv;
static size_t                      *ngx_http_opamp_offered_lens;
static uint64_t                     ngx_http_opamp_offered_version;
static ngx_uint_t                   ngx_http_opamp_offered_nkinds;
static ngx_http_opamp_offered_kind_t
                    ngx_http_opamp_offered_kinds[NGX_HTTP_OPAMP_OFFERED_KINDS];


/*
 * One agent's decision for the next offered.lua call: the oldest version
 * its settled mark may move from (none when safe_from is not below
 * version), its desired_config ("-": it takes no config) and hash, and
 * what happened ("o": offered now, "c": its desired config or hash
 * changed).
 */

void
ngx_http_opamp_fanout_note(ngx_http_opamp_session_t *s, uint64_t version,
    uint64_t safe_from, const char *what)
{
    u_char                      *p;
    size_t                       size;
    ngx_uint_t                   argc, kind;
    ngx_http_opamp_main_conf_t  *omcf;

    if (ngx_http_opamp_offered_n
        && (ngx_http_opamp_offered_version != version
            || ngx_http_opamp_offered_n == NGX_HTTP_OPAMP_OFFERED_BATCH))
    {
        ngx_http_opamp_fanout_flush();
    }

    if (ngx_http_opamp_offered_argv == NULL) {
        omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                                   ngx_http_opamp_module);

        argc = NGX_HTTP_OPAMP_OFFERED_HEAD
               + NGX_HTTP_OPAMP_OFFERED_ARGC * NGX_HTTP_OPAMP_OFFERED_BATCH;

        /* the agents', then the head's: the gauges' key, now, version,
         * the connection prefix, the number of kinds, and the kinds */

        size = argc * (sizeof(char *) + sizeof(size_t))
               + NGX_HTTP_OPAMP_OFFERED_BATCH
                 * (NGX_HTTP_OPAMP_UID_STR_LEN + 2 * NGX_INT64_LEN)
               + omcf->prefix.len + sizeof("fleet:gauges") - 1
               + 3 * NGX_INT64_LEN + NGX_HTTP_OPAMP_CONN_ID_LEN
               + NGX_HTTP_OPAMP_OFFERED_KINDS
                 * (NGX_INT64_LEN + NGX_HTTP_OPAMP_OFFERED_DESIRED_MAX + 64);

        ngx_http_opamp_offered_argv = ngx_alloc(size, ngx_cycle->log);
        if (ngx_http_opamp_offered_argv == NULL) {
            return;
        }

        ngx_http_opamp_offered_lens =
            (size_t *) &ngx_http_opamp_offered_argv[argc];
        ngx_http_opamp_offered_pos =
            (u_char *) &ngx_http_opamp_offered_lens[argc];
        ngx_http_opamp_offered_version = version;
        ngx_http_opamp_offered_nkinds = 0;
    }

    kind = ngx_http_opamp_offered_kind(s->view, version, safe_from, what);

    if (kind == NGX_HTTP_OPAMP_OFFERED_KINDS) {
        /* a kind more than a call carries: this batch goes first */
        ngx_http_opamp_fanout_flush();
        ngx_http_opamp_fanout_note(s, version, safe_from, what);
        return;
    }

    argc = NGX_HTTP_OPAMP_OFFERED_HEAD
           + NGX_HTTP_OPAMP_OFFERED_ARGC * ngx_http_opamp_offered_n;
    p = ngx_http_opamp_offered_pos;

    ngx_http_opamp_offered_argv[argc] = (const char *) p;
    ngx_http_opamp_uid_format(p, s->uid);
    p += NGX_HTTP_OPAMP_UID_STR_LEN;
    ngx_http_opamp_offered_lens[argc++] = NGX_HTTP_OPAMP_UID_STR_LEN;

    ngx_http_opamp_offered_argv[argc] = (const char *) p;
    p = ngx_sprintf(p, "%uL", s->conn_number);
    ngx_http_opamp_offered_lens[argc] =
        p - (u_char *) ngx_http_opamp_offered_argv[argc];
    argc++;

    ngx_http_opamp_offered_argv[argc] = (const char *) p;
    p = ngx_sprintf(p, "%ui", kind + 1);
    ngx_http_opamp_offered_lens[argc] =
        p - (u_char *) ngx_http_opamp_offered_argv[argc];

    ngx_http_opamp_offered_pos = p;
    ngx_http_opamp_offered_n++;
}


/* the kind of the batch this decision is of, a new one if none is;
 * NGX_HTTP_OPAMP_OFFERED_KINDS: the batch has no room for another */

static ngx_uint_t
ngx_http_opamp_offered_kind(ngx_http_opamp_view_t *v, uint64_t version,
    uint64_t safe_from, const char *what)
{
    ngx_uint_t                      i;
    ngx_http_opamp_offered_kind_t   k, *e;

    ngx_memzero(&k, sizeof(ngx_http_opamp_offered_kind_t));

    if (safe_from < version) {
        k.from = safe_from;
        k.has_from = 1;
    }

    if (v == NULL) {
        k.no_view = 1;

    } else if (what[0] != '\0') {
        /* offered, or its desired config changed: what it is owed now
         * is written (else nothing of it: agents owed different configs
         * share the kind) */
        k.desired_len = ngx_min(v->desired_len,
                                NGX_HTTP_OPAMP_OFFERED_DESIRED_MAX);
        ngx_memcpy(k.desired, v->desired, k.desired_len);
        k.has_hash = v->has_desired_hash;

        if (k.has_hash) {
            ngx_memcpy(k.hash, v->desired_hash, 32);
        }
    }

    k.what = what;

    for (i = 0; i < ngx_http_opamp_offered_nkinds; i++) {
        e = &ngx_http_opamp_offered_kinds[i];

        if (e->has_from == k.has_from && e->from == k.from
            && e->no_view == k.no_view && e->has_hash == k.has_hash
            && e->desired_len == k.desired_len
            && ngx_memcmp(e->desired, k.desired, k.desired_len) == 0
            && ngx_memcmp(e->hash, k.hash, 32) == 0
            && ngx_strcmp(e->what, k.what) == 0)
        {
            return i;
        }
    }

    if (i == NGX_HTTP_OPAMP_OFFERED_KINDS) {
        return i;
    }

    ngx_http_opamp_offered_kinds[i] = k;
    ngx_http_opamp_offered_nkinds++;

    return i;
}


void
ngx_http_opamp_fanout_flush(void)
{
    u_char                         *p;
    ngx_uint_t                      i, a, argc, head;
    ngx_time_t                     *tp;
    const char                    **argv;
    size_t                         *lens;
    ngx_http_opamp_main_conf_t     *omcf;
    ngx_http_opamp_offered_kind_t  *k;

    if (ngx_http_opamp_offered_n == 0) {
        return;
    }

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_opamp_module);

    /* KEYS[1], ARGV[1..5] and the kinds, right in front of the agents */

    head = 6 + 4 * ngx_http_opamp_offered_nkinds;
    argv = ngx_http_opamp_offered_argv + NGX_HTTP_OPAMP_OFFERED_HEAD - head;
    lens = ngx_http_opamp_offered_lens + NGX_HTTP_OPAMP_OFFERED_HEAD - head;
    p = ngx_http_opamp_offered_pos;
    a = 0;

#define NGX_HTTP_OPAMP_OFFERED_ARG(start, end)                               \
    argv[a] = (const char *) (start);                                       \
    lens[a] = (u_char *) (end) - (u_char *) (start);                        \
    a++

    NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_sprintf(p, "%Vfleet:gauges",
                                              &omcf->prefix));
    p += lens[a - 1];

    tp = ngx_timeofday();
    NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_sprintf(p, "%T%03M", tp->sec,
                                              tp->msec));
    p += lens[a - 1];

    NGX_HTTP_OPAMP_OFFERED_ARG(omcf->prefix.data,
                               omcf->prefix.data + omcf->prefix.len);

    NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_sprintf(p, "%uL",
                                          ngx_http_opamp_offered_version));
    p += lens[a - 1];

    /* "<server_id>:<pid>:", what every agent's conn starts with here:
     * the id of connection 0 without its number */
    NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_http_opamp_store_conn_id(p, 0) - 1);
    p += lens[a - 1] + 1;

    NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_sprintf(p, "%ui",
                                          ngx_http_opamp_offered_nkinds));
    p += lens[a - 1];

    for (i = 0; i < ngx_http_opamp_offered_nkinds; i++) {
        k = &ngx_http_opamp_offered_kinds[i];

        if (k->has_from) {
            NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_sprintf(p, "%uL", k->from));
            p += lens[a - 1];

        } else {
            NGX_HTTP_OPAMP_OFFERED_ARG(p, p);
        }

        if (k->no_view) {
            NGX_HTTP_OPAMP_OFFERED_ARG("-", (const char *) "-" + 1);
            NGX_HTTP_OPAMP_OFFERED_ARG(p, p);

        } else {
            NGX_HTTP_OPAMP_OFFERED_ARG(k->desired,
                                       k->desired + k->desired_len);

            if (k->has_hash) {
                NGX_HTTP_OPAMP_OFFERED_ARG(p, ngx_hex_dump(p, k->hash, 32));
                p += 64;

            } else {
                NGX_HTTP_OPAMP_OFFERED_ARG(p, p);
            }
        }

        NGX_HTTP_OPAMP_OFFERED_ARG(k->what, k->what + ngx_strlen(k->what));
    }

#undef NGX_HTTP_OPAMP_OFFERED_ARG

    argc = head + NGX_HTTP_OPAMP_OFFERED_ARGC * ngx_http_opamp_offered_n;

    /* fire and forget: what was decided is in the worker's memory too,
     * and a lost write costs the agent a long way at its next message */

    (void) ngx_http_opamp_store_eval(NGX_HTTP_OPAMP_SCRIPT_OFFERED, 1, argc,
                                     argv, lens,
                                     ngx_http_opamp_offered_written, NULL);

    ngx_free(ngx_http_opamp_offered_argv);
    ngx_http_opamp_offered_argv = NULL;
    ngx_http_opamp_offered_lens = NULL;
    ngx_http_opamp_offered_pos = NULL;
    ngx_http_opamp_offered_n = 0;
    ngx_http_opamp_offered_nkinds = 0;
}


static void
ngx_http_opamp_offered_written(redisReply *reply, void *data)
{
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: writing a fleet change's decisions failed: %s",
                      reply->str);
    }
}
