// Output profiles: qemu-img changed its output across versions, so instar
// prints the shape of the installed qemu-img (detected once per process),
// of the version forced with --qemu-version X.Y, or of the newest known one.

export const INSTAR_VERSION = "0.1.0";
/** The newest profile instar knows; used when no qemu-img is installed. */
export const NEWEST = { major: 10, minor: 0 };

export interface Profile {
  major: number;
  minor: number;
  /** The full version qemu-img printed ("7.2.22"), when detected. */
  full?: string;
}

/** "X.Y.Z" of a profile, for `--version` ("10.0.0" for a bare X.Y). */
export function fullVersion(p: Profile): string {
  return p.full ?? `${p.major}.${p.minor}.0`;
}

export function atLeast(p: Profile, major: number, minor: number): boolean {
  return p.major > major || (p.major === major && p.minor >= minor);
}

/** ≥ 6.1: "dirty-flag" in info JSON; "present" in map JSON. */
export const hasDirtyFlagAndPresent = (p: Profile) => atLeast(p, 6, 1);
/** ≥ 8.0: info "children" (JSON) and the "Child node '/file':" section (human). */
export const hasChildren = (p: Profile) => atLeast(p, 8, 0);
/** ≥ 8.2: map JSON "compressed". */
export const hasMapCompressed = (p: Profile) => atLeast(p, 8, 2);

export function parseProfile(text: string): Profile | null {
  const m = /^(\d{1,3})\.(\d{1,3})(\.\d+)?$/.exec(text);
  return m ? { major: Number(m[1]), minor: Number(m[2]), ...(m[3] ? { full: text } : {}) } : null;
}

let detected: Promise<Profile> | undefined;

/** `qemu-img --version` of the installed qemu-img, once per process. */
export function detectProfile(): Promise<Profile> {
  detected ??= (async () => {
    try {
      const out = await new Deno.Command("qemu-img", { args: ["--version"], stdout: "piped", stderr: "null" })
        .output();
      const m = /qemu-img version ((\d+)\.(\d+)(?:\.\d+)?)/.exec(new TextDecoder().decode(out.stdout));
      if (out.success && m) return { major: Number(m[2]), minor: Number(m[3]), full: m[1] };
    } catch {
      // Not installed, or no permission to run it: use the newest profile.
    }
    return NEWEST;
  })();
  return detected;
}
