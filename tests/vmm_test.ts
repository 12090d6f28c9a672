// The VMM's own tests: a well-behaved guest, then hostile guests
// (tests/guests/*.c, built by scripts/build.sh into build/test-guests/) that
// each must end with a typed status while the host survives and the next
// run in the same process works. Inputs are images made by qemu-img/qemu-io
// inside each test.
import assert from "node:assert/strict";
import { decodeRecords, nameBytes, RecordError } from "../lib/abi/records.ts";
import {
  formats,
  guestErrors,
  guestStatus,
  layout,
  limits,
  ops,
  records,
  runStatus,
} from "../lib/abi/spec.ts";
import { BAD_RECORDS, runGuest, SandboxError } from "../lib/vmm/sandbox.ts";
import { KVM, noteKvm } from "./support/kvm.ts";

noteKvm();
import type { RunRequest, RunResult } from "../lib/vmm/sandbox.ts";

const root = new URL("../", import.meta.url);
const KVM_EXIT_IO = 2;

function testGuest(name: string): Uint8Array {
  const url = new URL(`build/test-guests/${name}.bin`, root);
  try {
    return Deno.readFileSync(url);
  } catch {
    throw new Error(`Missing ${url.pathname}: run scripts/deno.sh task build first`);
  }
}

async function sh(cmd: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

/** A 4 MiB raw image with 64 KiB of 0x5a at 1 MiB (the rest a hole), made by qemu-img/qemu-io. */
async function makeImage(dir: string): Promise<string> {
  const path = `${dir}/in.raw`;
  await sh("qemu-img", "create", "-q", "-f", "raw", path, "4M");
  await sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "write -P 0x33 4088 8", path);
  return path;
}

function run(name: string, input: string | undefined, extra: Partial<RunRequest> = {}): Promise<RunResult> {
  return runGuest({
    op: name,
    binary: testGuest(name),
    opCode: ops.TEST,
    inputs: input ? [{ path: input, format: formats.RAW }] : [],
    timeoutMs: 5000,
    ...extra,
  });
}

async function expectStatus(p: Promise<unknown>, status: number, detail?: number): Promise<SandboxError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof SandboxError, `expected SandboxError, got ${e}`);
    assert.equal(e.status, status, `status (${e.message})`);
    if (detail !== undefined) assert.equal(e.detail, detail, `detail (${e.message})`);
    return e;
  }
  assert.fail(`expected the run to fail with status ${status}`);
}

function le64(b: Uint8Array, at: number): bigint {
  return new DataView(b.buffer, b.byteOffset).getBigUint64(at, true);
}

/** The echo guest's answer must match the file (read here by the test, not by instar). */
async function checkEcho(path: string): Promise<RunResult> {
  const r = await run("echo", path, { args: [0n, 8192n] });
  assert.equal(r.status, runStatus.DONE);
  assert.equal(r.guestStatus, BigInt(guestStatus.OK));
  const file = await Deno.readFile(path);
  const [err, ext] = r.records;
  assert.equal(err.type, records.ERROR);
  assert.equal(err.fields.code, guestErrors.INTERNAL);
  assert.equal(err.fields.a0, le64(file, 0));
  assert.equal(err.fields.a1, BigInt(file.length));
  assert.equal(err.fields.a2, le64(file, file.length - 8));
  assert.equal(ext.type, records.MAP_EXTENT);
  assert.equal(r.inputs[0].size, BigInt(file.length));
  return r;
}

