// The vhdx row of the format table: decode of the guest's IMAGE_INFO
// (guest/vhdx), qemu's open-error texts, qemu's check (BAT entries past the
// end of the file), create through the pure planner, instar's size estimate
// for measure -O vhdx.
import { formats, guestErrors } from "../../abi/spec.ts";
import type { DecodedImage, FormatDriver } from "../types.ts";
import { imageInfoModel } from "../image_info_model.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { vhdxErrorText } from "./errors.ts";
import { CreateError } from "../types.ts";
import { estimateMeasure } from "../estimate.ts";
import { VHDX_CREATE_OPTS, VHDX_OWN, vhdxCreateOptions, vhdxEntropy } from "./options.ts";
import { planVhdxCreate } from "./create_plan.ts";
import { vhdxMeasure } from "./measure.ts";
import { vhdxOutput } from "./output_plan.ts";
import { fileLayerPreallocation } from "../options.ts";
import { vhdxResize } from "./resize.ts";

export const vhdxDriver: FormatDriver = {
  name: "vhdx",
  code: formats.VHDX,
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
  create: {
    options: VHDX_CREATE_OPTS,
    own: VHDX_OWN,
    async run(_filename, opts, host) {
      // vhdx creates (empties) the file before its own checks.
      // The file layer parses its preallocation before it creates the file
      // and refuses metadata after (the empty file stays, as qemu leaves it).
      const prealloc = fileLayerPreallocation(opts);
      const unsupported = !prealloc.ok && prealloc.error.message.startsWith("Unsupported");
      if (!prealloc.ok && !unsupported) throw new CreateError(prealloc.error.message);
      await host.createFile();
      if (!prealloc.ok) throw new CreateError(prealloc.error.message);
      const plan = planVhdxCreate(vhdxCreateOptions(opts), vhdxEntropy());
      if (!plan.ok) throw new CreateError(plan.error.message);
      await host.applyPlan(plan.value);
    },
  },
  measureEstimate: true,
  measure: estimateMeasure((opts, alloc) => vhdxMeasure(vhdxCreateOptions(opts), alloc)),
  convertTarget: {
    spec(opts) {
      // qemu creates the file (protocol layer, size 0) before the format's
      // checks: its preallocation is checked first and then has no effect.
      const prealloc = fileLayerPreallocation(opts);
      if (!prealloc.ok) return prealloc;
      const blocks = vhdxOutput(vhdxCreateOptions(opts), vhdxEntropy());
      if (!blocks.ok) return blocks;
      return { ok: true, value: { writer: "blocks", preallocation: "off", blocks: blocks.value } };
    },
  },
  resize: vhdxResize,
};
