// instar measure [-O raw|qcow2] [-o ...] [--output human|json] (--size SIZE | [-f fmt] INPUT)
// qemu-img's img_measure. With --size the numbers are pure arithmetic
// (lib/formats/*/measure.ts). With INPUT the image is opened through the
// sandbox and the map guest reports its allocation (bdrv_block_status_above
// semantics); those extents are folded into qcow2_measure's summary here.
import { formats, mapFlags, mapOpFlags, ops, records } from "../abi/spec.ts";
import { getopt } from "./getopt.ts";
import { CliError } from "./messages.ts";
import {
  addOptionList,
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
  readLock,
} from "./common.ts";
import { cvtnum } from "./options.ts";
import {
  chainInputs,
  openChain,
  type OpenedImage,
  OpenError,
  openFailure,
  openImage,
  unlockForRead,
} from "./image.ts";
import { imageRef } from "./image_ref.ts";
import { makePolicy } from "../chain/policy.ts";
import { loadSnapshot, parseSnapshotParam, type SnapshotParam } from "./snapshot_param.ts";
import { runGuest } from "../vmm/guest.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import { optSetNumber, parseOptions } from "../formats/options.ts";
import { driverFor } from "../formats/mod.ts";
import type { AllocationExtent, MeasureInput, MeasureResult } from "../formats/types.ts";
import { QDict, toJsonPretty } from "../output/qdict.ts";
import { MAX_SPOOL_LONG, openStdin, parseMaxSpool } from "./stdin_image.ts";
import { DEFAULT_MAX_SPOOL } from "../host/stdio_stream.ts";

const ALL_FLAGS = mapFlags.DATA | mapFlags.ZERO | mapFlags.PRESENT | mapFlags.OFFSET_VALID |
  mapFlags.COMPRESSED;

/** The input's allocation from the map guest, checked to tile [0, virtual size). */
async function allocationOf(
  chain: OpenedImage[],
  precise: boolean,
  snapshot = 0,
): Promise<AllocationExtent[]> {
  const size = chain[0].virtualSize;
  if (size === 0n) return [];
  // qemu's crypto driver has no block status: the generic one says all data, allocated.
  if (chain[0].formatCode === formats.LUKS) {
    return [{ start: 0n, length: size, data: true, zero: false, allocated: true }];
  }
  let result;
  try {
    result = await runGuest({
      op: "map",
      opCode: ops.MAP,
      inputs: chainInputs(chain).map((x, i) => (i === 0 ? { ...x, snapshot } : x)),
      args: [0n, (1n << 64n) - 1n],
      flags: precise ? mapOpFlags.PRECISE : 0,
    });
  } catch (e) {
    throw new CliError([
      `Unable to get block status: sandbox failure: ${e instanceof Error ? e.message : String(e)}`,
    ]);
  }
  const err = result.records.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    // inputs are chainInputs(chain): each image, then its vmdk extent files
    const owner = chain.flatMap((img) => [img, ...(img.extentFiles ?? []).map(() => img)])[f.input as number];
    const text = owner?.driver.openError ?? qcow2ErrorMessage;
    const msg = text(
      {
        code: f.code as number,
        a0: f.a0 as bigint,
        a1: f.a1 as bigint,
        a2: f.a2 as bigint,
      },
      [],
      owner?.filename ?? "",
    );
    throw new CliError([`Unable to get block status: ${msg}`]);
  }
  const extents: AllocationExtent[] = [];
  let at = 0n;
  for (const r of result.records) {
    if (r.type !== records.MAP_EXTENT) continue;
    const start = r.fields.start as bigint;
    const length = r.fields.length as bigint;
    const flags = r.fields.flags as number;
    const depth = r.fields.depth as number;
    // Untrusted: the extents must tile the image in order.
    if (
      start !== at || length === 0n || start + length > size || depth >= chain.length ||
      (flags & ~ALL_FLAGS) !== 0
    ) {
      throw new CliError(["Unable to get block status: sandbox failure: inconsistent map extents"]);
    }
    extents.push({
      start,
      length,
      data: (flags & mapFlags.DATA) !== 0,
      zero: (flags & mapFlags.ZERO) !== 0,
      allocated: (flags & mapFlags.PRESENT) !== 0,
    });
    at += length;
  }
  if (at !== size) {
    throw new CliError(["Unable to get block status: sandbox failure: map extents do not cover the image"]);
  }
  return extents;
}

