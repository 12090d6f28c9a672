// `deno task fuzz:libfuzzer <target> [libFuzzer args]`: builds the C target
// against clang's own libFuzzer (-fsanitize=fuzzer, same sources, same
// sanitizers; fuzz/out/<target>.libfuzzer) and runs it with the arguments
// as given, adding -dict=fuzz/dict/<target>.dict when there is one and no
// -dict was passed. Its crash-<sha1> files replay with `deno task fuzz
// <target> FILE` and the other way round.
import { buildC, FUZZ_DIR, listTargets } from "./targets.ts";

export async function main(args: string[]): Promise<number> {
  const info = listTargets().find((t) => t.name === args[0]);
  if (!info || info.kind !== "c") {
    console.error(`instar fuzz: '${args[0] ?? ""}' is not a C target (deno task fuzz --list)`);
    return 2;
  }
  const bin = await buildC(info.name, true);
  const rest = args.slice(1);
  const dict = `${FUZZ_DIR}/dict/${info.name}.dict`;
  try {
    if (!rest.some((a) => a.startsWith("-dict=")) && Deno.statSync(dict).isFile) {
      rest.unshift(`-dict=${dict}`);
    }
  } catch { /* no dictionary */ }
  const r = await new Deno.Command(bin, {
    args: rest,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
    env: { ASAN_OPTIONS: Deno.env.get("ASAN_OPTIONS") ?? "allocator_may_return_null=1" },
  }).output();
  return r.signal ? 1 : r.code;
}

if (import.meta.main) {
  const cwd = Deno.env.get("INIT_CWD");
  if (cwd) Deno.chdir(cwd);
  Deno.exit(await main(Deno.args));
}
