// The vhdx create planner against qemu-img 7.2: qemu-img creates each image,
// the planner plans one with the random values read back from qemu's file,
// and the files must be byte-identical; `qemu-img check` must pass and
// `qemu-img info` must agree field by field. Refusals carry qemu's words.
import { ok as assert, strictEqual } from "node:assert/strict";
import { planViolation } from "../plan.ts";
import { MiB, planVhdxCreate, type VhdxCreateOptions } from "./create_plan.ts";
import {
  applyPlan,
  firstDiff,
  haveQemuImg,
  infoDiff,
  infoJson,
  parseSize,
  qemuImgSync,
  readAt,
} from "../vpc/apply_for_tests.ts";

const ready = haveQemuImg();

function bytesOf(_dir: string, size: string): bigint {
  return parseSize(size);
}

function optsFrom(dir: string, size: string, o: string): VhdxCreateOptions {
  const v: VhdxCreateOptions = { size: bytesOf(dir, size) };
  for (const kv of o ? o.split(",") : []) {
    const [k, val] = kv.split("=");
    if (k === "block_size") v.blockSize = bytesOf(dir, val);
    else if (k === "log_size") v.logSize = bytesOf(dir, val);
    else if (k === "subformat") v.subformat = val;
    else if (k === "block_state_zero") v.blockStateZero = val === "on";
  }
  return v;
}

const CASES: [string, string][] = [
  ["0", ""],
  ["1", ""],
  ["512", ""],
  ["1000001", ""],
  ["1M", ""],
  ["1G", ""],
  ["1025M", ""],
  ["2T", ""],
  ["33T", ""],
  ["64T", ""],
  ["70368744177665", ""], // 64 TiB + 1: one past the maximum
  ["100M", "block_size=1M"],
  ["100M", "block_size=1"],
  ["100M", "block_size=3M"],
  ["100M", "block_size=256M"],
  ["100M", "block_size=512M"],
  ["2T", "block_size=1M"],
  ["0", "block_size=256M"],
  ["100M", "log_size=1"],
  ["100M", "log_size=0"],
  ["100M", "log_size=8M"],
  ["100M", "log_size=4G"],
  ["100M", "log_size=4095M"],
  ["100M", "block_state_zero=off"],
  ["100M", "subformat=fixed"],
  ["100M", "subformat=fixed,block_state_zero=off"],
  ["100M", "subformat=foo"],
];

Deno.test({ name: "vhdx create matches qemu-img", ignore: !ready }, async (t) => {
  const dir = Deno.makeTempDirSync({ prefix: "instar-vhdx-" });
  try {
    for (const [size, o] of CASES) {
      await t.step(`${size} ${o}`, () => {
        const q = `${dir}/q.vhdx`, m = `${dir}/m.vhdx`;
        const qr = qemuImgSync(["create", "-q", "-f", "vhdx", ...(o ? ["-o", o] : []), q, size]);
        const opts = optsFrom(dir, size, o);
        const zero = new Uint8Array(16);
        if (qr.code !== 0) {
          const plan = planVhdxCreate(opts, {
            sequenceNumber: 0,
            fileWriteGuid: zero,
            dataWriteGuid: zero,
            page83Guid: zero,
          });
          assert(!plan.ok, `qemu refused ${size} ${o}: ${qr.stderr}`);
          strictEqual(`qemu-img: ${q}: ${plan.error.message}\n`, qr.stderr);
          return;
        }
        const h1 = readAt(q, 0x10000, 48);
        const dv = new DataView(h1.buffer);
        const probe = planVhdxCreate(opts, {
          sequenceNumber: 0,
          fileWriteGuid: zero,
          dataWriteGuid: zero,
          page83Guid: zero,
        });
        assert(probe.ok, `planner refused ${size} ${o}`);
        const md = Number(probe.value.layout.metadataOffset) + 65536;
        const plan = planVhdxCreate(opts, {
          sequenceNumber: Number(dv.getBigUint64(8, true) & 0xffffffffn),
          fileWriteGuid: h1.slice(16, 32),
          dataWriteGuid: h1.slice(32, 48),
          page83Guid: readAt(q, md + 16, 16),
        });
        assert(plan.ok);
        strictEqual(planViolation(plan.value), undefined);
        applyPlan(m, plan.value);
        const qSize = Deno.statSync(q).size;
        strictEqual(Deno.statSync(m).size, qSize);
        if (qSize <= 128 * 1024 * 1024) {
          strictEqual(firstDiff(Deno.readFileSync(m), Deno.readFileSync(q)), -1);
        } else {
          for (const p of plan.value.patches) {
            if (p.kind !== "write") continue;
            strictEqual(
              firstDiff(
                readAt(m, Number(p.offset), p.bytes.length),
                readAt(q, Number(p.offset), p.bytes.length),
              ),
              -1,
            );
          }
        }
        const qc = qemuImgSync(["check", "--output=json", q]);
        const mc = qemuImgSync(["check", "--output=json", m]);
        strictEqual(mc.code, qc.code);
        strictEqual(mc.stdout.replaceAll(m, q), qc.stdout);
        strictEqual(infoDiff(m, q, "vhdx"), undefined);
        strictEqual(plan.value.layout.virtualSize, BigInt(infoJson(q, "vhdx")["virtual-size"] as number));
      });
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vhdx layout: block size defaults follow the image size", () => {
  const e = {
    sequenceNumber: 1,
    fileWriteGuid: new Uint8Array(16),
    dataWriteGuid: new Uint8Array(16),
    page83Guid: new Uint8Array(16),
  };
  const bs = (size: bigint) => {
    const p = planVhdxCreate({ size }, e);
    assert(p.ok);
    return p.value.layout.blockSize;
  };
  strictEqual(bs(1n << 30n), 8n * MiB);
  strictEqual(bs((1n << 30n) + 512n), 16n * MiB);
  strictEqual(bs(32n << 40n), 32n * MiB);
  strictEqual(bs((32n << 40n) + 512n), 64n * MiB);
});
