/*
 * convert: reads the virtual disk of input 0 (backing chain in inputs 1..,
 * external data file at arg[0] if any) and writes it to output 0, as
 * `qemu-img convert` does, over the guest range [arg[5], arg[6]).
 *
 *   arg[0] input index of the top layer's data file, 0 = none; bits 32-63:
 *          -B, the first input of the target's backing chain (0 = none)
 *   arg[1] CONV_* flags: QCOW2 output, COMPRESS (-c), ZSTD (else zlib)
 *   arg[2] min_sparse in bytes (-S; 0 = write everything, fully allocated)
 *   arg[3] qcow2: the output offset where this guest's data starts
 *   arg[4] qcow2: cluster_bits of the output
 *   arg[7] qcow2 -c: the largest refcount the output's refcount width holds
 *          (0 = no limit); compressed streams sharing a host cluster each
 *          count one, so a full cluster is left for a fresh one
 *   arg[5], arg[6] the guest byte range (cluster-aligned start; end 0 = the
 *          whole disk), so two guests can each take half (two cores)
 *
 * Raw output writes guest byte x at arg[3] + (x - arg[4]) (a fixed VHDX's
 * payload follows its metadata; a flat VMDK extent file holds the guest
 * range from arg[4] on); arg[4] <= arg[5].
 *
 * streamOptimized VMDK output (CONV_VMDK with QCOW2|COMPRESS, convert_zlib
 * only): as qcow2 -c with 64 KiB clusters (arg[4] = 16), but each grain
 * with data (every grain with -S 0) is compressed as qemu's vmdk compresses
 * it (zlib's compress(): zlib format, default level) behind a 12-byte
 * marker {lba, size}, padded to a sector, never stored plain; the last
 * grain of a disk ending inside it is compressed up to the disk's end.
 * COMPRESSED_RUN len[i] is the padded length.
 *
 * Block output (CONV_BLOCK, vpc/vhdx dynamic; plain `convert` only, as
 * neither format compresses): the disk is cut into blocks of 2^arg[4] bytes
 * (arg[4] 9..28). A block gets an output slot the first time it has bytes
 * to write (a non-zero min_sparse piece; every block with -S 0): slots are
 * packed from arg[3] on in guest order, each 2^arg[4] + arg[7] bytes, the
 * block's data arg[7] bytes into its slot (arg[7] <= 4096). The guest fills
 * that prefix with 0xFF bytes: VHD's sector bitmap with every sector
 * present, as qemu's vpc writes it for a new block (one host patch per
 * block would not fit a plan's patch limit). Zero pieces of a block with a slot are not
 * written: the slot lies past everything written before, so it reads as
 * zeroes. DATA_RUN records report block -> slot (host_offset + i * stride);
 * the host's planners (lib/formats/{vpc,vhdx}/output_plan.ts) write all
 * metadata.
 *
 * With CONV_BACKING | CONV_COMPRESS (convert -B -c; the zlib and zstd
 * programs, CONV_ZSTD picking the codec): the top's status taken in whole clusters as
 * qemu does for compressed targets (convert_qcow2_backing_compressed); a
 * cluster a short run touches is read whole from the source chain, so no
 * cluster is refused. arg[4] then carries the cluster bits in bits 0-7, the
 * log2 of the top layer's L2 table reach (0: not qcow2) in bits 8-15 and the
 * refcount limit of shared compressed clusters from bit 16 on.
 *
 * With CONV_BACKING (qcow2 output, convert -B; one guest): block status is
 * the top layer's own (chain_top_status, qemu's bdrv_block_status): what
 * the top leaves unallocated stays unallocated (the target's backing file
 * shows through), what it reads as zeroes becomes a zero cluster (qemu's
 * write-zeroes) reported as ZERO_RUN with host_offset 0, except from arg[7]
 * (the target backing file's size) on, where zeroes stay unallocated too.
 * A target cluster mixing such left-alone bytes with written ones, or an
 * all-zero cluster written by more than one request, needs the backing
 * file's bytes (qemu copies them in, or asks them whether they read as
 * zeroes): the host attaches the target's backing chain after the source's
 * inputs, from input arg[0] >> 32 on (partial_cluster); without it (arg[0]
 * >> 32 == 0) such a cluster is ZERO_RUN with host_offset 1, which the host
 * refuses. With
 * CONV_ZERO_DATA (a compat=0.10 target, where qemu's write-zeroes falls back
 * to writing zeroes) such clusters are stored as data clusters of zeroes.
 *
 * With CONV_COUNT nothing is written: the guest counts the output clusters
 * of its range that may hold data, so the host can start a second guest's
 * qcow2 data right behind the first one's worst case.
 *
 * Raw output: bytes go to the same offsets; the host has already sized the
 * file, so ranges that read as zeroes are simply not written (sparse).
 * qcow2 output: only data clusters are written, packed from arg[3] on in
 * guest order; compressed streams are packed byte by byte. The guest
 * reports where each cluster went (DATA_RUN, COMPRESSED_RUN) and the host's
 * planner (lib/formats/qcow2/output_plan.ts) writes all metadata: this
 * program never builds a table.
 */
#include "../chain/chain.h"
#include "records.h"
#include "zero.h"
/* Each guest binary must stay under 384 KiB, and Debian's static libzstd
 * brings its whole compressor (~400 KiB) with ZSTD_compressStream2. So the
 * compressors live in their own programs built from this file:
 * convert_zlib.c (CONVERT_ZLIB) and convert_zstd.c (CONVERT_ZSTD); plain
 * `convert` only decompresses input. */
