// The one hand-written description of everything that crosses a boundary:
// host <-> guest (guest-physical layout, hypercalls, parameter block, result
// records) and TypeScript <-> VMM (config and report structs passed over FFI).
//
// `deno task abi` generates guest/include/abi.h from this file (with a
// _Static_assert on every offset and size); `deno task abi:check` fails when
// the committed header is stale. TypeScript reads records through
// lib/abi/records.ts, which derives its accessors from the same tables.
//
// Every struct lists its fields in order with explicit offsets and sizes; the
// generator refuses gaps, overlaps and misaligned fields so that C and TS
// cannot disagree about padding. All integers are little-endian.

export const ABI_VERSION = 1;
export const PARAMS_MAGIC = 0x52415453; // "STAR"

/** Guest-physical memory map. Guest virtual == guest physical (identity). */
export const layout = {
  /** Page 0 is never mapped: a NULL dereference in the guest faults. */
  PML4: 0x1000,
  PDPT: 0x2000,
  /** Four page directories cover 4 GiB of 2 MiB pages. */
  PD: 0x3000,
  /** One 4 KiB page table for the first 2 MiB, so page 0 can stay unmapped. */
  PT0: 0x7000,
  GDT: 0x8000,
  /** Everything below SYS_END belongs to the VMM; hypercalls never touch it. */
  SYS_END: 0x100000,
  /** Host writes the parameter block here before the run. */
  PARAMS: 0x100000,
  /** Hypercall argument block: guest fills it, then does `out` to HC_PORT. */
  HCALL: 0x101000,
  /** FS.base points here; compiler stack-protector canary lives at +0x28. */
  TLS: 0x102000,
  /** Host writes one input_entry per attached input here (limits.MAX_INPUTS
   * entries at most); params' per-input arrays only hold the first 16. */
  INPUTS: 0x103000,
  STACK_BOTTOM: 0x110000,
  STACK_TOP: 0x200000,
  /** Flat guest binary is loaded here; entry point is its first byte. */
  CODE: 0x200000,
  CODE_END: 0x400000,
  /** Staging area for result records before HC_RESULT flushes them. */
  RESULT: 0x400000,
  RESULT_END: 0x600000,
  /** Bump-allocated heap: HEAP .. ram_size. */
  HEAP: 0x600000,
} as const;

export const limits = {
  /** Largest flat guest binary we embed (issue: each <= 384 KiB). */
  GUEST_BINARY_MAX: 384 * 1024,
  RAM_MIN: 16 * 1024 * 1024,
  RAM_DEFAULT: 64 * 1024 * 1024,
  /** Hard ceiling; raising it needs an explicit flag. 1 GiB + 64 MiB: a LUKS2 key slot's
   * Argon2 memory (cryptsetup's default is up to 1 GiB) plus the reading guest's own. */
  RAM_MAX: 1088 * 1024 * 1024,
  /** Files attached to one run: chain layers plus every vmdk image's extent
   * files: compare's two chains of CHAIN_MAX images, each with one vmdk of
   * VMDK_MAX_FILES extent files, 2 * (16 + 1024). Per input the
   * guest reads an input_entry at layout.INPUTS. */
  MAX_INPUTS: 2080,
  /** params' per-input arrays (input_size, ...): the first 16 inputs only. */
  PARAM_INPUTS: 16,
  /** Extent files one vmdk descriptor may name (qemu-img's twoGbMaxExtent*
   * image of 2 TiB has 1024). */
  VMDK_MAX_FILES: 1024,
  /** One READ/WRITE hypercall moves at most this much. */
  IO_MAX: 16 * 1024 * 1024,
  /** Segments in one READV/WRITEV. */
  IO_SEGS_MAX: 1024,
  /** Extents returned by one EXTENTS call. */
  EXTENTS_MAX: 256,
  /** Clusters one COMPRESSED_RUN record describes at most. */
  COMPRESSED_RUN_MAX: 32,
  /** One result record is at most this big (header included). */
  RECORD_MAX: 4096,
  /** Image-embedded names (backing file, data file) are at most this long. */
  NAME_MAX: 1024,
  /** Longest backing chain instar follows. */
  CHAIN_MAX: 16,
} as const;

/** I/O port the guest writes to for a hypercall. */
export const HC_PORT = 0x0cf8 + 0x100;

/** Hypercall numbers (hcall.nr). Arguments in hcall.a0..a3, result in hcall.ret. */
export const hypercalls = {
  /** a0=input index, a1=file offset, a2=length, a3=guest address -> bytes read.
   * The whole range must lie inside the input (guests zero-fill past EOF). */
  READ: 1,
  /** a0=output index (0), a1=file offset, a2=length, a3=guest address -> length.
   * offset+length must not pass the output cap the host set from its plan. */
  WRITE: 2,
  /** a0=guest address, a1=length: append result records to the host buffer. */
  RESULT: 3,
  /** a0=done, a1=total: progress for the host to draw. */
  PROGRESS: 4,
  /** a0=guest address, a1=length: debug text, kept up to the log cap. */
  LOG: 5,
  /** a0=guest status (GUEST_OK / GUEST_ERROR): the run ends. */
  DONE: 6,
  /** a0=input index, a1=offset, a2=SEEK_KIND_* -> next data/hole offset at or
   * after a1 (the input size when there is none). Host filesystem metadata
   * (lseek SEEK_DATA/SEEK_HOLE), not image bytes: qemu's map and block status
   * report holes in the underlying file as zero. */
  SEEK: 7,
  /** a0=input index, a1=guest address of an io_seg array, a2=count (<= IO_SEGS_MAX)
   * -> total bytes read. Each segment is checked like READ; the summed length is at
   * most IO_MAX. One exit for many scattered reads (qcow2 clusters). */
  READV: 8,
  /** a0=output index (0), a1=guest address of an io_seg array, a2=count -> total
   * bytes written. Each segment is checked like WRITE (output cap). */
  WRITEV: 9,
  /** a0=input index, a1=offset, a2=length, a3=guest address of an extent array of
   * EXTENTS_MAX entries -> number of data extents of the host file inside
   * [a1, a1+a2), in order, clipped to that range (lseek SEEK_DATA/SEEK_HOLE;
   * filesystem metadata, not image bytes). Fewer than EXTENTS_MAX means complete;
   * EXTENTS_MAX means ask again from the last extent's end. */
  EXTENTS: 10,
} as const;

export const seekKinds = { DATA: 0, HOLE: 1 } as const;

/** Negative hcall.ret values. The run usually ends instead (bad hypercall). */
export const hcErrors = { EINVAL: -22, EIO: -5 } as const;

/** How a guest says it finished (DONE a0). */
export const guestStatus = { OK: 0, ERROR: 1 } as const;

/** Operations; one guest binary each. params.op must match the binary. */
// 5 and 6 belong to convert/compare, 7 to resize's metadata scan. 4 was
// flatten (the read path's first test op, replaced by convert to raw); it
// stays unused so an old binary can never be mistaken for another op.
export const ops = {
  INFO: 1,
  CHECK: 2,
  MAP: 3,
  CONVERT: 5,
  COMPARE: 6,
  RESIZE_SCAN: 7,
  /** 60..64: in-place qcow2 writes (rebase, commit). 60: the clusters a safe rebase copies. */
  REBASE_DIFF: 60,
  /** 61: moves chain bytes to planned output offsets (a host-written move list is the last input). */
  COPY_RUNS: 61,
  /** `instar inspect`: an upload gate's verdict (guest/ops/inspect.c). */
  INSPECT: 50,
  /** snapshot -c/-a/-d: the metadata scan behind lib/formats/qcow2/snapshot_plan.ts. */
  SNAPSHOT_SCAN: 55,
  /** qcow2 persistent bitmaps: the metadata `bitmap` plans from (guest/qcow2/bitmap_scan.c). */
  BITMAP_SCAN: 65,
  /** 70..74: LUKS1 output (guest/ops/luks_write.c): format a header, encrypt a chain into it. */
  LUKS_WRITE: 70,
  /** 110..114: a streamOptimized VMDK read from stdin in one pass (guest/vmdk/stream.c, lib/convert/stdin_vmdk.ts). */
  VMDK_STREAM: 110,
  TEST: 99,
  /** 100..104: encrypted qcow2 output (guest/ops/qcow2_encrypt.c): LUKS header, encrypted data clusters. */
  QCOW2_ENCRYPT: 100,
} as const;

/** params.flags for ops.INFO. CHECK_MODE: open the way qemu-img check does
 * (BDRV_O_CHECK): problems check reports as diagnostics (snapshot table,
 * missing refcount table) do not fail the open. */
export const infoFlags = {
  CHECK_MODE: 1,
  /** Leave out the SNAPSHOT and BITMAP lists (commands that print neither: map, compare, resize). */
  NO_LISTS: 2,
  /** The command reads data (convert, compare): an encrypted image is unlocked before qemu
   * computes its length, so a LUKS payload past the end of the file is left to the unlocking guest. */
  READS_DATA: 4,
  /** qemu opens the image read-write (resize, commit, rebase, snapshot -c/-a/-d, check -r, amend, bitmap):
   * a vmdk seSparse extent refuses that open ("No write support for seSparse images available"). */
  READ_WRITE: 0x100,
} as const;

/** params.flags for ops.MAP. PRECISE: report the layers' precise runs even
 * where qemu's driver reports all data (vhdx): the allocation instar's own
 * convert sees, for measure's vpc/vhdx/vmdk estimates of that convert. */
/** CRYPT_OFFSETS: an encrypted qcow2's runs keep their host offsets (qemu reports none; convert -n into one plans with them). */
export const mapOpFlags = { PRECISE: 1, CRYPT_OFFSETS: 2 } as const;

/** params.flags for ops.CHECK: qemu-img check -r leaks / -r all. The guest
 * sends a REPAIR_REFCOUNT record for each refcount the repair rewrites,
 * counts those as fixed, and checks OFLAG_COPIED against the refcounts the
 * image will have after the repair (as qemu's check does after its fixes). */
export const checkOpFlags = { REPAIR_LEAKS: 1, REPAIR_ALL: 2 } as const;

/** params.flags for ops.INSPECT. STREAM: input 0 holds only the first arg[0]
 * bytes of a stream and its last bytes from arg[1] on (the rest is a hole
 * the guest must not read; it reports INSP_F_INCOMPLETE instead). */
export const inspectOpFlags = { STREAM: 1 } as const;

/** INSPECT.format and the bits of INSPECT.matches (1 << code): what the content is. */
export const inspectFormats = {
  RAW: 1,
  QCOW2: 2,
  VPC: 3,
  VHDX: 4,
  VMDK: 5,
  ISO: 6,
  GPT: 7,
  MBR: 8,
  LUKS: 9,
  QED: 10,
  VDI: 11,
  QCOW1: 12,
  PARALLELS: 13,
  BOCHS: 14,
  CLOOP: 15,
  DMG: 16,
} as const;

