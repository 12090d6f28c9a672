// What the guest reports about a raw input: only whether sector 0 holds a
// partition table (the host refuses unpartitioned raw unless asked, because
// qemu would happily treat any file, even another format, as a raw disk).
import { partitionKinds, records } from "../../abi/spec.ts";
import type { Rec } from "../../abi/records.ts";
import { GuestResultError } from "../qcow2/model.ts";

export interface RawModel {
  partition: "none" | "mbr" | "gpt";
}

export function rawModel(recs: Rec[], input: number): RawModel {
  const infos = recs.filter((r) => r.type === records.RAW_INFO && r.fields.input === input);
  if (infos.length !== 1) throw new GuestResultError(`expected one raw info record, got ${infos.length}`);
  const p = infos[0].fields.partition as number;
  switch (p) {
    case partitionKinds.NONE:
      return { partition: "none" };
    case partitionKinds.MBR:
      return { partition: "mbr" };
    case partitionKinds.GPT:
      return { partition: "gpt" };
  }
  throw new GuestResultError(`partition kind ${p} out of range`);
}

/** qemu's raw virtual size: the file length rounded up to whole sectors. */
export function rawVirtualSize(fileSize: bigint): bigint {
  return (fileSize + 511n) / 512n * 512n;
}
