// Errors the CLI reports. Every line is printed as "instar: <line>" on stderr,
// the way qemu-img's error_report prefixes "qemu-img: ".
export const PROGRAM = "instar";

export class CliError extends Error {
  /** @param lines one error_report() line each
   *  @param tryHelp append qemu-img's "Try ... --help" hint (error_exit)
   *  @param code exit status */
  constructor(readonly lines: string[], readonly tryHelp = false, readonly code = 1) {
    super(lines.join("\n"));
    this.name = "CliError";
  }
}

/** qemu-img's error_exit(): message plus the help hint, exit 1. */
export function usageError(message: string): CliError {
  return new CliError([message], true);
}

export function formatError(e: CliError): string {
  let out = e.lines.map((l) => `${PROGRAM}: ${l}\n`).join("");
  if (e.tryHelp) out += `Try '${PROGRAM} --help' for more information\n`;
  return out;
}
