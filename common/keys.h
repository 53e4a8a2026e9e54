/* TODO(issue 2): keys. */
#ifndef HBC_COMMON_KEYS_H
#define HBC_COMMON_KEYS_H
#endif
