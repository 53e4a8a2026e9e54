/* TODO(issue 3): shard store. */
#ifndef HBC_NODE_SHARD_STORE_H
#define HBC_NODE_SHARD_STORE_H
#endif
