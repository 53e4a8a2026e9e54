/* TODO(issue 2): keys. */
#include "common/keys.h"
