/* TODO(issue 2): chunker. */
#ifndef HBC_COMMON_CHUNKER_H
#define HBC_COMMON_CHUNKER_H
#endif
