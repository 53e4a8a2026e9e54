/* TODO(issue 3): frame. */
#include "common/frame.h"
