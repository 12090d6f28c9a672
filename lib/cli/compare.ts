// instar compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] FILE1 FILE2
// Exit codes as qemu-img: 0 identical, 1 different, 2 an image could not be
// opened, 3 a block-status failure, 4 a read failure. The comparison runs in
// one guest over both chains (guest/ops/compare.c); this file only opens the
// images, hands them over and words the outcome the way img_compare does.
import { type ImageRef, imageRef } from "./image_ref.ts";
import { compareResults, formats, limits, ops, records } from "../abi/spec.ts";
import { getopt } from "./getopt.ts";
import { refuseDataFile } from "./data_file.ts";
import { CliError, usageError } from "./messages.ts";
import {
  CACHE_MODES,
  DATA_LONGS_HEAD,
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
  objectOption,
  readLock,
} from "./common.ts";
import {
  chainInputs,
  kdfMaxIters,
  openChain,
  type OpenedImage,
  OpenError,
  openFailure,
  openImage,
  unlockFailure,
  unlockForRead,
} from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { runGuest } from "../vmm/guest.ts";
import { Progress, type ProgressMode } from "./progress.ts";
import { hostEnv } from "../host/context.ts";
import { MAX_SPOOL_LONG, openStdin, parseMaxSpool } from "./stdin_image.ts";
import { DEFAULT_MAX_SPOOL } from "../host/stdio_stream.ts";

async function openForCompare(
  ref: ImageRef,
  o: InstarOptions,
  forceShareAll: boolean,
  maxSpool: bigint,
): Promise<OpenedImage[]> {
  const { filename, format: fmt } = ref;
  try {
    // `-`: stdin, spooled (docs/pipelines.md).
    if (filename === "-") {
      const img = await openStdin(filename, maxSpool, {
        format: fmt,
        unsafeQuirks: o.unsafeQuirks,
        noLists: true,
      });
      // The compare guests unlock (unlockForRead's defer); their failure is the open error below.
      await unlockForRead(img, ref.keySecret, ref.keySecretOption, o.secrets, [img], true);
      return [img];
    }
    const lock = readLock(forceShareAll);
    const top = await openImage(filename, {
      format: fmt,
      unsafeQuirks: o.unsafeQuirks,
      backingDirs: o.backingDirs,
      lock,
      noLists: true,
      readsData: true,
      encryptFormat: ref.encryptFormat,
    });
    const chain = await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, lock);
    await unlockForRead(top, ref.keySecret, ref.keySecretOption, o.secrets, chain, true);
    return chain;
  } catch (e) {
    // img_open failures: exit 2.
    if (e instanceof OpenError) throw openFailure(ref.display, e, 2);
    throw e;
  }
}