/** INSPECT.flags */
export const inspectFlags = {
  /** virtual_size is known. */
  SIZE_KNOWN: 1,
  /** The image declares its contents encrypted (LUKS, qcow2 crypt_method). */
  ENCRYPTED: 2,
} as const;

/** INSPECT_FINDING.code: why an image is unsafe (lib/inspect/findings.ts holds the texts). */
export const inspectFindings = {
  /** Two formats' headers (a0 = INSPECT.matches bits). */
  MULTIPLE_FORMATS: 1,
  /** The stream ended, or the window held too little, before byte a0 was examined. */
  INCOMPLETE: 2,
  /** qemu-img would refuse to open it: the ERROR record before this one says why. */
  OPEN_FAILED: 3,
  /** A format instar does not read, or format_inspector bans (a0 = inspectFormats). */
  UNSUPPORTED_FORMAT: 4,
  /** raw content carrying another format's signature (a0 = signatures.*). */
  RAW_SIGNATURE: 5,
  QCOW2_BACKING_FILE: 10, // a0 = backing file offset; text = the name
  QCOW2_DATA_FILE: 11, // text = the data file name, when the extension names one
  QCOW2_UNKNOWN_FEATURES: 12, // a0 = incompatible feature bits
  QCOW2_VERSION: 13, // a0 = version
  QCOW2_COMPRESSION_TYPE: 14, // a0 = compression type, a1 = 1 when set without its feature bit
  QCOW2_L1_PAST_END: 15, // a0 = offset, a1 = bytes, a2 = file size
  QCOW2_REFTABLE_PAST_END: 16, // a0 = offset, a1 = bytes, a2 = file size
  QCOW2_ENCRYPTED: 17, // a0 = crypt_method
  QCOW2_CORRUPT: 18,
  VMDK_NO_DESCRIPTOR: 20,
  VMDK_SUBFORMAT: 21, // text = createType
  VMDK_BAD_LINE: 22, // text = the line
  VMDK_EXTENT_PATH: 23, // text = the extent line
  VMDK_NO_EXTENTS: 24,
  VMDK_EXTENT_FILE: 25, // text = the file an extent names
  VMDK_DESC_TOO_LONG: 26, // a0 = descriptor bytes, a1 = the bound
  VMDK_DESC_LOCATION: 27, // a0 = descriptor offset
  VMDK_VERSION: 28, // a0 = version
  VMDK_FOOTER: 29, // a0 = which footer test (guest/inspect/inspect.h VMDK_FOOT_*)
  VMDK_PARENT: 30, // text = parentFileNameHint
  VPC_PARENT: 40, // a0 = disk type, a1 = parent locators in use
  VHDX_PARENT: 41,
  VHDX_REGION_TABLE: 42, // a0 = which test (guest/inspect/inspect.h VHDX_RT_*), a1/a2 values
  MBR_BOOT_FLAG: 50, // a0 = entry
  GPT_START_CHS: 51,
  GPT_START_LBA: 52,
  GPT_EXTRA_PARTITIONS: 53,
  MBR_NO_PARTITIONS: 54,
  GPT_HEADER: 55, // a0 = which test (guest/inspect/inspect.h GPT_H_*)
  LUKS_VERSION: 60, // a0 = version
} as const;

/** Formats the host asks for or the guest detects. */
export const formats = { AUTO: 0, RAW: 1, QCOW2: 2, VPC: 3, VHDX: 4, VMDK: 5, LUKS: 6 } as const;

/** Run outcomes reported by the VMM (vmm_report.status). */
export const runStatus = {
  DONE: 0,
  GUEST_FAULT: 1, // triple fault / shutdown / hlt: the guest crashed
  TIMEOUT: 2, // watchdog fired
  BAD_HYPERCALL: 3, // unknown nr, bad range, wrong state (detail = nr)
  OUTPUT_CAP: 4, // WRITE past the output cap
  RESULT_CAP: 5, // result records over the result cap
  HOST_ERROR: 6, // an ioctl or pread/pwrite failed (errno in report.err)
  UNEXPECTED_EXIT: 7, // an exit reason the VMM does not serve (detail = reason)
  SETUP_ERROR: 8, // the VM could not be created or configured
} as const;

/** Result record types. */
export const records = {
  ERROR: 1,
  PROBE: 2,
  QCOW2_INFO: 3,
  NAME: 4,
  CHECK: 5,
  CHECK_MSG: 6,
  MAP_EXTENT: 7,
  RAW_INFO: 8,
  SNAPSHOT: 9,
  BITMAP: 10,
  DATA_RUN: 11,
  COMPRESSED_RUN: 12,
  CONVERT_DONE: 13,
  COMPARE: 14,
  /** Header facts of a vpc/vhdx/vmdk layer (rec_image_info). */
  IMAGE_INFO: 15,
  /** One extent of a vmdk image (rec_vmdk_extent), descriptor order. */
  VMDK_EXTENT: 16,
  /** check -r: a refcount entry the repair rewrites (rec_repair_refcount). */
  REPAIR_REFCOUNT: 19,
  /** check -r: an L1 or L2 entry whose OFLAG_COPIED bit check_oflag_copied flips
   * (rec_resize_pair: index = the entry's file offset, value = the new entry). */
  REPAIR_OFLAG: 205,
  /** check -r all rebuilding the refcount structures: a run of equal non-zero reference counts
   * (rec_resize_run: start cluster, count, refcount = the references), ascending. */
  REPAIR_REFRUN: 206,
  /** ... clusters the old refcount table and blocks add one reference to each (rec_resize_run,
   * refcount = 1), after the REPAIR_REFRUN records. */
  REPAIR_OLDMETA: 207,
  /** ... last of them: rec_resize_pair, index = qemu's nb_clusters (the reference array's length). */
  REPAIR_REBUILD: 208,
  /** check -r all: an L2 entry of an unaligned preallocated cluster made a zero cluster
   * (rec_resize_pair: index = the entry's file offset, value = the new entry). */
  REPAIR_L2ZERO: 220,
  /** An encrypted qcow2's full disk encryption header pointer extension (rec_qcow2_crypt_hdr),
   * right after its QCOW2_INFO: a header rewrite (rebase -u) writes it back. */
  QCOW2_CRYPT_HDR: 275,
  // 20..29: resize's metadata scan (ops.RESIZE_SCAN), see guest/qcow2/resize_scan.c.
  RESIZE_L1: 20,
  RESIZE_REFTABLE: 21,
  RESIZE_REFRUN: 22,
  RESIZE_FREE: 23,
  RESIZE_ZERO: 24,
  RESIZE_SUMMARY: 25,
  /** vpc/vhdx resize scan: the header facts the planner needs (rec_resize_meta), last. */
  RESIZE_META: 26,
  /** vpc/vhdx resize scan: metadata bytes the planner rewrites (rec_resize_bytes). */
  RESIZE_BYTES: 27,
  // 120..124: convert -B (convertFlags.BACKING).
  /** Guest clusters [guest_cluster, +count) of a qcow2 target with a backing file that qemu
   * write-zeroes (rec_data_run): host_offset 0 = a zero cluster; 1 = the clusters are only partly
   * written over the backing file (qemu would copy the backing file's bytes in: refused). */
  ZERO_RUN: 120,
  /** convert -B into a target with extended L2 entries (rec_data_run, count 1): guest cluster
   * guest_cluster's subcluster bitmap is host_offset (zero bits 32-63, allocation bits 0-31)
   * instead of all allocated (a DATA_RUN cluster) or all zero (a ZERO_RUN cluster). */
  SUBCLUSTERS: 195,
  // 50..59: in-place qcow2 writes (rebase, commit).
  /** rebase_diff: overlay clusters a safe rebase must copy (rec_diff_run). */
  DIFF_RUN: 50,
  // 60..69: the bitmap scan (ops.BITMAP_SCAN), see guest/qcow2/bitmap_scan.c.
  /** One bitmap directory entry (rec_bitmap_dir), directory order, before its BITMAP_ENTRY records. */
  BITMAP_DIR: 60,
  /** One non-zero bitmap table entry (rec_bitmap_entry). */
  BITMAP_ENTRY: 61,
  /** Right after a BITMAP_ENTRY whose cluster has set bits both inside the bitmap and past its
   * end (a resize --shrink scan): what qemu's truncated bitmap keeps of it (rec_bitmap_cut). */
  BITMAP_CUT: 190,
  // 105..109: amend's downgrade scan (ops.RESIZE_SCAN with resize arg[1] bit 1,
  // guest/qcow2/resize_scan.c), sent before RESIZE_SUMMARY.
  /** One zero-flagged L2 entry (rec_resize_pair: index = the entry's file offset,
   * value = the raw entry), in qcow2_expand_zero_clusters' visiting order. */
  AMEND_ZERO: 105,
  /** One internal snapshot (rec_resize_run: start = its index, count = disk_size or
   * 2^64-1 when its extra data does not record one, refcount = vm_state_size). */
  AMEND_SNAP: 106,
  /** The counts of AMEND_ZERO (index) and AMEND_SNAP (value) records (rec_resize_pair). */
  AMEND_COUNT: 107,
  /** One snapshot's L1 size, right after its AMEND_SNAP (rec_resize_pair: index = its index,
   * value = l1_size), for qemu's progress over the L1 entries. */
  AMEND_SNAP_L1: 108,
  /** commit's scan of a qcow2 base (ops.RESIZE_SCAN with arg[1] bit 2): one compressed L2 entry
   * of the active L1 (rec_resize_run: start = the guest cluster, count = how many host clusters
   * its data spans, refcount = the first of them), ascending guest clusters, before RESIZE_SUMMARY. */
  COMPRESSED_L2: 175,
  // 80..89: inspect (ops.INSPECT, guest/ops/inspect.c).
  /** The verdict's facts: detected format, virtual size, bytes examined; last record. */
  INSPECT: 80,
  /** One reason the image is unsafe (rec_inspect_finding). */
  INSPECT_FINDING: 81,
  // 40..49: snapshot -c/-a/-d's metadata scan (ops.SNAPSHOT_SCAN), see guest/qcow2/snapshot_scan.c.
  // It also sends RESIZE_REFTABLE and RESIZE_REFRUN for the refcounts.
  /** One snapshot table entry, as qemu's qcow2_read_snapshots derives it (rec_snap_entry). */
  SNAP_ENTRY: 40,
  /** Bytes of an entry's id, name or unknown extra data (rec_snap_bytes). */
  SNAP_BYTES: 41,
  /** One non-zero entry of the active L1 or the chosen snapshot's L1 (rec_snap_l1). */
  SNAP_L1: 42,
  /** A run of non-zero L2 entries of one L2 table those L1 tables name (rec_snap_l2run). */
  SNAP_L2RUN: 43,
  /** Last record of a snapshot scan: the count of each kind (rec_snap_summary). */
  SNAP_SUMMARY: 44,
  // 70..79: LUKS (guest/luks/).
  /** A LUKS1 header as qemu's qcrypto_block_luks_open parses it (rec_luks_info). */
  LUKS_INFO: 70,
  // 110..114: LUKS1 output (ops.LUKS_WRITE).
  /** What luks_write made: iteration counts, payload offset, entropy sources (rec_luks_written). */
  LUKS_WRITTEN: 110,
  /** amend: the key slots a passphrase opens (rec_luks_slots). */
  LUKS_SLOTS: 111,
  // 150..154: a streamOptimized VMDK from stdin (ops.VMDK_STREAM).
  /** One window of the stream decoded: where the next starts, how far the disk is final (rec_vmdk_stream). */
  VMDK_STREAM: 150,
  // 130..134: LUKS2 (guest/luks2/).
  /** A LUKS2 header and its JSON metadata, checked (rec_luks2_info); one LUKS2_SLOT per key slot follows. */
  LUKS2_INFO: 130,
  /** One LUKS2 key slot (rec_luks2_slot). */
  LUKS2_SLOT: 131,
} as const;

