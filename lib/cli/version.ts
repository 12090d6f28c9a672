// instar's version and the output profile it prints: the shape of the
// installed qemu-img (detected once per process), of the version forced
// with --qemu-version X.Y, or of the newest known one (lib/output/profile.ts).
import type { Profile } from "../output/profile.ts";

export const INSTAR_VERSION = "0.1.0";
/** The newest profile instar knows; used when no qemu-img is installed. */
export const NEWEST = { major: 10, minor: 0 };

export { atLeast, hasChildren, hasDirtyFlagAndPresent, hasMapCompressed, parseProfile, type Profile } from "../output/profile.ts";

let detected: Promise<Profile> | undefined;

/** `qemu-img --version` of the installed qemu-img, once per process. */
export function detectProfile(): Promise<Profile> {
  detected ??= (async () => {
    try {
      const out = await new Deno.Command("qemu-img", { args: ["--version"], stdout: "piped", stderr: "null" })
        .output();
      const m = /qemu-img version (\d+)\.(\d+)/.exec(new TextDecoder().decode(out.stdout));
      if (out.success && m) return { major: Number(m[1]), minor: Number(m[2]) };
    } catch {
      // Not installed, or no permission to run it: use the newest profile.
    }
    return NEWEST;
  })();
  return detected;
}
