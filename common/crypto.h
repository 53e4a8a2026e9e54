/* TODO(issue 2): crypto. */
#ifndef HBC_COMMON_CRYPTO_H
#define HBC_COMMON_CRYPTO_H
#endif
