/* The voters' clock exchange: the leader asks each voter for its wall clock over the data plane. */
#ifndef HBC_NODE_CLOCK_SYNC_H
#define HBC_NODE_CLOCK_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "hbc.pb-c.h"

/*
 * Before each ClockTick the leader runs one round: it connects to every
 * other voter's data-plane port with its node certificate, sends a
 * ClockRequest, and from each ClockReply estimates that voter's clock
 * offset from its own: reply wall clock + round trip / 2 - own wall clock
 * at arrival. The leader then puts its own wall clock plus each offset into
 * ClockTick.voter_clock_ms; the state machine checks the tick against the
 * median (node/fsm_locks.c). A voter that does not answer within the
 * timeout is left out (the state machine then may lack a majority and
 * refuse the tick: fail closed).
 *
 * A node answers ClockRequest only to node certificates (OU=node);
 * node/server.c calls clock_sync_answer().
 *
 * Threads: everything on the loop thread.
 */

#define CLOCK_SYNC_MAX_PEERS 64 /* voters asked in one round at most */

/* One voter to ask. */
struct clock_peer {
    char addr[64];    /* its data-plane address "a.b.c.d:port" */
    char node_id[72]; /* its node id: the certificate CN it must present */
};

/*
 * The round's outcome, on the loop: offsets_ms[0..n_ok) are the answering
 * voters' clocks minus ours (ms), n_asked how many were asked. Borrowed
 * for the call.
 */
typedef void (*clock_sync_cb)(void *arg, const int64_t *offsets_ms, size_t n_ok, size_t n_asked);

struct clock_sync;

/*
 * Make the exchange's state on loop with tls (borrowed, must outlive it);
 * each voter has timeout_ms (> 0) to answer. Returns 0 or HBC_ENOMEM.
 */
int clock_sync_new(uv_loop_t *loop, struct tls_ctx *tls, unsigned timeout_ms,
                   struct clock_sync **out, struct err *e);

/*
 * Ask the n voters in peers (copied; 1 <= n <= CLOCK_SYNC_MAX_PEERS) for
 * their clocks. cb(arg, ...) fires exactly once when every voter answered
 * or failed, on the loop, never from inside this call. Returns 0,
 * HBC_EBUSY (a round is running), HBC_EINVAL (n out of range),
 * HBC_EUNAVAILABLE (no voter could even be connected to), HBC_ECANCELED
 * (closing) or HBC_ENOMEM; cb does not fire then.
 */
int clock_sync_round(struct clock_sync *cs, const struct clock_peer *peers, size_t n,
                     clock_sync_cb cb, void *arg, struct err *e);

/* True while a round runs. */
bool clock_sync_busy(const struct clock_sync *cs);

/*
 * Close: a running round is cut short (its connections closed; its cb does
 * not fire), then done(arg) fires on the loop once every connection is
 * closed, and cs is freed. NULL cs: done fires at once (inside the call).
 */
void clock_sync_close(struct clock_sync *cs, void (*done)(void *arg), void *arg);

/* This node's wall clock (CLOCK_REALTIME), ms since the epoch. */
uint64_t clock_sync_wall_ms(void);

/*
 * Fill the reply to a ClockRequest with id request_id: out's body points at
 * cr (both caller storage). A peer without a node certificate must be
 * refused by the caller (HBC_EDENIED) instead.
 */
void clock_sync_answer(uint64_t request_id, Hbc__Frame *out, Hbc__ClockReply *cr);

#endif /* HBC_NODE_CLOCK_SYNC_H */
