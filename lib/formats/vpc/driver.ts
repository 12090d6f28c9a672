// The vpc (VHD) row of the format table: decode of the guest's IMAGE_INFO
// (guest/vpc), qemu's open-error texts, create through the pure planner,
// instar's size estimate for measure -O vpc. qemu 7.2 has no check for vpc.
import { formats } from "../../abi/spec.ts";
import type { DecodedImage, FormatDriver } from "../types.ts";
import { imageInfoModel } from "../image_info_model.ts";
import { qcow2ErrorMessage } from "../qcow2/errors.ts";
import { vpcErrorText } from "./errors.ts";
import { guestErrors } from "../../abi/spec.ts";
import { estimateMeasure } from "../estimate.ts";
import { VPC_CREATE_OPTS, VPC_OWN, vpcCreateOptions, vpcEntropy } from "./options.ts";
import { planVpcCreate } from "./create_plan.ts";
import { vpcMeasure } from "./measure.ts";
import { vpcOutput } from "./output_plan.ts";
import { blocksTarget, createEmptiedFirst } from "../emptied_first.ts";
import { vpcResize } from "./resize.ts";
import { vpcStatusLayer } from "./block_status.ts";

export const vpcDriver: FormatDriver = {
  name: "vpc",
  code: formats.VPC,
  statusLayer: vpcStatusLayer,
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
  // vpc creates (empties) the file before its own checks.
  create: createEmptiedFirst(
    VPC_CREATE_OPTS,
    VPC_OWN,
    (opts) => planVpcCreate(vpcCreateOptions(opts), vpcEntropy()),
  ),
  measureEstimate: true,
  measure: estimateMeasure((opts, alloc) => vpcMeasure(vpcCreateOptions(opts), alloc)),
  convertTarget: blocksTarget((opts) => vpcOutput(vpcCreateOptions(opts), vpcEntropy())),
  resize: vpcResize,
};
