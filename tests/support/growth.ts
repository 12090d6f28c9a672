// Shared by the refcount growth tests (snapshot_growth, amend_growth,
// bitmap_growth): images of 512-byte clusters and 64-bit refcounts (one
// refcount block covers 64 clusters, a one-cluster table 2 MiB of file),
// the header's refcount table offset, and the comparison of instar's copy
// (i.qcow2) with qemu-img's (q.qcow2) after the same command.
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { exec, qemuImg, sh } from "../cli_helpers.ts";

/** qemu-img create options for the small refcount structures. */
export const SMALL_REFCOUNTS = ["-o", "cluster_size=512,refcount_bits=64"];

/** The header's refcount table offset. */
export async function reftableOffset(path: string): Promise<bigint> {
  const f = await Deno.open(path);
  try {
    const b = new Uint8Array(8);
    await f.seek(48, Deno.SeekMode.Start);
    await f.read(b);
    return new DataView(b.buffer).getBigUint64(0);
  } finally {
    f.close();
  }
}

/**
 * `qemu-img info --output=json` without the file's name and allocation
 * (actual-size: qemu's writes may leave the file a block larger; the bytes
 * themselves are compared with cmp); `dates`: nor the snapshots' dates.
 */
export async function growthInfo(dir: string, file: string, dates = true): Promise<Record<string, unknown>> {
  const o = JSON.parse((await qemuImg(["info", "--output=json", file], dir)).stdout);
  delete o.filename, delete o["actual-size"];
  if (!dates) { for (const s of o.snapshots ?? []) delete s["date-sec"], delete s["date-nsec"]; }
  return o;
}

/** q and i byte-identical (`cmp` of the two names given), i clean for `qemu-img check`, the same info. */
export async function sameFiles(dir: string, label: string, cmpNames = ["q.qcow2", "i.qcow2"], dates = true) {
  const cmp = await exec("cmp", cmpNames, dir);
  assertEquals(cmp.code, 0, `${label}: files differ: ${cmp.stdout}${cmp.stderr}`);
  const check = await qemuImg(["check", "i.qcow2"], dir);
  assertEquals(check.code, 0, `${label}: check: ${check.stdout}${check.stderr}`);
  assertEquals(
    await growthInfo(dir, "i.qcow2", dates),
    await growthInfo(dir, "q.qcow2", dates),
    `${label}: info`,
  );
}

/** The raw contents of the active layer and of every snapshot the same in q and i. */
export async function sameContents(dir: string, label: string) {
  const list = (await qemuImg(["snapshot", "-l", "i.qcow2"], dir)).stdout;
  const ids = list.split("\n").slice(2).filter((l) => l.trim()).map((l) => l.split(/\s+/)[0]);
  for (const id of ["", ...ids]) {
    const l = id ? ["-l", `snapshot.id=${id}`] : [];
    await sh(dir, "qemu-img", "convert", ...l, "-O", "raw", "q.qcow2", "q.raw");
    await sh(dir, "qemu-img", "convert", ...l, "-O", "raw", "i.qcow2", "i.raw");
    const c = await exec("cmp", ["q.raw", "i.raw"], dir);
    assertEquals(c.code, 0, `${label}: contents of ${id || "the active layer"}`);
  }
}
