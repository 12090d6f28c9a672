// convert's source: the image named (or stdin, spooled into an unnamed
// file when it is not read in one pass) opened with its backing chain
// under qemu's read lock, and an encrypted top unlocked (or its unlock left
// to the reading guests, lib/convert/target_files.ts deferUnlock). Open
// failures are qemu's "Could not open" lines.
import type { UnnamedFile } from "../vmm/unnamed_file.ts";
import { spoolStdin } from "../host/stdio_stream.ts";
import { makePolicy } from "../chain/policy.ts";
import { streamStep } from "../convert/stdio_target.ts";
import { type InstarOptions, readLock } from "./common.ts";
import { openChain, type OpenedImage, OpenError, openFailure, openImage, unlockForRead } from "./image.ts";
import type { ImageRef } from "./image_ref.ts";
import { openStdinImage } from "./stdin_image.ts";

export interface SourceRequest {
  /** -U */
  forceShare: boolean;
  /** -l given: the snapshot list is needed to pick the one it names. */
  snapshot: boolean;
  /** --max-spool */
  maxSpool: bigint;
  /** stdin read in one pass: nothing is opened (an empty chain). */
  onePass: boolean;
  /** A vmdk stream's bytes already read (lib/convert/stdin_pass.ts), spooled first. */
  spoolPrefix?: { path: string; len: bigint };
  /** The unlock is left to the reading guests. */
  deferUnlock: () => Promise<boolean>;
  /** The spool of a stdin source, as soon as it exists (the caller closes it). */
  onSpool: (spool: UnnamedFile) => void;
}

/** The source chain, top first (empty for a one-pass stdin). */
export async function openConvertSource(
  ref: ImageRef,
  r: SourceRequest,
  o: InstarOptions,
): Promise<OpenedImage[]> {
  const source = ref.filename;
  let chain: OpenedImage[];
  try {
    const lock = readLock(r.forceShare);
    // The snapshot list is needed only to pick the one -l names.
    const noLists = !r.snapshot;
    if (r.onePass) {
      chain = [];
    } else if (source === "-") {
      const spool = await streamStep(() => spoolStdin(r.maxSpool, r.spoolPrefix), source);
      r.onSpool(spool);
      chain = [
        await openStdinImage(source, spool.path, {
          format: ref.format,
          unsafeQuirks: o.unsafeQuirks,
          noLists,
        }),
      ];
    } else {
      const top = await openImage(source, {
        format: ref.format,
        unsafeQuirks: o.unsafeQuirks,
        backingDirs: o.backingDirs,
        lock,
        noLists,
        readsData: true,
        encryptFormat: ref.encryptFormat,
      });
      chain = await openChain(top, await makePolicy(source, o.backingDirs), o.unsafeQuirks, lock);
    }
    if (!r.onePass) {
      await unlockForRead(
        chain[0],
        ref.keySecret,
        ref.keySecretOption,
        o.secrets,
        chain,
        await r.deferUnlock(),
      );
    }
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(ref.display, e);
    throw e;
  }
  return chain;
}
