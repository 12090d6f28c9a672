// Pieces every subcommand shares: output streams, instar's own options,
// --output parsing and the output profile.
import { CliError, usageError } from "./messages.ts";
import type { LongOption } from "./getopt.ts";
import { detectProfile, parseProfile, type Profile } from "./version.ts";

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

/** Options instar adds to qemu-img's syntax (accepted by every subcommand). */
export interface InstarOptions {
  qemuVersion?: string;
  unsafeQuirks: boolean;
  backingDirs: string[];
}

export const INSTAR_LONGS: LongOption[] = [
  { name: "qemu-version", hasArg: true, id: "qemu-version" },
  { name: "unsafe-quirks", hasArg: false, id: "unsafe-quirks" },
  { name: "backing-dir", hasArg: true, id: "backing-dir" },
];

export function newInstarOptions(base?: InstarOptions): InstarOptions {
  return { qemuVersion: base?.qemuVersion, unsafeQuirks: base?.unsafeQuirks ?? false, backingDirs: [...(base?.backingDirs ?? [])] };
}

/** Handles one of instar's own options; false if `id` is not one. */
export function instarOption(o: InstarOptions, id: string, value?: string): boolean {
  switch (id) {
    case "qemu-version":
      if (!parseProfile(value!)) throw usageError(`Invalid --qemu-version '${value}' (expected X.Y)`);
      o.qemuVersion = value;
      return true;
    case "unsafe-quirks":
      o.unsafeQuirks = true;
      return true;
    case "backing-dir":
      o.backingDirs.push(value!);
      return true;
  }
  return false;
}

export async function profileOf(o: InstarOptions): Promise<Profile> {
  if (o.qemuVersion) return parseProfile(o.qemuVersion)!;
  return await detectProfile();
}

export type OutputFormat = "human" | "json";

/** qemu-img's --output check (after the file name check, before opening). */
export function outputFormat(output: string | undefined): OutputFormat {
  if (output === undefined || output === "human") return "human";
  if (output === "json") return "json";
  throw new CliError(["--output must be used with human or json as argument."]);
}

export function expectOneFile(operands: string[]): string {
  if (operands.length !== 1) throw usageError("Expecting one image file name");
  return operands[0];
}
