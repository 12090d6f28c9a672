// The files a multi-file VMDK consists of, named and sized as qemu 7.2's
// vmdk_co_do_create names and sizes them: monolithicFlat writes NAME (the
// descriptor) and PREFIX-flat.POSTFIX; twoGbMaxExtent* cut the disk into
// 2 GiB extents PREFIX-s001.POSTFIX (sparse) or PREFIX-f001.POSTFIX (flat),
// in order. PREFIX and POSTFIX come from qemu's filename_decompose.
import type { VmdkSubformat } from "./create_plan.ts";

/** twoGbMaxExtent*: every extent but the last holds this many bytes. */
export const VMDK_SPLIT_SIZE = 2n << 30n;

export interface VmdkExtentFile {
  /** The file's path as qemu builds it (the target's directory part + name). */
  path: string;
  /** The name the descriptor's extent line carries. */
  name: string;
  /** Guest bytes [from, to) live in this file. */
  from: bigint;
  to: bigint;
  flat: boolean;
}

/** qemu's filename_decompose: directory part (through the last '/', '\' or ':'), prefix, postfix. */
export function decomposeFilename(filename: string): { path: string; prefix: string; postfix: string } {
  let sep = filename.lastIndexOf("/");
  if (sep < 0) sep = filename.lastIndexOf("\\");
  if (sep < 0) sep = filename.lastIndexOf(":");
  const path = filename.slice(0, sep + 1);
  const base = filename.slice(sep + 1);
  const dot = base.lastIndexOf(".");
  return dot < 0
    ? { path, prefix: base, postfix: "" }
    : { path, prefix: base.slice(0, dot), postfix: base.slice(dot) };
}

/** The extent files of a multi-file subformat for a disk of `size` bytes (whole sectors). */
export function vmdkExtentFiles(filename: string, sub: VmdkSubformat, size: bigint): VmdkExtentFile[] {
  const { path, prefix, postfix } = decomposeFilename(filename);
  const flat = sub === "monolithicFlat" || sub === "twoGbMaxExtentFlat";
  // qemu creates extents while it has bytes left: none for an empty disk.
  if (sub === "monolithicFlat" && size > 0n) {
    const name = `${prefix}-flat${postfix}`;
    return [{ path: path + name, name, from: 0n, to: size, flat }];
  }
  const files: VmdkExtentFile[] = [];
  if (sub === "monolithicFlat") return files;
  for (let at = 0n, i = 1; at < size; at += VMDK_SPLIT_SIZE, i++) {
    const name = `${prefix}-${flat ? "f" : "s"}${String(i).padStart(3, "0")}${postfix}`;
    const to = size - at < VMDK_SPLIT_SIZE ? size : at + VMDK_SPLIT_SIZE;
    files.push({ path: path + name, name, from: at, to, flat });
  }
  return files;
}

/** The descriptor's line for one extent ("RW <sectors> FLAT|SPARSE "<name>"[ 0]"). */
export function vmdkExtentLine(e: VmdkExtentFile): string {
  const sectors = (e.to - e.from) / 512n;
  return e.flat ? `RW ${sectors} FLAT "${e.name}" 0\n` : `RW ${sectors} SPARSE "${e.name}"\n`;
}