/**
 * ops.VMDK_STREAM (guest/vmdk/stream.c): arg[0] these flags, arg[1] the stream byte where this window's parse
 * starts, arg[2] the end of the stream bytes in input 0 (they lie at their stream offsets), arg[3] the disk
 * byte this window starts at, arg[4] the most disk bytes one window decodes, arg[5] capacity (sectors),
 * arg[6] grain sectors | grain table entries << 32, arg[7] the disk byte where the last grain decoded ends.
 * Input 1 (not with FIRST) holds the stream's header region (the record's `head` bytes) at the same offsets.
 * Output 0 is the disk window file (inflated grains at their disk offsets). The record's flags carry
 * GD_AT_END, FOOTER and TABLES into the next run; EOS says the stream ended; NOT_STREAM (FIRST only): not a
 * streamOptimized header with markers (the host spools the stream instead).
 */
export const vmdkStreamFlags = {
  FIRST: 1,
  FINAL: 2,
  GD_AT_END: 4,
  FOOTER: 8,
  EOS: 16,
  NOT_STREAM: 32,
  /** The header's grain directory is in the header region: every grain must be the one its table names. */
  TABLES: 64,
  /** The header's zeroed-grain flag: a grain table entry 1 reads as zeroes. */
  ZERO_GRAIN: 128,
} as const;

/**
 * params.flags for ops.LUKS_WRITE (guest/ops/luks_write.c). Arguments:
 * arg[0] luksCipherAlgs, arg[1] luksCipherModes, arg[2] luksIvgens,
 * arg[3] luksHashes of ESSIV (0: none), arg[4] luksHashes of the PBKDF2,
 * arg[5] master-key digest iterations, arg[6] key slot 0 iterations,
 * arg[7] payload bytes to encrypt from the chain (COPY).
 * The output's passphrase is the secret slot right after the inputs'
 * (params.input_secret_len[n_inputs]), then 64 bytes of host entropy
 * (slot n_inputs + 1), both in params.secret (docs/abi.md).
 * BENCH: run arg[6] PBKDF2 iterations of hash arg[4] (one output block) on
 * dummy bytes and write nothing (the host times the run: qemu's calibration).
 * FORMAT: write the header and key slot 0 (new master key, salts, uuid).
 * AT (with FORMAT, not COPY): the header goes to byte arg[7] of the output
 * (qcow2: the crypto header clusters) instead of byte 0.
 * COPY: then encrypt the chain over the inputs into the payload.
 * AMEND (key slots of the LUKS image that is input 0 and output 0): arg[0]
 * luksAmendActions; MATCH reports in LUKS_SLOTS which slots the passphrase
 * in secret slot 1 opens; ADD unlocks the master key with input 0's
 * passphrase and seals it into key slot arg[1] with the passphrase in secret
 * slot 1, arg[2] iterations (entropy: secret slot 2); ERASE disables the
 * slots of bitmap arg[1] and overwrites their key material 16 times with
 * random bytes (qcrypto_block_luks_erase_key).
 * INTO (convert -n into an existing LUKS1 image; guest/ops/luks_into.c):
 * input 0 is the target (also output 0, its passphrase its input secret),
 * inputs 1.. the source chain; a key slot is unlocked, then arg[0] bytes of
 * the source are encrypted into the payload with the image's master key.
 * INTO_SKIP_ZERO (--target-is-zero): blocks of arg[1] (-S) bytes that read
 * as zeroes are not written. (256 and 512: clear of other flags' growth.)
 */
export const luksWriteFlags = {
  BENCH: 1,
  FORMAT: 2,
  COPY: 4,
  AMEND: 8,
  AT: 16,
  INTO: 256,
  INTO_SKIP_ZERO: 512,
} as const;
/**
 * params.flags for ops.QCOW2_ENCRYPT (guest/ops/qcow2_encrypt.c): convert
 * -O qcow2 -o encrypt.format=luks|aes. LUKS: a new LUKS header at byte
 * arg[3] of output 0 (qcow2's crypto header clusters; secret slots as for
 * luks_write FORMAT: the passphrase after the inputs', then 64 bytes of
 * host entropy), data clusters encrypted with its master key, IV sector =
 * host offset / 512. AES: the legacy method (AES-128-CBC, plain64, key =
 * the passphrase's first 16 bytes, IV sector = guest offset / 512; the
 * passphrase in the secret slot after the inputs'). Arguments: arg[0] the
 * LUKS algorithms packed a byte each (cipher, mode, ivgen, ivgen hash,
 * PBKDF2 hash from bit 0 up), arg[1] master-key iterations, arg[2] key
 * slot 0 iterations, arg[3] the header's offset, arg[4] where the data
 * clusters start (packed in guest order as convert's qcow2 output, DATA_RUN
 * and CONVERT_DONE reported), arg[5] cluster bits, arg[6] min_sparse.
 * INTO (alone): convert -n into an existing encrypted qcow2 (guest/ops/
 * qcow2_crypt_into.c): inputs the source chain, the target (its passphrase
 * its input secret) and copy_runs' move list; arg[0] entries, arg[1] their
 * bytes, arg[2] the target's cluster bits.
 * BACKING (with LUKS or AES): convert -B, the top layer's status as
 * convert's CONV_BACKING mode takes it (guest/ops/qcow2_encrypt_backing.c),
 * zero clusters as ZERO_RUN; arg[7] the target backing file's size; arg[5]
 * bits 32..47, when not 0, the first input of the target's backing chain
 * (after the source's; its bytes fill clusters the source writes in part).
 * ZERO_DATA (with BACKING): a compat=0.10 target, zeroes stored as data.
 * CLASSIFY (alone): nothing written; the source chain's clusters at the
 * target's cluster bits arg[5] with -S arg[6] as qemu's requests touch them:
 * DATA_RUN (host_offset 0), ZERO_RUN 0 (one write-zeroes covers the
 * cluster), ZERO_RUN 1 (all zeroes, split between requests), CONVERT_DONE.
 */
export const qcow2EncryptFlags = {
  LUKS: 1,
  AES: 2,
  INTO: 4,
  BACKING: 8,
  ZERO_DATA: 16,
  CLASSIFY: 32,
  /** With INTO: the target is an unencrypted qcow2 (convert -n from an encrypted source):
   * no target key, the clusters written in plaintext. */
  PLAIN: 64,
} as const;
export const luksAmendActions = { MATCH: 1, ADD: 2, ERASE: 3 } as const;
/** LUKS_WRITTEN.entropy bits: where the random bytes came from (host bytes are always mixed in). */
export const luksEntropy = { RDSEED: 1, RDRAND: 2 } as const;

/** params.arg[1] bits for ops.SNAPSHOT_SCAN (arg[0] = 1 + the snapshot whose L1 to walk, 0 none). */
/** DROP_EXTRA: entries with more than 1024 bytes of extra data are reported
 * with their first 1024 (check -r all discards the rest). */
export const snapScanFlags = { ACTIVE_L1: 1, DROP_EXTRA: 2 } as const;
/** SNAP_SUMMARY.flags: TOO_BIG, a bound was hit and the scan stopped (the host refuses). */
export const snapSummaryFlags = { TOO_BIG: 1 } as const;
/** SNAP_BYTES.what */
export const snapBytesKinds = { ID: 1, NAME: 2, EXTRA: 3 } as const;
/** SNAP_L2RUN.kind: what the entries reference (qcow2_update_snapshot_refcount's cases). */
export const snapRunKinds = {
  /** Unallocated or plain zero: no reference (refcount 0 for OFLAG_COPIED). */
  NONE: 0,
  /** Normal or allocated zero: entry k references cluster ref_first + k. */
  DATA: 1,
  /** Compressed (count 1): clusters [ref_first, ref_first + ref_clusters). */
  COMPRESSED: 2,
} as const;

/** LUKS algorithms as qemu's QAPI enums name them (rec_luks_info; lib/formats/luks/names.ts). */
export const luksCipherAlgs = {
  AES_128: 1,
  AES_192: 2,
  AES_256: 3,
  CAST5_128: 4,
  SERPENT_128: 5,
  SERPENT_192: 6,
  SERPENT_256: 7,
  TWOFISH_128: 8,
  TWOFISH_192: 9,
  TWOFISH_256: 10,
} as const;
export const luksCipherModes = { ECB: 1, CBC: 2, XTS: 3, CTR: 4 } as const;
export const luksIvgens = { PLAIN: 1, PLAIN64: 2, ESSIV: 3 } as const;
/** 0 in ivgen_hash: none named. */
export const luksHashes = {
  MD5: 1,
  SHA1: 2,
  SHA224: 3,
  SHA256: 4,
  SHA384: 5,
  SHA512: 6,
  RIPEMD160: 7,
} as const;

/** LUKS2 key slot key derivation functions (rec_luks2_slot.kdf). */
export const luks2Kdfs = { PBKDF2: 1, ARGON2I: 2, ARGON2ID: 3 } as const;

/** BITMAP_DIR.state bits: what the guest found reading the bitmap's data. */
export const bitmapState = {
  /** A table entry is 1 (all ones), which qemu expands on loading. */
  ALL_ONES: 1,
  /** A data cluster has bits set past the bitmap's end. */
  TAIL_BITS: 2,
  /** The entry limit was hit: the scan stopped. */
  TOO_BIG: 4,
} as const;

/** RESIZE_SUMMARY.flags: TOO_BIG means a bound was hit and the scan stopped
 * (the host refuses to resize); SHRINK means the L2 walk for a shrink ran;
 * BUSY_TAIL (grow with params.arg[1] bit 0) means the guest range being added
 * already has non-zero L2 entries or a shared L2 table (no preallocation then). */
export const resizeFlags = { TOO_BIG: 1, SHRINK: 2, BUSY_TAIL: 4 } as const;

/** DIFF_RUN.flags. OLD_ZERO: the run lies wholly past the old backing file's
 * end (qemu-img rebase writes zeroes there, not the old backing's data).
 * ZERO (classify mode, convert -n): the source cluster reads as zeroes. */
