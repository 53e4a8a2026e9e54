/* TODO(issue 3): tls. */
#ifndef HBC_COMMON_TLS_H
#define HBC_COMMON_TLS_H
#endif
