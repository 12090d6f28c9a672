// instar check [-f fmt] [--output human|json] [-q] [-U] FILE
// Exit codes as qemu-img: 0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 no checks.
import { nameKinds, ops, records } from "../abi/spec.ts";
import { nameBytes } from "../abi/records.ts";
import { getopt } from "./getopt.ts";
import { CliError, usageError } from "./messages.ts";
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
  readLock,
} from "./common.ts";
import { openChain, OpenError, openFailure, openImage } from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { runGuest } from "../vmm/guest.ts";
import { formatCheckMessage } from "../abi/check_messages.ts";
import { type CheckFacts, checkHuman, checkJson } from "../output/check.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";

const CACHE_MODES = ["none", "off", "writeback", "unsafe", "directsync", "writethrough"];

export async function checkCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  let quiet = false;
  let cache = "writeback";
  const s: ImageCommandOptions = {};
  const o = newInstarOptions(base);
  const operands = getopt(argv, ":hf:r:T:qU", [
    ...IMAGE_LONGS_HEAD,
    { name: "repair", hasArg: true, id: "r" },
    ...IMAGE_LONGS_TAIL,
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value) || imageCommandOption(s, id, value)) return;
    switch (id) {
      case "r":
        if (value !== "leaks" && value !== "all") {
          throw usageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${value}`);
        }
        throw new CliError([
          "Repairing images (-r) is not supported by instar; it never writes to its input",
        ]);
      case "T":
        cache = value!;
        break;
      case "q":
        quiet = true;
        break;
    }
  });
  const { fmt, output } = s;
  const filename = expectOneFile(operands);
  const format = outputFormat(output);
  if (!CACHE_MODES.includes(cache)) throw new CliError([`Invalid source cache option: ${cache}`]);

  let top;
  try {
    const lock = readLock(s.forceShare);
    top = await openImage(filename, { format: fmt, unsafeQuirks: o.unsafeQuirks, checkMode: true, lock });
    // qemu-img opens the whole chain (a missing backing file fails the check).
    await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, lock);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(filename, e);
    throw e;
  }
  if (!top.driver.check) throw new CliError(["This image format does not support checks"], false, 63);

  let result;
  try {
    result = await runGuest({
      op: "check",
      opCode: ops.CHECK,
      inputs: [{ path: top.openPath, format: top.formatCode }],
    });
  } catch (e) {
    throw new CliError([`Check failed: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
  }
  const recs = result.records;
  let pendingNames: string[] = [];
  for (const r of recs) {
    // Snapshot ids/names a diagnostic quotes arrive as NAME records just before it.
    if (
      r.type === records.NAME &&
      (r.fields.kind === nameKinds.SNAPSHOT_ID || r.fields.kind === nameKinds.SNAPSHOT_NAME)
    ) {
      pendingNames.push(new TextDecoder().decode(nameBytes(r)));
    }
    if (r.type === records.CHECK_MSG) {
      try {
        io.err(formatCheckMessage(r.fields.code as number, r.fields.a as bigint[], "instar", pendingNames));
      } catch (e) {
        throw new CliError([`Check failed: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
      }
      pendingNames = [];
    }
  }
  const err = recs.find((r) => r.type === records.ERROR);
  if (err) {
    const f = err.fields;
    const msg = qcow2ErrorMessage({
      code: f.code as number,
      a0: f.a0 as bigint,
      a1: f.a1 as bigint,
      a2: f.a2 as bigint,
    });
    throw new CliError([`Could not open '${filename}': ${msg}`]);
  }
  const checks = recs.filter((r) => r.type === records.CHECK);
  if (checks.length !== 1) throw new CliError(["Check failed: sandbox failure: no check result"]);
  const c = checks[0].fields;
  // A non-zero CHECK.flags is the errno of a check qemu ends early
  // (bdrv_check returned an error): qemu prints no summary, only this.
  const errno = c.flags as number;
  if (errno !== 0) {
    throw new CliError([`Check failed: ${CHECK_ERRNO_TEXT[errno] ?? `Unknown error ${errno}`}`]);
  }
  const n = (k: string) => c[k] as bigint;
  const facts: CheckFacts = {
    filename,
    format: top.format,
    checkErrors: n("check_errors"),
    corruptions: n("corruptions"),
    leaks: n("leaks"),
    corruptionsFixed: n("corruptions_fixed"),
    leaksFixed: n("leaks_fixed"),
    imageEndOffset: n("image_end_offset"),
    totalClusters: n("total_clusters"),
    allocatedClusters: n("allocated_clusters"),
    fragmentedClusters: n("fragmented_clusters"),
    compressedClusters: n("compressed_clusters"),
  };
  // Counters are printed as int64 by qemu; anything larger is a lying guest.
  for (const [k, v] of Object.entries(facts)) {
    if (typeof v === "bigint" && v >= 1n << 63n) {
      throw new CliError([`Check failed: sandbox failure: ${k} out of range`]);
    }
  }
  if (!quiet) io.out(format === "json" ? checkJson(facts) : checkHuman(facts));
  if (facts.checkErrors !== 0n) {
    io.err("instar: Check failed\n");
    return 1;
  }
  if (facts.corruptions !== 0n) return 2;
  if (facts.leaks !== 0n) return 3;
  return 0;
}

/** strerror() of the errnos the check guest can report (Linux numbering). */
const CHECK_ERRNO_TEXT: Record<number, string> = {
  5: "Input/output error",
  12: "Cannot allocate memory",
  22: "Invalid argument",
  27: "File too large",
  28: "No space left on device",
  75: "Value too large for defined data type",
  84: "Invalid or incomplete multibyte or wide character",
  95: "Operation not supported",
};
