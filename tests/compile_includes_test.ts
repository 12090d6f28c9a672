// `deno compile` bundles only what it can see: main.ts's module graph (static
// imports and literal dynamic ones) and the modules scripts/compile.sh names
// with --include. instar imports its commands, the sandbox and each embedded
// binary through specifiers that are not string literals (so `deno run`
// does not build their graphs at every start), so a module missing from the
// include list would be missing from the executable, and the command using
// it would fail only there. This test finds every such import in lib/ and
// checks that the graph of main.ts plus compile.sh's includes holds its
// target. No denort is needed: `deno info` computes the same graph.
import assert from "node:assert/strict";
import { DENO } from "./cli_helpers.ts";

const ROOT = new URL("../", import.meta.url);

async function output(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, cwd: ROOT.pathname, stdout: "piped", stderr: "piped" })
    .output();
  assert.ok(r.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  return new TextDecoder().decode(r.stdout);
}

async function* sources(dir: URL): AsyncGenerator<URL> {
  for await (const e of Deno.readDir(dir)) {
    const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory) yield* sources(u);
    else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) yield u;
  }
}

/** Every target of `import(new URL(X, import.meta.url)...)` in lib/, as file URLs. */
async function runtimeImports(): Promise<Map<string, string>> {
  const found = new Map<string, string>(); // target -> where
  for await (const file of sources(new URL("lib/", ROOT))) {
    const text = await Deno.readTextFile(file);
    const where = file.pathname.slice(ROOT.pathname.length);
    for (const m of text.matchAll(/import\(new URL\(([^,]+), import\.meta\.url\)/g)) {
      const arg = m[1].trim();
      let names: string[];
      if (arg.startsWith('"')) names = [JSON.parse(arg)];
      else if (where === "lib/cli/run.ts" && arg === "module") {
        names = [...text.matchAll(/lazy\("([^"]+)"/g)].map((l) => l[1]);
      } else {
        const c = text.match(new RegExp(`const ${arg} = ("[^"]+");`));
        assert.ok(c, `${where}: cannot tell what import(new URL(${arg}, ...)) loads`);
        names = [JSON.parse(c[1])];
      }
      for (const n of names) found.set(new URL(n, file).href, where);
    }
  }
  return found;
}

Deno.test("deno compile's graph holds every module instar imports at run time", async () => {
  const includes = (await output("bash", ["scripts/compile.sh", "--print-includes"])).trim().split("\n");
  const root = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      root,
      ["main.ts", ...includes].map((p) => `import ${JSON.stringify(new URL(p, ROOT).href)};\n`).join(""),
    );
    const graph = JSON.parse(await output(DENO, ["info", "--json", root])) as {
      modules: { specifier: string }[];
    };
    const have = new Set(graph.modules.map((m) => m.specifier));
    const wanted = await runtimeImports();
    // The scan must see the imports this test exists for, or it proves nothing.
    const count = (where: string) => [...wanted.values()].filter((w) => w === where).length;
    assert.ok(count("lib/cli/run.ts") >= 18, `commands found: ${count("lib/cli/run.ts")}`);
    assert.ok(count("lib/embedded/lazy.ts") >= 2, `embedded modules found: ${count("lib/embedded/lazy.ts")}`);
    assert.ok(count("lib/vmm/guest.ts") >= 1, "the sandbox import was not found");
    const missing = [...wanted].filter(([t]) => !have.has(t)).map(([t, w]) => `${t} (from ${w})`);
    assert.deepEqual(missing, [], "add them to scripts/compile.sh's --include list");
  } finally {
    await Deno.remove(root);
  }
});
