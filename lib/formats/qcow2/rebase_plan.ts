// Plans qemu-img rebase -u of a qcow2 image (and amend's header changes,
// lib/formats/qcow2/amend.ts): qcow2_change_backing_file sets
// the new backing name and format and qcow2_update_header rewrites the whole
// header cluster (the header fields, then the extensions in qemu's order,
// then the backing file name). The header is rebuilt from the guest's
// QCOW2_INFO (lib/formats/qcow2/model.ts) with encodeHeader, the encoder
// create uses; images whose header holds what that encoder does not write
// (unknown extensions, an external data file, AES encryption, autoclear bits)
// are refused here rather than rewritten without them. Persistent bitmaps
// are carried: the caller reads the bitmaps extension (nb, directory offset
// and size: the bitmap scan) and it is written back as it was, after the
// feature table as qcow2_update_header orders it; the bitmaps themselves are
// not touched (qemu-img stores them anew on its read-write close, a layout
// difference only). Pure.
//
// Crash safety: one write of the header cluster, as qemu does; a torn write
// would tear qemu's too.
import { fail, type FilePlan, ok, type PlanResult } from "../plan.ts";
import { encodeHeader } from "./encode.ts";
import type { Qcow2Model } from "./model.ts";

/** qcow2_change_backing_file's limit on the name (bytes, as qemu's strlen). */
const BACKING_NAME_MAX = 1023;

export interface RebaseRequest {
  /** The new backing file name; undefined or empty removes the backing file. */
  backingFile?: Uint8Array;
  backingFormat?: string;
}

/** The bitmaps header extension as the image holds it (lib/formats/qcow2/bitmap_scan.ts). */
export interface BitmapsExt {
  nb: number;
  dirSize: bigint;
  dirOffset: bigint;
}

/** Whether the image's bitmaps can be carried through a header rewrite (a valid extension). */
export function bitmapsCarriable(m: Qcow2Model): boolean {
  return m.hasBitmapsExt && m.nbBitmaps > 0 && (m.layout.autoclearFeatures & 1n) !== 0n &&
    !(m.bitmaps ?? []).some((b) => b.inUse);
}

/**
 * Why instar does not rewrite this header (undefined: it does). `bitmaps`:
 * the caller carries the image's bitmaps extension (bitmapsCarriable). `crypt`: the caller
 * (rebase -u) has unlocked a LUKS-encrypted image, whose crypto header extension is written back.
 */
export function rebaseRefusal(m: Qcow2Model, bitmaps = false, crypt = false): string | undefined {
  const l = m.layout;
  if (l.unknownExtension) return "the header has an extension instar does not know";
  // LUKS: the crypto header extension is written back as it was (AES images are not rewritten).
  if (l.cryptMethod !== 0 && !(crypt && l.cryptMethod === 2 && l.cryptHeader)) {
    return "instar does not rewrite the header of an encrypted image";
  }
  if (m.dataFile !== undefined || m.hasDataFileBit) {
    return "instar does not rewrite the header of an image with a data file";
  }
  if ((m.hasBitmapsExt || m.nbBitmaps > 0) && !(bitmaps && bitmapsCarriable(m))) {
    return "instar does not rewrite the header of an image with bitmaps";
  }
  if ((l.autoclearFeatures & (bitmaps ? ~1n : ~0n)) !== 0n) {
    return "instar does not rewrite a header with autoclear feature bits set";
  }
  if ((l.compatibleFeatures & ~1n) !== 0n) {
    return "instar does not rewrite a header with unknown compatible feature bits";
  }
  if (m.dirty) return "the image is dirty (qemu would repair it on opening it read-write)";
  return undefined;
}

/** The new header cluster, or qemu's error for the change (its errno text). */
export function planQcow2Rebase(
  m: Qcow2Model,
  req: RebaseRequest,
  fileSize: bigint,
  bitmaps?: BitmapsExt,
): PlanResult<FilePlan> {
  const name = req.backingFile !== undefined && req.backingFile.length > 0 ? req.backingFile : undefined;
  if (name && name.length > BACKING_NAME_MAX) return fail("invalid_option", "Invalid argument");
  if (!name && req.backingFormat !== undefined) return fail("invalid_option", "Invalid argument");
  return planHeaderRewrite(m, {
    version: m.version,
    lazyRefcounts: m.lazyRefcounts,
    backingFile: name,
    backingFormat: name ? req.backingFormat : undefined,
    bitmaps,
    crypt: true,
  }, fileSize);
}

/** What a header rewrite may change (qcow2_update_header after rebase or amend). */
export interface HeaderChange {
  version: 2 | 3;
  lazyRefcounts: boolean;
  backingFile?: Uint8Array;
  backingFormat?: string;
  /** The bitmaps extension to keep (see the module comment). */
  bitmaps?: BitmapsExt;
  /** Keep a LUKS image's encryption (rebase -u only: it opened the image with its key). */
  crypt?: boolean;
}

/** The whole header cluster qcow2_update_header writes for `m` with `c` applied. */
export function planHeaderRewrite(m: Qcow2Model, c: HeaderChange, fileSize: bigint): PlanResult<FilePlan> {
  const why = rebaseRefusal(m, c.bitmaps !== undefined, c.crypt);
  if (why) return fail("unsupported", why);
  if (c.bitmaps && (c.bitmaps.nb !== m.nbBitmaps || c.version !== 3)) {
    return fail("unsupported", "the bitmaps extension does not match the image's header");
  }
  const l = m.layout;
  const header = encodeHeader({
    version: c.version,
    clusterBits: m.clusterBits,
    virtualSize: m.virtualSize,
    l1Size: l.l1Size,
    l1TableOffset: l.l1TableOffset,
    refcountTableOffset: l.refcountTableOffset,
    refcountTableClusters: l.refcountTableClusters,
    refcountOrder: Math.log2(m.refcountBits),
    compressionType: m.compressionType,
    extendedL2: m.extendedL2,
    lazyRefcounts: c.lazyRefcounts,
    extraIncompatible: m.corrupt ? 2n : 0n,
    nbSnapshots: m.nbSnapshots,
    snapshotsOffset: l.snapshotsOffset,
    backingFile: c.backingFile,
    backingFormat: c.backingFile ? c.backingFormat : undefined,
    bitmaps: c.bitmaps,
    autoclear: c.bitmaps ? 1n : 0n,
    cryptMethod: l.cryptMethod,
    cryptHeader: l.cryptHeader,
  });
  if (!header.ok) return header;
  if (fileSize < BigInt(header.value.length)) {
    return fail("invalid_size", "the file is shorter than its header cluster");
  }
  return ok({ patches: [{ kind: "write", offset: 0n, bytes: header.value }], fileSize });
}
