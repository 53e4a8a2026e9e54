/* TODO(issue 2): chunker. */
#include "common/chunker.h"
