// qemu's internal-snapshot listing (block/qapi.c bdrv_snapshot_dump, shared by
// `info` and `snapshot -l`), the SnapshotInfo QDict of info's JSON, and the
// Qcow2BitmapInfo QDicts of the qcow2 format-specific block.
import { ChunkWriter, QDict, quoteJson } from "./qdict.ts";
import { sizeToStr } from "./size.ts";
import type { Qcow2Bitmap, Qcow2Snapshot } from "../formats/qcow2/snapshots.ts";

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const text = (b: Uint8Array) => decoder.decode(b);
// deno-lint-ignore no-control-regex
const utf8Len = (s: string) => /^[\x00-\x7f]*$/.test(s) ? s.length : encoder.encode(s).length;

// Most snapshots share a few VM state sizes (0 for disk-only snapshots).
const sizes = new Map<bigint, string>();
function sizeText(n: bigint): string {
  let t = sizes.get(n);
  if (t === undefined) {
    t = sizeToStr(n);
    if (sizes.size < 1024) sizes.set(n, t);
  }
  return t;
}

/** printf's %-Ns / %Ns: pads by bytes, never cuts. */
function padRight(s: string, width: number): string {
  return s + " ".repeat(Math.max(0, width - utf8Len(s)));
}
function padLeft(s: string, width: number): string {
  return " ".repeat(Math.max(0, width - utf8Len(s))) + s;
}

const two = (n: bigint) => n.toString().padStart(2, "0");

/** strftime("%Y-%m-%d %H:%M:%S") of localtime_r(sec), as qemu prints a snapshot's date. */
export function snapshotDate(sec: number): string {
  const d = new Date(sec * 1000);
  const p = (n: number) => n.toString().padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The header line, without its newline. */
export const SNAPSHOT_HEADER = "ID".padEnd(10) + "TAG".padEnd(17) + "VM SIZE".padStart(8) +
  "DATE".padStart(20) + "VM CLOCK".padStart(13) + "ICOUNT".padStart(11);

/** One snapshot's line, without its newline ("%-9s %-16s %8s%20s%13s%11s"). */
export function snapshotLine(sn: Qcow2Snapshot): string {
  const ns = sn.vmClockNsec;
  const secs = ns / 1000000000n;
  // qemu casts each part to int; hours stay below 2^31 for any u64 clock.
  const clock = `${two(secs / 3600n)}:${two((secs / 60n) % 60n)}:${two(secs % 60n)}.` +
    ((ns / 1000000n) % 1000n).toString().padStart(3, "0");
  const icount = sn.icount === undefined ? "" : BigInt.asIntN(64, sn.icount).toString();
  // join() makes one flat string (65,536 lines of concatenations would stay ropes).
  return [
    padRight(text(sn.id), 9),
    " ",
    padRight(text(sn.name), 16),
    " ",
    padLeft(sizeText(sn.vmStateSize), 8),
    padLeft(snapshotDate(sn.dateSec), 20),
    padLeft(clock, 13),
    padLeft(icount, 11),
  ].join("");
}

/** "Snapshot list:" and the table, as info and `snapshot -l` print it. */
export function snapshotTable(list: Iterable<Qcow2Snapshot>, sink?: (chunk: string) => void): string {
  const w = new ChunkWriter(sink);
  writeSnapshotTable(list, w);
  w.flush();
  return w.text();
}

export function writeSnapshotTable(list: Iterable<Qcow2Snapshot>, w: ChunkWriter): void {
  w.push("Snapshot list:\n", SNAPSHOT_HEADER, "\n");
  for (const sn of list) w.push(snapshotLine(sn), "\n");
}

/** SnapshotInfo (fields in QAPI schema order). */
export function snapshotInfoDict(sn: Qcow2Snapshot): QDict {
  const d = new QDict();
  d.put("id", sn.id);
  d.put("name", sn.name);
  // QAPI 'int' fields: qemu stores the unsigned values into int64_t.
  d.put("vm-state-size", BigInt.asIntN(64, sn.vmStateSize));
  d.put("date-sec", BigInt(sn.dateSec));
  d.put("date-nsec", BigInt(sn.dateNsec));
  d.put("vm-clock-sec", sn.vmClockNsec / 1000000000n);
  d.put("vm-clock-nsec", sn.vmClockNsec % 1000000000n);
  if (sn.icount !== undefined) d.put("icount", BigInt.asIntN(64, sn.icount));
  return d;
}

// The key order of a SnapshotInfo dict depends only on which keys it has.
const keyOrder = (withIcount: boolean) =>
  snapshotInfoDict({
    id: new Uint8Array(),
    name: new Uint8Array(),
    vmStateSize: 0n,
    dateSec: 0,
    dateNsec: 0,
    vmClockNsec: 0n,
    icount: withIcount ? 0n : undefined,
  }).entries().map(([k]) => k);
const ORDER = [keyOrder(false), keyOrder(true)];

/** toJsonPretty(snapshotInfoDict(sn)) at `depth`, without building the dict. */
export function snapshotInfoJson(sn: Qcow2Snapshot, depth: number): string {
  const values: Record<string, string> = {
    id: quoteJson(sn.id),
    name: quoteJson(sn.name),
    "vm-state-size": BigInt.asIntN(64, sn.vmStateSize).toString(),
    "date-sec": sn.dateSec.toString(),
    "date-nsec": sn.dateNsec.toString(),
    "vm-clock-sec": (sn.vmClockNsec / 1000000000n).toString(),
    "vm-clock-nsec": (sn.vmClockNsec % 1000000000n).toString(),
  };
  if (sn.icount !== undefined) values.icount = BigInt.asIntN(64, sn.icount).toString();
  const inner = "\n" + " ".repeat((depth + 1) * 4);
  const parts = ["{"];
  ORDER[sn.icount === undefined ? 0 : 1].forEach((k, i) =>
    parts.push(i ? "," : "", inner, `"${k}": `, values[k])
  );
  parts.push("\n", " ".repeat(depth * 4), "}");
  return parts.join("");
}

/** Qcow2BitmapInfo (name, granularity, flags in schema order). */
export function bitmapInfoDict(bm: Qcow2Bitmap): QDict {
  const flags: string[] = [];
  if (bm.inUse) flags.push("in-use");
  if (bm.auto) flags.push("auto");
  return new QDict().put("name", bm.name).put("granularity", bm.granularity).put("flags", flags);
}
