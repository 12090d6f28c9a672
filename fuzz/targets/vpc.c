/*
 * Fuzz target vpc: the VHD parser (guest/vpc/vpc.c: footer at 0 or at the
 * end, checksum, size choice, dynamic header, BAT scan) through the layer
 * contract (guest/vpc/layer.c: vpc_layer_ops.open), then block_status walked
 * from 0 over the whole disk as map walks it, and info's IMAGE_INFO record.
 *
 * Input: the image file's bytes.
 * Invariants (abort = finding), on every successful open:
 *   - length == total_sectors * 512 <= 0xff000000 * 512; a dynamic layer has
 *     a power-of-two block size >= 512, max_table_entries <= INT_MAX / 4,
 *     its BAT inside the file and every allocated block (bitmap + data)
 *     ending inside the sector-rounded file length;
 * and for every run block_status returns:
 *   - 0 < len <= the bytes asked for (the walk advances, never passes the
 *     length); only DATA/ZERO/OFFSET_VALID(/RECURSE) bits;
 *   - fixed footer: DATA|OFFSET_VALID at host == pos (reads past the file's
 *     end are zeroes: reader_read); dynamic: DATA runs stay inside one
 *     block, host + len inside the sector-rounded file, host - pos % block
 *     a block start after its bitmap; ZERO runs carry no offset;
 *   - the first bytes of each data run read without error.
 * The walk stops after 4096 runs. Each input runs twice: as given, and with
 * the footer checksums (at 0 and at the end) recomputed, so mutations of the
 * footer's fields get past qemu's checksum refusal.
 *
 * FUZZ_SOURCES: vpc/vpc.c vpc/layer.c
 */
#include <stdlib.h>
#include <string.h>
#include "fuzz_rt.h"
#include "vpc_checksum.h"
#include "chain/layer.h"
#include "vpc/vpc.h"

#define CHECK(cond, a, b) do { if (!(cond)) fuzz_rt_fail("invariant: " #cond, (a), (b)); } while (0)
#define MAX_RUNS 4096

extern const struct layer_ops vpc_layer_ops;

static void open_invariants(const struct layer *l, const struct vpc *v, uint64_t size)
{
    uint64_t flen = (size + 511) & ~511ull;
    CHECK(l->length == v->total_sectors * 512, l->length, v->total_sectors);
    CHECK(v->total_sectors <= VPC_MAX_SECTORS, v->total_sectors, 0);
    CHECK(v->file_len == flen, v->file_len, flen);
    if (v->footer_at_end) CHECK(v->type == VPC_TYPE_FIXED && !v->dynamic, v->type, v->dynamic);
    else CHECK(v->dynamic, v->type, 0);
    if (!v->dynamic) return;
    CHECK(v->block_size >= 512 && (v->block_size & (v->block_size - 1)) == 0, v->block_size, 0);
    CHECK(v->max_table_entries <= 0x7fffffffu / 4, v->max_table_entries, 0);
    CHECK((uint64_t)v->max_table_entries * v->block_size >= l->length, v->max_table_entries, l->length);
    CHECK(v->bat_offset + (uint64_t)v->max_table_entries * 4 <= flen, v->bat_offset, flen);
    CHECK(v->free_data_block_offset <= flen, v->free_data_block_offset, flen);
}

static void run(const uint8_t *data, size_t size)
{
    static struct layer l;
    static uint8_t buf[512];
    fuzz_rt_begin(data, size, FMT_VPC);
    memset(&l, 0, sizeof l);
    reader_from_mem(&l.r, data, size);
    l.data = &l.r;
    l.ops = &vpc_layer_ops;
    if (l.ops->open(&l) == 0) {
        const struct vpc *v = l.state;
        open_invariants(&l, v, size);
        vpc_emit_info(v);
        uint64_t pos = 0;
        for (unsigned i = 0; i < MAX_RUNS && pos < l.length; i++) {
            uint64_t want = l.length - pos, len = 0, host = UINT64_MAX;
            int st = l.ops->block_status(&l, pos, want, &len, &host);
            if (st < 0) break;
            CHECK(len > 0 && len <= want, len, want);
            CHECK((st & ~(int)(LS_DATA | LS_ZERO | LS_OFFSET_VALID)) == 0, (uint64_t)st, pos);
            if (v->type == VPC_TYPE_FIXED) {
                CHECK(st == (int)(LS_DATA | LS_OFFSET_VALID) && host == pos, (uint64_t)st, host);
            } else if (st & LS_DATA) {
                uint64_t in_block = pos % v->block_size;
                CHECK(st == (int)(LS_DATA | LS_OFFSET_VALID), (uint64_t)st, pos);
                CHECK(len <= v->block_size - in_block, len, in_block);
                CHECK(host >= in_block + v->bitmap_size && host + len <= v->file_len, host, len);
                CHECK((host - in_block - v->bitmap_size) % 512 == 0, host, in_block);
            } else {
                CHECK(st == (int)LS_ZERO && host == UINT64_MAX, (uint64_t)st, host);
            }
            if (st & LS_DATA) {
                uint64_t n = len < sizeof buf ? len : sizeof buf;
                CHECK(reader_read(&l.r, host, buf, n) == 0, host, n);
            }
            pos += len;
        }
    }
    fuzz_rt_end();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size);
    if (size < 512) return 0;
    uint8_t *copy = malloc(size);
    if (!copy) return 0;
    memcpy(copy, data, size);
    fix_vpc_checksum(copy, size, 0);
    fix_vpc_checksum(copy, size, ((size + 511) & ~(size_t)511) - 512);
    run(copy, size);
    free(copy);
    return 0;
}
