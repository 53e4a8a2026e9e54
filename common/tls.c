/* TODO(issue 3): tls. */
#include "common/tls.h"
