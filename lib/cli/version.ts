// instar's version and the output profile it prints: the shape of the
// installed qemu-img (detected once per process), of the version forced
// with --qemu-version X.Y, or of the newest known one (lib/output/profile.ts).
import type { Profile } from "../output/profile.ts";

export const INSTAR_VERSION = "0.1.0";
/** The newest profile instar knows; used when no qemu-img is installed. */
export const NEWEST = { major: 10, minor: 0 };

export {
  atLeast,
  fullVersion,
  hasChildren,
  hasDirtyFlagAndPresent,
  hasMapCompressed,
  parseProfile,
  type Profile,
} from "../output/profile.ts";

let detected: Promise<Profile> | undefined;

const CLIENT_MAGIC = new TextEncoder().encode("INSTAR\x01\n");

/** Whether `path` is instar's own thin client installed as qemu-img (a small binary
 * carrying the protocol magic): asking it for its version would ask instar. */
function isInstarClient(path: string, size: number): boolean {
  if (size > 1 << 20) return false; // the client is ~20 KB, qemu-img megabytes
  try {
    const bytes = Deno.readFileSync(path);
    const first = CLIENT_MAGIC[0];
    for (let i = bytes.indexOf(first); i >= 0; i = bytes.indexOf(first, i + 1)) {
      if (CLIENT_MAGIC.every((b, j) => bytes[i + j] === b)) return true;
    }
  } catch { /* unreadable: not ours to judge, let the spawn decide */ }
  return false;
}

/** The qemu-img a bare `qemu-img` command would run (PATH search), skipping
 * instar's client installed under that name. */
function findQemuImg(): { path: string; key: string; first: boolean } | undefined {
  let first = true;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir.startsWith("/")) continue;
    const path = `${dir}/qemu-img`;
    try {
      const st = Deno.statSync(path);
      if (st.isFile && ((st.mode ?? 0o111) & 0o111)) {
        if (isInstarClient(path, st.size)) {
          first = false;
          continue;
        }
        return { path, key: `${path}\0${st.size}\0${st.mtime?.getTime() ?? 0}\0${st.ino ?? 0}`, first };
      }
    } catch { /* not here */ }
  }
  return undefined;
}

/** Where the detected version is cached between runs of the direct CLI. */
function cacheFile(): string | undefined {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg?.startsWith("/")) return `${xdg}/instar/qemu-img-version.json`;
  const home = Deno.env.get("HOME");
  return home?.startsWith("/") ? `${home}/.cache/instar/qemu-img-version.json` : undefined;
}

function profileOfVersion(v: string): Profile | null {
  const m = /^(\d+)\.(\d+)(?:\.\d+)?$/.exec(v);
  return m ? { major: Number(m[1]), minor: Number(m[2]), full: v } : null;
}

/** `qemu-img --version` of the installed qemu-img, once per process; the answer is
 * cached on disk keyed by the binary's path, size, mtime and inode, so the direct CLI
 * spawns qemu-img only after it changed. */
export function detectProfile(): Promise<Profile> {
  detected ??= (async () => {
    const bin = findQemuImg();
    if (!bin) return NEWEST;
    const cache = cacheFile();
    if (cache) {
      try {
        const c = JSON.parse(await Deno.readTextFile(cache));
        const p = c?.key === bin.key && typeof c.version === "string" ? profileOfVersion(c.version) : null;
        if (p) return p;
      } catch { /* no cache yet, or unreadable: ask qemu-img */ }
    }
    try {
      // By name when PATH finds it anyway (what `--allow-run=qemu-img` permits), else by path.
      const cmd = bin.first ? "qemu-img" : bin.path;
      const out = await new Deno.Command(cmd, { args: ["--version"], stdout: "piped", stderr: "null" })
        .output();
      const m = /qemu-img version ((\d+)\.(\d+)(?:\.\d+)?)/.exec(new TextDecoder().decode(out.stdout));
      if (out.success && m) {
        if (cache) await writeCache(cache, { key: bin.key, version: m[1] });
        return { major: Number(m[2]), minor: Number(m[3]), full: m[1] };
      }
    } catch {
      // Not runnable, or no permission to run it: use the newest profile.
    }
    return NEWEST;
  })();
  return detected;
}

async function writeCache(path: string, value: unknown): Promise<void> {
  try {
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
    const tmp = `${path}.${crypto.getRandomValues(new Uint32Array(1))[0]}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(value) + "\n", { mode: 0o600 });
    await Deno.rename(tmp, path);
  } catch { /* a read-only home: detect again next time */ }
}