/**
 * Runs the option parser; its usage errors become glibc's own words under
 * the subcommand's name, followed by qemu-img's help (HelpRequested).
 */
function glibcReported(io: Io, spec: string, parse: () => string[]): string[] {
  try {
    return parse();
  } catch (e) {
    if (!(e instanceof CliError) || !e.tryHelp) throw e;
    const text = e.lines[0];
    let m = /^unrecognized option '(.*)'$/.exec(text);
    if (m) {
      const a = m[1];
      if (a.startsWith("--")) io.err(`measure: unrecognized option '${a}'\n`);
      else {
        const c = [...a.slice(1)].find((ch) => ch === ":" || !spec.includes(ch)) ?? a.slice(1, 2);
        io.err(`measure: invalid option -- '${c}'\n`);
      }
      throw new HelpRequested();
    }
    m = /^missing argument for option '(.*)'$/.exec(text);
    if (m) {
      const a = m[1];
      io.err(
        a.startsWith("--")
          ? `measure: option '${a}' requires an argument\n`
          : `measure: option requires an argument -- '${a.slice(-1)}'\n`,
      );
      throw new HelpRequested();
    }
    throw e;
  }
}

export function measureHuman(m: MeasureResult): string {
  let out = `required size: ${m.required}\nfully allocated size: ${m.fullyAllocated}\n`;
  if (m.bitmaps !== undefined) out += `bitmaps size: ${m.bitmaps}\n`;
  return out;
}

export function measureJson(m: MeasureResult): string {
  const d = new QDict();
  d.put("required", m.required);
  d.put("fully-allocated", m.fullyAllocated);
  if (m.bitmaps !== undefined) d.put("bitmaps", m.bitmaps);
  return toJsonPretty(d) + "\n";
}

