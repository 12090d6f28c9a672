// The backing-file allowlist a caller need not pass on every command line
// (docs/config.md). Merged in this order:
//   1. the system file   /etc/instar/instar.toml ($INSTAR_SYSTEM_CONFIG overrides the path)
//   2. the user file     $XDG_CONFIG_HOME/instar/instar.toml, else ~/.config/instar/instar.toml
//   3. INSTAR_BACKING_DIRS  colon-separated directories
//   4. --backing-dir DIR    (repeatable)
// Directories accumulate; `image_dir` (follow files in the top image's own
// directory, default true) is taken from the last file that sets it. With
// image_dir = false and no directories the policy is empty: no backing
// file, data file or extent is ever opened (the upload-gate setting).
//
// The files are TOML, parsed by smol-toml (a maintained, dependency-free,
// spec-compliant parser from the npm registry, pinned), loaded only when a
// file exists so commands on machines without one pay nothing.
import { hostEnv, hostPath } from "../host/context.ts";

export const SYSTEM_CONFIG = "/etc/instar/instar.toml";

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

export interface PolicySource {
  /** "system file", "user file", "INSTAR_BACKING_DIRS", "--backing-dir". */
  source: string;
  /** The file's path (for files). */
  path?: string;
  present: boolean;
  imageDir?: boolean;
  dirs: string[];
}

export interface EffectivePolicy {
  imageDir: boolean;
  /** Directories in merge order, each with where it came from. */
  dirs: { dir: string; source: string }[];
  sources: PolicySource[];
}

export function systemConfigPath(): string {
  return hostEnv("INSTAR_SYSTEM_CONFIG") || SYSTEM_CONFIG;
}

export function userConfigPath(): string | undefined {
  const xdg = hostEnv("XDG_CONFIG_HOME");
  if (xdg && xdg.startsWith("/")) return `${xdg}/instar/instar.toml`;
  const home = hostEnv("HOME");
  return home ? `${home}/.config/instar/instar.toml` : undefined;
}

type Toml = Record<string, unknown>;

async function parseToml(text: string, path: string): Promise<Toml> {
  // Inline and pinned (deno.lock holds its hash): instar runs as `deno run /path/main.ts`
  // from any directory, where an import map in deno.json would not be found.
  // deno-lint-ignore no-import-prefix
  const { parse } = await import("npm:smol-toml@1.9.1");
  try {
    return parse(text) as Toml;
  } catch (e) {
    throw new ConfigError(
      `Invalid config file '${path}': ${e instanceof Error ? e.message.split("\n")[0] : e}`,
    );
  }
}

/** Reads one config file; a missing file is an absent source. */
export async function readConfigFile(source: string, path: string): Promise<PolicySource> {
  let text: string;
  try {
    text = await Deno.readTextFile(hostPath(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { source, path, present: false, dirs: [] };
    throw new ConfigError(`Cannot read config file '${path}': ${e instanceof Error ? e.message : e}`);
  }
  const doc = await parseToml(text, path);
  const bad = (what: string) => new ConfigError(`Invalid config file '${path}': ${what}`);
  for (const k of Object.keys(doc)) if (k !== "backing") throw bad(`unknown table or key '${k}'`);
  const b = doc.backing ?? {};
  if (typeof b !== "object" || b === null || Array.isArray(b)) throw bad("'backing' must be a table");
  const out: PolicySource = { source, path, present: true, dirs: [] };
  for (const [k, v] of Object.entries(b as Toml)) {
    if (k === "image_dir") {
      if (typeof v !== "boolean") throw bad("backing.image_dir must be true or false");
      out.imageDir = v;
    } else if (k === "dirs") {
      if (!Array.isArray(v) || !v.every((d) => typeof d === "string")) {
        throw bad("backing.dirs must be an array of strings");
      }
      for (const d of v as string[]) {
        if (!d.startsWith("/")) throw bad(`backing.dirs entry '${d}' is not an absolute path`);
        out.dirs.push(d);
      }
    } else throw bad(`unknown key 'backing.${k}'`);
  }
  return out;
}

/** The merged policy (see the module comment). `cliDirs` are --backing-dir values. */
export async function effectivePolicy(cliDirs: string[] = []): Promise<EffectivePolicy> {
  const sources: PolicySource[] = [await readConfigFile("system file", systemConfigPath())];
  const user = userConfigPath();
  if (user) sources.push(await readConfigFile("user file", user));
  const env = hostEnv("INSTAR_BACKING_DIRS");
  sources.push({
    source: "INSTAR_BACKING_DIRS",
    present: env !== undefined,
    dirs: (env ?? "").split(":").filter((d) => d !== ""),
  });
  sources.push({ source: "--backing-dir", present: cliDirs.length > 0, dirs: [...cliDirs] });
  let imageDir = true;
  const dirs: EffectivePolicy["dirs"] = [];
  for (const s of sources) {
    if (s.imageDir !== undefined) imageDir = s.imageDir;
    for (const d of s.dirs) dirs.push({ dir: d, source: s.source });
  }
  return { imageDir, dirs, sources };
}

function tomlString(s: string): string {
  return JSON.stringify(s); // a TOML basic string is JSON's, for the characters paths hold
}

/** `instar config`: the effective policy, as a TOML file that would give it. */
export function describePolicy(p: EffectivePolicy): string {
  const lines = ["# instar's effective backing-file policy (instar config)"];
  for (const s of p.sources) {
    const where = s.path ? ` ${s.path}` : "";
    lines.push(`# ${s.source}${where}: ${s.present ? "used" : "absent"}`);
  }
  if (!p.imageDir && p.dirs.length === 0) {
    lines.push("# empty policy: no backing file, data file or extent is ever opened");
  }
  lines.push("", "[backing]");
  lines.push(`image_dir = ${p.imageDir}${p.imageDir ? "  # the top image's own directory" : ""}`);
  if (p.dirs.length === 0) lines.push("dirs = []");
  else {
    lines.push("dirs = [");
    for (const d of p.dirs) lines.push(`  ${tomlString(d.dir)},  # ${d.source}`);
    lines.push("]");
  }
  return lines.join("\n") + "\n";
}