export const diffFlags = { OLD_ZERO: 1, ZERO: 2 } as const;

/** params.arg[1] bits for ops.CONVERT. */
export const convertFlags = {
  QCOW2: 1,
  COMPRESS: 2,
  ZSTD: 4,
  /** Write nothing: report in CONVERT_DONE.clusters how many output clusters of the range
   * may hold data (so a second guest can start writing right behind the first). */
  COUNT: 8,
  /** Block output (vpc/vhdx dynamic): the guest range is cut into 2^arg[4]-byte blocks; each
   * block holding a non-zero byte gets the next slot from arg[3] on (slot stride
   * 2^arg[4] + arg[7], its data arg[7] <= 4096 bytes in, after 0xFF bytes); DATA_RUN records say which
   * block went to which slot (guest_cluster = block, host_offset = slot, +stride ...). */
  BLOCK: 16,
  /** With QCOW2|COMPRESS (convert_zlib only): streamOptimized VMDK grains. Each grain with data
   * (every grain with -S 0) is deflated as qemu's vmdk does (zlib format, default level),
   * behind a 12-byte marker {lba u64, size u32}, padded to a sector; COMPRESSED_RUN len[i] is
   * the padded length (a multiple of 512). The last grain of a disk that ends inside it is
   * compressed up to the disk's end (in whole sectors), as qemu does. */
  VMDK: 32,
  /** With QCOW2 (not COMPRESS): the target has a backing file (convert -B). Block status is the
   * top layer's alone (qemu's bdrv_block_status): runs the top does not allocate are left to
   * the target's backing file; runs it reads as zeroes become ZERO_RUN records (qemu's
   * write-zeroes), except from arg[7] (the target backing file's size in bytes) on, where
   * zeroes are left unallocated too. Whole target clusters only: see ZERO_RUN. */
  BACKING: 64,
  /** With BACKING: a compat=0.10 target. qemu's write-zeroes falls back to writing zeroes there,
   * so clusters that read as zeroes are stored as data clusters of zeroes (DATA_RUN). */
  ZERO_DATA: 128,
} as const;
/** COMPARE record outcomes (qemu-img compare's cases). */
export const compareResults = {
  IDENTICAL: 0,
  MISMATCH: 1, // content differs at `offset`
  SIZE_MISMATCH_STRICT: 2, // -s and the sizes differ
  STATUS_MISMATCH_STRICT: 3, // -s and the block status differs at `offset`
  STATUS_FAILED: 4, // block status of `image` failed (qemu: exit 3)
  READ_FAILED: 5, // reading `offset` of `image` failed (qemu: exit 4)
} as const;

/** NAME record kinds. INCOMPAT_FEATURE: a feature-table name qemu prints in
 * "Unsupported qcow2 feature(s): ..." (sent before that ERROR record, table order).
 * SNAPSHOT_ID / SNAPSHOT_NAME: sent right before the CHECK_MSG whose text
 * names a snapshot (%N in lib/abi/check_messages.ts), cut at NAME_MAX bytes. */
export const nameKinds = {
  BACKING_FILE: 1,
  BACKING_FORMAT: 2,
  DATA_FILE: 3,
  INCOMPAT_FEATURE: 4,
  SNAPSHOT_ID: 5,
  SNAPSHOT_NAME: 6,
  /** The bitmap a BAD_BITMAP error is about (sent right before it). */
  BITMAP_NAME: 7,
  /** vmdk: the createType qemu's info prints (descriptor text, or the sparse header's kind). */
  VMDK_CREATE_TYPE: 8,
  /** Text an ERROR record quotes (vmdk's "Unsupported image type '%s'", an invalid extent line),
   * sent right before it. */
  ERROR_TEXT: 9,
} as const;

/** MAP_EXTENT flags (qemu's BDRV_BLOCK_* meaning, as qemu-img map prints them). */
export const mapFlags = {
  DATA: 1,
  ZERO: 2,
  PRESENT: 4, // "allocated" in qemu's map JSON
  OFFSET_VALID: 8,
  COMPRESSED: 16,
} as const;

/** IMAGE_INFO.flags */
export const imageInfoFlags = {
  /** qemu's dirty flag (vhdx: a log that needs replay). */
  DIRTY: 1,
  /** A differencing disk: a parent locator (NAME records follow). */
  HAS_PARENT: 2,
  /** vpc: the footer checksum did not match (qemu warns and goes on). */
  BAD_CHECKSUM: 4,
} as const;

/** IMAGE_INFO.subformat: the disk type as the image states it. */
export const imageSubformats = { FIXED: 2, DYNAMIC: 3, DIFFERENCING: 4 } as const;

/** VMDK_EXTENT.flags */
export const vmdkExtentFlags = {
  /** FLAT or VMFS: the extent file is the disk's bytes from flat_offset on. */
  FLAT: 1,
  /** Grains are deflated (streamOptimized). */
  COMPRESSED: 2,
  /** The extent is the image file itself (a sparse file opened directly). */
  HOSTED: 4,
  /** The extent's file was attached and its header read (sectors, cluster_size are final). */
  OPENED: 8,
} as const;

/** RAW_INFO.partition */
export const partitionKinds = { NONE: 0, MBR: 1, GPT: 2 } as const;

/** PROBE.signature: another format's magic found where raw was expected. */
export const signatures = {
  NONE: 0,
  QCOW2: 1,
  QCOW1: 2,
  VMDK: 3,
  VPC: 4,
  VHDX: 5,
  LUKS: 6,
  VDI: 7,
  QED: 8,
  PARALLELS: 9,
  DMG: 10,
  BOCHS: 11,
  CLOOP: 12,
  ELF: 13,
} as const;

/** QCOW2_INFO.flags */
export const qcow2InfoFlags = {
  HAS_BACKING: 1,
  HAS_BACKING_FORMAT: 2,
  HAS_DATA_FILE: 4,
  HAS_BITMAPS_EXT: 8,
  HAS_FEATURE_TABLE: 16,
  DATA_FILE_RAW: 32,
  /** A header extension qemu does not know (it keeps such extensions when it rewrites the header). */
  UNKNOWN_EXT: 64,
} as const;

/** ERROR record codes: what went wrong inside the guest. TS turns each into
 * qemu-img's message (lib/formats/<fmt>/errors.ts); a0..a2 are parameters. */
export const guestErrors = {
  IO: 1, // a read failed
  NOT_FORMAT: 2, // magic does not match the format asked for
  TRUNCATED: 3, // header shorter than it must be
  UNSUPPORTED_VERSION: 4, // a0 = version
  BAD_CLUSTER_BITS: 5, // a0 = cluster_bits
  BAD_HEADER_LENGTH: 6, // a0 = header_length
  BAD_REFCOUNT_ORDER: 7, // a0 = refcount_order
  UNKNOWN_INCOMPAT: 8, // a0 = unknown incompatible bits
  BAD_L1_SIZE: 9, // a0 = l1_size
  BAD_L1_OFFSET: 10,
  BAD_REFTABLE: 11,
  BAD_SNAPSHOT_TABLE: 12,
  BAD_EXTENSION: 13, // a0 = extension type
  NAME_TOO_LONG: 14,
  BAD_BACKING_OFFSET: 15,
  ENCRYPTED: 16, // a0 = crypt_method
  CORRUPT: 17, // image has the corrupt bit set (refused for writing ops)
  BAD_COMPRESSION_TYPE: 18, // a0 = type
  VIRTUAL_SIZE_TOO_LARGE: 19,
  OUT_OF_MEMORY: 20, // guest heap exhausted
  BAD_PARAMS: 21, // the host's parameter block is wrong
  BAD_L2: 22, // a0 = offset
  DATA_FILE_REQUIRED: 23,
  INTERNAL: 24,
  BAD_IMAGE_SIZE: 25,
  BAD_BITMAP: 26, // a0 = what qemu's bitmap loading refused (see guest/qcow2/qcow2.h QBM_*)
  /** A format's own open/read refusal: a0 = that format's message number
   * (guest/<fmt>/<fmt>.h, texts in lib/formats/<fmt>/errors.ts), a1/a2 its values. */
  FORMAT: 27,
} as const;

export type FieldType = "u8" | "u16" | "u32" | "u64" | "i64" | "bytes";
export interface Field {
  name: string;
  type: FieldType;
  offset: number;
  /** Element count for arrays (u64[16]) or byte length for "bytes". */
  count?: number;
  /** Comment carried into the C header. */
  doc?: string;
}
export interface StructSpec {
  name: string;
  size: number;
  doc: string;
  fields: Field[];
}

/** Every result record starts with this header; size includes it, multiple of 8. */
export const recordHeader: StructSpec = {
  name: "rec_header",
  size: 8,
  doc: "Header of every result record",
  fields: [
    { name: "type", type: "u32", offset: 0 },
    { name: "size", type: "u32", offset: 4, doc: "total bytes incl. header, multiple of 8" },
  ],
};

