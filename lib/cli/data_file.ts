// Commands that read image data refuse a chain whose images name an external
// data file: instar never opens a file an image names outside its backing
// chain (CVE-2024-32498) until data files get the allowlist's treatment.
import { CliError } from "./messages.ts";
import type { OpenedImage } from "./image.ts";

/** Throws the refusal for `command` when any image of `chain` names a data file. */
export function refuseDataFile(chain: OpenedImage[], filename: string, command: string, code = 1): void {
  if (!chain.some((img) => img.namesDataFile)) return;
  throw new CliError(
    [
      `Could not open '${filename}': Refusing to read an external data file named by the image ` +
      `(instar ${command} never opens files an image names outside its backing chain)`,
    ],
    false,
    code,
  );
}
