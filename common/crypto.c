/* TODO(issue 2): crypto. */
#include "common/crypto.h"
