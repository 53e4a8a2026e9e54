/* TODO(issue 3): shard store. */
#include "node/shard_store.h"
