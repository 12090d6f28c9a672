// libFuzzer's command-line dialect: flags are `-name=value` (a bare `-name`
// means 1), everything else is a corpus directory or an input file.

export interface Flags {
  runs: number; // -1 = unlimited
  max_total_time: number; // seconds, 0 = unlimited
  seed: number; // 0 = from the clock
  max_len: number; // 0 = default
  timeout: number; // seconds per input
  artifact_prefix: string;
  jobs: number;
  workers: number;
  dict: string;
  detect_leaks: number;
  print_final_stats: number;
  exact_artifact_path: string;
}

const DEFAULTS: Flags = {
  runs: -1,
  max_total_time: 0,
  seed: 0,
  max_len: 0,
  timeout: 1200,
  artifact_prefix: "./",
  jobs: 0,
  workers: 0,
  dict: "",
  detect_leaks: 1,
  print_final_stats: 0,
  exact_artifact_path: "",
};

export interface Parsed {
  flags: Flags;
  positional: string[];
  /** Flags as given, to pass on to -jobs workers. */
  raw: string[];
  warnings: string[];
}

export function parseFlags(args: string[]): Parsed {
  const flags = { ...DEFAULTS };
  const positional: string[] = [], raw: string[] = [], warnings: string[] = [];
  for (const a of args) {
    if (!a.startsWith("-") || a === "-") {
      positional.push(a);
      continue;
    }
    const m = /^-{1,2}([A-Za-z_]+)(?:=(.*))?$/.exec(a);
    if (!m || !(m[1] in DEFAULTS)) {
      warnings.push(`WARNING: unrecognized flag '${a}'; use -help=1 to list all flags`);
      continue;
    }
    const name = m[1] as keyof Flags;
    const value = m[2] ?? "1";
    raw.push(a);
    if (typeof DEFAULTS[name] === "number") {
      const n = Number(value);
      if (!Number.isFinite(n)) throw new Error(`Flag ${a}: not a number`);
      (flags as unknown as Record<string, number>)[name] = Math.trunc(n);
    } else {
      (flags as unknown as Record<string, string>)[name] = value;
    }
  }
  return { flags, positional, raw, warnings };
}
