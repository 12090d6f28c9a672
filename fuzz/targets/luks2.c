/*
 * Fuzz target luks2: the LUKS2 header copies, checksum and bounded JSON
 * metadata (guest/luks2/header.c, meta.c, json.c), info's records, then the
 * layer open (guest/luks2/layer.c: unlock with the passphrase "pw" through
 * guest/luks2/crypto.c, nettle and libargon2) and reads of the first and last
 * bytes.
 *
 * Input: the image file's bytes, except that an odd first byte of the salt
 * field (offset 104, unused by the parser) makes the target recompute the
 * primary copy's SHA-256 first: otherwise a mutated header would keep its
 * checksum only by luck and the JSON behind it would stay unexplored. kdf_max_iters is 1000 and the heap is the runtime's, so a
 * header asking for more PBKDF2 or Argon2 work is refused before doing it.
 * Invariants (abort = finding), on every successful header open:
 *   - the segment lies in the file, its sector size is 512..4096, every key
 *     slot's area lies in the file and before the segment;
 * on every successful layer open:
 *   - length is a whole number of sectors inside the file after the offset;
 *   - the first and last bytes read (decrypt) without error.
 *
 * FUZZ_SOURCES: luks/header.c luks/crypto.c luks2/header.c luks2/meta.c luks2/json.c luks2/crypto.c luks2/layer.c
 * FUZZ_LIBS: nettle argon2
 */
#include <stdlib.h>
#include <string.h>
#include <nettle/sha2.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "luks2/luks2.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

extern const struct layer_ops luks_layer_ops;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct layer l;
    static struct luks2 k;
    static struct reader r;
    static uint8_t buf[1024];
    uint8_t *fixed = NULL;
    if (size >= 4096 && (data[104] & 1)) {
        uint64_t hs = 0;
        for (int i = 8; i < 16; i++) hs = hs << 8 | data[i];
        if (hs >= 4096 && hs <= size && hs <= (4u << 20) && (fixed = malloc(size))) {
            memcpy(fixed, data, size);
            memset(fixed + 448, 0, 64);
            struct sha256_ctx c;
            sha256_init(&c);
            sha256_update(&c, hs, fixed);
            sha256_digest(&c, 32, fixed + 448);
            data = fixed;
        }
    }
    fuzz_rt_begin(data, size, FMT_LUKS);
    reader_from_mem(&r, data, size);
    if (luks2_open_header(&k, &r) == 0) {
        CHECK(k.seg_offset <= size && k.seg_size <= size - k.seg_offset, k.seg_offset, k.seg_size);
        CHECK(k.sector_size >= 512 && k.sector_size <= 4096, k.sector_size, 0);
        for (uint32_t i = 0; i < k.n_slots; i++)
            if (k.slots[i].present)
                CHECK(k.slots[i].area_offset + k.slots[i].area_size <= k.seg_offset, k.slots[i].area_offset, i);
        luks2_emit_info(&k);
    }
    struct params *p = (struct params *)rt_params();
    p->secret_inputs = 1;
    p->input_secret_len[0] = 2;
    memcpy(p->secret, "pw", 2);
    p->kdf_max_iters = 1000;
    memset(&l, 0, sizeof l);
    reader_from_mem(&l.r, data, size);
    l.data = &l.r;
    l.ops = &luks_layer_ops;
    if (size >= 8 && data[6] == 0 && data[7] == 2 && l.ops->open(&l) == 0) {
        CHECK(l.length <= size, l.length, size);
        if (l.length) {
            CHECK(l.ops->read(&l, 0, l.length < sizeof buf ? l.length : sizeof buf, buf) == 0, l.length, 0);
            CHECK(l.ops->read(&l, l.length - 1, 1, buf) == 0, l.length, 1);
        }
    }
    fuzz_rt_end();
    free(fixed);
    return 0;
}