#ifdef CONVERT_ZLIB
#include <zlib.h>
#endif
#ifdef CONVERT_ZSTD
#include <zstd.h>
#endif

#if !defined(CONVERT_ZLIB) && !defined(CONVERT_ZSTD)
#define CONVERT_BLOCKS 1 /* block output: the compressing programs never need it */
#endif

#define CHUNK (8ull << 20) /* 8 MiB per READV/WRITEV pair: few exits per GiB */

static struct chain chain;
static struct io_seg wsegs[LIMIT_IO_SEGS_MAX];
static uint32_t n_wsegs;
static uint64_t wbytes, total_written;

static int flush_writes(void)
{
    if (!n_wsegs) return 0;
    int64_t r = hc_writev(wsegs, n_wsegs);
    if (r < 0 || (uint64_t)r != wbytes) return rt_error(0, GERR_IO, 0, wbytes, 2);
    total_written += wbytes;
    n_wsegs = 0;
    wbytes = 0;
    return 0;
}

/* Queues a write; the buffer must stay untouched until flush_writes. */
static int queue_write(uint64_t off, const uint8_t *buf, uint64_t len)
{
    if (len == 0) return 0;
    if (n_wsegs == LIMIT_IO_SEGS_MAX || wbytes + len > LIMIT_IO_MAX) {
        if (flush_writes()) return -1;
    }
    struct io_seg *last = n_wsegs ? &wsegs[n_wsegs - 1] : 0;
    if (last && last->off + last->len == off && last->addr + last->len == (uint64_t)(uintptr_t)buf) {
        last->len += len;
    } else {
        wsegs[n_wsegs++] = (struct io_seg){.off = off, .len = len, .addr = (uint64_t)(uintptr_t)buf};
    }
    wbytes += len;
    return 0;
}

/* ---- raw and block output ---- */

static uint64_t out_base;       /* raw: output offset of guest byte out_origin */
static uint64_t out_origin;
static uint64_t data_end;       /* next free output byte (qcow2, block) */
static struct rec_data_run run; /* the run being built (count 0 = none) */
static int emit_run(void);
#ifdef CONVERT_BLOCKS
static uint32_t blk_bits;       /* 0 = raw output */
static uint64_t blk_doff, blk_cur = UINT64_MAX, blk_slot, n_blocks;
static uint8_t blk_ones[4096];

/* Gives block `blk` the next slot (blocks come in guest order). */
static int block_slot(uint64_t blk)
{
    uint64_t stride = (1ull << blk_bits) + blk_doff;
    uint64_t slot = data_end;
    if (slot + stride < slot || slot + stride > rt_params()->output_cap)
        return rt_error(0, GERR_BAD_PARAMS, 4, slot + stride, rt_params()->output_cap);
    if (run.count && run.guest_cluster + run.count == blk && run.host_offset + run.count * stride == slot) {
        run.count++;
    } else {
        if (emit_run()) return -1;
        run.guest_cluster = blk;
        run.count = 1;
        run.host_offset = slot;
    }
    if (blk_doff && queue_write(slot, blk_ones, blk_doff)) return -1;
    data_end = slot + stride;
    blk_cur = blk;
    blk_slot = slot;
    n_blocks++;
    return 0;
}
#endif

/* Writes guest bytes [off, off+len): in place (raw) or into their blocks' slots. */
static int out_write(uint64_t off, const uint8_t *buf, uint64_t len)
{
#ifdef CONVERT_BLOCKS
    if (blk_bits) {
        uint64_t bsize = 1ull << blk_bits;
        while (len) {
            uint64_t blk = off >> blk_bits, in = off & (bsize - 1);
            uint64_t k = bsize - in < len ? bsize - in : len;
            if (blk != blk_cur) {
                /* Writes come in guest order: a block is never revisited. */
                if (blk_cur != UINT64_MAX && blk < blk_cur) return rt_error(0, GERR_INTERNAL, 10, blk, blk_cur);
                if (block_slot(blk)) return -1;
            }
            if (queue_write(blk_slot + blk_doff + in, buf, k)) return -1;
            off += k, buf += k, len -= k;
        }
        return 0;
    }
#endif
    return queue_write(out_base + (off - out_origin), buf, len);
}

/* Writes the non-zero min_sparse blocks of buf (guest offset off). Zero
 * blocks are skipped: the target reads them as zeroes already. */
static int raw_emit(uint64_t off, const uint8_t *buf, uint64_t n, uint64_t min_sparse)
{
    if (!min_sparse) return out_write(off, buf, n);
    uint64_t b = 0;
    while (b < n) {
        /* Blocks aligned to min_sparse in guest offsets, as qemu aligns. */
        uint64_t k = min_sparse - ((off + b) % min_sparse);
        if (k > n - b) k = n - b;
        if (buf_is_zero(buf + b, k)) {
            b += k;
            continue;
        }
        if (out_write(off + b, buf + b, k)) return -1;
        b += k;
    }
    return 0;
}

/*
 * When the run at *off reads as zeroes and covers at least min_len bytes,
 * advances *off past it (whole multiples of align) and returns 1: work then
 * follows the data, not the virtual size (a 1 PiB disk is mostly one run).
 * Returns 0 to process a chunk normally, -1 on error.
 */
static int skip_zero_run(uint64_t *off, uint64_t start, uint64_t end, uint64_t min_len, uint64_t align)
{
    uint64_t k = 0;
    int st = chain_status(&chain, *off, end - *off, &k);
    if (st < 0) return -1;
    if (((st & CS_DATA) && !(st & CS_ZERO)) || k < min_len) return 0;
    *off += k & ~(align - 1);
    hc_progress(*off - start, end - start);
    return 1;
}

