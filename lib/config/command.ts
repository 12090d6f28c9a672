import type { InstarOptions, Io } from "../cli/common.ts";
export async function configCommand(_argv: string[], io: Io, _base?: InstarOptions): Promise<number> {
  io.out("TODO\n");
  return 0;
}
