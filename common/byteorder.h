/* byteorder.h - fixed-width integers in bytes, the one codec for every
 * byte layout popcast writes itself (protobuf covers the rest).
 *
 * Big-endian is the order of LMDB keys and values that must sort as
 * numbers (store.h: log seqs, tenant versions, applied_seq) and of the
 * agent's status_epoch. Little-endian is the raft command frame's length
 * (cluster.c), fixed by the raft logs already on disk.
 *
 * The pointers need no alignment; put writes exactly the width, get reads
 * exactly the width. */
#ifndef PC_BYTEORDER_H
#define PC_BYTEORDER_H

#include <stdint.h>

static inline void pc_be64_put(void *out, uint64_t v)
{
    uint8_t *b = out;
    for (int i = 7; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t pc_be64_get(const void *in)
{
    const uint8_t *b = in;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | b[i];
    return v;
}

static inline void pc_be32_put(void *out, uint32_t v)
{
    uint8_t *b = out;
    for (int i = 3; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint32_t pc_be32_get(const void *in)
{
    const uint8_t *b = in;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = (v << 8) | b[i];
    return v;
}

static inline void pc_le64_put(void *out, uint64_t v)
{
    uint8_t *b = out;
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t pc_le64_get(const void *in)
{
    const uint8_t *b = in;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

#endif
