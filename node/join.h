/* A new node asks the cluster to admit it (raft.join). */
#ifndef HBC_NODE_JOIN_H
#define HBC_NODE_JOIN_H

#include <uv.h>

#include "common/err.h"
#include "common/tls.h"
#include "node/config.h"

struct join;

/*
 * Ask cfg->raft_join (and, by redirect, the leader) to admit this node,
 * retrying until it is admitted or join_cancel() is called; then done(arg, 0)
 * fires once. tls and cfg are borrowed and must outlive the join. Loop thread.
 */
int join_start(uv_loop_t *loop, struct tls_ctx *tls, const struct node_config *cfg,
               void (*done)(void *, int), void *arg, struct join **out, struct err *e);

/* Most addresses a member check asks through. */
#define JOIN_MAX_VIA 16

/*
 * A restarting member checks in (JoinRequest.member_check): through via[0..n)
 * (data-plane addresses of members, copied; the next one after each failed
 * try, redirects followed), it tells the leader its current addresses, which
 * updates the state machine's record when they changed. done(arg, 0) fires
 * once the leader confirmed it a member, done(arg, HBC_EREMOVED) once the
 * leader said it is not one (it was removed); other refusals are retried.
 * tls and cfg are borrowed and must outlive the check. Loop thread. Returns
 * 0, HBC_EINVAL (n is 0) or HBC_ENOMEM. Cancel with join_cancel().
 */
int join_member_check(uv_loop_t *loop, struct tls_ctx *tls, const struct node_config *cfg,
                      const char *const *via, size_t n, void (*done)(void *, int), void *arg,
                      struct join **out, struct err *e);

/* Stop trying; j is freed once its handles have closed. NULL is a no-op. Loop thread. */
void join_cancel(struct join *j);

#endif /* HBC_NODE_JOIN_H */
