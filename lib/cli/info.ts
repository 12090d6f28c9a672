// instar info [-f fmt] [--output human|json] [--backing-chain] [-U] FILE
import { getopt } from "./getopt.ts";
import { CliError } from "./messages.ts";
import {
  expectOneFile,
  HelpRequested,
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
import { LOCKS } from "../vmm/image_lock.ts";
import { backingName, openChain, type OpenedImage, OpenError, openImage } from "./image.ts";
import { fullBackingFilename, makePolicy } from "../chain/policy.ts";
import { type ImageFacts, infoHuman, infoJson, type VmdkFacts } from "../output/image_info.ts";
import { helpText } from "./help.ts";
import { imageRef } from "./image_ref.ts";
import { MAX_SPOOL_LONG, openStdin, parseMaxSpool } from "./stdin_image.ts";
import { DEFAULT_MAX_SPOOL } from "../host/stdio_stream.ts";

export function imageFacts(img: OpenedImage): ImageFacts {
  const backing = img.backingFile ? new TextDecoder().decode(img.backingFile) : undefined;
  return {
    filename: img.filename,
    format: img.format,
    virtualSize: img.virtualSize,
    actualSize: img.actualSize,
    fileSize: img.fileSize,
    clusterSize: img.clusterSize,
    dirty: img.dirty,
    backingFilename: backing,
    fullBackingFilename: backing === undefined ? undefined : fullBackingFilename(img.filename, backing),
    backingFormat: img.backingFormat,
    qcow2: img.qcow2,
    vmdk: vmdkFacts(img),
    luks: img.luks,
    encrypted: img.encrypted,
  };
}

/** The vmdk block of info: each extent named as qemu opened it. */
function vmdkFacts(img: OpenedImage): VmdkFacts | undefined {
  if (!img.vmdk) return undefined;
  const files = img.extentFiles ?? [];
  let k = 0;
  return {
    createType: img.vmdk.createType,
    cid: img.vmdk.cid,
    parentCid: img.vmdk.parentCid,
    extents: img.vmdk.extents.map((x) => ({
      filename: x.hosted ? img.filename : files[k++]?.filename ?? "",
      format: x.type,
      virtualSize: x.virtualSize,
      clusterSize: x.clusterSize,
      compressed: x.compressed,
    })),
  };
}

export async function infoCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let chain = false;
  let maxSpool = DEFAULT_MAX_SPOOL;
  const s: ImageCommandOptions = {};
  const o = newInstarOptions(base);
  const operands = getopt(argv, ":f:hU", [
    ...IMAGE_LONGS_HEAD,
    // qemu-img lists --backing-chain between --output and --object.
    IMAGE_LONGS_TAIL[0],
    { name: "backing-chain", hasArg: false, id: "backing-chain" },
    ...IMAGE_LONGS_TAIL.slice(1),
    MAX_SPOOL_LONG,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value) || imageCommandOption(s, id, value)) return;
    if (id === "backing-chain") chain = true;
    if (id === "max-spool") maxSpool = parseMaxSpool(value!);
  });
  const { fmt, output } = s;
  const operand = expectOneFile(operands);
  const format = outputFormat(output);
  const profile = await profileOf(o);
  const ref = imageRef(operand, fmt, o.imageOpts, io.err);
  const filename = ref.filename;

  let list: OpenedImage[];
  try {
    const lock = readLock(s.forceShare, LOCKS.info);
    // `-`: stdin, spooled (docs/pipelines.md); a backing file is named, never opened.
    const top = filename === "-"
      ? await openStdin(filename, maxSpool, {
        format: ref.format,
        unsafeQuirks: o.unsafeQuirks,
        allowBackingName: true,
      })
      : await openImage(filename, {
        format: ref.format,
        unsafeQuirks: o.unsafeQuirks,
        backingDirs: o.backingDirs,
        lock,
        encryptFormat: ref.encryptFormat,
      });
    list = [top];
    if (chain && filename === "-" && backingName(top) !== undefined) {
      throw new CliError([`Could not open '-': an image read from stdin may not name a backing file`]);
    }
    if (chain && backingName(top) !== undefined) {
      // qemu-img opens each image of the chain on its own and names it in errors.
      if (backingName(top)!.length > 0 && fullBackingFilename(filename, backingName(top)!) === null) {
        throw new CliError([
          `Could not determine absolute backing filename, but backing filename '${backingName(top)}' present`,
        ]);
      }
      list = await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, lock);
    }
  } catch (e) {
    if (e instanceof OpenError) {
      const name = e.depth === 0 && e.filename === filename ? ref.display : e.filename;
      throw new CliError([...e.preface, e.bare ? e.inner : `Could not open '${name}': ${e.inner}`]);
    }
    throw e;
  }
  // The info guest lists every snapshot and bitmap the header counts.
  for (const img of list) {
    const q = img.qcow2;
    if (q && ((q.nbSnapshots > 0 && !q.snapshots) || (q.nbBitmaps > 0 && !q.bitmaps))) {
      throw new CliError([
        `Could not open '${img.filename}': Sandbox failure: snapshots or bitmaps not listed`,
      ]);
    }
  }
  const facts = list.map(imageFacts);
  facts[0].filename = ref.nodeName;
  if (format === "json") infoJson(facts, chain, profile, io.out);
  else infoHuman(facts, profile, io.out);
  return 0;
}

export { HelpRequested, helpText };