export const structs: StructSpec[] = [
  {
    name: "params",
    size: 1600,
    doc: "Host -> guest parameter block at layout.PARAMS",
    fields: [
      { name: "magic", type: "u32", offset: 0 },
      { name: "abi_version", type: "u32", offset: 4 },
      { name: "op", type: "u32", offset: 8 },
      { name: "flags", type: "u32", offset: 12 },
      { name: "n_inputs", type: "u32", offset: 16 },
      { name: "reserved0", type: "u32", offset: 20 },
      { name: "ram_size", type: "u64", offset: 24 },
      { name: "input_size", type: "u64", offset: 32, count: 16, doc: "bytes, per input" },
      { name: "input_format", type: "u32", offset: 160, count: 16, doc: "formats.*" },
      { name: "output_cap", type: "u64", offset: 224 },
      { name: "arg", type: "u64", offset: 232, count: 8, doc: "op-specific arguments" },
      {
        name: "input_alloc",
        type: "u64",
        offset: 296,
        count: 16,
        doc: "allocated bytes per input (st_blocks * 512; qemu's allocated file size), 0 = unknown",
      },
      {
        name: "input_snapshot",
        type: "u32",
        offset: 424,
        count: 16,
        doc: "0: read the active layer; k + 1: read qcow2 internal snapshot k instead (convert/measure -l)",
      },
      {
        name: "kdf_max_iters",
        type: "u64",
        offset: 488,
        doc: "LUKS: the most PBKDF2 iterations one key slot (or the master-key digest) may ask for",
      },
      {
        name: "secret_inputs",
        type: "u32",
        offset: 496,
        doc: "bit i: input i has a passphrase in `secret` (it may be empty)",
      },
      { name: "reserved", type: "bytes", offset: 500, count: 12 },
      {
        name: "input_secret_len",
        type: "u32",
        offset: 512,
        count: 16,
        doc: "bytes of `secret` that are input i's passphrase (0: none), in input order",
      },
      {
        name: "secret",
        type: "bytes",
        offset: 576,
        count: 1024,
        doc: "the passphrases, back to back; written only for the run that unlocks (docs/abi.md)",
      },
    ],
  },
  {
    name: "input_entry",
    size: 24,
    doc: "Host -> guest: one per attached input, at layout.INPUTS + 24 * index",
    fields: [
      { name: "size", type: "u64", offset: 0, doc: "bytes" },
      { name: "alloc", type: "u64", offset: 8, doc: "allocated bytes (st_blocks * 512), 0 = unknown" },
      { name: "format", type: "u32", offset: 16, doc: "formats.*" },
      { name: "snapshot", type: "u32", offset: 20, doc: "0: the active layer; k + 1: qcow2 snapshot k" },
    ],
  },
  {
    name: "hcall",
    size: 64,
    doc: "Hypercall argument block at layout.HCALL",
    fields: [
      { name: "nr", type: "u64", offset: 0 },
      { name: "a0", type: "u64", offset: 8 },
      { name: "a1", type: "u64", offset: 16 },
      { name: "a2", type: "u64", offset: 24 },
      { name: "a3", type: "u64", offset: 32 },
      { name: "ret", type: "i64", offset: 40 },
      { name: "reserved", type: "u64", offset: 48, count: 2 },
    ],
  },
  {
    name: "io_seg",
    size: 24,
    doc: "One segment of a READV/WRITEV: file offset, length, guest address",
    fields: [
      { name: "off", type: "u64", offset: 0 },
      { name: "len", type: "u64", offset: 8 },
      { name: "addr", type: "u64", offset: 16 },
    ],
  },
  {
    name: "extent",
    size: 16,
    doc: "One data extent of a host file (EXTENTS)",
    fields: [
      { name: "off", type: "u64", offset: 0 },
      { name: "len", type: "u64", offset: 8 },
    ],
  },
  {
    name: "rec_error",
    size: 40,
    doc: "records.ERROR",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "code", type: "u32", offset: 8, doc: "guestErrors.*" },
      { name: "input", type: "u32", offset: 12, doc: "which input the error is about" },
      { name: "a0", type: "u64", offset: 16 },
      { name: "a1", type: "u64", offset: 24 },
      { name: "a2", type: "u64", offset: 32 },
    ],
  },
  {
    name: "rec_probe",
    size: 24,
    doc: "records.PROBE: what the guest found at the start of an input",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "format", type: "u32", offset: 12, doc: "formats.*" },
      { name: "signature", type: "u32", offset: 16, doc: "signatures.*" },
      { name: "reserved", type: "u32", offset: 20 },
    ],
  },
  {
    name: "rec_qcow2_info",
    size: 120,
    doc: "records.QCOW2_INFO: decoded qcow2 header",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "version", type: "u32", offset: 12 },
      { name: "virtual_size", type: "u64", offset: 16 },
      { name: "cluster_bits", type: "u32", offset: 24 },
      { name: "refcount_order", type: "u32", offset: 28 },
      { name: "compression_type", type: "u32", offset: 32 },
      { name: "flags", type: "u32", offset: 36, doc: "qcow2InfoFlags.*" },
      { name: "incompatible_features", type: "u64", offset: 40 },
      { name: "compatible_features", type: "u64", offset: 48 },
      { name: "autoclear_features", type: "u64", offset: 56 },
      { name: "l1_table_offset", type: "u64", offset: 64 },
      { name: "refcount_table_offset", type: "u64", offset: 72 },
      { name: "l1_size", type: "u32", offset: 80 },
      { name: "refcount_table_clusters", type: "u32", offset: 84 },
      { name: "nb_snapshots", type: "u32", offset: 88 },
      { name: "header_length", type: "u32", offset: 92 },
      { name: "snapshots_offset", type: "u64", offset: 96 },
      { name: "crypt_method", type: "u32", offset: 104 },
      { name: "nb_bitmaps", type: "u32", offset: 108 },
      { name: "reserved", type: "u64", offset: 112 },
    ],
  },
  {
    name: "rec_qcow2_crypt_hdr",
    size: 32,
    doc: "records.QCOW2_CRYPT_HDR: the crypto header extension's offset and length as the image holds them",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "reserved", type: "u32", offset: 12 },
      { name: "offset", type: "u64", offset: 16 },
      { name: "length", type: "u64", offset: 24 },
    ],
  },
  {
    name: "rec_name",
    size: 1040,
    doc: "records.NAME: a name stored in an image (never opened by the guest)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "kind", type: "u16", offset: 12, doc: "nameKinds.*" },
      { name: "len", type: "u16", offset: 14, doc: "<= limits.NAME_MAX" },
      { name: "bytes", type: "bytes", offset: 16, count: 1024 },
    ],
  },
  {
    name: "rec_image_info",
    size: 72,
    doc: "records.IMAGE_INFO: a vpc/vhdx layer's header facts, as qemu's open derives them",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "format", type: "u32", offset: 12, doc: "formats.*" },
      { name: "virtual_size", type: "u64", offset: 16, doc: "bytes, as qemu's total_sectors * 512" },
      { name: "cluster_size", type: "u64", offset: 24, doc: "what info prints as cluster_size (block size)" },
      { name: "flags", type: "u32", offset: 32, doc: "imageInfoFlags.*" },
      { name: "subformat", type: "u32", offset: 36, doc: "imageSubformats.*" },
      {
        name: "extra",
        type: "u64",
        offset: 40,
        count: 4,
        doc: "format-specific values (guest/<fmt>/<fmt>.h)",
      },
    ],
  },
  {
    name: "rec_vmdk_extent",
    size: 584,
    doc: "records.VMDK_EXTENT: one extent as qemu's vmdk_get_extent_info reports it (guest/vmdk/vmdk.h)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8, doc: "the image's input" },
      { name: "index", type: "u32", offset: 12, doc: "extent number, descriptor order" },
      { name: "sectors", type: "u64", offset: 16, doc: "extent size in 512-byte sectors" },
      { name: "cluster_size", type: "u64", offset: 24, doc: "grain size in bytes (sparse extents)" },
      { name: "flat_offset", type: "u64", offset: 32, doc: "FLAT: the descriptor's offset in sectors" },
      { name: "flags", type: "u32", offset: 40, doc: "vmdkExtentFlags.*" },
      { name: "file_input", type: "u32", offset: 44, doc: "input holding the extent, when OPENED" },
      { name: "type_len", type: "u16", offset: 48, doc: "<= 10" },
      { name: "name_len", type: "u16", offset: 50, doc: "<= 511" },
      { name: "reserved", type: "u32", offset: 52 },
      {
        name: "type",
        type: "bytes",
        offset: 56,
        count: 16,
        doc: "the descriptor's type word; empty when HOSTED",
      },
      { name: "name", type: "bytes", offset: 72, count: 512, doc: "file name as the descriptor writes it" },
    ],
  },
  {
    name: "rec_raw_info",
    size: 16,
    doc: "records.RAW_INFO",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "partition", type: "u32", offset: 12, doc: "partitionKinds.*" },
    ],
  },
  {
    name: "rec_snapshot",
    size: 4096,
    doc: "records.SNAPSHOT: internal snapshots [first, first+count) packed into data (snapshotEntry each, " +
      "then id_len id bytes and name_len name bytes, padded to 8; id/name cut like qemu: 127/255)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "first", type: "u32", offset: 12, doc: "table index of the first entry" },
      { name: "count", type: "u32", offset: 16, doc: ">= 1" },
      { name: "used", type: "u32", offset: 20, doc: "bytes of data the entries fill" },
      { name: "data", type: "bytes", offset: 24, count: 4072 },
    ],
  },
  {
    name: "snapshot_entry",
    size: 40,
    doc: "One snapshot inside rec_snapshot.data (8-aligned), its id and name bytes right after it",
    fields: [
      { name: "date_sec", type: "u32", offset: 0 },
      { name: "date_nsec", type: "u32", offset: 4 },
      { name: "vm_clock_nsec", type: "u64", offset: 8 },
      { name: "vm_state_size", type: "u64", offset: 16 },
      { name: "icount", type: "u64", offset: 24, doc: "UINT64_MAX when the image does not record it" },
      { name: "id_len", type: "u16", offset: 32, doc: "<= 127" },
      { name: "name_len", type: "u16", offset: 34, doc: "<= 255" },
      { name: "reserved", type: "u32", offset: 36 },
    ],
  },
  {
    name: "rec_bitmap",
    size: 1048,
    doc: "records.BITMAP: one persistent dirty bitmap (qcow2 format-specific info)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "flags", type: "u32", offset: 12, doc: "bit 0 in-use, bit 1 auto (qcow2 BME flags)" },
      { name: "granularity_bits", type: "u32", offset: 16 },
      { name: "name_len", type: "u32", offset: 20, doc: "<= 1023" },
      { name: "name", type: "bytes", offset: 24, count: 1024 },
    ],
  },
  {
    name: "rec_check",
    size: 104,
    doc: "records.CHECK: qemu's BdrvCheckResult plus the image-end offset",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      {
        name: "flags",
        type: "u32",
        offset: 12,
        doc: '0, or the errno of a check qemu ends early ("Check failed: <strerror>", exit 1)',
      },
      { name: "corruptions", type: "u64", offset: 16 },
      { name: "leaks", type: "u64", offset: 24 },
      { name: "check_errors", type: "u64", offset: 32 },
      { name: "corruptions_fixed", type: "u64", offset: 40 },
      { name: "leaks_fixed", type: "u64", offset: 48 },
      { name: "image_end_offset", type: "u64", offset: 56 },
      { name: "total_clusters", type: "u64", offset: 64 },
      { name: "allocated_clusters", type: "u64", offset: 72 },
      { name: "fragmented_clusters", type: "u64", offset: 80 },
      { name: "compressed_clusters", type: "u64", offset: 88 },
      { name: "reserved", type: "u64", offset: 96 },
    ],
  },
  {
    name: "rec_check_msg",
    size: 48,
    doc: "records.CHECK_MSG: one diagnostic line (stderr); text from lib/abi/check_messages.ts",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "code", type: "u32", offset: 8 },
      { name: "input", type: "u32", offset: 12 },
      { name: "a", type: "u64", offset: 16, count: 4 },
    ],
  },
  {
    name: "rec_map_extent",
    size: 48,
    doc: "records.MAP_EXTENT: one merged qemu-img map entry",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "start", type: "u64", offset: 8 },
      { name: "length", type: "u64", offset: 16 },
      { name: "offset", type: "u64", offset: 24, doc: "host offset, if OFFSET_VALID" },
      { name: "flags", type: "u32", offset: 32, doc: "mapFlags.*" },
      { name: "depth", type: "u32", offset: 36, doc: "chain depth; input index of the layer" },
      {
        name: "input",
        type: "u32",
        offset: 40,
        doc: "input index of the file `offset` points into (a vmdk extent's; else the layer's)",
      },
      { name: "reserved", type: "u32", offset: 44 },
    ],
  },
  {
    name: "rec_diff_run",
    size: 32,
    doc:
      "records.DIFF_RUN: overlay clusters [cluster, +count) unallocated in the overlay whose old and new backing contents differ",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "cluster", type: "u64", offset: 8 },
      { name: "count", type: "u64", offset: 16 },
      { name: "flags", type: "u32", offset: 24, doc: "diffFlags.*" },
      { name: "reserved", type: "u32", offset: 28 },
    ],
  },
  {
    name: "rec_data_run",
    size: 32,
    doc:
      "records.DATA_RUN: guest clusters [guest_cluster, +count) written uncompressed at host_offset, +cluster, ...",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "guest_cluster", type: "u64", offset: 8 },
      { name: "count", type: "u64", offset: 16 },
      { name: "host_offset", type: "u64", offset: 24 },
    ],
  },
  {
    name: "rec_compressed_run",
    size: 160,
    doc:
      "records.COMPRESSED_RUN: n consecutive guest clusters from guest_cluster, compressed and stored back to back from host_offset; len[i] bytes each",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "guest_cluster", type: "u64", offset: 8 },
      { name: "host_offset", type: "u64", offset: 16 },
      { name: "n", type: "u32", offset: 24, doc: "<= limits.COMPRESSED_RUN_MAX" },
      { name: "reserved", type: "u32", offset: 28 },
      { name: "len", type: "u32", offset: 32, count: 32 },
    ],
  },
  {
    name: "rec_convert_done",
    size: 48,
    doc: "records.CONVERT_DONE: the guest finished its range",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "data_end", type: "u64", offset: 8, doc: "first output byte after the data written" },
      { name: "clusters", type: "u64", offset: 16, doc: "qcow2 output: clusters stored uncompressed" },
      { name: "compressed", type: "u64", offset: 24, doc: "qcow2 output: clusters stored compressed" },
      { name: "bytes_written", type: "u64", offset: 32 },
      { name: "reserved", type: "u64", offset: 40 },
    ],
  },
  {
    name: "rec_compare",
    size: 32,
    doc: "records.COMPARE: how a comparison ended",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "result", type: "u32", offset: 8, doc: "compareResults.*" },
      { name: "image", type: "u32", offset: 12, doc: "0 = first image, 1 = second (failures)" },
      { name: "offset", type: "u64", offset: 16 },
      { name: "size_differs", type: "u32", offset: 24, doc: "1: print qemu's size-mismatch warning" },
      { name: "reserved2", type: "u32", offset: 28 },
    ],
  },
  {
    name: "rec_resize_pair",
    size: 24,
    doc: "records.RESIZE_L1 / RESIZE_REFTABLE: one non-zero table entry (raw value)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "index", type: "u64", offset: 8 },
      { name: "value", type: "u64", offset: 16 },
    ],
  },
  {
    name: "rec_resize_run",
    size: 32,
    doc:
      "records.RESIZE_REFRUN: clusters [start, start+count) have refcount `refcount` (non-zero), ascending",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "start", type: "u64", offset: 8 },
      { name: "count", type: "u64", offset: 16 },
      { name: "refcount", type: "u64", offset: 24 },
    ],
  },
  {
    name: "rec_repair_refcount",
    size: 32,
    doc: "records.REPAIR_REFCOUNT: check -r rewrites the refcount of `cluster` (to the reference count " +
      "its REFCOUNT_MISMATCH message gives); the entry lives in the refblock at file offset `refblock`",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "cluster", type: "u64", offset: 8 },
      { name: "refblock", type: "u64", offset: 16 },
      {
        name: "old_byte",
        type: "u32",
        offset: 24,
        doc: "refcount widths below 8 bits: the byte holding the entry, as read (others 0)",
      },
      { name: "reserved", type: "u32", offset: 28 },
    ],
  },
  {
    name: "rec_resize_range",
    size: 24,
    doc: "records.RESIZE_FREE (host clusters [start, start+count) each lose one reference) / " +
      "RESIZE_ZERO (file bytes [start, start+count) of L2 entries to clear)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "start", type: "u64", offset: 8 },
      { name: "count", type: "u64", offset: 16 },
    ],
  },
  {
    name: "rec_bitmap_dir",
    size: 1080,
    doc: "records.BITMAP_DIR: one bitmap directory entry as stored (the directory passed qemu's checks)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "index", type: "u32", offset: 8, doc: "position in the directory" },
      { name: "flags", type: "u32", offset: 12, doc: "BME flags: bit 0 in-use, bit 1 auto" },
      { name: "table_offset", type: "u64", offset: 16 },
      { name: "table_size", type: "u32", offset: 24, doc: "entries" },
      { name: "type", type: "u8", offset: 28 },
      { name: "granularity_bits", type: "u8", offset: 29 },
      { name: "name_len", type: "u16", offset: 30, doc: "<= 1023" },
      { name: "extra_size", type: "u32", offset: 32 },
      { name: "state", type: "u32", offset: 36, doc: "bitmapState.*" },
      { name: "dir_offset", type: "u64", offset: 40, doc: "the directory's offset (header extension)" },
      { name: "dir_size", type: "u64", offset: 48, doc: "the directory's size in bytes" },
      { name: "name", type: "bytes", offset: 56, count: 1024 },
    ],
  },
  {
    name: "rec_bitmap_entry",
    size: 32,
    doc: "records.BITMAP_ENTRY: table entry `index` of bitmap `bitmap` points at a data cluster (value); " +
      "nonzero = it has a set bit inside the bitmap",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "bitmap", type: "u32", offset: 8 },
      { name: "nonzero", type: "u32", offset: 12 },
      { name: "index", type: "u64", offset: 16 },
      { name: "value", type: "u64", offset: 24 },
    ],
  },
  {
    name: "rec_bitmap_cut",
    size: 32,
    doc: "records.BITMAP_CUT: the data cluster of table entry `index` of bitmap `bitmap` as qemu stores it " +
      "after hbitmap_truncate: its first `keep` bytes verbatim, then `byte` (when `partial`), then zeroes",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "bitmap", type: "u32", offset: 8 },
      { name: "byte", type: "u8", offset: 12, doc: "the boundary byte with the bits past the end cleared" },
      { name: "partial", type: "u8", offset: 13, doc: "1: the end falls inside byte `keep`" },
      { name: "pad", type: "bytes", offset: 14, count: 2 },
      { name: "index", type: "u64", offset: 16 },
      { name: "keep", type: "u64", offset: 24 },
    ],
  },
  {
    name: "rec_resize_summary",
    size: 56,
    doc: "records.RESIZE_SUMMARY: last record of a resize scan, with the count of each record kind",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "flags", type: "u32", offset: 8, doc: "resizeFlags.*" },
      { name: "reserved", type: "u32", offset: 12 },
      { name: "n_l1", type: "u64", offset: 16 },
      { name: "n_reftable", type: "u64", offset: 24 },
      { name: "n_runs", type: "u64", offset: 32 },
      { name: "n_free", type: "u64", offset: 40 },
      { name: "n_zero", type: "u64", offset: 48 },
    ],
  },
  {
    name: "rec_luks_info",
    size: 248,
    doc: "records.LUKS_INFO: a LUKS1 header after qemu's checks (algorithms as luks* enums)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "cipher_alg", type: "u32", offset: 12, doc: "luksCipherAlgs.*" },
      { name: "cipher_mode", type: "u32", offset: 16, doc: "luksCipherModes.*" },
      { name: "ivgen_alg", type: "u32", offset: 20, doc: "luksIvgens.*" },
      { name: "ivgen_hash", type: "u32", offset: 24, doc: "luksHashes.* (0: none)" },
      { name: "hash_alg", type: "u32", offset: 28, doc: "luksHashes.*" },
      { name: "payload_offset", type: "u64", offset: 32, doc: "bytes" },
      { name: "master_key_iters", type: "u32", offset: 40 },
      { name: "key_bytes", type: "u32", offset: 44 },
      { name: "slot_active", type: "u32", offset: 48, count: 8, doc: "1: enabled" },
      { name: "slot_iters", type: "u32", offset: 80, count: 8 },
      { name: "slot_stripes", type: "u32", offset: 112, count: 8 },
      { name: "slot_key_offset", type: "u64", offset: 144, count: 8, doc: "bytes" },
      { name: "uuid", type: "bytes", offset: 208, count: 40, doc: "as stored (qemu prints it up to a NUL)" },
    ],
  },
  {
    name: "rec_luks_written",
    size: 32,
    doc: "records.LUKS_WRITTEN: what luks_write wrote (no key bytes)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "master_key_iters", type: "u32", offset: 8 },
      { name: "slot_iters", type: "u32", offset: 12 },
      { name: "payload_offset", type: "u64", offset: 16, doc: "bytes" },
      { name: "entropy", type: "u32", offset: 24, doc: "luksEntropy.* bits" },
      { name: "reserved", type: "u32", offset: 28 },
    ],
  },
  {
    name: "rec_vmdk_stream",
    size: 88,
    doc: "records.VMDK_STREAM: one window of a streamOptimized VMDK stream decoded (guest/vmdk/stream.c)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "flags", type: "u64", offset: 8, doc: "vmdkStreamFlags.* (state carried to the next window)" },
      { name: "capacity", type: "u64", offset: 16, doc: "disk sectors (the header's)" },
      { name: "grain", type: "u64", offset: 24, doc: "grain sectors | grain table entries << 32" },
      { name: "restart", type: "u64", offset: 32, doc: "stream byte where the next window's parse starts" },
      { name: "frontier", type: "u64", offset: 40, doc: "disk byte below which the disk is final" },
      { name: "prev_end", type: "u64", offset: 48, doc: "disk byte where the last grain decoded ends" },
      { name: "grains", type: "u64", offset: 56, doc: "grains decoded in this run" },
      { name: "bytes_written", type: "u64", offset: 64, doc: "bytes written to the disk window file" },
      {
        name: "table_grains",
        type: "u64",
        offset: 72,
        doc: "FIRST with TABLES: the grains the header's grain tables reference",
      },
      {
        name: "head",
        type: "u64",
        offset: 80,
        doc: "FIRST: bytes before the first marker (the header region)",
      },
    ],
  },
  {
    name: "rec_luks_slots",
    size: 16,
    doc: "records.LUKS_SLOTS: bit i set: the passphrase opens active key slot i",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "opens", type: "u32", offset: 8 },
      { name: "reserved", type: "u32", offset: 12 },
    ],
  },
  {
    name: "rec_luks2_info",
    size: 128,
    doc:
      "records.LUKS2_INFO: a LUKS2 header and metadata after guest/luks2's checks (algorithms as luks* enums)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "cipher_alg", type: "u32", offset: 12, doc: "luksCipherAlgs.* (data segment)" },
      { name: "cipher_mode", type: "u32", offset: 16, doc: "luksCipherModes.*" },
      { name: "ivgen_alg", type: "u32", offset: 20, doc: "luksIvgens.*" },
      { name: "ivgen_hash", type: "u32", offset: 24, doc: "luksHashes.* (0: none)" },
      { name: "hash_alg", type: "u32", offset: 28, doc: "luksHashes.*: the volume key digest's PBKDF2 hash" },
      { name: "payload_offset", type: "u64", offset: 32, doc: "bytes: the data segment's offset" },
      { name: "payload_size", type: "u64", offset: 40, doc: "bytes; 0: dynamic (to the end of the file)" },
      { name: "digest_iters", type: "u32", offset: 48 },
      { name: "key_bytes", type: "u32", offset: 52 },
      { name: "sector_size", type: "u32", offset: 56 },
      { name: "n_slots", type: "u32", offset: 60, doc: "LUKS2_SLOT records that follow" },
      {
        name: "hdr_size",
        type: "u64",
        offset: 64,
        doc: "bytes of one header copy (binary header + JSON area)",
      },
      { name: "seqid", type: "u64", offset: 72 },
      {
        name: "max_argon2_kib",
        type: "u32",
        offset: 80,
        doc: "the most Argon2 memory a usable key slot asks for",
      },
      { name: "reserved", type: "u32", offset: 84 },
      { name: "uuid", type: "bytes", offset: 88, count: 40, doc: "as stored (printed up to a NUL)" },
    ],
  },
  {
    name: "rec_luks2_slot",
    size: 56,
    doc: "records.LUKS2_SLOT: one key slot of a LUKS2 header",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "input", type: "u32", offset: 8 },
      { name: "id", type: "u32", offset: 12, doc: "0..31" },
      { name: "kdf", type: "u32", offset: 16, doc: "luks2Kdfs.*" },
      { name: "iters", type: "u32", offset: 20, doc: "PBKDF2 iterations, or Argon2 passes (time cost)" },
      { name: "memory_kib", type: "u32", offset: 24, doc: "Argon2 memory (0 for PBKDF2)" },
      { name: "parallel", type: "u32", offset: 28, doc: "Argon2 lanes (0 for PBKDF2)" },
      { name: "stripes", type: "u32", offset: 32 },
      { name: "key_bytes", type: "u32", offset: 36 },
      { name: "area_offset", type: "u64", offset: 40, doc: "bytes" },
      { name: "area_size", type: "u64", offset: 48, doc: "bytes" },
    ],
  },
  // --- Host-only structs: TypeScript <-> VMM over FFI (never seen by a guest) ---
  {
    name: "vmm_config",
    size: 64,
    doc: "TS -> vmm_create()",
    fields: [
      { name: "abi_version", type: "u32", offset: 0 },
      {
        name: "flags",
        type: "u32",
        offset: 4,
        doc: "VMM_F_* (bit 0: no seccomp, tests only; bit 1: write-behind)",
      },
      { name: "ram_bytes", type: "u64", offset: 8 },
      { name: "timeout_ms", type: "u64", offset: 16 },
      { name: "output_cap", type: "u64", offset: 24 },
      { name: "result_cap", type: "u64", offset: 32 },
      { name: "log_cap", type: "u64", offset: 40 },
      { name: "reserved", type: "u64", offset: 48, count: 2 },
    ],
  },
  {
    name: "vmm_report",
    size: 96,
    doc: "vmm_run() -> TS: how the run ended",
    fields: [
      { name: "status", type: "u32", offset: 0, doc: "runStatus.*" },
      { name: "detail", type: "u32", offset: 4, doc: "hypercall nr / exit reason" },
      { name: "err", type: "i64", offset: 8, doc: "errno for HOST_ERROR" },
      { name: "guest_status", type: "u64", offset: 16 },
      { name: "result_len", type: "u64", offset: 24 },
      { name: "log_len", type: "u64", offset: 32 },
      { name: "bytes_read", type: "u64", offset: 40 },
      { name: "bytes_written", type: "u64", offset: 48 },
      { name: "exits", type: "u64", offset: 56 },
      { name: "elapsed_ns", type: "u64", offset: 64 },
      { name: "setup_ns", type: "u64", offset: 72 },
      {
        name: "reserved",
        type: "u64",
        offset: 80,
        count: 2,
        doc: "GUEST_FAULT: rip, rsp; HOST_ERROR of a WRITE/WRITEV: [0] = the output offset that failed",
      },
    ],
  },
  {
    name: "vmm_progress",
    size: 16,
    doc: "Live progress the VMM updates during a run; TS polls it",
    fields: [
      { name: "done", type: "u64", offset: 0 },
      { name: "total", type: "u64", offset: 8 },
    ],
  },
  {
    name: "vmm_input_info",
    size: 32,
    doc: "vmm_attach_input() -> TS: what was opened (for policy re-checks)",
    fields: [
      { name: "size", type: "u64", offset: 0 },
      { name: "dev", type: "u64", offset: 8 },
      { name: "ino", type: "u64", offset: 16 },
      { name: "index", type: "u32", offset: 24 },
      { name: "reserved", type: "u32", offset: 28 },
    ],
  },
  // --- resize scan records of vpc/vhdx (guest -> host), appended here to keep the tables' order ---
  {
    name: "rec_resize_meta",
    size: 88,
    doc: "records.RESIZE_META: last record of a vpc/vhdx/vmdk resize scan (every value from the image; " +
      "the host bounds each before use)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "format", type: "u32", offset: 8, doc: "formats.VPC / VHDX / VMDK" },
      { name: "flags", type: "u32", offset: 12, doc: "resizeMetaFlags.*" },
      {
        name: "subformat",
        type: "u32",
        offset: 16,
        doc: "vpc: the footer's disk type; vhdx: file parameter bits; vmdk: the first extent's kind " +
          "(1 VMDK4 sparse, 2 VMDK3, 3 flat; 0 none)",
      },
      {
        name: "bat_entry",
        type: "u32",
        offset: 20,
        doc: "vhdx: the BAT's entry index in the region table (VHDX_REGION_TABLE blob); vmdk: extents",
      },
      {
        name: "virtual_size",
        type: "u64",
        offset: 24,
        doc: "vpc: footer current_size; vhdx: virtual disk size item; vmdk: capacity in bytes",
      },
      { name: "block_size", type: "u64", offset: 32, doc: "vmdk: sectors per grain" },
      {
        name: "bat_offset",
        type: "u64",
        offset: 40,
        doc: "file offset of the BAT (vhdx: of its region; vmdk: of the grain directory)",
      },
      {
        name: "bat_capacity",
        type: "u64",
        offset: 48,
        doc: "vpc: max_table_entries; vhdx: BAT region bytes; vmdk: grain directory entries read",
      },
      {
        name: "sequence",
        type: "u64",
        offset: 56,
        doc: "vhdx: the active header's sequence number; vmdk: grain table entries per table",
      },
      {
        name: "item_offset",
        type: "u64",
        offset: 64,
        doc: "vhdx: file offset of the virtual disk size item",
      },
      {
        name: "alloc_end",
        type: "u64",
        offset: 72,
        doc: "vpc dynamic: 1 + the highest allocated BAT index (0: none); vhdx: 1 + the highest " +
          "payload block whose BAT state is FULLY_ or PARTIALLY_PRESENT (0: none); vmdk: 1 + the highest " +
          "grain whose table entry is neither 0 nor (zeroed-grain flag) 1",
      },
      { name: "n_bytes", type: "u64", offset: 80, doc: "bytes sent in RESIZE_BYTES records before this one" },
    ],
  },
  {
    name: "rec_resize_bytes",
    size: 1048,
    doc: "records.RESIZE_BYTES: bytes [offset, offset+length) of one metadata structure, as read",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "what", type: "u32", offset: 8, doc: "resizeBlobs.*" },
      { name: "length", type: "u32", offset: 12, doc: "<= 1024" },
      { name: "offset", type: "u64", offset: 16, doc: "within the structure" },
      { name: "bytes", type: "bytes", offset: 24, count: 1024 },
    ],
  },
  // --- inspect (ops.INSPECT) ---
  {
    name: "rec_inspect",
    size: 64,
    doc: "records.INSPECT: what inspect found, last record",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "format", type: "u32", offset: 8, doc: "inspectFormats.*: the content's format" },
      { name: "driver", type: "u32", offset: 12, doc: "formats.*: what qemu-img probes it as" },
      { name: "matches", type: "u32", offset: 16, doc: "1 << inspectFormats.* for every header found" },
      { name: "flags", type: "u32", offset: 20, doc: "inspectFlags.*" },
      { name: "virtual_size", type: "u64", offset: 24 },
      { name: "bytes_read", type: "u64", offset: 32, doc: "bytes of the input the guest read" },
      { name: "findings", type: "u32", offset: 40, doc: "INSPECT_FINDING records sent before this one" },
      { name: "reserved", type: "u32", offset: 44 },
      { name: "reserved2", type: "u64", offset: 48, count: 2 },
    ],
  },
  {
    name: "rec_inspect_finding",
    size: 296,
    doc: "records.INSPECT_FINDING: one reason the image is unsafe",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "code", type: "u32", offset: 8, doc: "inspectFindings.*" },
      { name: "text_len", type: "u32", offset: 12, doc: "<= 256" },
      { name: "a", type: "u64", offset: 16, count: 3 },
      { name: "text", type: "bytes", offset: 40, count: 256, doc: "a name or line from the image, as read" },
    ],
  },
  // --- snapshot scan records (guest -> host), ops.SNAPSHOT_SCAN ---
  {
    name: "rec_snap_entry",
    size: 80,
    doc: "records.SNAP_ENTRY: snapshot `index` as qemu's qcow2_read_snapshots derives it; its id, name " +
      "and unknown extra data follow in SNAP_BYTES records",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "index", type: "u32", offset: 8 },
      { name: "extra_size", type: "u32", offset: 12, doc: "extra_data_size as stored (<= 1024)" },
      { name: "l1_offset", type: "u64", offset: 16 },
      { name: "l1_size", type: "u32", offset: 24 },
      { name: "id_len", type: "u32", offset: 28, doc: "strlen of the id (cut at its first NUL)" },
      { name: "name_len", type: "u32", offset: 32, doc: "strlen of the name" },
      { name: "unknown_len", type: "u32", offset: 36, doc: "extra bytes past the 24 qemu knows" },
      { name: "date_sec", type: "u32", offset: 40 },
      { name: "date_nsec", type: "u32", offset: 44 },
      { name: "vm_clock_nsec", type: "u64", offset: 48 },
      {
        name: "vm_state_size",
        type: "u64",
        offset: 56,
        doc: "the large field when stored, else the 32-bit one",
      },
      { name: "disk_size", type: "u64", offset: 64, doc: "stored, else the image's size in whole sectors" },
      { name: "icount", type: "u64", offset: 72, doc: "stored, else UINT64_MAX" },
    ],
  },
  {
    name: "rec_snap_bytes",
    size: 280,
    doc:
      "records.SNAP_BYTES: bytes [offset, offset+length) of snapshot `index`'s id, name or unknown extra data",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "index", type: "u32", offset: 8 },
      { name: "what", type: "u16", offset: 12, doc: "snapBytesKinds.*" },
      { name: "length", type: "u16", offset: 14, doc: "<= 256" },
      { name: "offset", type: "u32", offset: 16 },
      { name: "reserved", type: "u32", offset: 20 },
      // 256: 65,536 short ids and names stay far below the scan's result
      // cap (2 KiB chunks took 277 MB), a 64 MiB table at most ~460,000 chunks
      { name: "bytes", type: "bytes", offset: 24, count: 256 },
    ],
  },
  {
    name: "rec_snap_l1",
    size: 32,
    doc:
      "records.SNAP_L1: one non-zero L1 entry (raw value) of the active table (table 0) or the snapshot's (1)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "table", type: "u32", offset: 8 },
      { name: "reserved", type: "u32", offset: 12 },
      { name: "index", type: "u64", offset: 16 },
      { name: "value", type: "u64", offset: 24 },
    ],
  },
  {
    name: "rec_snap_l2run",
    size: 56,
    doc:
      "records.SNAP_L2RUN: `count` non-zero L2 entries from file offset `entry` on, inside one L2 table; " +
      "entry k holds value + k * cluster size (kind DATA) or value (others), and `bitmap` (extended L2)",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "entry", type: "u64", offset: 8, doc: "file offset of the first entry" },
      { name: "value", type: "u64", offset: 16, doc: "raw first word of the first entry" },
      { name: "bitmap", type: "u64", offset: 24 },
      { name: "ref_first", type: "u64", offset: 32, doc: "first host cluster referenced (DATA, COMPRESSED)" },
      { name: "count", type: "u32", offset: 40 },
      { name: "kind", type: "u32", offset: 44, doc: "snapRunKinds.*" },
      { name: "ref_clusters", type: "u32", offset: 48, doc: "COMPRESSED: clusters the data spans; else 1" },
      { name: "reserved", type: "u32", offset: 52 },
    ],
  },
  {
    name: "rec_snap_summary",
    size: 72,
    doc: "records.SNAP_SUMMARY: last record of a snapshot scan, with the count of each record kind",
    fields: [
      { name: "hdr", type: "bytes", offset: 0, count: 8 },
      { name: "flags", type: "u32", offset: 8, doc: "snapSummaryFlags.*" },
      { name: "reserved", type: "u32", offset: 12 },
      { name: "n_entries", type: "u64", offset: 16 },
      { name: "n_bytes", type: "u64", offset: 24 },
      { name: "n_l1", type: "u64", offset: 32 },
      { name: "n_runs", type: "u64", offset: 40 },
      { name: "n_reftable", type: "u64", offset: 48 },
      { name: "n_refruns", type: "u64", offset: 56 },
      {
        name: "table_size",
        type: "u64",
        offset: 64,
        doc: "bytes the snapshot table fills (qemu's snapshots_size)",
      },
    ],
  },
];

