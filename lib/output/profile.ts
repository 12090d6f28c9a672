// Output profiles: qemu-img changed its output across versions; the
// printers (lib/output) ask these predicates which shape to emit. The CLI
// detects the installed qemu-img's profile (lib/cli/version.ts).
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
