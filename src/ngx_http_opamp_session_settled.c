
/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The short way in the worker: a WebSocket agent's heartbeat answered
 * without Redis.
 *
 * Most of a fleet's messages are heartbeats of agents owed nothing.
 * beats.lua answers them with a few reads and writes of the agent's
 * data, which nothing has touched since its last heartbeat, so none of
 * it is in any cache: 20-28 us of Redis each, whatever the batching
 * (docs/performance.md).  Once beats.lua found an agent owed nothing,
 * the worker knows what the script would find at the next heartbeat as
 * long as nothing changed: the heartbeats that follow in sequence on the
 * same connection, with the same capabilities, are answered here until
 * the re-check time, and only then does one go to Redis again.
 *
 * What could have changed is known to the worker:
 *
 *   - anything the admin API or a rollout changes is published on the
 *     fleet channel or on this worker's channel; every such message
 *     bumps the worker's epoch, and a session settled under an older
 *     epoch asks Redis again;
 *   - a lost Redis connection may have lost messages: a new connection
 *     bumps it too (the Redis module's count of connections up);
 *   - an offer out unacknowledged is due again at its settled_until,
 *     which beats.lua returns;
 *   - what a control plane writes to Redis directly, without a message,
 *     is seen at the re-check: opamp_heartbeat_recheck.
 *
 * The agent's lease (expires_ms) must not lapse meanwhile: after half of
 * opamp_agent_timeout (or earlier if the next heartbeat would come too
 * late) the next heartbeat goes to beats.lua as a lease renewal ("L"),
 * which checks only what the agent's hash says (its settled mark, which
 * holds config_version and the connection, and its sequence_num) and
 * stores sequence and liveness: the keys that only a message would tell
 * of (outbox, command) are left to the re-check, and a renewal costs
 * Redis about two thirds of a full short way.  A config change
 * written directly (config_version, settled emptied) is thus still seen
 * within half of the timeout.
 *
 * Redis's sequence_num lags by the heartbeats answered here: the next
 * message that goes to Redis names the sequence_num Redis holds as its
 * predecessor (the worker vouches for the ones between), and the
 * disconnect of the connection stores the last one, so that the agent's
 * next connection, here or elsewhere, stays in sequence.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_session_internal.h"
#include "redis/ngx_http_opamp_redis.h"


static ngx_uint_t  ngx_http_opamp_settled_messages;


/* the epoch: channel messages received and Redis connections made */

static ngx_uint_t
ngx_http_opamp_settled_epoch(void)
{
    return ngx_http_opamp_settled_messages + ngx_http_opamp_redis_ups;
}


void
ngx_http_opamp_session_settled_changed(void)
{
    ngx_http_opamp_settled_messages++;
}


/*
 * Whether this heartbeat renews the agent's lease: half of the timeout
 * has passed since Redis last renewed it, or the next heartbeat, as far
 * apart as this one from the last, would come too late (an agent whose
 * interval is half of the timeout or more, and its jitter).
 */

static ngx_uint_t
ngx_http_opamp_session_settled_lease_due(ngx_http_opamp_session_t *s)
{
    ngx_msec_t                 held, gap, timeout;
    ngx_http_opamp_settled_t  *st;

    st = &s->settled;
    timeout = s->conf->agent_timeout;

    held = ngx_current_msec - st->leased;
    gap = ngx_current_msec - st->last_beat;
    st->last_beat = ngx_current_msec;

    return held >= timeout / 2 || held + gap + timeout / 8 >= timeout;
}


/*
 * Answers rep here (fills its out fields, returns 1) when it is a
 * heartbeat of a settled session in sequence, nothing changed since and
 * the re-check time is not reached.  Otherwise (0) it goes to Redis, with
 * the predecessor Redis holds.
 */

