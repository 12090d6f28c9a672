/*
 * Fuzz target luks: the LUKS1 header checks and parse (guest/luks/header.c),
 * then the layer open (guest/luks/layer.c: unlock with the passphrase "pw"
 * through guest/luks/crypto.c and nettle), then reads of the payload's first
 * and last sectors, and info's LUKS_INFO record.
 *
 * Input: the image file's bytes. kdf_max_iters is 1000, so a header asking for
 * more PBKDF2 work is refused (LUKS_E_KDF_LIMIT) before any is done: the
 * bound on a hostile header's cost is part of what is fuzzed.
 * Invariants (abort = finding), on every successful header open:
 *   - key_bytes is one the cipher lookup accepts (16, 24, 32; doubled for xts)
 *     and every slot has 4000 stripes;
 * on every successful layer open:
 *   - length == the payload's bytes rounded up to 512, payload <= file size;
 *   - the first and last sectors read (decrypt) without error.
 *
 * FUZZ_SOURCES: luks/header.c luks/crypto.c luks/layer.c
 * FUZZ_LIBS: nettle
 */
#include <string.h>
#include "fuzz_rt.h"
#include "chain/layer.h"
#include "luks/luks.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)

extern const struct layer_ops luks_layer_ops;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct layer l;
    static struct luks k;
    static struct reader r;
    static uint8_t buf[1024];
    fuzz_rt_begin(data, size, FMT_LUKS);
    reader_from_mem(&r, data, size);
    if (luks_open_header(&k, &r) == 0) {
        uint32_t kb = k.mode == LUKS_MODE_XTS ? k.key_bytes / 2 : k.key_bytes;
        CHECK(kb == 16 || kb == 24 || kb == 32, k.key_bytes, k.mode);
        for (int i = 0; i < LUKS_SLOTS; i++) CHECK(k.slots[i].stripes == LUKS_STRIPES, (uint64_t)i, k.slots[i].stripes);
        luks_emit_info(&k);
    }
    /* The passphrase and bound the host would put in the parameter block. */
    struct params *p = (struct params *)rt_params();
    p->secret_inputs = 1;
    p->input_secret_len[0] = 2;
    memcpy(p->secret, "pw", 2);
    p->kdf_max_iters = 1000; /* cryptsetup's minimum: the seeds unlock */
    memset(&l, 0, sizeof l);
    reader_from_mem(&l.r, data, size);
    l.data = &l.r;
    l.ops = &luks_layer_ops;
    if (l.ops->open(&l) == 0) {
        const struct luks *o = l.state; /* struct luks_layer starts with its struct luks */
        uint64_t payload = (uint64_t)o->payload_offset_sector * LUKS_SECTOR;
        CHECK(payload <= size, payload, size);
        CHECK(l.length == (size - payload + 511) / 512 * 512, l.length, size - payload);
        if (l.length) {
            CHECK(l.ops->read(&l, 0, l.length < sizeof buf ? l.length : sizeof buf, buf) == 0, l.length, 0);
            CHECK(l.ops->read(&l, l.length - 1, 1, buf) == 0, l.length, 1);
            if (l.length > 700) CHECK(l.ops->read(&l, 100, 600, buf) == 0, l.length, 2);
        }
    }
    fuzz_rt_end();
    return 0;
}
