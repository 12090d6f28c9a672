// The vpc (VHD) row of the format table: decode of the guest's IMAGE_INFO
// (guest/vpc), qemu's open-error texts, create through the pure planner,
// instar's size estimate for measure -O vpc. qemu 7.2 has no check for vpc.
import { formats } from "../../abi/spec.ts";
import type { DecodedImage, FormatDriver } from "../types.ts";
import { imageInfoModel } from "../image_info_model.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { vpcErrorText } from "./errors.ts";
import { guestErrors } from "../../abi/spec.ts";
import { CreateError } from "../types.ts";
import { estimateMeasure } from "../estimate.ts";
import { VPC_CREATE_OPTS, VPC_OWN, vpcCreateOptions, vpcEntropy } from "./options.ts";
import { planVpcCreate } from "./create_plan.ts";
import { vpcMeasure } from "./measure.ts";
import { vpcOutput } from "./output_plan.ts";
import { fileLayerPreallocation } from "../options.ts";
import { vpcResize } from "./resize.ts";

export const vpcDriver: FormatDriver = {
  name: "vpc",
  code: formats.VPC,
  decode(recs, input): DecodedImage {
    const image = imageInfoModel(recs, input, formats.VPC);
    return {
      virtualSize: image.virtualSize,
      length: image.virtualSize,
      // 0: a fixed disk, for which qemu-img prints no cluster_size.
      clusterSize: image.clusterSize === 0n ? undefined : image.clusterSize,
      dirty: false,
      namesDataFile: false,
      image,
    };
  },
  openError(e, features, filename) {
    const text = e.code === guestErrors.FORMAT ? vpcErrorText(e.a0, e.a1, e.a2, filename) : undefined;
    return text ?? qcow2ErrorMessage(e, features);
  },
  create: {
    options: VPC_CREATE_OPTS,
    own: VPC_OWN,
    async run(_filename, opts, host) {
      // vpc creates (empties) the file before its own checks.
      // The file layer parses its preallocation before it creates the file
      // and refuses metadata after (the empty file stays, as qemu leaves it).
      const prealloc = fileLayerPreallocation(opts);
      const unsupported = !prealloc.ok && prealloc.error.message.startsWith("Unsupported");
      if (!prealloc.ok && !unsupported) throw new CreateError(prealloc.error.message);
      await host.createFile();
      if (!prealloc.ok) throw new CreateError(prealloc.error.message);
      const plan = planVpcCreate(vpcCreateOptions(opts), vpcEntropy());
      if (!plan.ok) throw new CreateError(plan.error.message);
      await host.applyPlan(plan.value);
    },
  },
  measureEstimate: true,
  measure: estimateMeasure((opts, alloc) => vpcMeasure(vpcCreateOptions(opts), alloc)),
  convertTarget: {
    spec(opts) {
      // qemu creates the file (protocol layer, size 0) before the format's
      // checks: its preallocation is checked first and then has no effect.
      const prealloc = fileLayerPreallocation(opts);
      if (!prealloc.ok) return prealloc;
      const blocks = vpcOutput(vpcCreateOptions(opts), vpcEntropy());
      if (!blocks.ok) return blocks;
      return { ok: true, value: { writer: "blocks", preallocation: "off", blocks: blocks.value } };
    },
  },
  resize: vpcResize,
};
