/*
 * Fuzz target qcow2_crypt: encrypted qcow2 read the way convert_qcrypt reads
 * it (guest/qcow2/crypt_header.c, crypt_layer.c): the crypto header
 * extension and the LUKS header in the clusters it names (a window whose
 * reads past the extension's length fail), the unlock with the passphrase
 * "pw" (LUKS) or the AES key made from it, then chain status and reads that
 * decrypt data clusters (host-offset IVs for LUKS, guest-offset IVs for AES)
 * and decompress compressed ones.
 *
 * Input: the image file's bytes (format probed). kdf_max_iters is 1000, so a
 * header asking for more PBKDF2 work is refused before any is done. The walk
 * covers at most the first 1 MiB of the disk in at most 64 status calls,
 * reading data runs in pieces of at most 4 KiB, some not sector-aligned.
 * Invariants (abort = finding):
 *   - chain_status returns -1 or only known CS_* bits, a run 0 < n <= asked,
 *     and never an offset for an encrypted image (qemu reports none);
 *   - chain_read returns 0 or -1, and a run without CS_DATA reads as zeroes;
 *   - no read outside the input, well-formed records, ASan/UBSan clean.
 *
 * FUZZ_SOURCES: chain/open.c chain/formats.c chain/read.c chain/status.c chain/extents.c qcow2/compressed.c qcow2/compress.c qcow2/layer.c qcow2/map.c qcow2/header.c qcow2/tables.c qcow2/crypt_header.c qcow2/crypt_layer.c raw/layer.c probe/probe.c raw/partition.c luks/header.c luks/crypto.c luks/layer.c
 * FUZZ_LIBS: z zstd nettle
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include "fuzz_rt.h"
#include "chain/chain.h"
#include "qcow2/layer.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define WALK_MAX (1ull << 20)
#define PIECE (4u << 10)
#define CS_KNOWN (CS_DATA | CS_ZERO | CS_ALLOCATED | CS_OFFSET_VALID | CS_EOF)

static void release(struct chain *c)
{
    for (uint32_t i = 0; i < c->n; i++) {
        const struct layer *l = &c->layers[i].l;
        if (l->fmt != FMT_QCOW2 || !l->state) continue;
        struct qcow2_decompressor *d = &((struct qcow2_layer *)l->state)->dec;
        if (!d->state) continue;
        if (d->type == 0) inflateEnd(d->state);
        else ZSTD_freeDCtx(d->state);
        d->state = NULL;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct chain c;
    static uint8_t buf[PIECE];
    memset(&c, 0, sizeof c);
    fuzz_rt_begin(data, size, FMT_AUTO);
    /* The passphrase and bound the host would put in the parameter block. */
    struct params *p = (struct params *)rt_params();
    p->secret_inputs = 1;
    p->input_secret_len[0] = 2;
    memcpy(p->secret, "pw", 2);
    p->kdf_max_iters = 1000;
    if (chain_open(&c, 0) == 0) {
        bool encrypted = c.layers[0].l.fmt == FMT_QCOW2 && ((struct qcow2_layer *)c.layers[0].l.state)->crypt;
        uint64_t end = c.size < WALK_MAX ? c.size : WALK_MAX, pos = 0;
        for (unsigned i = 0; i < 64 && pos < end; i++) {
            uint64_t n = 0, want = end - pos;
            int st = chain_status(&c, pos, want, &n);
            CHECK(st == -1 || (st >= 0 && (st & ~(int)CS_KNOWN) == 0), pos, (uint64_t)st);
            if (st < 0) break;
            CHECK(n > 0 && n <= want, pos, n);
            CHECK(!encrypted || !(st & CS_OFFSET_VALID), pos, (uint64_t)st);
            /* an odd start inside the run exercises the partial-sector path */
            uint64_t skip = (i & 1) && n > 700 ? 100 : 0;
            uint64_t piece = n - skip < PIECE ? n - skip : PIECE;
            int rr = chain_read(&c, pos + skip, piece, buf);
            CHECK(rr == 0 || rr == -1, pos, (uint64_t)rr);
            if (rr == 0 && !(st & CS_DATA)) {
                for (uint64_t k = 0; k < piece; k++) CHECK(buf[k] == 0, pos + k, buf[k]);
            }
            if (rr < 0) break;
            pos += n;
        }
    }
    release(&c);
    fuzz_rt_end();
    return 0;
}
