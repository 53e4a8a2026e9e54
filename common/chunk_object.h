/* TODO(issue 2): chunk_object. */
#ifndef HBC_COMMON_CHUNK_OBJECT_H
#define HBC_COMMON_CHUNK_OBJECT_H
#endif