static int convert_raw(uint64_t start, uint64_t end, uint64_t min_sparse, uint8_t *buf)
{
    for (uint64_t off = start; off < end;) {
        if (min_sparse) {
            int skipped = skip_zero_run(&off, start, end, CHUNK, 1);
            if (skipped < 0) return -1;
            if (skipped) continue;
        }
        uint64_t n = end - off < CHUNK ? end - off : CHUNK;
        /* Read every stored run of this chunk (one READV), then write. */
        uint64_t runs[2 * 256];
        uint32_t n_runs = 0;
        for (uint64_t at = off; at < off + n;) {
            uint64_t k = 0;
            int st = chain_status(&chain, at, off + n - at, &k);
            if (st < 0) return -1;
            /* -S 0: the output is fully allocated, zeroes included; they
             * are emitted in guest order with the data (block output hands
             * out slots in the order blocks are first written). */
            bool data = (st & CS_DATA) && !(st & CS_ZERO);
            if (data || !min_sparse) {
                if (!data) {
                    memset(buf + (at - off), 0, k);
                } else if (chain_read(&chain, at, k, buf + (at - off))) {
                    return -1;
                }
                /* Remember the run; full table: flush and emit what we have. */
                if (n_runs == 256) {
                    if (chain_flush(&chain)) return -1;
                    for (uint32_t r = 0; r < n_runs; r++)
                        if (raw_emit(runs[2 * r], buf + (runs[2 * r] - off), runs[2 * r + 1], min_sparse)) return -1;
                    n_runs = 0;
                }
                runs[2 * n_runs] = at;
                runs[2 * n_runs + 1] = k;
                n_runs++;
            }
            at += k;
        }
        if (chain_flush(&chain)) return -1;
        for (uint32_t r = 0; r < n_runs; r++)
            if (raw_emit(runs[2 * r], buf + (runs[2 * r] - off), runs[2 * r + 1], min_sparse)) return -1;
        if (flush_writes()) return -1;
        off += n;
        hc_progress(off - start, end - start);
    }
    return 0;
}

/* ---- qcow2 output ---- */

static uint64_t n_clusters, n_compressed;
static struct rec_compressed_run crun;

/* Fills the little-endian record header (abi rec_header) and emits. */
static int emit_rec(void *rec, uint32_t type, uint32_t size)
{
    rec_set_header(rec, type, size);
    return rt_emit(rec, size);
}

static int emit_run(void)
{
    if (!run.count) return 0;
    if (emit_rec(&run, REC_DATA_RUN, sizeof run)) return -1;
    run.count = 0;
    return 0;
}

static int emit_crun(void)
{
    if (!crun.n) return 0;
    if (emit_rec(&crun, REC_COMPRESSED_RUN, sizeof crun)) return -1;
    crun.n = 0;
    memset(crun.len, 0, sizeof crun.len);
    return 0;
}

/* A cluster stored uncompressed at the next cluster-aligned offset. */
static int store_cluster(uint64_t gc, const uint8_t *buf, uint64_t csize)
{
    if (emit_crun()) return -1;
    uint64_t host = (data_end + csize - 1) & ~(csize - 1);
    if (host < data_end) return rt_error(0, GERR_BAD_PARAMS, 6, data_end, 0);
    if (queue_write(host, buf, csize)) return -1;
    if (run.count && run.guest_cluster + run.count == gc && run.host_offset + run.count * csize == host) {
        run.count++;
    } else {
        if (emit_run()) return -1;
        run.guest_cluster = gc;
        run.count = 1;
        run.host_offset = host;
    }
    data_end = host + csize;
    n_clusters++;
    return 0;
}

/* The host cluster the last compressed stream ended in, and how many
 * streams touch it: its refcount in the finished image. */
static uint64_t share_cluster = UINT64_MAX, share_refs, max_refs;

/* A compressed stream stored right after the previous data, unless the host
 * cluster there already carries as many streams as its refcount can count
 * (1-, 2- and 4-bit refcounts): then from the next cluster, as qemu's
 * allocator moves on when a refcount would overflow. */
static int store_compressed(uint64_t gc, const uint8_t *buf, uint64_t len, uint32_t cbits)
{
    if (emit_run()) return -1;
    uint64_t csize = 1ull << cbits;
    if (max_refs && (data_end >> cbits) == share_cluster && share_refs >= max_refs && (data_end & (csize - 1)))
        data_end = (data_end + csize - 1) & ~(csize - 1);
    uint64_t first = data_end >> cbits, last = (data_end + len - 1) >> cbits;
    if (first == share_cluster) {
        share_refs++;
    } else {
        share_refs = 1;
    }
    if (last != first) share_refs = 1; /* the stream's last cluster is a new one */
    share_cluster = last;
    if (queue_write(data_end, buf, len)) return -1;
    bool follows = crun.n && crun.n < LIMIT_COMPRESSED_RUN_MAX && crun.guest_cluster + crun.n == gc;
    if (follows) {
        uint64_t at = crun.host_offset;
        for (uint32_t i = 0; i < crun.n; i++) at += crun.len[i];
        follows = at == data_end;
    }
    if (!follows) {
        if (emit_crun()) return -1;
        crun.guest_cluster = gc;
        crun.host_offset = data_end;
    }
    crun.len[crun.n++] = (uint32_t)len;
    data_end += len;
    n_compressed++;
    return 0;
}

