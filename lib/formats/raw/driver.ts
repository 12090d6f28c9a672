// The raw row of the format table: the guest reports only the partition
// table kind (the host refuses unpartitioned raw unless asked); create is
// an ftruncate with optional preallocation; measure is the input length.
import { formats, guestErrors } from "../../abi/spec.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import type { CreateHost, DecodedImage, FormatDriver, Prealloc } from "../types.ts";
import { fail, ok } from "../plan.ts";
import { CreateError } from "../types.ts";
import { optGet, type ParsedOpts } from "../options.ts";
import { rawModel, rawVirtualSize } from "./model.ts";
import { RAW_CREATE_OPTS } from "./options.ts";
import { rawCreatePlan } from "./create_plan.ts";
import { rawMeasure } from "./measure.ts";
import { rawResize } from "./resize.ts";

async function createRaw(_filename: string, opts: ParsedOpts, host: CreateHost): Promise<void> {
  const size = optGet(opts, "size")!.num!;
  const prealloc = optGet(opts, "preallocation")?.str ?? "off";
  // An unknown mode fails before the file is touched; metadata after.
  if (["off", "metadata", "falloc", "full"].includes(prealloc)) await host.createFile();
  const plan = rawCreatePlan(BigInt.asIntN(64, size), prealloc);
  if (!plan.ok) throw new CreateError(plan.error.message);
  if (plan.value.allocate) await host.allocate(0n, plan.value.fileSize, prealloc);
  await host.resizeFile(plan.value.fileSize, "");
}

export const rawDriver: FormatDriver = {
  name: "raw",
  code: formats.RAW,
  // file-posix answers by the file's data and holes, with no limit of its own.
  statusLayer: () => ({ extents: [] }),
  decode(recs, input, fileSize): DecodedImage {
    const raw = rawModel(recs, input);
    const size = rawVirtualSize(fileSize);
    return { virtualSize: size, length: size, dirty: false, namesDataFile: false, raw };
  },
  // A failed read of a raw file is the only open failure qemu words for raw;
  // the guest's generic refusals share qcow2's table.
  openError: (e, features) =>
    e.code === guestErrors.IO ? "Could not read image: Input/output error" : qcow2ErrorMessage(e, features),
  create: { options: RAW_CREATE_OPTS, own: [RAW_CREATE_OPTS[0]], run: createRaw },
  measure: (opts, input) => rawMeasure(opts, input?.virtualSize),
  convertTarget: {
    spec(opts) {
      const prealloc = optGet(opts, "preallocation")?.str ?? "off";
      // file-posix knows metadata but refuses it for a raw file.
      if (prealloc === "metadata") return fail("invalid_option", "Unsupported preallocation mode: metadata");
      if (!["off", "falloc", "full"].includes(prealloc)) {
        return fail("invalid_option", `invalid parameter value: ${prealloc}`);
      }
      return ok({ writer: "raw", preallocation: prealloc as Prealloc });
    },
  },
  resize: rawResize,
};
