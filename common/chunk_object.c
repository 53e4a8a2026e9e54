/* TODO(issue 2): chunk_object. */
#include "common/chunk_object.h"
