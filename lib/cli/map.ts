// instar map [-f fmt] [--output human|json] [--start-offset N] [--max-length N] [-U] FILE
import { imageRef } from "./image_ref.ts";
import { formats, guestErrors, mapFlags, ops, records } from "../abi/spec.ts";
import { getopt } from "./getopt.ts";
import { refuseDataFile } from "./data_file.ts";
import { CliError } from "./messages.ts";
import {
  expectOneFile,
  IMAGE_LONGS_HEAD,
  IMAGE_LONGS_TAIL,
  imageCommandOption,
  type ImageCommandOptions,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
  outputFormat,
  profileOf,
  readLock,
} from "./common.ts";
import { cvtnum } from "./options.ts";
import {
  chainInputs,
  inputFilenames,
  openChain,
  OpenError,
  openFailure,
  openImage,
  unlockForRead,
} from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { runGuest } from "../vmm/guest.ts";
import { type MapExtent, mapHuman, mapJson, mapJsonLine } from "../output/map.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import { MAX_SPOOL_LONG, openStdin, parseMaxSpool } from "./stdin_image.ts";
import { DEFAULT_MAX_SPOOL } from "../host/stdio_stream.ts";

const ALL_FLAGS = mapFlags.DATA | mapFlags.ZERO | mapFlags.PRESENT | mapFlags.OFFSET_VALID |
  mapFlags.COMPRESSED;

export async function mapCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let start = 0n;
  let maxLength = -1n;
  let maxSpool = DEFAULT_MAX_SPOOL;
  const s: ImageCommandOptions = {};
  const o = newInstarOptions(base);
  const operands = getopt(argv, ":f:s:l:hU", [
    ...IMAGE_LONGS_HEAD,
    ...IMAGE_LONGS_TAIL,
    { name: "start-offset", hasArg: true, id: "s" },
    { name: "max-length", hasArg: true, id: "l" },
    MAX_SPOOL_LONG,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value) || imageCommandOption(s, id, value)) return;
    switch (id) {
      case "s":
        start = cvtnum("start offset", value!);
        break;
      case "l":
        maxLength = cvtnum("max length", value!);
        break;
      case "max-spool":
        maxSpool = parseMaxSpool(value!);
        break;
    }
  });
  const { output } = s;
  const ref = imageRef(expectOneFile(operands), s.fmt, o.imageOpts, io.err);
  const filename = ref.filename;
  const format = outputFormat(output);
  const profile = await profileOf(o);

  let chain;
  try {
    const lock = readLock(s.forceShare);
    if (filename === "-") {
      // stdin, spooled (docs/pipelines.md).
      chain = [
        await openStdin(filename, maxSpool, {
          format: ref.format,
          unsafeQuirks: o.unsafeQuirks,
          noLists: true,
        }),
      ];
    } else {
      const top = await openImage(filename, {
        format: ref.format,
        unsafeQuirks: o.unsafeQuirks,
        backingDirs: o.backingDirs,
        lock,
        noLists: true,
        encryptFormat: ref.encryptFormat,
      });
      chain = await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, lock);
    }
    await unlockForRead(chain[0], ref.keySecret, ref.keySecretOption, o.secrets, chain);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(ref.display, e);
    throw e;
  }
  // qemu-img map names the data file in its File column: instar does not open it.
  refuseDataFile(chain, filename, "map");
  const length = chain[0].virtualSize;
  // img_map: the loop ends at min(start + max_length, length).
  const end = maxLength === -1n ? length : (start + maxLength < length ? start + maxLength : length);

  let extents: MapExtent[] = [];
  if (start < end && chain[0].formatCode === formats.LUKS) {
    // qemu's crypto driver has no block status: all data, present, no offset (docs/encryption.md).
    extents = [{
      start,
      length: end - start,
      offset: 0n,
      flags: mapFlags.DATA | mapFlags.PRESENT,
      depth: 0,
      input: 0,
    }];
  } else if (start < end) {
    let result;
    try {
      result = await runGuest({
        op: "map",
        opCode: ops.MAP,
        inputs: chainInputs(chain),
        args: [start, maxLength === -1n ? (1n << 64n) - 1n : maxLength],
      });
    } catch (e) {
      throw new CliError([
        `Could not read file metadata: sandbox failure: ${e instanceof Error ? e.message : String(e)}`,
      ]);
    }
    extents = result.records.filter((r) => r.type === records.MAP_EXTENT).map((r) => ({
      start: r.fields.start as bigint,
      length: r.fields.length as bigint,
      offset: r.fields.offset as bigint,
      flags: r.fields.flags as number,
      depth: r.fields.depth as number,
      input: r.fields.input as number,
    }));
    const err = result.records.find((r) => r.type === records.ERROR);
    validateExtents(extents, start, end, chain.length, chainInputs(chain).length, err !== undefined);
    if (err) {
      const f = err.fields;
      // img_map: strerror of the failed block status (a failed read is EIO)
      const msg = f.code === guestErrors.IO ? "Input/output error" : qcow2ErrorMessage({
        code: f.code as number,
        a0: f.a0 as bigint,
        a1: f.a1 as bigint,
        a2: f.a2 as bigint,
      });
      // qemu-img printed the entries it had dumped before the failing call
      if (format === "json") {
        io.out("[" + extents.map((e) => mapJsonLine(e, profile) + ",\n").join(""));
      } else {
        const { text, error } = mapHuman(extents, inputFilenames(chain));
        io.out(text);
        if (error) {
          io.err("instar: File contains external, encrypted or compressed clusters.\n");
          return 1;
        }
      }
      throw new CliError([`Could not read file metadata: ${msg}`]);
    }
  }
  if (extents.length === 0) extents = [{ start, length: 0n, offset: 0n, flags: 0, depth: 0, input: 0 }];

  if (format === "json") {
    io.out(mapJson(extents, profile));
    return 0;
  }
  const { text, error } = mapHuman(extents, inputFilenames(chain));
  io.out(text);
  if (error) {
    io.err("instar: File contains external, encrypted or compressed clusters.\n");
    return 1;
  }
  return 0;
}

/** The guest's extents must tile [start, end) exactly, in order, with sane fields (an offset may be any
 * 64-bit value: a vmdk seSparse grain's is what qemu's wrapping arithmetic makes of the table entry);
 * `partial`: a failed run's, which tile a prefix. */
function validateExtents(
  extents: MapExtent[],
  start: bigint,
  end: bigint,
  layers: number,
  inputs: number,
  partial = false,
) {
  let at = start;
  for (const e of extents) {
    const bad = e.start !== at || e.length === 0n || e.start + e.length > end || e.depth >= layers ||
      e.input >= inputs ||
      (e.flags & ~ALL_FLAGS) !== 0;
    if (bad) throw new CliError(["Could not read file metadata: sandbox failure: inconsistent map extents"]);
    at += e.length;
  }
  if (at !== end && !partial) {
    throw new CliError(["Could not read file metadata: sandbox failure: map extents do not cover the image"]);
  }
}