/* Compressors, created once and reset per cluster (the bump heap never
 * frees, so init/end per cluster would exhaust it). Both are configured as
 * qemu's qcow2_zlib_compress / qcow2_zstd_compress: raw deflate, default
 * level, 4 KiB window; zstd default level, one frame per cluster. */
#ifdef CONVERT_ZLIB
static z_stream zs;
static bool zs_ready;
#endif
#ifdef CONVERT_ZSTD
static ZSTD_CCtx *zc;
#endif

/* Returns the compressed length, 0 when it does not fit in cap (store the
 * cluster uncompressed, as qemu does on -ENOMEM), -1 on error. */
static int64_t compress_cluster(bool zstd, uint8_t *dst, uint64_t cap, const uint8_t *src, uint64_t len)
{
#ifdef CONVERT_ZSTD
    if (zstd) {
        if (!zc) {
            zc = ZSTD_createCCtx();
            if (!zc) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 1);
        } else {
            ZSTD_CCtx_reset(zc, ZSTD_reset_session_only);
        }
        ZSTD_outBuffer out = {.dst = dst, .size = (size_t)cap, .pos = 0};
        ZSTD_inBuffer in = {.src = src, .size = (size_t)len, .pos = 0};
        size_t r = ZSTD_compressStream2(zc, &out, &in, ZSTD_e_end);
        if (r == 0) return (int64_t)out.pos;
        if (!ZSTD_isError(r)) return 0; /* more output pending: it does not fit */
        return rt_error(0, GERR_INTERNAL, 7, r, 0);
    }
#endif
#ifdef CONVERT_ZLIB
    if (!zstd) {
    if (!zs_ready) {
        if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
            return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 2);
        zs_ready = true;
    } else if (deflateReset(&zs) != Z_OK) {
        return rt_error(0, GERR_INTERNAL, 8, 0, 0);
    }
    zs.next_in = (Bytef *)src;
    zs.avail_in = (uInt)len;
    zs.next_out = dst;
    zs.avail_out = (uInt)cap;
    int r = deflate(&zs, Z_FINISH);
    if (r == Z_STREAM_END) return (int64_t)(cap - zs.avail_out);
    if (r == Z_OK || r == Z_BUF_ERROR) return 0;
    return rt_error(0, GERR_INTERNAL, 9, (uint64_t)(int64_t)r, 0);
    }
#endif
    (void)dst, (void)cap, (void)src, (void)len;
    /* This program was built without the codec the host asked for. */
    return rt_error(0, GERR_BAD_PARAMS, 5, 6, zstd);
}

#ifdef CONVERT_ZLIB
/* streamOptimized VMDK grains: qemu's vmdk_write_extent calls zlib's
 * compress(), i.e. deflateInit (default level, 32 KiB window, memLevel 8)
 * and one deflate(Z_FINISH), after a packed marker {lba u64, size u32}. */
static z_stream vz;
static bool vz_ready;
#define VMDK_MARKER 12u
#define VMDK_GRAIN_MAX (((VMDK_MARKER + 65569u) + 511u) & ~511u) /* marker + compressBound(64 KiB) */

/* Packs one grain at dst: marker, stream, zero padding to a sector. Returns
 * the padded length, -1 on error. */