/** Record struct for each record type (the generic decoder checks sizes). */
export const recordStructs: Record<number, string> = {
  [records.ERROR]: "rec_error",
  [records.LUKS_WRITTEN]: "rec_luks_written",
  [records.LUKS_SLOTS]: "rec_luks_slots",
  [records.VMDK_STREAM]: "rec_vmdk_stream",
  [records.PROBE]: "rec_probe",
  [records.QCOW2_INFO]: "rec_qcow2_info",
  [records.NAME]: "rec_name",
  [records.CHECK]: "rec_check",
  [records.CHECK_MSG]: "rec_check_msg",
  [records.MAP_EXTENT]: "rec_map_extent",
  [records.RAW_INFO]: "rec_raw_info",
  [records.SNAPSHOT]: "rec_snapshot",
  [records.BITMAP]: "rec_bitmap",
  [records.RESIZE_L1]: "rec_resize_pair",
  [records.RESIZE_REFTABLE]: "rec_resize_pair",
  [records.RESIZE_REFRUN]: "rec_resize_run",
  [records.RESIZE_FREE]: "rec_resize_range",
  [records.RESIZE_ZERO]: "rec_resize_range",
  [records.RESIZE_SUMMARY]: "rec_resize_summary",
  [records.DATA_RUN]: "rec_data_run",
  [records.ZERO_RUN]: "rec_data_run",
  [records.SUBCLUSTERS]: "rec_data_run",
  [records.COMPRESSED_RUN]: "rec_compressed_run",
  [records.CONVERT_DONE]: "rec_convert_done",
  [records.COMPARE]: "rec_compare",
  [records.IMAGE_INFO]: "rec_image_info",
  [records.VMDK_EXTENT]: "rec_vmdk_extent",
  [records.REPAIR_REFCOUNT]: "rec_repair_refcount",
  [records.REPAIR_OFLAG]: "rec_resize_pair",
  [records.REPAIR_REFRUN]: "rec_resize_run",
  [records.REPAIR_OLDMETA]: "rec_resize_run",
  [records.REPAIR_REBUILD]: "rec_resize_pair",
  [records.REPAIR_L2ZERO]: "rec_resize_pair",
  [records.RESIZE_META]: "rec_resize_meta",
  [records.RESIZE_BYTES]: "rec_resize_bytes",
  [records.LUKS_INFO]: "rec_luks_info",
  [records.LUKS2_INFO]: "rec_luks2_info",
  [records.LUKS2_SLOT]: "rec_luks2_slot",
  [records.DIFF_RUN]: "rec_diff_run",
  [records.BITMAP_DIR]: "rec_bitmap_dir",
  [records.BITMAP_ENTRY]: "rec_bitmap_entry",
  [records.BITMAP_CUT]: "rec_bitmap_cut",
  [records.AMEND_ZERO]: "rec_resize_pair",
  [records.AMEND_SNAP]: "rec_resize_run",
  [records.AMEND_COUNT]: "rec_resize_pair",
  [records.AMEND_SNAP_L1]: "rec_resize_pair",
  [records.COMPRESSED_L2]: "rec_resize_run",
  [records.INSPECT]: "rec_inspect",
  [records.INSPECT_FINDING]: "rec_inspect_finding",
  [records.SNAP_ENTRY]: "rec_snap_entry",
  [records.SNAP_BYTES]: "rec_snap_bytes",
  [records.SNAP_L1]: "rec_snap_l1",
  [records.SNAP_L2RUN]: "rec_snap_l2run",
  [records.SNAP_SUMMARY]: "rec_snap_summary",
  [records.QCOW2_CRYPT_HDR]: "rec_qcow2_crypt_hdr",
};

