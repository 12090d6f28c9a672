// instar snapshot [--object obj] [--image-opts] [-U] [-q] [-l | -a S | -c S | -d S] FILE
//
// qemu-img's img_snapshot: options (no -f: the format is probed, or
// --image-opts driver= names it), one file name, the image opened with its backing chain, then the action. `-l`
// lists the snapshots the info guest decoded (lib/output/snapshots.ts); no
// action opens the image and does nothing, as qemu-img does. -c/-a/-d on a
// qcow2 image run lib/formats/qcow2/snapshot.ts (scan, plan, apply); other
// formats fail as qemu's block layer does for drivers without snapshots.
import { runScan } from "./scan_guest.ts";
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
import { openChain, type OpenedImage, OpenError, openFailure, openImage, unlockForRead } from "./image.ts";
import { makePolicy } from "../chain/policy.ts";
import { imageRef } from "./image_ref.ts";
import { snapshotTable } from "../output/snapshots.ts";
import { LOCKS } from "../vmm/image_lock.ts";
import { applySteps } from "./apply_steps.ts";
import { qcow2Snapshot, type SnapshotHost } from "../formats/qcow2/snapshot.ts";
import { resizeHost } from "./resize_host.ts";
import { hostPath } from "../host/context.ts";

type Action = "l" | "a" | "c" | "d";

export async function snapshotCommand(argv: string[], io: Io, base?: InstarOptions): Promise<number> {
  const o = newInstarOptions(base);
  let action: Action | undefined;
  let name = "";
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
        if (id !== "l") name = value!;
        break;
      case "q":
        break;
      case "U":
        forceShare = true;
        break;
    }
  });
  if (operands.length !== 1) throw usageError("Expecting one image file name");
  // --image-opts: one local file (lib/cli/image_ref.ts); qemu names the operand as given.
  const ref = imageRef(operands[0], undefined, o.imageOpts, io.err);
  const display = ref.display;
  const filename = ref.filename;

  // bdrv_open refuses BDRV_O_FORCE_SHARE on a read-write open before it looks at the file.
  if (forceShare && action !== "l") {
    throw new CliError([
      `Could not open '${display}': force-share=on can only be used with read-only images`,
    ]);
  }
  let top;
  try {
    // -l opens read-only; no action (and -c/-a/-d) read-write, as img_snapshot does.
    const lock = action === "l" ? readLock(forceShare) : LOCKS.write;
    top = await openImage(filename, { format: ref.format, unsafeQuirks: o.unsafeQuirks, lock });
    const chain = await openChain(
      top,
      await makePolicy(filename, o.backingDirs),
      o.unsafeQuirks,
      readLock(forceShare),
    );
    // --image-opts key-secret / encrypt.key-secret unlock an encrypted image (qemu's open checks the key).
    await unlockForRead(top, ref.keySecret, ref.keySecretOption, o.secrets, chain);
  } catch (e) {
    if (e instanceof OpenError) throw openFailure(display, e);
    throw e;
  }
  // qemu's raw driver warns on a probed read-write open (not with driver=raw); -a opens it a
  // second time (bdrv_snapshot_goto closes the driver, tries its file, reopens).
  const rawWarning = `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
    "         Automatically detecting the format is dangerous for raw images, " +
    "write operations on block 0 will be restricted.\n" +
    "         Specify the 'raw' format explicitly to remove the restrictions.\n";
  if (action !== "l" && top.raw && ref.format === undefined) {
    io.err(action === "a" ? rawWarning + rawWarning : rawWarning);
  }
  if (action !== "l" && top.qcow2?.corrupt) {
    // qcow2_do_open refuses a read-write open (no action opens read-write too).
    throw new CliError([
      `Could not open '${display}': qcow2: Image is corrupt; cannot be opened read/write`,
    ]);
  }
  if (action === undefined) return 0;
  if (action !== "l") {
    const q = top.qcow2;
    if (!q) {
      // bdrv_snapshot_*: no snapshot support in the driver or its file.
      if (action === "c") {
        throw new CliError([`Could not create snapshot '${name}': -95 (Operation not supported)`]);
      }
      if (action === "a") {
        throw new CliError([`Could not apply snapshot '${name}': Block driver does not support snapshots`]);
      }
      throw new CliError([`Could not delete snapshot '${name}': snapshot not found`]);
    }
    await qcow2Snapshot(q, action, name, snapshotHost(top));
    return 0;
  }
  // bdrv_snapshot_list: formats without internal snapshots list nothing.
  const q = top.qcow2;
  if (!q || q.nbSnapshots === 0) return 0;
  if (!q.snapshots) {
    throw new CliError([`Could not open '${display}': Sandbox failure: snapshots not listed`]);
  }
  snapshotTable(q.snapshots, io.out);
  return 0;
}

/** What the qcow2 snapshot driver gets from the command: the sandbox, the file, qemu's error shape. */
function snapshotHost(img: OpenedImage): SnapshotHost {
  return {
    scan: (args) =>
      runScan(
        "snapshot_scan",
        img,
        { format: img.formatCode, args },
        (why) => new CliError([`Could not open '${img.filename}': ${why}`]),
      ),
    applySteps: (steps) => applySteps(img, steps, "Could not write the snapshot", "off", "discard"),
    async resize(size, pre) {
      // qcow2_snapshot_goto's blk_truncate: qcow2's own resize, a shrink included.
      const support = img.driver.resize;
      if (!support) throw new CliError([`${pre}Image format driver does not support resize`]);
      await support.run(
        { filename: img.filename, image: img, newSize: size, shrink: true, preallocation: "off" },
        resizeHost(img, "off", (why) => new CliError([`${pre}${why}`])),
      );
      const st = await Deno.stat(hostPath(img.openPath));
      img.fileSize = BigInt(st.size);
    },
    fail: (lines) => new CliError(lines),
    now() {
      // g_get_real_time(): microseconds.
      const us = BigInt(Math.floor((performance.timeOrigin + performance.now()) * 1000));
      return { sec: Number(us / 1000000n), nsec: Number(us % 1000000n) * 1000 };
    },
  };
}
