/* libhbc: the public C API of the HBC backup client. */
#ifndef HBC_HBC_H
#define HBC_HBC_H

#include <hbc/error.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version string, e.g. "0.1.0". */
const char *hbc_version(void);

#ifdef __cplusplus
}
#endif

#endif /* HBC_HBC_H */
