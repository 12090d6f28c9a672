// qemu-img measure -O qcow2 (block/qcow2.c qcow2_measure and
// qcow2_calc_prealloc_size): the size a qcow2 image needs for a virtual
// size (fully allocated) and for the data an input image holds (required).
// Pure: the input's allocation comes in as extents the guest reported.
import { optGet, type ParsedOpts } from "../options.ts";
import { alignUp, fail, ok, type PlanResult } from "../plan.ts";
import { MAX_L1_BYTES, refcountMetadataSize } from "./encode.ts";

export type { AllocationExtent, MeasureInput, MeasureResult } from "../types.ts";
import type { MeasureHost, MeasureInput, MeasureResult } from "../types.ts";
import { qcow2EncryptOptions } from "./create_encrypt.ts";
import { luksCheck, luksKeyBytes, luksPayloadOffset } from "../luks/create_options.ts";

/** qcow2_calc_prealloc_size: every byte of a fully allocated image with its metadata. */
export function qcow2PreallocSize(
  totalSize: bigint,
  clusterSize: bigint,
  refcountBits: number,
  extendedL2: boolean,
): bigint {
  const aligned = alignUp(totalSize, clusterSize);
  const l2e = extendedL2 ? 16n : 8n;
  let meta = clusterSize; // header
  const nl2e = alignUp(aligned / clusterSize, clusterSize / l2e);
  meta += nl2e * l2e;
  const nl1e = alignUp((nl2e * l2e) / clusterSize, clusterSize / 8n);
  meta += nl1e * 8n;
  meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountBits);
  return meta + aligned;
}

/**
 * Bytes of guest data a copy must store: zero runs are skipped, allocated
 * data rounds out to whole clusters (the loop in qcow2_measure, where each
 * data run moves the cursor to the end of its last cluster).
 */
export function requiredData(input: MeasureInput, clusterSize: bigint): bigint {
  let required = 0n;
  let k = 0;
  // Seed 000: only [0, virtualSize) is walked. An image may carry L2
  // entries past the virtual size; they mean nothing to the guest, and
  // qemu's block-status loop never reaches them, so they are not counted
  // (required data never exceeds the virtual size rounded to clusters).
  for (let offset = 0n; offset < input.virtualSize;) {
    while (k < input.extents.length && input.extents[k].start + input.extents[k].length <= offset) k++;
    const e = input.extents[k];
    // The extents tile the image; a gap would be a caller bug, so stop.
    if (!e || e.start > offset) break;
    let pnum = e.start + e.length - offset;
    if (!e.zero && e.data && e.allocated) {
      pnum = alignUp(offset + pnum, clusterSize) - offset;
      required += (offset % clusterSize) + pnum;
    }
    offset += pnum;
  }
  return required;
}

/** qcow2_measure with the create options already parsed (-o). */
/**
 * qcow2_get_persistent_dirty_bitmap_size: each bitmap fully allocated in
 * clusters of the target, its table, and the directory entries, for a source
 * of `length` bytes.
 */
export function bitmapsSize(
  bitmaps: { granularity: bigint; nameLength: number }[],
  length: bigint,
  clusterSize: bigint,
): bigint {
  let size = 0n;
  let dir = 0n;
  for (const b of bitmaps) {
    const bits = (length + b.granularity - 1n) / b.granularity;
    const bytes = alignUp(bits, 64n) / 8n;
    const clusters = (bytes + clusterSize - 1n) / clusterSize;
    size += clusters * clusterSize + alignUp(clusters * 8n, clusterSize);
    dir += alignUp(24n + BigInt(b.nameLength), 8n);
  }
  return size + alignUp(dir, clusterSize);
}

/**
 * The LUKS header's length as qcrypto_block_calculate_payload_offset finds it: a dry-run
 * create, so the LUKS members are parsed, the key-secret must be named and exist, and the
 * algorithms must be usable (qemu's dry run also calibrates PBKDF2; the length does not
 * depend on it).
 */
