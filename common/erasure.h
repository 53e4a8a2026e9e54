/* TODO(issue 2): erasure. */
#ifndef HBC_COMMON_ERASURE_H
#define HBC_COMMON_ERASURE_H
#endif