/** VMM attach flags. */
export const attachFlags = { NOFOLLOW: 1, WRITABLE: 2, CREATE: 4 } as const;
/**
 * vmm_config.flags. WRITE_BEHIND: after each output write the VMM starts the
 * kernel's writeback of that range (sync_file_range SYNC_FILE_RANGE_WRITE),
 * for runs whose output the host fdatasyncs right after, so the flush
 * overlaps the copy instead of following it.
 */
export const vmmFlags = { NO_SECCOMP: 1, WRITE_BEHIND: 2 } as const;

/** RESIZE_META.flags (guest/vpc/resize_scan.c, guest/vhdx/resize_scan.c). */
export const resizeMetaFlags = {
  /** vpc: the footer was read at offset 0 and the dynamic header and BAT with it. */
  VPC_DYNAMIC: 1,
  /** vhdx: the active header's log GUID is zero (no log to replay). */
  VHDX_LOG_GUID_ZERO: 2,
  /** vhdx: the active header is the second (at 128 KiB). */
  VHDX_HEADER2: 4,
  /** vmdk: opened from a text descriptor (extent files), not a sparse file. */
  VMDK_DESCRIPTOR: 8,
  /** vmdk: the first extent is the image file itself (a sparse header at offset 0). */
  VMDK_HOSTED: 16,
  /** vmdk: compressed grains (streamOptimized). */
  VMDK_COMPRESSED: 32,
  /** vmdk: the header's grain directory offset is GD_AT_END (read from the footer). */
  VMDK_GD_AT_END: 64,
  /** vmdk: the descriptor names a parent (parentFileNameHint). */
  VMDK_PARENT: 128,
  /** vmdk: the header's zeroed-grain flag (grain table entry 1 reads as zeroes). */
  VMDK_ZERO_GRAIN: 256,
  /** vmdk: the last grain table has data entries past the capacity's last grain (qemu never reads them). */
  VMDK_TAIL_DIRTY: 512,
} as const;