Deno.test(
  { name: "vmm: a well-behaved guest reads, seeks, writes, logs and reports", ignore: !KVM },
  async (t) => {
    const dir = await Deno.makeTempDir();
    try {
      const img = await makeImage(dir);
      await t.step("records carry the input's bytes and size", async () => {
        const r = await checkEcho(img);
        assert.equal(r.log, "echo guest says hello");
        const st = await Deno.stat(img);
        assert.equal(r.inputs[0].ino, BigInt(st.ino!));
        assert.equal(r.inputs[0].dev, BigInt(st.dev));
        assert.ok(r.exits >= 6n);
      });
      await t.step("SEEK agrees with qemu-img map on host-file holes", async () => {
        const map = JSON.parse(await sh("qemu-img", "map", "--output=json", "-f", "raw", img)) as {
          start: number;
          length: number;
          data: boolean;
        }[];
        const r = await run("echo", img, { args: [0n, 8192n] });
        const ext = r.records[1].fields;
        const here = map.find((e) => e.start <= 8192 && 8192 < e.start + e.length)!;
        const nextData = map.find((e) => e.data && e.start + e.length > 8192)!;
        assert.equal(ext.start, BigInt(Math.max(nextData.start, 8192)));
        assert.equal(ext.length, here.data ? BigInt(here.start + here.length) : 8192n);
        assert.equal(ext.offset, BigInt(ops.TEST));
      });
      // With write-behind the vCPU thread also calls sync_file_range, which
      // its seccomp filter must let through for the output fd.
      for (const writeBehind of [false, true]) {
        await t.step(
          `WRITE lands at the requested offset of the attached output (write-behind ${writeBehind})`,
          async () => {
            const out = `${dir}/out-${writeBehind}.bin`;
            const r = await run("echo", img, {
              args: [4096n, 0n],
              output: { path: out, cap: 1n << 20n },
              writeBehind,
            });
            assert.equal(r.status, runStatus.DONE);
            const file = await Deno.readFile(img);
            const got = await Deno.readFile(out);
            assert.equal(got.length, 4096 + 16);
            assert.deepEqual(got.subarray(4096, 4104), file.subarray(0, 8));
            assert.deepEqual(got.subarray(4104), file.subarray(file.length - 8));
          },
        );
      }
      await t.step("progress reaches the callback", async () => {
        const seen: [bigint, bigint][] = [];
        await run("echo", img, { args: [0n, 0n], onProgress: (d, n) => seen.push([d, n]) });
        assert.deepEqual(seen.at(-1), [3n, 4n]);
      });
      await t.step("inputs that cannot be opened throw the errno text", async () => {
        await assert.rejects(run("echo", `${dir}/missing`), { message: "No such file or directory" });
        await assert.rejects(run("echo", dir), { message: "Is a directory" });
        await Deno.symlink(img, `${dir}/link`);
        await assert.rejects(
          runGuest({
            op: "echo",
            binary: testGuest("echo"),
            opCode: ops.TEST,
            inputs: [{ path: `${dir}/link`, format: formats.RAW, nofollow: true }],
          }),
          { message: "Too many levels of symbolic links" },
        );
        // Without nofollow the same link opens.
        await checkEcho(`${dir}/link`);
      });
      await t.step("request limits are enforced before any VM exists", async () => {
        const many = Array.from(
          { length: limits.MAX_INPUTS + 1 },
          () => ({ path: img, format: formats.RAW }),
        );
        await assert.rejects(
          runGuest({ op: "echo", binary: testGuest("echo"), opCode: ops.TEST, inputs: many }),
        );
        await assert.rejects(run("echo", img, { ramBytes: limits.RAM_MAX + 2 * 1024 * 1024 }));
        await assert.rejects(run("echo", img, { ramBytes: limits.RAM_MIN + 4096 }));
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test({ name: "vmm: hostile hypercalls end the run with a typed status", ignore: !KVM }, async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    const img = await makeImage(dir);
    const out = `${dir}/out.bin`;
    const cases: [string, number, number, Partial<RunRequest>?][] = [
      ["buffer past the end of guest RAM", 0, runStatus.BAD_HYPERCALL],
      ["range that wraps", 1, runStatus.BAD_HYPERCALL],
      ["READ past the input's end", 2, runStatus.BAD_HYPERCALL],
      ["READ into the page tables", 3, runStatus.BAD_HYPERCALL],
      ["WRITE past the output cap", 4, runStatus.OUTPUT_CAP, { output: { path: out, cap: 65536n } }],
      ["unknown hypercall number", 5, runStatus.BAD_HYPERCALL],
      ["READ from an input never attached", 6, runStatus.BAD_HYPERCALL],
      ["READ over LIMIT_IO_MAX", 7, runStatus.BAD_HYPERCALL],
      ["LOG from a wrapping address", 8, runStatus.BAD_HYPERCALL],
      ["SEEK at the input's end", 9, runStatus.BAD_HYPERCALL],
      ["READ whose file range wraps", 10, runStatus.BAD_HYPERCALL],
      ["WRITE with no output attached", 11, runStatus.BAD_HYPERCALL],
      ["WRITE whose file range wraps", 11, runStatus.OUTPUT_CAP, { output: { path: out, cap: 65536n } }],
      ["READV with its segment list in the page tables", 12, runStatus.BAD_HYPERCALL],
      ["READV of zero segments", 13, runStatus.BAD_HYPERCALL],
      ["READV with a segment past the input's end", 14, runStatus.BAD_HYPERCALL],
      ["READV whose lengths add up past LIMIT_IO_MAX", 15, runStatus.BAD_HYPERCALL],
      ["WRITEV past the output cap", 16, runStatus.OUTPUT_CAP, { output: { path: out, cap: 65536n } }],
      ["READV into the page tables", 17, runStatus.BAD_HYPERCALL],
      ["EXTENTS into a buffer past guest RAM", 18, runStatus.BAD_HYPERCALL],
      ["EXTENTS of a range past the input's end", 19, runStatus.BAD_HYPERCALL],
      ["READV of more than LIMIT_IO_SEGS_MAX segments", 20, runStatus.BAD_HYPERCALL],
    ];
    const nr: Record<number, number> = {
      0: 1,
      1: 3,
      2: 1,
      3: 1,
      5: 0x1234,
      6: 1,
      7: 1,
      8: 5,
      9: 7,
      10: 1,
      11: 2,
      12: 8,
      13: 8,
      14: 8,
      15: 8,
      17: 8,
      18: 10,
      19: 10,
      20: 8,
    };
    for (const [what, variant, status, extra] of cases) {
      await t.step(what, async () => {
        const e = await expectStatus(
          run("bad_hcall", img, { args: [BigInt(variant)], ...extra }),
          status,
          status === runStatus.BAD_HYPERCALL ? nr[variant] : undefined,
        );
        if (status === runStatus.BAD_HYPERCALL) {
          assert.match(e.message, /^guest made a bad hypercall \(nr \d+\)$/);
        }
        // Nothing reached the output file.
        const st = await Deno.stat(out).catch(() => null);
        assert.ok(st === null || st.size === 0, "the output was not written");
        await checkEcho(img);
      });
    }
    // The page tables survived the READ attempt: the next guest still runs
    // (checked above) and the image is unchanged.
    const after = JSON.parse(await sh("qemu-img", "map", "--output=json", "-f", "raw", img));
    assert.equal(after.filter((e: { data: boolean }) => e.data).length >= 2, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "vmm: crashes, stray exits and hlt are guest failures", ignore: !KVM }, async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    const img = await makeImage(dir);
    const cases: [string, number, number, number?][] = [
      ["jump to the unmapped page 0", 0, runStatus.GUEST_FAULT],
      ["ud2", 1, runStatus.GUEST_FAULT],
      ["read above guest RAM", 2, runStatus.GUEST_FAULT],
      ["hlt", 3, runStatus.GUEST_FAULT],
      ["write to its own page tables (mapped read-only)", 4, runStatus.GUEST_FAULT],
      // PVM refuses the port through the TSS I/O bitmap (a fault); VMX/SVM
      // honour IOPL 3 and exit to the VMM, which refuses the port.
      ["out to another port", 5, -1],
      ["in from the hypercall port", 6, runStatus.UNEXPECTED_EXIT, KVM_EXIT_IO],
      ["smashed stack canary", 7, runStatus.GUEST_FAULT],
      ["stack walked down into page 0", 8, runStatus.GUEST_FAULT],
      ["execute from the heap (no-execute)", 9, runStatus.GUEST_FAULT],
      ["execute from the stack (no-execute)", 10, runStatus.GUEST_FAULT],
    ];
    for (const [what, variant, status, detail] of cases) {
      await t.step(what, async () => {
        if (status === -1) {
          const e = await expectStatus(run("crash", img, { args: [BigInt(variant)] }), runStatus.GUEST_FAULT)
            .catch(() =>
              expectStatus(run("crash", img, { args: [BigInt(variant)] }), runStatus.UNEXPECTED_EXIT)
            );
          assert.ok(e.status === runStatus.GUEST_FAULT || e.detail === KVM_EXIT_IO);
          await checkEcho(img);
          return;
        }
        const e = await expectStatus(run("crash", img, { args: [BigInt(variant)] }), status, detail);
        if (status === runStatus.GUEST_FAULT) assert.equal(e.message, "guest crashed");
        await checkEcho(img);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "vmm: an infinite loop is stopped by the watchdog on time", ignore: !KVM }, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = await makeImage(dir);
    for (const limit of [200, 700]) {
      const t0 = performance.now();
      const e = await expectStatus(run("loop", img, { timeoutMs: limit }), runStatus.TIMEOUT);
      const took = performance.now() - t0;
      assert.equal(e.message, `guest timed out after ${limit} ms`);
      assert.ok(took >= limit, `stopped after ${took} ms, before the ${limit} ms limit`);
      assert.ok(took <= limit + 100, `stopped after ${took} ms, limit ${limit} ms + 100`);
      await checkEcho(img);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "vmm: a guest may touch all of its RAM and no more", ignore: !KVM }, async () => {
  for (const mib of [16, 64, 256]) {
    const ram = mib * 1024 * 1024;
    const r = await run("touch_ram", undefined, { ramBytes: ram });
    assert.equal(r.status, runStatus.DONE);
    assert.equal(r.records.length, 1);
    assert.equal(r.records[0].fields.code, guestErrors.OUT_OF_MEMORY);
    assert.equal(r.records[0].fields.a0, BigInt(ram - layout.HEAP));
  }
});

Deno.test(
  { name: "vmm: floods of progress, log and result hypercalls stay bounded", ignore: !KVM },
  async () => {
    const n = 20000;
    const logs = 200; // 200 x 4 KiB, over the 64 KiB log cap
    const t0 = performance.now();
    const r = await run("flood", undefined, { args: [BigInt(n), BigInt(logs), BigInt(n)], timeoutMs: 20000 });
    const ms = performance.now() - t0;
    assert.equal(r.status, runStatus.DONE);
    assert.equal(r.log.length, 64 * 1024);
    assert.equal(r.records.length, n);
    assert.equal(r.records[n - 1].fields.input, n - 1);
    assert.ok(r.exits >= BigInt(2 * n + logs));
    const perSec = Number(r.exits) / (Number(r.elapsedNs) / 1e9);
    console.log(`flood: ${r.exits} exits in ${ms.toFixed(1)} ms, ${perSec.toFixed(0)} exits/s`);
  },
);

Deno.test({ name: "vmm: malformed result streams are refused", ignore: !KVM }, async (t) => {
  for (
    const [what, variant] of [["huge record size", 0], ["wrong record size", 1], ["unknown type", 2], [
      "truncated header",
      3,
    ]] as [string, number][]
  ) {
    await t.step(what, async () => {
      const e = await expectStatus(run("bad_records", undefined, { args: [BigInt(variant)] }), BAD_RECORDS);
      assert.match(e.message, /^guest produced malformed results: /);
    });
  }
  await t.step("NAME length over LIMIT_NAME_MAX", async () => {
    const r = await run("bad_records", undefined, { args: [4n] });
    assert.equal(r.records[0].type, records.NAME);
    assert.throws(() => nameBytes(r.records[0]), RecordError);
  });
  await t.step("results over the result cap", async () => {
    await expectStatus(
      run("bad_records", undefined, { args: [5n, 8n << 20n], resultCap: 4 << 20 }),
      runStatus.RESULT_CAP,
    );
  });
  await t.step("the decoder refuses a record past the stream end", () => {
    const b = new Uint8Array(16);
    new DataView(b.buffer).setUint32(0, records.ERROR, true);
    new DataView(b.buffer).setUint32(4, 40, true);
    assert.throws(() => decodeRecords(b), RecordError);
  });
});

Deno.test({ name: "vmm: embedded guests run on a qemu-img image", ignore: !KVM }, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = `${dir}/a.qcow2`;
    await sh("qemu-img", "create", "-q", "-f", "qcow2", img, "1G");
    const { guests } = await import("../lib/embedded/index.ts");
    for (const [op, code] of [["info", ops.INFO], ["check", ops.CHECK], ["map", ops.MAP]] as const) {
      if (!(op in guests)) continue;
      const r = await runGuest({ op, opCode: code, inputs: [{ path: img, format: formats.QCOW2 }] });
      assert.equal(r.status, runStatus.DONE, op);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test(
  { name: "vmm: the library loads from INSTAR_RUNTIME_DIR and leaves nothing behind", ignore: !KVM },
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const code = `import { vmmLib } from ${JSON.stringify(new URL("lib/vmm/ffi.ts", root).href)};
await vmmLib(); console.log("loaded");`;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["eval", "--no-config", code],
        env: { INSTAR_RUNTIME_DIR: dir },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(
        new TextDecoder().decode(out.stdout).trim(),
        "loaded",
        new TextDecoder().decode(out.stderr),
      );
      assert.deepEqual([...Deno.readDirSync(dir)], []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  { name: "vmm: READ moves every byte of a large input, and its throughput", ignore: !KVM },
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const img = `${dir}/big.raw`;
      const mib = 256;
      await sh("qemu-img", "create", "-q", "-f", "raw", img, `${mib}M`);
      await sh(
        "qemu-io",
        "-f",
        "raw",
        "-c",
        `write -P 0x11 0 ${mib / 2}M`,
        "-c",
        `write -P 0xe7 ${mib / 2}M 1M`,
        "-c",
        "write -P 0x42 3M 5",
        img,
      );
      const file = await Deno.readFile(img);
      const words = new BigUint64Array(file.buffer, file.byteOffset, file.length / 8);
      let want = 0n;
      for (let i = 0; i < words.length; i++) want = (want + words[i] * BigInt(i + 1)) & 0xffffffffffffffffn;
      for (const chunk of [1 << 20, 4 << 20, 16 << 20, 24 << 20]) {
        const r = await run("read_all", img, { args: [BigInt(chunk)], ramBytes: 128 << 20 });
        assert.equal(r.records[0].fields.code, guestErrors.INTERNAL, "no error record");
        assert.equal(r.records[0].fields.a0, want, `checksum with ${chunk}-byte chunks`);
        assert.equal(r.records[0].fields.a1, BigInt(file.length));
        const gbs = file.length / Number(r.elapsedNs);
        console.log(
          `READ ${mib} MiB from the page cache in ${chunk >> 20} MiB hypercalls: ` +
            `${gbs.toFixed(2)} GB/s, ${r.exits} exits`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  { name: "vmm: concurrent runs in one process do not disturb each other", ignore: !KVM },
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const img = await makeImage(dir);
      const t0 = performance.now();
      const [looped, ...rest] = await Promise.allSettled([
        run("loop", img, { timeoutMs: 400 }),
        checkEcho(img),
        run("crash", img, { args: [1n] }),
        checkEcho(img),
      ]);
      assert.ok(looped.status === "rejected" && looped.reason.status === runStatus.TIMEOUT);
      assert.equal(rest[0].status, "fulfilled");
      assert.ok(rest[1].status === "rejected" && rest[1].reason.status === runStatus.GUEST_FAULT);
      assert.equal(rest[2].status, "fulfilled");
      assert.ok(performance.now() - t0 < 400 + 200);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

// Regression: a worker's copy of the library installed the kick handler and
// was then unloaded with the worker; the next watchdog kick jumped into
// unmapped code and killed the process (vmm/run.c pins the copy now).
Deno.test(
  { name: "vmm: a watchdog kick after another worker's copy of the library was unloaded", ignore: !KVM },
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const img = await makeImage(dir);
      await checkEcho(img); // this copy installs its handler first
      const worker = new Worker(new URL("./support/vmm_copy_worker.ts", import.meta.url), { type: "module" });
      const status = await new Promise((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.onerror = (e) => reject(new Error(e.message));
        worker.postMessage({ binary: testGuest("echo"), input: img });
      });
      assert.equal(status, runStatus.DONE);
      worker.terminate();
      await new Promise((r) => setTimeout(r, 200)); // the worker's isolate and its library go
      await expectStatus(run("loop", img, { timeoutMs: 100 }), runStatus.TIMEOUT);
      await checkEcho(img);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test({ name: "vmm: create-to-done time of a trivial guest", ignore: !KVM }, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = await makeImage(dir);
    await checkEcho(img); // warm up: library load, first KVM use
    const times: number[] = [];
    const setup: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now();
      const r = await run("echo", img, { args: [0n, 0n] });
      times.push(performance.now() - t0);
      setup.push(Number(r.setupNs) / 1e6);
    }
    times.sort((a, b) => a - b);
    setup.sort((a, b) => a - b);
    console.log(
      `create-to-done (runGuest, 64 MiB, seccomp): median ${times[25].toFixed(2)} ms, ` +
        `p90 ${times[45].toFixed(2)} ms, min ${times[0].toFixed(2)} ms; VMM setup median ${
          setup[25].toFixed(2)
        } ms`,
    );
    assert.ok(times[25] < 50, `median ${times[25]} ms`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
