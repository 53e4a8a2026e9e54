/* Control-plane requests on the data-plane port: proposals, joins, status, metadata reads. */
#ifndef HBC_NODE_CONTROL_H
#define HBC_NODE_CONTROL_H

#include <stdbool.h>

#include "hbc.pb-c.h"
#include "node/raft_node.h"

/* Called exactly once with the reply (borrowed for the call) to a control request. */
typedef void (*control_reply_fn)(void *ctx, const Hbc__Frame *reply);

/* Who sent a request, from the peer's verified certificate. */
struct control_peer {
    const char *subject; /* whole subject, e.g. "CN=alice,OU=backup" */
    const char *cn;      /* common name: the node or user name */
    bool is_node;        /* the certificate carries OU=node */
    bool is_admin;       /* the certificate carries OU=admin */
};

/* True if frame is a control-plane request this module answers. */
bool control_is_request(const Hbc__Frame *frame);

/*
 * Answer frame (borrowed until reply fires) from peer (borrowed for the
 * call) through reply(ctx, ...), now or later on the loop. rn may be NULL
 * (a node without a metadata plane): the reply then says so.
 */
void control_handle(struct raft_node *rn, const Hbc__Frame *frame, const struct control_peer *peer,
                    control_reply_fn reply, void *ctx);

#endif /* HBC_NODE_CONTROL_H */
