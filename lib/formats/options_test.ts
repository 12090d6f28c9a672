// The -o splitter and printer (QemuOpts rules), checked against qemu-img's
// own "Formatting" line for the same option lists.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  accumulateOptions,
  hasHelpOption,
  isValidOptionList,
  optGet,
  parseOptions,
  printOptions,
  splitOptions,
  strtou64,
} from "./options.ts";
import { QCOW2_CREATE_OPTS } from "./qcow2/options.ts";

Deno.test("splitOptions: commas, doubled commas, flags and no-flags", () => {
  assertEquals(splitOptions("a=1,b=x,,y,,,c,nod"), [
    { name: "a", value: "1", help: false },
    { name: "b", value: "x,y,", help: false },
    { name: "c", value: "on", help: false },
    { name: "d", value: "off", help: false },
  ]);
  assert(hasHelpOption("cluster_size=4k,help"));
  assert(hasHelpOption("?"));
  assert(!hasHelpOption("backing_file=help"));
  assert(isValidOptionList("a=1,,"));
  assert(!isValidOptionList("a=1,"));
  assert(!isValidOptionList(",a=1"));
  assert(!isValidOptionList(""));
  assertEquals(accumulateOptions("a=1", "b=2"), "a=1,b=2");
  assertEquals(accumulateOptions(undefined, "a=1,"), undefined);
});

Deno.test("strtou64 follows strtoull with base 0", () => {
  assertEquals(strtou64("0x10"), { ok: true, value: 16n });
  assertEquals(strtou64("010"), { ok: true, value: 8n });
  assertEquals(strtou64("-1"), { ok: true, value: (1n << 64n) - 1n });
  assertEquals(strtou64("18446744073709551616"), { ok: false, range: true });
  assertEquals(strtou64("0x"), { ok: false, range: false });
  assertEquals(strtou64("12a"), { ok: false, range: false });
});

Deno.test({
  name: "printOptions reproduces qemu-img's Formatting line",
  ignore: (() => {
    try {
      return !new Deno.Command("qemu-img", { args: ["--version"], stdout: "null" }).outputSync().success;
    } catch {
      return true;
    }
  })(),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "instar_opts_" });
    try {
      for (
        const o of [
          "cluster_size=4k,refcount_bits=0x8,lazy_refcounts=yes",
          "backing_file=a,,b,backing_fmt=raw,size=3M",
          "nolazy_refcounts,extended_l2,cluster_size=0x8000",
          "compat=1.1,cluster_size=128k,cluster_size=64k",
          "id=foo,preallocation=off,nocow=on,extent_size_hint=1M",
        ]
      ) {
        const q = new Deno.Command("qemu-img", {
          args: ["create", "-f", "qcow2", "-u", "-o", o, "i.qcow2", ...(o.includes("size=3M") ? [] : ["1M"])],
          cwd: dir,
          stdout: "piped",
          stderr: "piped",
        }).outputSync();
        const line = new TextDecoder().decode(q.stdout).trim();
        const p = parseOptions(o, QCOW2_CREATE_OPTS);
        assert(p.ok);
        if (!optGet(p.value, "size")) p.value.items.push({ name: "size", str: "1048576", num: 1048576n });
        assertEquals(`Formatting 'i.qcow2', fmt=qcow2 ${printOptions(p.value)}`, line);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
