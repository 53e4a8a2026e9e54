/* HBC error codes: one table gives every code its name and text. */
#ifndef HBC_ERROR_H
#define HBC_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Functions return 0 on success or a negative code: either -errno for a
 * system error, or one of the HBC_E* codes below, all of which lie below
 * -4000 so that they never collide with an errno value.
 */
#define HBC_ERRNO_MAP(X)                                                                           \
    X(INVAL, -4001, "invalid argument")                                                            \
    X(NOMEM, -4002, "out of memory")                                                               \
    X(CORRUPT, -4003, "data is corrupt (checksum mismatch)")                                       \
    X(AUTH, -4004, "authentication failed: data was altered")                                      \
    X(WRONGKEY, -4005, "wrong key")                                                                \
    X(PASSPHRASE, -4006, "wrong passphrase")                                                       \
    X(TRUNCATED, -4007, "data is truncated")                                                       \
    X(VERSION, -4008, "unsupported format version")                                                \
    X(TOOBIG, -4009, "length exceeds its limit")                                                   \
    X(FORMAT, -4010, "malformed data")                                                             \
    X(CHUNKID, -4011, "chunk id does not match its content")                                       \
    X(TOOFEW, -4012, "too few intact shards to rebuild the object")                                \
    X(CRYPTO, -4013, "cryptographic library error")                                                \
    X(COMPRESS, -4014, "compression error")                                                        \
    X(CANCELED, -4015, "operation canceled")                                                       \
    X(CONFIG, -4016, "invalid configuration")                                                      \
    X(PROTO, -4017, "protocol error")                                                              \
    X(NOTFOUND, -4018, "not found")                                                                \
    X(EXIST, -4019, "already exists")                                                              \
    X(TLS, -4020, "TLS error")                                                                     \
    X(IO, -4021, "I/O error")                                                                      \
    X(STORE, -4022, "storage engine error")                                                        \
    X(BUSY, -4023, "resource busy, try again")                                                     \
    X(NOTLEADER, -4024, "this node is not the leader")                                             \
    X(DENIED, -4025, "permission denied")                                                          \
    X(UNAVAILABLE, -4026, "service unavailable")                                                   \
    X(PARTIAL, -4027, "operation completed only in part")                                          \
    X(LOCKED, -4028, "protected by a retention lock or legal hold")                                \
    X(CLOCK, -4029, "compliance clock unknown or skewed: time-dependent command refused")          \
    X(GCFENCE, -4035, "a garbage collection ran during this backup; commit refused")               \
    X(GCSTALE, -4036, "garbage collection refused: a snapshot was committed after the mark")       \
    X(STALEEPOCH, -4040, "placement epoch is stale: reload the placement map")                     \
    X(NOTDRAINED, -4041, "node still holds shards the placement needs")                            \
    X(SCHEME, -4050, "shard scheme out of range or disagreeing with the shard")                    \
    X(REMOVED, -4060, "this node was removed from the cluster")                                    \
    X(INTERNAL, -4099, "internal error")

enum hbc_error {
#define HBC_ERROR_ENUM_(name, value, text) HBC_E##name = (value),
    HBC_ERRNO_MAP(HBC_ERROR_ENUM_)
#undef HBC_ERROR_ENUM_
};

/* Human-readable text for code (an HBC_E* code or -errno); never NULL. */
const char *hbc_strerror(int code);

/* The code's symbolic name ("HBC_ECORRUPT", "ENOENT"); never NULL. */
const char *hbc_errname(int code);

#ifdef __cplusplus
}
#endif

#endif /* HBC_ERROR_H */
