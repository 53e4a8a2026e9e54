/* A node's Raft server id, derived from its name (the CN of its certificate). */
#ifndef HBC_NODE_RAFT_ID_H
#define HBC_NODE_RAFT_ID_H

#include <raft.h>

/*
 * The identity rule of the cluster: a node's certificate has CN = the node's
 * name and OU = node, and its Raft server id is derived from that name, so
 * that any peer can check that a certificate names the id it claims:
 *
 *   raft_id = the first 8 bytes of SHA-256("hbc raft id v1\0" || name),
 *             read big-endian, with the top bit cleared; 1 if that gives 0.
 *
 * The prefix is the 15 bytes "hbc raft id v1" and its terminating NUL; the
 * name is its UTF-8 bytes without a terminator. The same computation in a
 * shell: printf 'hbc raft id v1\0%s' NAME | sha256sum (first 16 hex digits,
 * top bit cleared). The result lies in 1..2^63-1 (raft reserves 0).
 */

/* Prefix hashed before the name (RAFT_ID_PREFIX_LEN bytes, NUL included). */
#define RAFT_ID_PREFIX "hbc raft id v1"
#define RAFT_ID_PREFIX_LEN 15u

/*
 * The Raft server id of the node called name (borrowed, NUL-terminated).
 * Returns the id (never 0), or 0 only if OpenSSL cannot compute SHA-256 or
 * name is NULL. Any thread.
 */
raft_id raft_id_from_name(const char *name);

#endif /* HBC_NODE_RAFT_ID_H */
