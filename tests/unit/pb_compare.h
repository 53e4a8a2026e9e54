/* Test helper: do two protobuf-c messages hold the same known fields (unknown fields ignored)? */
#ifndef HBC_TESTS_UNIT_PB_COMPARE_H
#define HBC_TESTS_UNIT_PB_COMPARE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

/* Bytes a scalar of type t takes in a message struct; 0 for types compared otherwise. */
static inline size_t pb_compare_scalar_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 0;
    }
}

static inline bool pb_compare_value(const ProtobufCFieldDescriptor *f, const void *a,
                                    const void *b);

/* Same descriptor and, field by field, the same presence and values (recursively). */
static inline bool pb_compare(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    if (a->descriptor != b->descriptor) {
        return false;
    }
    const ProtobufCMessageDescriptor *d = a->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const uint8_t *pa = (const uint8_t *)a, *pb = (const uint8_t *)b;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t na = *(const size_t *)(pa + f->quantifier_offset);
            size_t nb = *(const size_t *)(pb + f->quantifier_offset);
            if (na != nb) {
                return false;
            }
            size_t el = f->type == PROTOBUF_C_TYPE_MESSAGE  ? sizeof(void *)
                        : f->type == PROTOBUF_C_TYPE_STRING ? sizeof(char *)
                        : f->type == PROTOBUF_C_TYPE_BYTES  ? sizeof(ProtobufCBinaryData)
                                                            : pb_compare_scalar_size(f->type);
            const uint8_t *xa = *(const uint8_t *const *)(pa + f->offset);
            const uint8_t *xb = *(const uint8_t *const *)(pb + f->offset);
            for (size_t j = 0; j < na; j++) {
                if (!pb_compare_value(f, xa + j * el, xb + j * el)) {
                    return false;
                }
            }
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t ca = *(const uint32_t *)(pa + f->quantifier_offset);
            uint32_t cb = *(const uint32_t *)(pb + f->quantifier_offset);
            if (ca != cb) {
                return false;
            }
            if (ca != f->id) {
                continue;
            }
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
                   f->type != PROTOBUF_C_TYPE_STRING) {
            protobuf_c_boolean ha = *(const protobuf_c_boolean *)(pa + f->quantifier_offset);
            protobuf_c_boolean hb = *(const protobuf_c_boolean *)(pb + f->quantifier_offset);
            if (ha != hb) {
                return false;
            }
        }
        if (!pb_compare_value(f, pa + f->offset, pb + f->offset)) {
            return false;
        }
    }
    return true;
}

/* One value of field f at a and at b. */
static inline bool pb_compare_value(const ProtobufCFieldDescriptor *f, const void *a, const void *b)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE:
        return pb_compare(*(const ProtobufCMessage *const *)a, *(const ProtobufCMessage *const *)b);
    case PROTOBUF_C_TYPE_STRING: {
        const char *sa = *(const char *const *)a, *sb = *(const char *const *)b;
        return (sa == NULL || sb == NULL) ? sa == sb : strcmp(sa, sb) == 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *ba = a, *bb = b;
        return ba->len == bb->len && (ba->len == 0 || memcmp(ba->data, bb->data, ba->len) == 0);
    }
    default:
        return memcmp(a, b, pb_compare_scalar_size(f->type)) == 0;
    }
}

#endif /* HBC_TESTS_UNIT_PB_COMPARE_H */
