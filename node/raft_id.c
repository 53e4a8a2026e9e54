/* A node's Raft server id, derived from its name (see raft_id.h for the rule). */
#include "node/raft_id.h"

#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

raft_id raft_id_from_name(const char *name)
{
    if (name == NULL) {
        return 0;
    }
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, RAFT_ID_PREFIX, RAFT_ID_PREFIX_LEN) == 1 &&
             EVP_DigestUpdate(ctx, name, strlen(name)) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len >= 8;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = v << 8 | md[i];
    }
    v &= ~(UINT64_C(1) << 63);
    return v != 0 ? (raft_id)v : 1;
}