/** RESIZE_BYTES.what: which metadata structure the bytes are part of. */
export const resizeBlobs = {
  VPC_FOOTER: 1,
  VPC_DYNHEADER: 2,
  VHDX_HEADER: 3,
  VHDX_REGION_TABLE: 4,
  /** vmdk: the sparse header's sector (offset 0) as read. */
  VMDK_HEADER: 5,
  /** vmdk: the embedded descriptor's sectors (at most 20), zero-padded to 10 KiB. */
  VMDK_DESCRIPTOR: 6,
} as const;

/** Enum groups emitted into the C header as #defines with these prefixes. */
export const enums: Record<string, Record<string, number>> = {
  HC_: hypercalls,
  SEEK_KIND_: seekKinds,
  GUEST_: guestStatus,
  OP_: ops,
  CONV_: convertFlags,
  CMP_: compareResults,
  INFO_F_: infoFlags,
  MAPOP_F_: mapOpFlags,
  CHECKOP_F_: checkOpFlags,
  FMT_: formats,
  RUN_: runStatus,
  REC_: records,
  NAME_: nameKinds,
  MAP_: mapFlags,
  PART_: partitionKinds,
  IMGF_: imageInfoFlags,
  SUBFMT_: imageSubformats,
  VMDKX_: vmdkExtentFlags,
  SIG_: signatures,
  Q2F_: qcow2InfoFlags,
  RESIZE_F_: resizeFlags,
  DIFF_F_: diffFlags,
  BMS_: bitmapState,
  GERR_: guestErrors,
  ATTACH_: attachFlags,
  VMM_F_: vmmFlags,
  LAYOUT_: layout,
  LIMIT_: limits,
  RESIZE_M_: resizeMetaFlags,
  RESIZE_BLOB_: resizeBlobs,
  LUKS_CIPHER_: luksCipherAlgs,
  LUKS_MODE_: luksCipherModes,
  LUKS_IVGEN_: luksIvgens,
  LUKS_HASH_: luksHashes,
  LUKS_WRITE_F_: luksWriteFlags,
  QCOW2_ENC_F_: qcow2EncryptFlags,
  LUKS_AMEND_: luksAmendActions,
  LUKS_ENTROPY_: luksEntropy,
  VMDKS_: vmdkStreamFlags,
  LUKS2_KDF_: luks2Kdfs,
  INSPOP_F_: inspectOpFlags,
  INSPFMT_: inspectFormats,
  INSPF_: inspectFlags,
  INSP_: inspectFindings,
  SNAPSCAN_F_: snapScanFlags,
  SNAPSUM_F_: snapSummaryFlags,
  SNAPBYTES_: snapBytesKinds,
  SNAPRUN_: snapRunKinds,
};
