// resize of a LUKS1 image: qemu 7.2's block_crypto_co_truncate passes the
// new size plus the payload offset to the file (raw_co_truncate), so growing
// or shrinking is a change of the file's length and the header stays as it
// is; --preallocation=falloc/full allocates the added tail as zeroes (they
// decrypt to noise, as in qemu), metadata is refused in file-posix's words.
// The command has unlocked the image first, as qemu's read-write open does.
import type { ResizeSupport } from "../types.ts";
import { planRawResize } from "../raw/resize_plan.ts";

export const luksResize: ResizeSupport = {
  async run(job, host) {
    const luks = job.image.luks;
    if (!luks) throw host.refuse("the LUKS header was not read");
    const plan = planRawResize({
      fileSize: job.image.fileSize,
      newSize: luks.payloadOffset + job.newSize,
      preallocation: job.preallocation,
    });
    if (!plan.ok) throw host.fail([plan.error.message]);
    await host.applySteps([plan.value], "Could not resize file", "discard");
  },
};
