/* TODO(issue 2): erasure. */
#include "common/erasure.h"
