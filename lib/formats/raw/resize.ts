// raw's resize (raw_co_truncate on file-posix): the file's new length, with
// the preallocation mode's allocation of the added range. No guest: a raw
// file has no metadata to read.
import type { ResizeSupport } from "../types.ts";
import { planRawResize } from "./resize_plan.ts";

export const rawResize: ResizeSupport = {
  async run(job, host) {
    const plan = planRawResize({
      fileSize: job.image.fileSize,
      newSize: job.newSize,
      preallocation: job.preallocation,
    });
    if (!plan.ok) throw host.fail([plan.error.message]);
    await host.applySteps([plan.value], "Could not resize file", "discard");
  },
};