ngx_uint_t
ngx_http_opamp_session_settled_answer(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep)
{
    ngx_http_opamp_settled_t  *st;

    st = &s->settled;

    if (!st->chain) {
        return 0;
    }

    if (rep->sequence_num != st->last_seq + 1
        || !s->has_uid
        || ngx_memcmp(rep->uid, s->uid, NGX_HTTP_OPAMP_UID_LEN) != 0)
    {
        /* out of sequence: Redis asks for the full state */
        st->chain = 0;
        st->valid = 0;
        return 0;
    }

    if (!st->valid
        || st->epoch != ngx_http_opamp_settled_epoch()
        || (ngx_msec_int_t) (st->until - ngx_current_msec) <= 0
        || rep->capabilities != st->capabilities
        || rep->conn_settings_hash.len != sizeof(st->cs_hash)
        || ngx_memcmp(rep->conn_settings_hash.data, st->cs_hash,
                      sizeof(st->cs_hash)) != 0
        || s->recheck || s->checking
        || !ngx_http_opamp_store_is_beat(rep)
        || !ngx_http_opamp_redis_ready())
    {
        st->valid = 0;

        rep->vouched = 1;
        rep->prev_sequence_num = st->stored_seq;
        return 0;
    }

    if (ngx_http_opamp_session_settled_lease_due(s)) {
        /* the lease: Redis checks the mark and stores the sequence */

        rep->vouched = 1;
        rep->lease_only = 1;
        rep->prev_sequence_num = st->stored_seq;
        return 0;
    }

    st->last_seq = rep->sequence_num;

    ngx_http_opamp_store_owed_nothing(rep);
    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_BEATS_IN_WORKER);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "opamp heartbeat %uL answered in the worker",
                   rep->sequence_num);

    return 1;
}


/* the epoch to learn under, taken when the message goes to Redis */

ngx_uint_t
ngx_http_opamp_session_settled_mark(void)
{
    return ngx_http_opamp_settled_epoch();
}


/*
 * Redis stored rep (its sequence_num is Redis's now): with beats.lua's
 * short way and nothing changed while it was out, the next heartbeats
 * may be answered here.
 */

void
ngx_http_opamp_session_settled_learn(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, ngx_uint_t epoch)
{
    ngx_msec_t                 window;
    ngx_time_t                *tp;
    uint64_t                   now_ms;
    ngx_http_opamp_settled_t  *st;

    st = &s->settled;

    if (rep->lease_only && rep->settled && st->valid && st->chain) {
        /* a lease renewal: the re-check time and the epoch stay */

        st->last_seq = rep->sequence_num;
        st->stored_seq = rep->sequence_num;
        st->leased = ngx_current_msec;
        return;
    }

    st->valid = 0;
    st->chain = 0;

    if (s->transport != NGX_HTTP_OPAMP_TRANSPORT_WS || rep->disconnect) {
        return;
    }

    st->chain = 1;
    st->last_seq = rep->sequence_num;
    st->stored_seq = rep->sequence_num;
    st->last_beat = ngx_current_msec;

    window = s->conf->heartbeat_recheck;

    if (!rep->settled || window == 0
        || epoch != ngx_http_opamp_settled_epoch())
    {
        return;
    }

    if (rep->settled_until) {
        tp = ngx_timeofday();
        now_ms = (uint64_t) tp->sec * 1000 + tp->msec;

        if (rep->settled_until <= now_ms) {
            return;
        }

        if (rep->settled_until - now_ms < window) {
            window = (ngx_msec_t) (rep->settled_until - now_ms);
        }
    }

    st->valid = 1;
    st->epoch = epoch;
    st->until = ngx_current_msec + window;
    st->leased = ngx_current_msec;
    st->capabilities = rep->capabilities;

    if (rep->conn_settings_hash.len == sizeof(st->cs_hash)) {
        ngx_memcpy(st->cs_hash, rep->conn_settings_hash.data,
                   sizeof(st->cs_hash));

    } else {
        st->valid = 0;
    }
}


/* Redis did not store the message (an error, a refusal): unknown */

void
ngx_http_opamp_session_settled_forget(ngx_http_opamp_session_t *s)
{
    s->settled.valid = 0;
    s->settled.chain = 0;
}
