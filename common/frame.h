/* TODO(issue 3): frame. */
#ifndef HBC_COMMON_FRAME_H
#define HBC_COMMON_FRAME_H
#endif
