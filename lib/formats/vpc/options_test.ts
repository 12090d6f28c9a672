// The vpc, vhdx and vmdk option tables against qemu-img: parsing `-o` with
// them and printing the result gives qemu-img's "Formatting ..." line, and
// the typed options carry the values through.
import { ok as assert, strictEqual } from "node:assert/strict";
import { type OptDesc, optGet, optSetNumber, parseOptions, printOptions } from "../options.ts";
import { VPC_CREATE_OPTS, vpcCreateOptions } from "./options.ts";
import { VHDX_CREATE_OPTS, vhdxCreateOptions } from "../vhdx/options.ts";
import { VMDK_CREATE_OPTS, vmdkCreateOptions } from "../vmdk/options.ts";
import { haveQemuImg, qemuImgSync } from "./apply_for_tests.ts";

const TABLES: Record<string, OptDesc[]> = {
  vpc: VPC_CREATE_OPTS,
  vhdx: VHDX_CREATE_OPTS,
  vmdk: VMDK_CREATE_OPTS,
};

Deno.test(
  { name: "vpc/vhdx/vmdk option tables print qemu-img's Formatting line", ignore: !haveQemuImg() },
  () => {
    const dir = Deno.makeTempDirSync({ prefix: "instar-opts-" });
    try {
      const cases: [string, string][] = [
        ["vpc", ""],
        ["vpc", "force_size=on,subformat=fixed"],
        ["vpc", "preallocation=off,nocow=off"],
        ["vhdx", ""],
        ["vhdx", "block_size=1M,log_size=2M,subformat=fixed,block_state_zero=off"],
        ["vmdk", ""],
        [
          "vmdk",
          "zeroed_grain=on,subformat=streamOptimized,adapter_type=lsilogic,toolsversion=3,hwversion=8",
        ],
        ["vmdk", "compat6"],
      ];
      for (const [fmt, o] of cases) {
        const p = parseOptions(o, TABLES[fmt]);
        assert(p.ok, `${fmt} ${o}`);
        if (!optGet(p.value, "size")) optSetNumber(p.value, "size", 1048576n);
        const file = `${dir}/x.${fmt}`;
        const q = qemuImgSync(["create", "-f", fmt, ...(o ? ["-o", o] : []), file, "1M"]);
        strictEqual(`Formatting '${file}', fmt=${fmt} ${printOptions(p.value)}\n`, q.stdout);
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

Deno.test("typed options carry the parsed values", () => {
  const v = parseOptions("size=5M,subformat=fixed,force_size=on", VPC_CREATE_OPTS);
  assert(v.ok);
  const vo = vpcCreateOptions(v.value);
  strictEqual(vo.size, 5n << 20n);
  strictEqual(vo.subformat, "fixed");
  strictEqual(vo.forceSize, true);
  const h = parseOptions("size=1G,block_size=2M,log_size=3M,block_state_zero=off", VHDX_CREATE_OPTS);
  assert(h.ok);
  const ho = vhdxCreateOptions(h.value);
  strictEqual(ho.blockSize, 2n << 20n);
  strictEqual(ho.logSize, 3n << 20n);
  strictEqual(ho.blockStateZero, false);
  const k = parseOptions("size=1G,adapter_type=buslogic,compat6=on,hwversion=undefined", VMDK_CREATE_OPTS);
  assert(k.ok);
  const ko = vmdkCreateOptions(k.value, "a/b.vmdk");
  strictEqual(ko.adapterType, "buslogic");
  strictEqual(ko.compat6, true);
  strictEqual(ko.hwversion, "undefined");
  strictEqual(ko.filename, "a/b.vmdk");
});