export async function compareCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let fmt1: string | undefined, fmt2: string | undefined;
  let cache = "writeback";
  let progressMode: ProgressMode = "off";
  let quiet = false, strict = false, forceShareAll = false;
  let maxSpool = DEFAULT_MAX_SPOOL;
  const o = newInstarOptions(base);
  const operands = getopt(argv, ":hf:F:T:pqsU", [
    ...DATA_LONGS_HEAD,
    { name: "force-share", hasArg: false, id: "U" },
    { name: "progress", hasArg: true, id: "progress" },
    MAX_SPOOL_LONG,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    // qemu-img compare exits 2 when an --object fails.
    if (id === "object") return objectOption(o, value!, 2);
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "max-spool":
        maxSpool = parseMaxSpool(value!);
        break;
      case "h":
        throw new HelpRequested();
      case "f":
        fmt1 = value;
        break;
      case "F":
        fmt2 = value;
        break;
      case "T":
        cache = value!;
        break;
      case "p":
        progressMode = "line";
        break;
      case "progress":
        if (value !== "json") throw usageError(`Invalid --progress '${value}' (expected json)`);
        progressMode = "json";
        break;
      case "q":
        quiet = true;
        break;
      case "s":
        strict = true;
        break;
      case "U":
        forceShareAll = true;
        break;
    }
  });
  // "Progress is not shown in Quiet mode"
  if (quiet) progressMode = "off";
  if (operands.length !== 2) throw usageError("Expecting two image file names");
  const [filename1, filename2] = operands;
  const say = (t: string) => {
    if (!quiet) io.out(t);
  };
  const progress = new Progress(progressMode, 2.0, io);
  try {
    if (!CACHE_MODES.includes(cache)) throw new CliError([`Invalid source cache option: ${cache}`], false, 2);
    if (filename1 === "-" && filename2 === "-") {
      throw new CliError(["Could not open '-': stdin can be only one of the images"], false, 2);
    }
    // qemu opens the first image (options parsed, file opened) before it looks at the second.
    const ref1 = imageRef(filename1, fmt1, o.imageOpts, io.err, 2);
    const chain1 = await openForCompare(ref1, o, forceShareAll, maxSpool);
    const ref2 = imageRef(filename2, fmt2, o.imageOpts, io.err, 2);
    const chain2 = await openForCompare(ref2, o, forceShareAll, maxSpool);
    refuseDataFile(chain1, filename1, "compare", 2);
    refuseDataFile(chain2, filename2, "compare", 2);
    progress.set(0);
    const inputs1 = chainInputs(chain1);
    const inputs = [...inputs1, ...chainInputs(chain2)];
    if (inputs.length > limits.MAX_INPUTS) {
      throw new CliError(
        [
          `The two backing chains have ${inputs.length} files; instar compares at most ` +
          `${limits.MAX_INPUTS} in one sandbox`,
        ],
        false,
        2,
      );
    }
    // Two guests, one per core, each walking half of the disk; the first
    // half's outcome stands unless it found the halves identical.
    // INSTAR_GUESTS=1|2 forces the choice.
    const base = chain1[0].virtualSize > chain2[0].virtualSize
      ? chain1[0].virtualSize
      : chain2[0].virtualSize;
    const forced = hostEnv("INSTAR_GUESTS");
    const split = forced === "2" || (forced !== "1" && base >= 64n << 20n);
    const mid = split ? (base / 2n) & ~((1n << 20n) - 1n) : base;
    const ranges = split && mid > 0n ? [[0n, mid], [mid, base]] : [[0n, base]];
    const done = ranges.map(() => 0n), totals = ranges.map(() => 0n);
    const encrypted = inputs.some((i) => i.secret);
    const qcrypt = [...chain1, ...chain2].some((i) => i.secret && i.formatCode === formats.QCOW2);
    // A LUKS2 input: compare_luks2 (LUKS1 and LUKS2, Argon2), with the RAM its key slots need.
    const luks2Ram = Math.max(0, ...[chain1[0], chain2[0]].map((i) => i.luks2Ram ?? 0));
    // An encrypted image against (or over) vpc, vhdx or vmdk, or LUKS2 with an encrypted qcow2:
    // compare_luks_other, which reads every format with LUKS1, LUKS2 and encrypted qcow2.
    const cryptOther = encrypted &&
      ([...chain1, ...chain2].some((i) => !["raw", "qcow2", "luks"].includes(i.format)) ||
        (luks2Ram > 0 && qcrypt));
    let results;
    try {
      results = await Promise.all(ranges.map(([from, to], i) =>
        runGuest({
          // An encrypted input: compare_luks (the LUKS layer and nettle), which reads raw and qcow2 besides.
          // An encrypted qcow2: compare_qcrypt (qcow2 decryption, and LUKS too); LUKS2: compare_luks2.
          // Any of them with vpc, vhdx or vmdk: compare_luks_other.
          op: cryptOther
            ? "compare_luks_other"
            : luks2Ram
            ? "compare_luks2"
            : !encrypted
            ? "compare"
            : qcrypt
            ? "compare_qcrypt"
            : "compare_luks",
          kdfMaxIters: encrypted ? kdfMaxIters() : undefined,
          opCode: ops.COMPARE,
          inputs,
          args: [BigInt(inputs1.length), strict ? 1n : 0n, from, to],
          timeoutMs: 24 * 3600 * 1000,
          ramBytes: Math.max(64 * 1024 * 1024, luks2Ram),
          onProgress: (d, t) => {
            done[i] = d;
            totals[i] = t;
            progress.bytes(done.reduce((a, b) => a + b, 0n), totals.reduce((a, b) => a + b, 0n));
          },
        })
      ));
    } catch (e) {
      throw new CliError([`Sandbox failure: ${e instanceof Error ? e.message : String(e)}`], false, 4);
    }
    // A deferred unlock that failed in a compare guest: that image's open error (qemu's img_open, exit 2).
    for (const r of results) {
      const u1 = unlockFailure(chain1[0], 0, r.records);
      if (u1) throw openFailure(ref1.display, u1, 2);
      const u2 = unlockFailure(chain2[0], inputs1.length, r.records);
      if (u2) throw openFailure(ref2.display, u2, 2);
    }
    const outcomes = results.map((r) => r.records.filter((x) => x.type === records.COMPARE));
    if (outcomes.some((o) => o.length !== 1)) {
      throw new CliError(["Sandbox failure: the comparison reported no outcome"], false, 4);
    }
    const first = outcomes[0][0];
    const recs = [
      first.fields.result === compareResults.IDENTICAL && outcomes.length > 1 ? outcomes[1][0] : first,
    ];
    const f = recs[0].fields;
    const outcome = f.result as number;
    const offset = f.offset as bigint;
    const image = f.image as number;
    const sizeDiffers = f.size_differs === 1;
    const size1 = chain1[0].virtualSize, size2 = chain2[0].virtualSize;
    if (sizeDiffers !== (size1 !== size2) || image > 1 || offset >= (1n << 63n)) {
      throw new CliError(["Sandbox failure: inconsistent comparison result"], false, 4);
    }
    const minSize = size1 < size2 ? size1 : size2;
    const names = [filename1, filename2];
    // img_compare prints the size warning when its walk passes the shorter
    // image's end, i.e. before anything found there.
    const warnAt = (pos: bigint) => {
      if (sizeDiffers && pos >= minSize) say("Warning: Image size mismatch!\n");
    };
    switch (outcome) {
      case compareResults.IDENTICAL:
        warnAt(minSize);
        say("Images are identical.\n");
        return 0;
      case compareResults.MISMATCH:
        warnAt(offset);
        say(`Content mismatch at offset ${offset}!\n`);
        return 1;
      case compareResults.SIZE_MISMATCH_STRICT:
        say("Strict mode: Image size mismatch!\n");
        return 1;
      case compareResults.STATUS_MISMATCH_STRICT:
        say(`Strict mode: Offset ${offset} block status mismatch!\n`);
        return 1;
      case compareResults.STATUS_FAILED:
        warnAt(offset);
        throw new CliError([`Sector allocation test failed for ${names[image]}`], false, 3);
      case compareResults.READ_FAILED:
        warnAt(offset);
        throw new CliError(
          [`Error while reading offset ${offset} of ${names[image]}: Input/output error`],
          false,
          4,
        );
    }
    throw new CliError([`Sandbox failure: unknown comparison outcome ${outcome}`], false, 4);
  } finally {
    progress.end();
  }
}
