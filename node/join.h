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

/* Stop trying; j is freed once its handles have closed. NULL is a no-op. Loop thread. */
void join_cancel(struct join *j);

#endif /* HBC_NODE_JOIN_H */
