// The dirty bits qemu's block layer sets in a base's enabled persistent
// bitmaps while `commit` writes into it (bdrv_set_dirty over every write,
// rounded out to each bitmap's granularity). The host knows the ranges it
// wrote (the mirror plan), never the bitmaps' bytes: it writes the ranges as
// raw bits past everything the store can allocate, and the bitmap_scan
// guest (merge mode, arg[3] = 2) ORs them into each enabled bitmap's data
// and stages the result next to them; the bitmap store
// (lib/formats/qcow2/bitmaps_reopen.ts) moves the staged clusters into the
// new bitmap structures and the file gets its length back. Also the
// bitmap_scan run both commit's bitmap stores start from.
import { runScan } from "./scan_guest.ts";
import { formats, ops, records } from "../abi/spec.ts";
import { runGuest } from "../vmm/guest.ts";
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";
import { hostPath } from "../host/context.ts";
import { qcow2ErrorMessage } from "../formats/qcow2/errors.ts";
import {
  BME_FLAG_AUTO,
  BME_FLAG_IN_USE,
  type Qcow2BitmapScan,
  tableSizeFor,
} from "../formats/qcow2/bitmap_plan.ts";
import type { StageDirty } from "../formats/qcow2/bitmaps_reopen.ts";

/** The most bytes of raw bits one bitmap may take (the guest's own bound). */
const MAX_RAW_BYTES = 64n << 20n;

/** Sets bits a..b (inclusive) of `bits`, LSB first in each byte (qemu's serialized bitmap). */
function setBits(bits: Uint8Array, a: number, b: number) {
  while (a <= b && (a & 7) !== 0) bits[a >> 3] |= 1 << (a++ & 7);
  if (b - a >= 7) {
    bits.fill(0xff, a >> 3, (b + 1) >> 3);
    a = ((b + 1) >> 3) << 3;
  }
  while (a <= b) bits[a >> 3] |= 1 << (a++ & 7);
}

/** Byte ranges [from, to) the command wrote, ascending. */
export type Ranges = [bigint, bigint][];

/** The stage step for the base `img` whose writes were `ranges`. */
export function stageDirty(img: OpenedImage, ranges: Ranges, what: string): StageDirty {
  return async (loaded: Qcow2BitmapScan, staging: bigint) => {
    const cs = loaded.model.clusterSize;
    const len = loaded.model.virtualSize & ~511n;
    const up = (v: bigint) => ((v + cs - 1n) / cs) * cs;
    // Inconsistent (in use before the reopen) bitmaps are never stored: not staged.
    const enabled = loaded.bitmaps.map((b, i) => ({ b, i })).filter(({ b }) =>
      (b.flags & BME_FLAG_AUTO) !== 0 && (b.flags & BME_FLAG_IN_USE) === 0
    );
    if (enabled.length === 0 || ranges.length === 0) return undefined;
    // Result regions first, then the raw bits of each bitmap.
    let at = staging;
    const jobs = enabled.map(({ b, i }) => {
      const entries = tableSizeFor(len, b.granularityBits, cs);
      const region = at;
      at += entries * cs;
      return { b, i, entries, region, raw: 0n, bits: new Uint8Array(0) };
    });
    for (const j of jobs) {
      const g = 1n << BigInt(j.b.granularityBits);
      const nd = len > 0n ? (len - 1n) / g + 1n : 0n;
      const bytes = (nd + 7n) / 8n;
      if (bytes > MAX_RAW_BYTES) {
        throw new CliError([`${what}: bitmap granularity too fine for instar to record the writes`]);
      }
      const bits = new Uint8Array(Number(bytes));
      for (const [from, to] of ranges) {
        const end = to < len ? to : len;
        if (end <= from) continue;
        setBits(bits, Number(from / g), Number((end - 1n) / g));
      }
      j.raw = at;
      j.bits = bits;
      at = up(at + bytes);
    }
    const before = (await Deno.stat(hostPath(img.openPath))).size;
    const cut = async () => {
      const f = await Deno.open(hostPath(img.openPath), { write: true });
      try {
        await f.truncate(before);
      } finally {
        f.close();
      }
    };
    const data = new Map<number, Map<bigint, bigint>>();
    try {
      const f = await Deno.open(hostPath(img.openPath), { write: true });
      try {
        for (const j of jobs) {
          await f.seek(Number(j.raw), Deno.SeekMode.Start);
          for (let o = 0; o < j.bits.length;) o += await f.write(j.bits.subarray(o));
        }
        if (BigInt((await f.stat()).size) < at) await f.truncate(Number(at));
        await f.syncData();
      } finally {
        f.close();
      }
      for (const j of jobs) {
        const result = await runGuest({
          op: "bitmap_scan",
          opCode: ops.BITMAP_SCAN,
          inputs: [{ path: img.openPath, format: formats.QCOW2, nofollow: true }],
          args: [1n, BigInt(j.i), 0n, 2n, j.region, BigInt(j.b.granularityBits), j.raw, 1n],
          output: { path: img.openPath, cap: j.region + j.entries * cs },
          resultCap: 64 * 1024 * 1024,
        });
        const err = result.records.find((r) => r.type === records.ERROR);
        if (err || result.guestStatus !== 0n) {
          const e = err?.fields;
          throw new CliError([
            `${what}: ${
              e
                ? qcow2ErrorMessage({
                  code: e.code as number,
                  a0: e.a0 as bigint,
                  a1: e.a1 as bigint,
                  a2: e.a2 as bigint,
                })
                : "sandbox failure"
            }`,
          ]);
        }
        const m = new Map<bigint, bigint>();
        for (const r of result.records) {
          if (r.type !== records.BITMAP_ENTRY) continue;
          const k = r.fields.index as bigint, v = r.fields.value as bigint;
          if (
            k >= j.entries || v !== j.region + k * cs || m.has(k) ||
            (r.fields.bitmap as number) !== 0xffffffff
          ) {
            throw new CliError([`${what}: sandbox failure: malformed merge result`]);
          }
          m.set(k, v);
        }
        data.set(j.i, m);
      }
    } catch (e) {
      await cut();
      if (e instanceof CliError) throw e;
      throw new CliError([`${what}: sandbox failure: ${e instanceof Error ? e.message : String(e)}`]);
    }
    img.fileSize = at;
    return { data, fileEnd: at };
  };
}

/** The bitmap_scan guest's records of a qcow2 image as it is now. */
export async function bitmapScanOf(img: OpenedImage, what: string) {
  const result = await runScan(
    "bitmap_scan",
    img,
    { format: formats.QCOW2, nofollow: true },
    (why) => new CliError([`${what}: ${why}`]),
  );
  if (result.guestStatus !== 0n && !result.records.some((r) => r.type === records.ERROR)) {
    throw new CliError([`${what}: sandbox failure: the scan reported no outcome`]);
  }
  return { records: result.records, fileSize: result.fileSize };
}
