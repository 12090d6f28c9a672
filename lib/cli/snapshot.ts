// instar snapshot [--object obj] [--image-opts] [-U] [-q] [-l | -a S | -c S | -d S] FILE
//
// qemu-img's img_snapshot: options (no -f: the format is always probed), one
// file name, the image opened with its backing chain, then the action. `-l`
// lists the snapshots the info guest decoded (lib/output/snapshots.ts); no
// action opens the image and does nothing, as qemu-img does. -c/-a/-d are
// refused until their planner exists.
import { getopt } from "./getopt.ts";
import { CliError, usageError } from "./messages.ts";
import {
  HelpRequested,
  INSTAR_LONGS,
  instarOption,
  type InstarOptions,
  type Io,
  newInstarOptions,
  readLock,
} from "./common.ts";
import { needsNoKey, openChain, OpenError, openFailure, openImage } from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { snapshotTable } from "../output/snapshots.ts";
import { LOCKS } from "../vmm/image_lock.ts";

type Action = "l" | "a" | "c" | "d";

export async function snapshotCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let action: Action | undefined;
  let forceShare = false;
  const operands = getopt(argv, ":la:c:d:hqU", [
    { name: "help", hasArg: false, id: "h" },
    { name: "object", hasArg: true, id: "object" },
    { name: "image-opts", hasArg: false, id: "image-opts" },
    { name: "force-share", hasArg: false, id: "U" },
    ...INSTAR_LONGS,
  ], ({ id, value }) => {
    if (instarOption(o, id, value)) return;
    switch (id) {
      case "h":
        throw new HelpRequested();
      case "l":
      case "a":
      case "c":
      case "d":
        if (action) throw usageError("Cannot mix '-l', '-a', '-c', '-d'");
        action = id;
        void value;
        break;
      case "q":
        break;
      case "U":
        forceShare = true;
        break;
    }
  });
  // --image-opts: only the reading commands take it so far (docs/encryption.md).
  if (o.imageOpts) throw new CliError(["--image-opts is not supported by instar snapshot yet"]);
  if (operands.length !== 1) throw usageError("Expecting one image file name");
  const filename = operands[0];

  // bdrv_open refuses BDRV_O_FORCE_SHARE on a read-write open before it looks at the file.
  if (forceShare && action !== "l") {
    throw new CliError([
      `Could not open '${filename}': force-share=on can only be used with read-only images`,
    ]);
  }
  let top;
  try {
    // -l opens read-only; no action (and -c/-a/-d) read-write, as img_snapshot does.
    const lock = action === "l" ? readLock(forceShare) : LOCKS.write;
    top = await openImage(filename, { unsafeQuirks: o.unsafeQuirks, lock });
    await openChain(top, await makePolicy(filename, o.backingDirs), o.unsafeQuirks, readLock(forceShare));
    needsNoKey(top);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(filename, e);
    throw e;
  }
  if (action === undefined) return 0;
  if (action !== "l") throw new CliError([`snapshot -${action} is not implemented by instar yet`]);
  // bdrv_snapshot_list: formats without internal snapshots list nothing.
  const q = top.qcow2;
  if (!q || q.nbSnapshots === 0) return 0;
  if (!q.snapshots) {
    throw new CliError([`Could not open '${filename}': Sandbox failure: snapshots not listed`]);
  }
  snapshotTable(q.snapshots, io.out);
  return 0;
}
