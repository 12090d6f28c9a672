// qemu-img amend for qcow2: the option list it parses `-o` against
// (qcow2_amend_opts), and qcow2_amend_options' decisions in its order:
// each option's checks as the list names them, then the upgrade, the
// backing-file check, lazy refcounts, the size, the downgrade. The result
// is what to carry out, in qemu's order: a rewrite of the header cluster (an
// upgrade to compat=1.1, lazy_refcounts on or off: rebase_plan.ts's
// planHeaderRewrite), then a new size (qcow2_co_truncate: the resize
// planner, resize_plan.ts), then a downgrade (downgrade_plan.ts, which needs
// the guest's scan); a refcount width change (refcount_order_plan.ts) comes
// right after the header rewrite. Encryption keys are refused before
// anything is written. Pure.
import { type OptDesc, optGet, type ParsedOpts, parseOptions } from "../options.ts";
import { fail, type FilePlan } from "../plan.ts";
import { QCOW2_CREATE_OPTS } from "./options.ts";
import type { Qcow2Model } from "./model.ts";
import { type BitmapsExt, planHeaderRewrite } from "./rebase_plan.ts";
import { BDRV_MAX_LENGTH } from "../raw/resize_plan.ts";

const INT64_MAX = (1n << 63n) - 1n;

/** qcow2_amend_opts: the common options, then LUKS key-slot amendment. */
export const QCOW2_AMEND_OPTS: OptDesc[] = [
  ...[
    "size",
    "compat",
    "backing_file",
    "backing_fmt",
    "data_file",
    "data_file_raw",
    "lazy_refcounts",
    "refcount_bits",
  ]
    .map((n) => QCOW2_CREATE_OPTS.find((d) => d.name === n)!),
  {
    name: "encrypt.state",
    type: "string" as const,
    help: "Select new state of affected keyslots (active/inactive)",
  },
  { name: "encrypt.keyslot", type: "number" as const, help: "Select a single keyslot to modify explicitly" },
  {
    name: "encrypt.old-secret",
    type: "string" as const,
    help: "Select all keyslots that match this password",
  },
  {
    name: "encrypt.new-secret",
    type: "string" as const,
    help: "New secret to set in the matching keyslots. Empty string to erase",
  },
  { name: "encrypt.iter-time", type: "number" as const, help: "Time to spend in PBKDF in milliseconds" },
].map((d) => ({ ...d, def: undefined }));

export type AmendResult =
  /** qemu's error lines (the first is error_report's, the rest hints). */
  | { kind: "error"; lines: string[] }
  /** instar does not carry this change out; nothing is written. */
  | { kind: "refuse"; why: string }
  /** The header rewrite (none: nothing changes), then a truncate to newSize, then the downgrade. */
  | {
    kind: "write";
    plan?: FilePlan;
    upgrade?: boolean;
    /** qcow2_change_refcount_order to this order, after the header rewrite. */
    refcountOrder?: number;
    newSize?: bigint;
    downgrade?: boolean;
  };

/** Parses `-o` as img_amend does (the amend list, then the create list for the hint). */
export function parseAmendOptions(options: string) {
  const r = parseOptions(options, QCOW2_AMEND_OPTS);
  if (r.ok) return r;
  const lines = r.error.message.split("\n");
  const withCreate = parseOptions(options, [...QCOW2_AMEND_OPTS, ...QCOW2_CREATE_OPTS]);
  // error_append_hint: printed after the message, without the program name
  if (withCreate.ok) lines.push("This option is only supported for image creation");
  return fail("invalid_option", lines.join("\n"));
}

