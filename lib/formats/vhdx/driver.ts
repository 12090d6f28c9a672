// The vhdx row of the format table: decode of the guest's IMAGE_INFO
// (guest/vhdx), qemu's open-error texts, qemu's check (BAT entries past the
// end of the file), create through the pure planner, instar's size estimate
// for measure -O vhdx.
import { formats, guestErrors } from "../../abi/spec.ts";
import type { DecodedImage, FormatDriver } from "../types.ts";
import { imageInfoModel } from "../image_info_model.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { vhdxErrorText } from "./errors.ts";
import { estimateMeasure } from "../estimate.ts";
import { VHDX_CREATE_OPTS, VHDX_OWN, vhdxCreateOptions, vhdxEntropy } from "./options.ts";
import { planVhdxCreate } from "./create_plan.ts";
import { vhdxMeasure } from "./measure.ts";
import { vhdxOutput } from "./output_plan.ts";
import { blocksTarget, createEmptiedFirst } from "../emptied_first.ts";
import { vhdxResize } from "./resize.ts";

export const vhdxDriver: FormatDriver = {
  name: "vhdx",
  code: formats.VHDX,
  // qemu 7.2's vhdx has no block_status: io.c answers the whole request as data.
  // A differencing VHDX is not opened by qemu 7.2.
  statusLayer: (img) => img.backingFile === undefined ? { extents: [] } : undefined,
  decode(recs, input): DecodedImage {
    const image = imageInfoModel(recs, input, formats.VHDX);
    return {
      virtualSize: image.virtualSize,
      length: image.virtualSize,
      clusterSize: image.clusterSize,
      // A log that needs replay fails the open instead (qemu 7.2).
      dirty: false,
      namesDataFile: false,
      image,
    };
  },
  openError(e, features, filename) {
    if (e.code !== guestErrors.FORMAT) return qcow2ErrorMessage(e, features);
    // qemu's hint names qemu-img; instar names itself wherever it prints qemu's words.
    return vhdxErrorText(e.a0, e.a1, e.a2, filename).replace("\nqemu-img check", "\ninstar check");
  },
  check: true,
  // vhdx creates (empties) the file before its own checks.
  create: createEmptiedFirst(
    VHDX_CREATE_OPTS,
    VHDX_OWN,
    (opts) => planVhdxCreate(vhdxCreateOptions(opts), vhdxEntropy()),
  ),
  measureEstimate: true,
  measure: estimateMeasure((opts, alloc) => vhdxMeasure(vhdxCreateOptions(opts), alloc)),
  convertTarget: blocksTarget((opts) => vhdxOutput(vhdxCreateOptions(opts), vhdxEntropy())),
  resize: vhdxResize,
};
