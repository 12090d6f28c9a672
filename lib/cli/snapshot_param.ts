// convert's and measure's `-l snapshot.id=I,snapshot.name=N | ID_OR_NAME`:
// qemu-img parses a parameter starting with "snapshot." as QemuOpts of
// internal_snapshot_opts (commas split, ",," escapes one, a bare key is a
// deprecated short-form boolean), anything else is an id or a name; then
// bdrv_snapshot_load_tmp[_by_id_or_name] picks the snapshot. The pick runs on
// the list the info guest decoded; the guest then reads that snapshot's L1.
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import type { SnapshotList } from "../formats/qcow2/snapshots.ts";

/** What -l asked for. */
export type SnapshotParam =
  | { kind: "opts"; id?: string; name?: string }
  | { kind: "idOrName"; value: string };

const OPTS = ["snapshot.id", "snapshot.name"];

/**
 * Parses -l as img_convert/img_measure do. Warnings qemu prints while parsing
 * are returned; a refusal throws qemu's two lines.
 */
export function parseSnapshotParam(arg: string): { param: SnapshotParam; warnings: string[] } {
  if (!arg.startsWith("snapshot.")) return { param: { kind: "idOrName", value: arg }, warnings: [] };
  const warnings: string[] = [];
  const param: SnapshotParam = { kind: "opts" };
  const fail = (why: string) => new CliError([...warnings, why, `Failed in parsing snapshot param '${arg}'`]);
  // qemu's get_opt_name_value over the string: name up to '=' or ',', value to an unescaped ','.
  let at = 0;
  while (at < arg.length) {
    let end = at;
    while (end < arg.length && arg[end] !== "=" && arg[end] !== ",") end++;
    let key = arg.slice(at, end);
    let value: string;
    if (arg[end] === "=") {
      value = "";
      let p = end + 1;
      for (; p < arg.length; p++) {
        if (arg[p] === ",") {
          if (arg[p + 1] !== ",") break;
          p++;
        }
        value += arg[p];
      }
      at = p + 1;
    } else {
      // A bare key: a short-form boolean, deprecated.
      const off = key.startsWith("no");
      const real = off ? key.slice(2) : key;
      warnings.push(
        `warning: short-form boolean option '${key}' deprecated\nPlease use ${real}=${
          off ? "off" : "on"
        } instead`,
      );
      key = real;
      value = off ? "off" : "on";
      at = end + 1;
    }
    // "id" names the QemuOpts itself; every other key must be one of the list's.
    if (key === "id") continue;
    if (!OPTS.includes(key)) throw fail(`Invalid parameter '${key}'`);
    // A repeated key: qemu_opt_get finds the last one set.
    if (key === "snapshot.id") param.id = value;
    else param.name = value;
  }
  return { param, warnings };
}

/** find_snapshot_by_id_and_name: -1 when nothing matches (or neither is given). */
export function findSnapshot(list: SnapshotList, id?: string, name?: string): number {
  if (id === undefined && name === undefined) return -1;
  const enc = new TextEncoder();
  const want = (b: Uint8Array, s: string | undefined) => {
    if (s === undefined) return true;
    const e = enc.encode(s);
    return e.length === b.length && e.every((x, i) => x === b[i]);
  };
  for (let i = 0; i < list.length; i++) {
    const sn = list.at(i);
    if (want(sn.id, id) && want(sn.name, name)) return i;
  }
  return -1;
}

/**
 * bdrv_snapshot_load_tmp on the opened top image: the guest's input_snapshot
 * value (k + 1) for the snapshot -l names, or qemu's error.
 */
export function loadSnapshot(img: OpenedImage, param: SnapshotParam): number {
  const fail = (why: string) => new CliError([`Failed to load snapshot: ${why}`]);
  if (!img.qcow2) {
    throw fail(
      `Block format '${img.format}' used by device '' does not support temporarily loading internal snapshots`,
    );
  }
  const list = img.qcow2.snapshots;
  let k = -1;
  if (list) {
    if (param.kind === "opts") k = findSnapshot(list, param.id, param.name);
    else {
      // bdrv_snapshot_load_tmp_by_id_or_name: by id first, then by name.
      k = findSnapshot(list, param.value, undefined);
      if (k < 0) k = findSnapshot(list, undefined, param.value);
    }
  }
  if (k < 0) throw fail("Can't find snapshot");
  return k + 1;
}
