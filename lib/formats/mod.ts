// The format table: every format instar knows by name, and what it does
// with each (lib/formats/types.ts FormatDriver). Commands look a driver up
// here and never branch on a format name; adding a format is two folders
// (lib/formats/<fmt>, guest/<fmt>) and one row below.
import { qcow2Driver } from "./qcow2/driver.ts";
import { rawDriver } from "./raw/driver.ts";
import { vpcDriver } from "./vpc/driver.ts";
import { vhdxDriver } from "./vhdx/driver.ts";
import { vmdkDriver } from "./vmdk/driver.ts";
import { luksDriver } from "./luks/driver.ts";
import type { FormatDriver } from "./types.ts";

export type { FormatDriver } from "./types.ts";

/** qemu image formats instar knows the names of but does not handle (yet). */
const NAMED_ONLY = ["bochs", "cloop", "dmg", "parallels", "qcow", "qed", "vdi", "vvfat"];

/** qemu protocol and filter drivers: valid -f names to qemu, never image formats to instar. */
const PROTOCOLS = [
  "blkdebug",
  "blklogwrites",
  "blkverify",
  "compress",
  "copy-before-write",
  "copy-on-read",
  "file",
  "ftp",
  "ftps",
  "host_cdrom",
  "host_device",
  "http",
  "https",
  "iscsi",
  "nbd",
  "nfs",
  "null-aio",
  "null-co",
  "nvme",
  "preallocate",
  "quorum",
  "rbd",
  "replication",
  "snapshot-access",
  "ssh",
  "throttle",
];

export const FORMATS: readonly FormatDriver[] = [
  qcow2Driver,
  rawDriver,
  vpcDriver,
  vhdxDriver,
  vmdkDriver,
  luksDriver,
  ...NAMED_ONLY.map((name) => ({ name })),
];

/** The image format driver called `name`, if instar knows one. */
export function driverFor(name: string): FormatDriver | undefined {
  return FORMATS.find((d) => d.name === name);
}

/** The driver whose guest format code is `code`. */
export function driverForCode(code: number): FormatDriver | undefined {
  return FORMATS.find((d) => d.code !== undefined && d.code === code);
}

/** qemu knows `name` as a block driver (a format, or a protocol/filter). */
export function isQemuDriver(name: string): boolean {
  return driverFor(name) !== undefined || PROTOCOLS.includes(name);
}