/** qcow2_amend_options over options parseAmendOptions accepted. */
export function planQcow2Amend(
  m: Qcow2Model,
  o: ParsedOpts,
  fileSize: bigint,
  /** The bitmaps extension a header rewrite carries (lib/formats/qcow2/rebase_plan.ts). */
  bitmaps?: BitmapsExt,
): AmendResult {
  const err = (...lines: string[]): AmendResult => ({ kind: "error", lines });
  let version = m.version, lazy = m.lazyRefcounts, bits = m.refcountBits;
  let size: bigint | undefined, backing: string | undefined, backingFmt: string | undefined;
  let encrypt = false;
  for (const d of QCOW2_AMEND_OPTS) {
    const v = optGet(o, d.name);
    if (!v) continue;
    switch (d.name) {
      case "compat":
        if (v.str === "0.10" || v.str === "v2") version = 2;
        else if (v.str === "1.1" || v.str === "v3") version = 3;
        else return err(`Unknown compatibility level ${v.str}`);
        break;
      case "size":
        size = v.num;
        break;
      case "backing_file":
        backing = v.str;
        break;
      case "backing_fmt":
        backingFmt = v.str;
        break;
      case "data_file":
        if (m.dataFile === undefined && !m.hasDataFileBit) {
          return err("data-file can only be set for images that use an external data file");
        }
        break;
      case "data_file_raw":
        if (v.bool && !m.dataFileRaw) return err("data-file-raw cannot be set on existing images");
        break;
      case "lazy_refcounts":
        lazy = v.bool!;
        break;
      case "refcount_bits": {
        const n = v.num!;
        if (n <= 0n || n > 64n || (n & (n - 1n)) !== 0n) {
          return err("Refcount width must be a power of two and may not exceed 64 bits");
        }
        bits = Number(n);
        break;
      }
      default: // encrypt.*
        if (m.layout.cryptMethod === 0) return err("Can't amend encryption options - encryption not present");
        encrypt = true;
    }
  }
  if (encrypt) return { kind: "refuse", why: "instar does not amend encryption key slots yet" };
  if (bits !== m.refcountBits) {
    if (version < 3 && bits !== 16) {
      return err(
        "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
      );
    }
  }
  const refcountOrder = bits !== m.refcountBits ? Math.log2(bits) : undefined;
  const dec = new TextDecoder();
  const curBacking = m.backingFile ? dec.decode(m.backingFile) : undefined;
  if (
    (backing !== undefined || backingFmt !== undefined) &&
    (backing !== curBacking || backingFmt !== m.backingFormat)
  ) {
    return err("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
  }
  if (lazy && !m.lazyRefcounts && version < 3) {
    return err(
      "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
    );
  }
  // blk_truncate's checks, then qcow2_co_truncate's first ones, whatever the new size is.
  let newSize: bigint | undefined;
  if (size !== undefined && size !== 0n) {
    if (size > INT64_MAX) return err("Image size cannot be negative");
    if (size > BDRV_MAX_LENGTH) return err(`offset(${size}) exceeds maximum(${BDRV_MAX_LENGTH})`);
    if (size % 512n !== 0n) return err("The new size must be a multiple of 512");
    if (m.version < 3 && m.nbSnapshots > 0) return err("Can't resize a v2 image which has snapshots");
    if (size !== m.virtualSize) newSize = size;
  }
  const downgrade = version < m.version ? true : undefined;
  // The upgrade and lazy refcounts rewrite the header before the truncate;
  // the downgrade rewrites it after.
  const headerVersion = version > m.version ? version : m.version;
  if (headerVersion === m.version && lazy === m.lazyRefcounts) {
    return { kind: "write", refcountOrder, newSize, downgrade };
  }
  const plan = planHeaderRewrite(m, {
    version: headerVersion,
    lazyRefcounts: lazy,
    backingFile: m.backingFile,
    backingFormat: m.backingFormat,
    bitmaps,
  }, fileSize);
  if (!plan.ok) {
    return plan.error.kind === "unsupported"
      ? { kind: "refuse", why: plan.error.message }
      : err(`Failed to update the image header: ${plan.error.message}`);
  }
  return {
    kind: "write",
    plan: plan.value,
    upgrade: version > m.version || undefined,
    refcountOrder,
    newSize,
    downgrade,
  };
}