export async function measureCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let output = "human" as "human" | "json";
  let fmt: string | undefined;
  let outFmt = "raw";
  let options: string | undefined;
  let imgSize: bigint | undefined;
  let snapshot: SnapshotParam | undefined;
  let forceShareAll = false;
  let maxSpool = DEFAULT_MAX_SPOOL;
  const warnings: string[] = [];
  const o = newInstarOptions(base);
  // img_measure's getopt string has no leading ':', so glibc reports a bad
  // option itself ("measure: ...") and qemu-img then prints its help (exit 0).
  const operands = glibcReported(io, "hf:O:o:l:U", () =>
    getopt(argv, "hf:O:o:l:U", [
      { name: "help", hasArg: false, id: "h" },
      { name: "image-opts", hasArg: false, id: "image-opts" },
      { name: "object", hasArg: true, id: "object" },
      { name: "output", hasArg: true, id: "output" },
      { name: "size", hasArg: true, id: "size" },
      { name: "force-share", hasArg: false, id: "U" },
      MAX_SPOOL_LONG,
      ...INSTAR_LONGS,
    ], ({ id, value }) => {
      if (instarOption(o, id, value)) return;
      switch (id) {
        case "max-spool":
          maxSpool = parseMaxSpool(value!);
          break;
        case "h":
          throw new HelpRequested();
        case "f":
          fmt = value;
          break;
        case "O":
          outFmt = value!;
          break;
        case "o":
          options = addOptionList(options, value!);
          break;
        case "l": {
          const p = parseSnapshotParam(value!);
          snapshot = p.param;
          warnings.push(...p.warnings);
          break;
        }
        case "U":
          forceShareAll = true;
          break;
        case "output":
          if (value === "json") output = "json";
          else if (value === "human") output = "human";
          else throw new CliError(["--output must be used with human or json as argument."]);
          break;
        case "size":
          imgSize = cvtnum("image size", value!);
          break;
      }
    }));
  for (const w of warnings) io.err(`instar: ${w}\n`);
  const files = operands;
  if (files.length > 1) throw new CliError(["At most one filename argument is allowed."]);
  const filename = files[0];
  if (filename === undefined && (fmt !== undefined || snapshot !== undefined)) {
    throw new CliError(["--image-opts, -f, and -l require a filename argument."]);
  }
  if (filename !== undefined && imgSize !== undefined) {
    throw new CliError(["--size N cannot be used together with a filename."]);
  }
  if (filename === undefined && imgSize === undefined) {
    throw new CliError(["Either --size N or one filename must be specified."]);
  }

  let chain: OpenedImage[] | undefined;
  let snapshotNo = 0;
  if (filename !== undefined) {
    // --image-opts: an encrypted qcow2 source names its key-secret (docs/encryption.md).
    const ref = imageRef(filename, fmt, o.imageOpts, io.err);
    try {
      const lock = readLock(forceShareAll);
      if (filename === "-") {
        // stdin, spooled (docs/pipelines.md).
        chain = [await openStdin(filename, maxSpool, { format: fmt, unsafeQuirks: o.unsafeQuirks })];
      } else {
        const top = await openImage(ref.filename, {
          format: ref.format,
          unsafeQuirks: o.unsafeQuirks,
          backingDirs: o.backingDirs,
          lock,
          encryptFormat: ref.encryptFormat,
        });
        chain = await openChain(top, await makePolicy(ref.filename, o.backingDirs), o.unsafeQuirks, lock);
      }
      // A LUKS source and an encrypted qcow2 unlock as qemu's open does (the
      // crypto driver has no block status: all of a LUKS payload counts as data).
      await unlockForRead(chain[0], ref.keySecret, ref.keySecretOption, o.secrets, chain);
    } catch (e) {
      if (e instanceof OpenError) throw openFailure(ref.display, e);
      throw e;
    }
    // bdrv_snapshot_load_tmp: the map guest then reads the snapshot's L1 table.
    if (snapshot !== undefined) snapshotNo = loadSnapshot(chain[0], snapshot);
  }

  const driver = driverFor(outFmt);
  if (!driver) throw new CliError([`Unknown file format '${outFmt}'`]);
  if (!driver.measure || !driver.create) {
    throw new CliError([`Measuring for '${outFmt}' is not supported by instar yet`]);
  }
  const descs = driver.create.options;
  const parsed = parseOptions(options ?? "", descs);
  if (!parsed.ok) {
    // error_report_err: the message, its hint lines unprefixed, then one more error line.
    const [first, ...hint] = parsed.error.message.split("\n");
    io.err(
      `instar: ${first}\n` + hint.map((l) => `${l}\n`).join("") +
        `instar: Invalid options for file format '${outFmt}'\n`,
    );
    return 1;
  }
  const opts = parsed.value;
  if (imgSize !== undefined) optSetNumber(opts, "size", imgSize);

  let input: MeasureInput | undefined;
  if (chain) {
    const top = chain[0];
    if (top.qcow2 && top.qcow2.nbBitmaps > 0 && !top.qcow2.bitmaps) {
      throw new CliError([`Could not open '${filename}': Sandbox failure: bitmaps not listed`]);
    }
    // The allocation scan is needed for every target but raw.
    input = {
      virtualSize: top.virtualSize,
      extents: outFmt !== "raw" && !driver.measureSizeOnly
        ? await allocationOf(chain, driver.measureEstimate === true, snapshotNo)
        : [],
      // qcow2_supports_persistent_dirty_bitmap: only v3 images keep bitmaps.
      supportsBitmaps: top.qcow2?.version === 3,
      // qemu counts every persistent bitmap (bdrv_dirty_bitmap_size: the image's length).
      bitmaps: top.qcow2?.bitmaps?.map((b) => ({ granularity: b.granularity, nameLength: b.name.length })),
    };
  }
  // vpc, vhdx and vmdk: qemu-img has no measure for these ("Block driver
  // ... does not support size measurement"); their drivers give the numbers
  // instar's create planners imply, printed as for raw.
  const m = driver.measure(opts, input, { passphrase: (id) => o.secrets.passphrase(id) });
  if (!m.ok) throw new CliError(m.error.message.split("\n"));
  io.out(output === "json" ? measureJson(m.value) : measureHuman(m.value));
  return 0;
}