static int64_t vmdk_grain(uint8_t *dst, const uint8_t *src, uint64_t len, uint64_t lba)
{
    if (!vz_ready) {
        if (deflateInit2(&vz, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 3);
        vz_ready = true;
    } else if (deflateReset(&vz) != Z_OK) {
        return rt_error(0, GERR_INTERNAL, 8, 1, 0);
    }
    vz.next_in = (Bytef *)src;
    vz.avail_in = (uInt)len;
    vz.next_out = dst + VMDK_MARKER;
    vz.avail_out = VMDK_GRAIN_MAX - VMDK_MARKER;
    int r = deflate(&vz, Z_FINISH);
    if (r != Z_STREAM_END) return rt_error(0, GERR_INTERNAL, 9, (uint64_t)(int64_t)r, 1);
    uint32_t clen = (uint32_t)(VMDK_GRAIN_MAX - VMDK_MARKER - vz.avail_out);
    for (int i = 0; i < 8; i++) dst[i] = (uint8_t)(lba >> (8 * i));
    for (int i = 0; i < 4; i++) dst[8 + i] = (uint8_t)(clen >> (8 * i));
    uint64_t padded = (VMDK_MARKER + clen + 511u) & ~511ull;
    memset(dst + VMDK_MARKER + clen, 0, padded - VMDK_MARKER - clen);
    return (int64_t)padded;
}
#endif

static int convert_qcow2(uint64_t start, uint64_t end, uint32_t flags, uint64_t min_sparse, uint32_t cbits,
                         uint8_t *buf, uint8_t *zbuf)
{
    uint64_t csize = 1ull << cbits;
    bool compress = flags & CONV_COMPRESS;
    bool zstd = flags & CONV_ZSTD;
    bool vmdk = flags & CONV_VMDK;
    /* The disk's end in whole sectors: where a stream grain's bytes stop. */
    uint64_t disk_end = (chain.size + 511) & ~511ull;
    (void)vmdk, (void)disk_end;
    /* Compressed output needs every cluster's whole bytes before it can be
     * written, so reads go a chunk at a time and clusters are handled in
     * order inside it. */
    uint64_t chunk = CHUNK > csize ? CHUNK : csize;
    uint8_t *cout = zbuf;
    uint64_t zused = 0;
    for (uint64_t off = start; off < end;) {
        /* Whole clusters only: off stays cluster-aligned. */
        if (min_sparse) {
            int skipped = skip_zero_run(&off, start, end, chunk, csize);
            if (skipped < 0) return -1;
            if (skipped) continue;
        }
        uint64_t n = end - off < chunk ? end - off : chunk;
        uint64_t padded = (n + csize - 1) & ~(csize - 1);
        /* Which clusters hold data: status runs, read in one batch. */
        bool any = false;
        for (uint64_t at = off; at < off + n;) {
            uint64_t k = 0;
            int st = chain_status(&chain, at, off + n - at, &k);
            if (st < 0) return -1;
            if ((st & CS_DATA) && !(st & CS_ZERO)) {
                if (chain_read(&chain, at, k, buf + (at - off))) return -1;
                any = true;
            } else {
                memset(buf + (at - off), 0, k);
            }
            at += k;
        }
        if (chain_flush(&chain)) return -1;
        /* The last cluster of a disk whose size is not cluster-aligned is
         * padded with zeroes (qemu pads the last compressed write too). */
        if (padded > n) memset(buf + n, 0, padded - n);
        zused = 0;
        for (uint64_t c = 0; c < padded; c += csize) {
            uint64_t gc = (off + c) >> cbits;
            const uint8_t *cl = buf + c;
            bool zero = (!any || buf_is_zero(cl, csize));
            if (zero && min_sparse) continue;
#ifdef CONVERT_ZLIB
            if (vmdk) {
                /* Marker and stream of up to VMDK_GRAIN_MAX bytes: make room first. */
                if (zused + VMDK_GRAIN_MAX > CHUNK) {
                    if (flush_writes()) return -1;
                    zused = 0;
                }
                uint64_t at = off + c, len = disk_end - at < csize ? disk_end - at : csize;
                int64_t plen = vmdk_grain(cout + zused, cl, len, at >> 9);
                if (plen < 0 || store_compressed(gc, cout + zused, (uint64_t)plen, cbits)) return -1;
                zused += (uint64_t)plen;
                continue;
            }
#endif
            if (compress && !zero) {
                /* qemu's bound: cluster_size - 1 bytes, else store it plain. */
                int64_t len = compress_cluster(zstd, cout + zused, csize - 1, cl, csize);
                if (len < 0) return -1;
                if (len > 0) {
                    if (store_compressed(gc, cout + zused, (uint64_t)len, cbits)) return -1;
                    zused += (uint64_t)len;
                    continue;
                }
            }
            if (store_cluster(gc, cl, csize)) return -1;
        }
        if (flush_writes()) return -1;
        off += n;
        hc_progress(off - start, end - start);
    }
    if (emit_run() || emit_crun()) return -1;
    return 0;
}

/* ---- qcow2 output over a backing file (convert -B) ---- */

/* The requests (guest/ops/backing_requests.c); the zstd programs need only
 * the ZERO_RUN builder and breq_kind for -B -c. */
#if defined(CONVERT_BLOCKS) || defined(CONVERT_ZLIB) /* -B uncompressed (the zstd programs: -B -c only) */
#define BREQ_CHUNK CHUNK
#define BREQ_FILL 1
#else
#define BREQ_ZRUN_ONLY 1
#endif
#include "backing_requests.c"

#if defined(CONVERT_BLOCKS) || defined(CONVERT_ZLIB)
static struct chain tchain; /* -B with the target's backing file: its chain */

/* A target cluster only partly written: a zero cluster or the cluster with
 * the backing file's bytes filled in (breq_partial, backing_requests.c). */
static int partial_cluster(const struct breq *r, uint64_t off, uint64_t c, uint32_t cbits, bool zero_data,
                           uint8_t *cl)
{
    uint64_t gc = (off >> cbits) + c;
    int z = breq_partial(r, off, c, cbits, zero_data, cl);
    if (z < 0) return -1;
    return z ? zero_cluster(gc, 0) : store_cluster(gc, cl, 1ull << cbits);
}

/*
 * A target cluster with extended L2 entries: qemu writes, zeroes and
 * copies-on-write subclusters (2^(cbits-5) bytes; cstate, skipsec and zf_*
 * then hold subclusters), each of the 32 ending as partial_cluster decides
 * for a cluster: left alone (its bits clear), zero (its zero bit) or
 * allocated (its allocation bit; the cluster is written whole, the bytes
 * of the subclusters not allocated are never read). A bitmap other than
 * all allocated (a data cluster) or all zero (a zero cluster) is reported
 * in a SUBCLUSTERS record.
 */
static int ext_cluster(const struct breq *r, uint64_t off, uint64_t c, uint32_t cbits, uint8_t *cl)
{
    uint32_t sbits = cbits - 5, alloc = 0, zero = 0;
    uint64_t gc = (off >> cbits) + c;
    for (uint32_t i = 0; i < 32; i++) {
        uint64_t u = (c << 5) + i;
        uint8_t s = cstate[u];
        if (!(s & (CB_ZERO | CB_DATA))) continue;
        bool partial = (s & CB_SKIP) || (!(s & CB_DATA) && (s & CB_SPLIT));
        if (partial && !r->tchain) return zero_cluster(gc, 1);
        if (!(s & CB_DATA)) {
            int z = partial ? unit_rest_is_zero(r, off, u, sbits) : 1;
            if (z < 0) return -1;
            if (z) {
                zero |= 1u << i;
                continue;
            }
        }
        alloc |= 1u << i;
        if (partial && fill_skipped(r, off, u, sbits, cl + ((uint64_t)i << sbits))) return -1;
    }
    if (alloc) {
        if (store_cluster(gc, cl, 1ull << cbits)) return -1;
    } else if (zero) {
        if (zero_cluster(gc, 0)) return -1;
    }
    if ((alloc && alloc != 0xffffffffu) || (!alloc && zero && zero != 0xffffffffu)) {
        struct rec_data_run r;
        rec_init(&r, REC_SUBCLUSTERS, sizeof r);
        r.guest_cluster = gc;
        r.count = 1;
        r.host_offset = ((uint64_t)zero << 32) | alloc;
        if (emit_rec(&r, REC_SUBCLUSTERS, sizeof r)) return -1;
    }
    return 0;
}

static int convert_qcow2_backing(uint64_t start, uint64_t end, uint64_t min_sparse, uint32_t cbits, uint64_t bsize,
                                 bool zero_data, bool have_tchain, bool ext, uint8_t *buf)
{
    uint64_t csize = 1ull << cbits;
    /* The unit qemu writes: a subcluster with extended L2. */
    struct breq r = {&chain, bsize, min_sparse, ext ? cbits - 5 : cbits, false, have_tchain ? &tchain : NULL};
    for (uint64_t off = start; off < end;) {
        int64_t whole = breq_long_run(&r, off, end, cbits, zero_data);
        if (whole < 0) return -1;
        if (whole) {
            off += (uint64_t)whole;
            hc_progress(off - start, end - start);
            continue;
        }
        uint64_t n = end - off < CHUNK ? end - off : CHUNK;
        uint64_t padded = (n + csize - 1) & ~(csize - 1);
        if (breq_chunk(&r, off, n, padded, buf)) return -1;
        for (uint64_t c = 0; c < padded >> cbits; c++) {
            if (ext) {
                if (ext_cluster(&r, off, c, cbits, buf + (c << cbits))) return -1;
                continue;
            }
            uint8_t s = cstate[c];
            uint64_t gc = (off >> cbits) + c;
            const uint8_t *cl = buf + (c << cbits);
            if (!(s & (CB_ZERO | CB_DATA))) continue;
            bool partial = (s & CB_SKIP) || (!(s & CB_DATA) && !zero_data && (s & CB_SPLIT));
            if (partial && have_tchain) {
                if (partial_cluster(&r, off, c, cbits, zero_data, buf + (c << cbits))) return -1;
            } else if (s & CB_SKIP) {
                if (zero_cluster(gc, 1)) return -1;
            } else if ((s & CB_DATA) || zero_data) {
                /* Written with data (the zeroes of the requests around it
                 * land in it too), or zeroes written as data (compat=0.10). */
                if (store_cluster(gc, cl, csize)) return -1;
            } else if (zero_cluster(gc, (s & CB_SPLIT) ? 1 : 0)) {
                return -1;
            }
        }
        if (flush_writes()) return -1;
        off += n;
        hc_progress(off - start, end - start);
    }
    if (emit_run() || emit_zrun()) return -1;
    return 0;
}
#endif

#if defined(CONVERT_ZLIB) || defined(CONVERT_ZSTD) /* -B -c: the compressing programs only */
/* convert -B -c, as qemu-img's convert_iteration_sectors and convert_co_write
 * do it for compressed targets: status runs of the top layer (breq_kind)
 * are taken in whole clusters: a run shorter than a cluster makes the whole
 * cluster data (read from the source chain: no byte of the target's backing
 * file is needed), longer ones are cut down to whole clusters, data one
 * cluster at a time (qemu's buffer is one cluster when compressing). A data
 * cluster that reads as zeroes (with -S) is written as zeroes, any other
 * compressed. Zeroes become zero
 * clusters (ZERO_RUN), or plain clusters of zeroes in compat=0.10
 * (zero_data: qemu's write-zeroes fallback writes them uncompressed). */
static int convert_qcow2_backing_compressed(uint64_t start, uint64_t end, uint64_t min_sparse, uint32_t cbits,
                                            uint64_t bsize, bool zero_data, bool zstd, uint32_t span_bits,
                                            uint8_t *buf, uint8_t *zbuf)
{
    uint64_t csize = 1ull << cbits;
    uint64_t size = chain.size;
    uint64_t status_end = start;
    int kind = 0;
    struct breq r = {&chain, bsize, min_sparse, cbits, false, NULL};
    for (uint64_t off = start; off < end;) {
        if (off >= status_end) {
            uint64_t k = 0;
            kind = breq_kind(&r, off, end - off, &k);
            if (kind < 0) return -1;
            if (k == 0) return rt_error(0, GERR_INTERNAL, 12, off, 0);
            /* qcow2_get_host_offset answers one L2 table of the top at a time
             * (span_bits: its reach; 0 for a top that is not qcow2). */
            if (span_bits) {
                uint64_t limit = ((off >> span_bits) + 1) << span_bits;
                if (limit > off && off + k > limit) k = limit - off;
            }
            status_end = off + k;
        }
        uint64_t n = status_end - off;
        int k2 = kind;
        if (k2 == 1 && !min_sparse) k2 = 2; /* -S 0: zeroes are read and written as data */
        if (k2 == 2 && n > csize) n = csize; /* img_convert: buf_sectors = cluster_sectors when compressing */
        if (n < csize) {
            n = size - off < csize ? size - off : csize;
            k2 = 2;
        } else {
            n &= ~(csize - 1);
        }
        if (off + n > end) n = end - off;
        if (k2 == 2) {
            /* The piece as the source chain reads it (top and its backing files). */
            for (uint64_t at = off; at < off + n;) {
                uint64_t k = 0;
                int st = chain_status(&chain, at, off + n - at, &k);
                if (st < 0) return -1;
                if ((st & CS_DATA) && !(st & CS_ZERO)) {
                    if (chain_read(&chain, at, k, buf + (at - off))) return -1;
                } else {
                    memset(buf + (at - off), 0, k);
                }
                at += k;
            }
            if (chain_flush(&chain)) return -1;
            uint64_t padded = (n + csize - 1) & ~(csize - 1);
            if (padded > n) memset(buf + n, 0, padded - n);
            if (!min_sparse || !buf_is_zero(buf, n)) {
                uint64_t zused = 0;
                for (uint64_t c = 0; c < padded; c += csize) {
                    uint64_t gc = (off + c) >> cbits;
                    int64_t len = compress_cluster(zstd, zbuf + zused, csize - 1, buf + c, csize);
                    if (len < 0) return -1;
                    if (len > 0) {
                        if (store_compressed(gc, zbuf + zused, (uint64_t)len, cbits)) return -1;
                        zused += (uint64_t)len;
                    } else if (store_cluster(gc, buf + c, csize)) {
                        return -1;
                    }
                }
                if (flush_writes()) return -1;
                off += n;
                hc_progress(off - start, end - start);
                continue;
            }
            k2 = 1; /* all zeroes: written as zeroes */
        }
        if (k2 == 1) {
            uint64_t first = off >> cbits, last = (off + n + csize - 1) >> cbits;
            if (zero_data) {
                memset(buf, 0, csize);
                for (uint64_t gc = first; gc < last; gc++) {
                    if (store_cluster(gc, buf, csize)) return -1;
                }
                if (flush_writes()) return -1;
            } else {
                for (uint64_t gc = first; gc < last; gc++) {
                    if (zero_cluster(gc, 0)) return -1;
                }
            }
        }
        off += n;
        hc_progress(off - start, end - start);
    }
    if (emit_run() || emit_crun() || emit_zrun()) return -1;
    return 0;
}
#endif

/* Clusters of [start, end) that status says may hold data (all of them
 * with -S 0): an upper bound on what convert_qcow2 writes for the range. */
static int count_clusters(uint64_t start, uint64_t end, uint32_t cbits, uint64_t min_sparse, uint64_t *count)
{
    uint64_t csize = 1ull << cbits;
    uint64_t n = 0, last = UINT64_MAX;
    if (!min_sparse) {
        *count = ((end - start) + csize - 1) >> cbits;
        return 0;
    }
    for (uint64_t at = start; at < end;) {
        uint64_t k = 0;
        int st = chain_status(&chain, at, end - at, &k);
        if (st < 0) return -1;
        if ((st & CS_DATA) && !(st & CS_ZERO)) {
            uint64_t first = at >> cbits, lastc = (at + k - 1) >> cbits;
            if (first == last) first++; /* already counted with the previous run */
            if (lastc >= first) n += lastc - first + 1;
            last = lastc;
        }
        at += k;
    }
    *count = n;
    return 0;
}

int op_main(void)
{
    const struct params *p = rt_params();
    uint64_t data_input = p->arg[0] & 0xffffffffu;
    /* -B (uncompressed): the target's backing chain from input (arg[0] >> 32) & 0xffff on (0 =
     * not given); bit 63: the target has extended L2 entries. */
    uint64_t tfirst = (p->arg[0] >> 32) & 0xffff;
    bool ext = p->arg[0] >> 63;
    uint32_t flags = (uint32_t)p->arg[1];
    if ((p->arg[0] >> 48) & 0x7fff) return rt_error(0, GERR_BAD_PARAMS, 3, p->arg[0] >> 32, 2);
    if (ext && (flags & (CONV_BACKING | CONV_COMPRESS | CONV_ZERO_DATA)) != CONV_BACKING)
        return rt_error(0, GERR_BAD_PARAMS, 3, 0, 3);
    uint64_t min_sparse = p->arg[2];
    if (data_input >= LIMIT_MAX_INPUTS) return rt_error(0, GERR_BAD_PARAMS, 3, data_input, 0);
    if (p->arg[1] & ~(uint64_t)(CONV_QCOW2 | CONV_COMPRESS | CONV_ZSTD | CONV_COUNT | CONV_BLOCK | CONV_VMDK | CONV_BACKING | CONV_ZERO_DATA))
        return rt_error(0, GERR_BAD_PARAMS, 5, 0, 0);
    if ((flags & CONV_ZERO_DATA) && !(flags & CONV_BACKING)) return rt_error(0, GERR_BAD_PARAMS, 5, 12, 0);
    if ((flags & CONV_BACKING) && (flags & ~(uint32_t)(CONV_BACKING | CONV_ZERO_DATA | CONV_COMPRESS | CONV_ZSTD)) != CONV_QCOW2)
        return rt_error(0, GERR_BAD_PARAMS, 5, 11, 0);
    if ((flags & CONV_BACKING) && (flags & CONV_ZSTD) && !(flags & CONV_COMPRESS))
        return rt_error(0, GERR_BAD_PARAMS, 5, 11, 2);
    if (flags & CONV_VMDK) {
#ifdef CONVERT_ZLIB
        /* 64 KiB grains, zlib, never with ZSTD or BLOCK. */
        if ((flags & (CONV_QCOW2 | CONV_COMPRESS | CONV_ZSTD | CONV_BLOCK)) != (CONV_QCOW2 | CONV_COMPRESS) ||
            p->arg[4] != 16)
            return rt_error(0, GERR_BAD_PARAMS, 5, 9, 0);
#else
        return rt_error(0, GERR_BAD_PARAMS, 5, 9, 1);
#endif
    }
    if (min_sparse % 512 || min_sparse > (16ull << 20)) return rt_error(0, GERR_BAD_PARAMS, 5, 1, 0);
    if (tfirst && ((flags & (CONV_BACKING | CONV_COMPRESS)) != CONV_BACKING || tfirst >= p->n_inputs ||
                   (data_input && data_input >= tfirst)))
        return rt_error(0, GERR_BAD_PARAMS, 3, tfirst, 1);
    chain.batch = true;
    chain.defer = true;
    if (tfirst ? chain_open_range(&chain, 0, (uint32_t)tfirst, (uint32_t)data_input, 0)
               : chain_open(&chain, (uint32_t)data_input))
        return -1;
    chain.precise = true; /* skip what reads as zeroes without reading it (chain.h) */
    uint64_t size = chain.size;
    uint64_t start = p->arg[5], end = p->arg[6] ? p->arg[6] : size;
    if (start > end || end > size) return rt_error(0, GERR_BAD_PARAMS, 5, 2, 0);

    uint8_t *buf = rt_alloc(CHUNK);
    uint8_t *zbuf = rt_alloc(CHUNK);
    if (!buf || !zbuf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    memset(zbuf, 0, CHUNK);

    if (flags & CONV_BLOCK) {
#ifdef CONVERT_BLOCKS
        if (flags & ~(uint32_t)CONV_BLOCK) return rt_error(0, GERR_BAD_PARAMS, 5, 7, 0);
        if (p->arg[4] < 9 || p->arg[4] > 28 || p->arg[7] > sizeof blk_ones) return rt_error(0, GERR_BAD_PARAMS, 5, 8, 0);
        blk_bits = (uint32_t)p->arg[4];
        blk_doff = p->arg[7];
        memset(blk_ones, 0xff, sizeof blk_ones);
        if (start & ((1ull << blk_bits) - 1)) return rt_error(0, GERR_BAD_PARAMS, 5, 5, 0);
        data_end = p->arg[3];
        if (convert_raw(start, end, min_sparse, buf) || emit_run()) return -1;
        n_clusters = n_blocks;
#else
        return rt_error(0, GERR_BAD_PARAMS, 5, 7, 0);
#endif
    } else if (!(flags & CONV_QCOW2)) {
        if (flags & CONV_COMPRESS) return rt_error(0, GERR_BAD_PARAMS, 5, 3, 0);
        out_base = p->arg[3];
        out_origin = p->arg[4];
        if (out_origin > start) return rt_error(0, GERR_BAD_PARAMS, 5, 10, 0);
        uint64_t span = end - out_origin;
        if (out_base + span < out_base || out_base + span > p->output_cap)
            return rt_error(0, GERR_BAD_PARAMS, 4, out_base + span, p->output_cap);
        if (convert_raw(start, end, min_sparse, buf)) return -1;
        data_end = out_base + span;
    } else {
        uint64_t cbits = p->arg[4];
        max_refs = p->arg[7];
        /* -B -c: arg[7] is the backing file's size, so the compressed
         * streams' refcount limit rides in arg[4] above the cluster bits. */
        bool backing_compress = (flags & CONV_BACKING) && (flags & CONV_COMPRESS);
        uint32_t span_bits = 0;
        if (backing_compress) {
            max_refs = cbits >> 16;
            span_bits = (uint32_t)((cbits >> 8) & 0xff);
            cbits &= 0xff;
            if (span_bits && (span_bits < 15 || span_bits > 39)) return rt_error(0, GERR_BAD_PARAMS, 5, 13, span_bits);
        }
        if (cbits < 9 || cbits > 21) return rt_error(0, GERR_BAD_PARAMS, 5, 4, 0);
        uint64_t csize = 1ull << cbits;
        if (start & (csize - 1)) return rt_error(0, GERR_BAD_PARAMS, 5, 5, 0);
        data_end = p->arg[3];
        if (flags & CONV_BACKING) {
            if (backing_compress) {
#if defined(CONVERT_ZLIB) || defined(CONVERT_ZSTD)
                if (convert_qcow2_backing_compressed(start, end, min_sparse, (uint32_t)cbits, p->arg[7],
                                                     flags & CONV_ZERO_DATA, flags & CONV_ZSTD, span_bits, buf,
                                                     zbuf))
                    return -1;
#else
                return rt_error(0, GERR_BAD_PARAMS, 5, 11, 3);
#endif
            } else {
#if defined(CONVERT_BLOCKS) || defined(CONVERT_ZLIB)
                if (tfirst && chain_open_range(&tchain, (uint32_t)tfirst, p->n_inputs - (uint32_t)tfirst, 0, 0))
                    return -1;
                if (ext && cbits < 14) return rt_error(0, GERR_BAD_PARAMS, 5, 4, 1);
                if (convert_qcow2_backing(start, end, min_sparse, (uint32_t)cbits, p->arg[7], flags & CONV_ZERO_DATA,
                                          tfirst != 0, ext, buf))
                    return -1;
#else
                return rt_error(0, GERR_BAD_PARAMS, 5, 11, 1);
#endif
            }
        } else if (flags & CONV_COUNT) {
            if (count_clusters(start, end, (uint32_t)cbits, min_sparse, &n_clusters)) return -1;
        } else if (convert_qcow2(start, end, flags, min_sparse, (uint32_t)cbits, buf, zbuf)) {
            return -1;
        }
    }
    struct rec_convert_done d;
    rec_init(&d, REC_CONVERT_DONE, sizeof d);
    d.data_end = data_end;
    d.clusters = n_clusters;
    d.compressed = n_compressed;
    d.bytes_written = total_written;
    return emit_rec(&d, REC_CONVERT_DONE, sizeof d);
}