function luksHeaderLength(o: ParsedOpts, host?: MeasureHost): PlanResult<bigint> {
  const e = qcow2EncryptOptions(o);
  if (!e.ok) return fail(e.error.kind, e.error.message);
  if (e.value?.format !== "luks") return fail("invalid_option", "Parameter 'encrypt.format' is missing");
  const { keySecret, luks } = e.value;
  if (keySecret === undefined) {
    return fail("invalid_option", "Parameter 'encrypt.key-secret' is required for cipher");
  }
  try {
    host?.passphrase(keySecret);
  } catch (err) {
    const lines = (err as { lines?: string[] }).lines;
    if (lines) return fail("invalid_option", lines[0]);
    throw err;
  }
  const why = luksCheck(luks);
  if (why) return fail("invalid_option", why);
  return ok(luksPayloadOffset(luksKeyBytes(luks)));
}

export function qcow2Measure(
  o: ParsedOpts,
  input?: MeasureInput,
  host?: MeasureHost,
): PlanResult<MeasureResult> {
  const extendedL2 = optGet(o, "extended_l2")?.bool ?? false;
  const cs = optGet(o, "cluster_size")?.num ?? 65536n;
  if (cs < 512n || cs > 2097152n || (cs & (cs - 1n)) !== 0n) {
    return fail("invalid_option", "Cluster size must be a power of two between 512 and 2048k");
  }
  if (extendedL2 && cs < 16384n) {
    return fail(
      "invalid_option",
      "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
    );
  }
  const compat = optGet(o, "compat")?.str;
  let version = 3;
  if (compat === "0.10") version = 2;
  else if (compat !== undefined && compat !== "1.1") {
    return fail("invalid_option", `Invalid compatibility level: '${compat}'`);
  }
  const bits = optGet(o, "refcount_bits")?.num ?? 16n;
  if (bits > 64n || bits === 0n || (bits & (bits - 1n)) !== 0n) {
    return fail("invalid_option", "Refcount width must be a power of two and may not exceed 64 bits");
  }
  if (version < 3 && bits !== 16n) {
    return fail(
      "invalid_option",
      "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
    );
  }
  const prealloc = optGet(o, "preallocation")?.str;
  if (prealloc !== undefined && !["off", "metadata", "falloc", "full"].includes(prealloc)) {
    return fail("invalid_option", `invalid parameter value: ${prealloc}`);
  }
  const hasBacking = optGet(o, "backing_file") !== undefined;
  // qemu takes only encrypt.format=luks into account (the LUKS header's clusters); any other
  // value, and the `encryption` alias alone, measure as an unencrypted image.
  let luksPayload = 0n;
  if (optGet(o, "encrypt.format")?.str === "luks") {
    const header = luksHeaderLength(o, host);
    if (!header.ok) return header;
    luksPayload = alignUp(header.value, cs);
  }

  let virtualSize = alignUp(optGet(o, "size")?.num ?? 0n, cs);
  const l2e = extendedL2 ? 16n : 8n;
  const l2Tables = (virtualSize / cs + cs / l2e - 1n) / (cs / l2e);
  if (l2Tables * 8n > MAX_L1_BYTES) {
    return fail("invalid_size", "The image size is too large (try using a larger cluster size)");
  }
  let required = 0n;
  if (input) {
    virtualSize = alignUp(input.virtualSize, cs);
    required = hasBacking ? virtualSize : requiredData(input, cs);
  }
  if (prealloc === "full" || prealloc === "falloc") required = virtualSize;
  const fullyAllocated = qcow2PreallocSize(virtualSize, cs, Number(bits), extendedL2);
  const result: MeasureResult = {
    required: fullyAllocated - virtualSize + required + luksPayload,
    fullyAllocated: fullyAllocated + luksPayload,
  };
  if (version >= 3 && input?.supportsBitmaps) {
    result.bitmaps = bitmapsSize(input.bitmaps ?? [], input.virtualSize, cs);
  }
  return ok(result);
}
