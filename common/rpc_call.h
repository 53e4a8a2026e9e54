/* One request, one reply: a blocking call to a node for command-line tools. */
#ifndef HBC_COMMON_RPC_CALL_H
#define HBC_COMMON_RPC_CALL_H

#include <stdint.h>

#include "common/err.h"
#include "common/tls.h"
#include "hbc.pb-c.h"

/*
 * Connect to addr ("a.b.c.d:port") with tls (borrowed), send req (borrowed;
 * its request_id is used as is), wait at most timeout_ms for the reply with
 * the same request id and return it in *reply (free with frame_free). Runs
 * its own private libuv loop, so it may be called from any thread that does
 * not run another loop call at the time. Returns 0, -ETIMEDOUT, HBC_ETLS,
 * -ECONNREFUSED and the like, with a message naming addr.
 */
int rpc_call(struct tls_ctx *tls, const char *addr, const Hbc__Frame *req, unsigned timeout_ms,
             Hbc__Frame **reply, struct err *e);

#endif /* HBC_COMMON_RPC_CALL_H */
