// The fuzz targets: C ones are fuzz/targets/<name>.c (built by
// fuzz/build.sh), TypeScript ones fuzz/ts_targets/<name>.ts exporting
// `target: TsTarget`.
import type { TsTarget } from "./ts_target.ts";

export const FUZZ_DIR = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
export const REPO = FUZZ_DIR.replace(/\/fuzz$/, "");

export interface TargetInfo {
  name: string;
  kind: "c" | "ts";
  path: string;
  description: string;
}

function names(dir: string, ext: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(ext)).map((e) =>
      e.name.slice(0, -ext.length)
    ).filter((n) => !n.endsWith("_test")).sort();
  } catch {
    return [];
  }
}

/** The first sentence of the target's header comment, after "Fuzz target <name>:". */
function cDescription(path: string): string {
  const text = Deno.readTextFileSync(path);
  const m = /Fuzz target \w+: ([^]*?)(?:\.\s|\n \*\n)/.exec(text);
  return m ? m[1].replace(/\s*\n\s*\*\s*/g, " ").trim() : "";
}

export function listTargets(): TargetInfo[] {
  const out: TargetInfo[] = [];
  for (const n of names(`${FUZZ_DIR}/targets`, ".c")) {
    const path = `${FUZZ_DIR}/targets/${n}.c`;
    out.push({ name: n, kind: "c", path, description: cDescription(path) });
  }
  for (const n of names(`${FUZZ_DIR}/ts_targets`, ".ts")) {
    out.push({ name: n, kind: "ts", path: `${FUZZ_DIR}/ts_targets/${n}.ts`, description: "" });
  }
  return out;
}

export async function loadTsTarget(info: TargetInfo): Promise<TsTarget> {
  const mod = await import(`file://${info.path}`);
  if (!mod.target) throw new Error(`${info.path} exports no target`);
  return mod.target as TsTarget;
}

/** Builds a C target (runner flavour) if stale and returns its binary path. */
export async function buildC(name: string, libfuzzer = false): Promise<string> {
  const args = libfuzzer ? ["--libfuzzer", name] : [name];
  const r = await new Deno.Command(`${FUZZ_DIR}/build.sh`, { args, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!r.success) throw new Error(`Building fuzz target ${name} failed`);
  const out = Deno.env.get("FUZZ_OUT") ?? `${FUZZ_DIR}/out`;
  return `${out}/${name}${libfuzzer ? ".libfuzzer" : ""}`;
}
