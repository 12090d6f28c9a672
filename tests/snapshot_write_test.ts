// instar snapshot -c/-a/-d against qemu-img snapshot 7.2 on images qemu-img
// and qemu-io make here. Each case keeps two copies of the same image; every
// snapshot command runs as qemu-img on one and as instar on the other, and
// the test asserts after each: identical stdout/stderr (our name for
// qemu-img's) and exit code; `qemu-img check` clean on instar's copy;
// `qemu-img snapshot -l` the same with the DATE column masked; the raw
// contents of the active layer and of every snapshot (`qemu-img convert -l`)
// identical; and the two files byte-identical once the date fields of the
// snapshot table (date_sec, date_nsec) are masked. qemu-io writes between
// the commands go to qemu's copy, which then replaces instar's (qemu-io's
// compressed writes land in either order). Needs the built guests; skipped without.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, exec, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { sweep } from "./support/full.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { fileSha256 as sha } from "./support/bytes.ts";

await useHostedGuestsWithoutKvm();

const ready = built() && haveQemuImg();

/** One step: qemu-io commands on both copies, or a snapshot command compared. */
type Step = { io: string[] } | { snap: string[]; fails?: boolean };

interface Case {
  name: string;
  create: string[];
  size: string;
  steps: Step[];
}

const DATA = ["write -P 1 0 1M", "write -c -P 2 4M 256k", "write -P 3 8M 64k", "write -z 9M 128k"];
const MORE = ["write -P 4 512k 256k", "write -c -P 5 12M 128k", "discard 8M 64k"];

/** Take two snapshots with writes around them, apply, delete: every action twice. */
const SEQUENCE: Step[] = [
  { io: DATA },
  { snap: ["-c", "s1"] },
  { io: MORE },
  { snap: ["-c", "s2"] },
  { snap: ["-c", "s1"] }, // a duplicate name: qemu takes it
  { snap: ["-a", "s1"] },
  { io: ["write -P 6 2M 64k"] },
  { snap: ["-d", "2"] }, // by name: there is no snapshot named "2"
  { snap: ["-d", "s2"] },
  { snap: ["-a", "3"] }, // by id
  { snap: ["-d", "s1"] },
  { snap: ["-d", "s1"] },
  { snap: ["-c", "last"] },
];

const CASES: Case[] = [
  { name: "v3", create: [], size: "16M", steps: SEQUENCE },
  { name: "refcount_bits=64", create: ["-o", "refcount_bits=64"], size: "16M", steps: SEQUENCE },
  { name: "v2 compat=0.10", create: ["-o", "compat=0.10"], size: "16M", steps: SEQUENCE },
  {
    // Refcounts top out at 3: the third snapshot fails as qemu's does.
    name: "refcount_bits=2",
    create: ["-o", "refcount_bits=2"],
    size: "16M",
    steps: [
      { io: ["write -P 1 0 1M"] },
      { snap: ["-c", "a"] },
      { snap: ["-c", "b"] },
      { snap: ["-d", "a"] },
      { snap: ["-c", "c"] },
      { snap: ["-c", "d"], fails: true },
    ],
  },
  { name: "extended_l2", create: ["-o", "extended_l2=on,cluster_size=128k"], size: "16M", steps: SEQUENCE },
  { name: "4k clusters, many L2 tables", create: ["-o", "cluster_size=4k"], size: "16M", steps: SEQUENCE },
  {
    // A refcount block covers 128 KiB here; the data leaves the file 6 clusters
    // short of the ninth block's end, so the 8-cluster L1 copy needs a tenth
    // block (alloc_refcount_block's -EAGAIN restart), hooked into the table.
    name: "512 B clusters, a new refcount block",
    create: ["-o", "cluster_size=512"],
    size: "16M",
    steps: [
      { io: [...DATA, "write -P 7 12M 24k"] },
      { snap: ["-c", "a"] },
      { snap: ["-c", "b"] },
      { snap: ["-a", "a"] },
      { snap: ["-d", "a"] },
    ],
  },
  { name: "512 B clusters", create: ["-o", "cluster_size=512"], size: "16M", steps: SEQUENCE },
  {
    // Applying a snapshot raises its clusters to 4: qemu's EINVAL.
    name: "refcount_bits=2, -a past the width",
    create: ["-o", "refcount_bits=2"],
    size: "1M",
    steps: [{ io: ["write -P 1 0 64k"] }, { snap: ["-c", "a"] }, { snap: ["-c", "b"] }, {
      snap: ["-a", "a"],
      fails: true,
    }],
  },
  {
    // Four compressed clusters share one host cluster at refcount 3.
    name: "refcount_bits=2, compressed",
    create: ["-o", "refcount_bits=2"],
    size: "16M",
    steps: [{ io: DATA }, { snap: ["-c", "s1"], fails: true }],
  },
  {
    name: "refcount_bits=1: qemu's EINVAL",
    create: ["-o", "refcount_bits=1"],
    size: "16M",
    steps: [{ io: DATA }, { snap: ["-c", "s1"], fails: true }],
  },
  {
    name: "empty image",
    create: [],
    size: "1M",
    steps: [{ snap: ["-c", "a"] }, { snap: ["-c", "b"] }, { snap: ["-a", "a"] }, { snap: ["-d", "a"] }, {
      snap: ["-d", "b"],
    }],
  },
];

/** The file with each snapshot's date_sec and date_nsec zeroed. */
async function masked(path: string): Promise<Uint8Array> {
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  const nb = dv.getUint32(60);
  let at = Number(dv.getBigUint64(64));
  for (let i = 0; i < nb; i++) {
    at = (at + 7) & ~7;
    b.fill(0, at + 16, at + 24);
    const extra = dv.getUint32(at + 36);
    at += 40 + extra + dv.getUint16(at + 12) + dv.getUint16(at + 14);
  }
  return b;
}

const maskDates = (s: string) => s.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, "DATE");

async function ids(dir: string, file: string): Promise<string[]> {
  const o = await qemuImg(["snapshot", "-l", file], dir);
  return o.stdout.split("\n").slice(2).filter((l) => l.trim()).map((l) => l.split(/\s+/)[0]);
}

async function compare(dir: string, label: string, contents = false) {
  const [a, b] = [await masked(`${dir}/q.qcow2`), await masked(`${dir}/i.qcow2`)];
  assertEquals(b.length, a.length, `${label}: file sizes`);
  let diff = -1;
  for (let k = 0; k < a.length; k++) {
    if (a[k] !== b[k]) {
      diff = k;
      break;
    }
  }
  assertEquals(diff, -1, `${label}: files differ at byte ${diff}`);
  const check = await qemuImg(["check", "i.qcow2"], dir);
  assertEquals(check.code, 0, `${label}: check: ${check.stdout}${check.stderr}`);
  const [lq, li] = [
    await qemuImg(["snapshot", "-l", "q.qcow2"], dir),
    await qemuImg(["snapshot", "-l", "i.qcow2"], dir),
  ];
  assertEquals(maskDates(li.stdout), maskDates(lq.stdout), `${label}: snapshot -l`);
  // Byte-identical files have the same contents; reading every snapshot
  // back is kept for the last step of each case (it costs the most).
  if (!contents) return;
  for (const id of ["", ...await ids(dir, "i.qcow2")]) {
    const l = id ? ["-l", `snapshot.id=${id}`] : [];
    await sh(dir, "qemu-img", "convert", ...l, "-O", "raw", "q.qcow2", "q.raw");
    await sh(dir, "qemu-img", "convert", ...l, "-O", "raw", "i.qcow2", "i.raw");
    assertEquals(
      await sha(`${dir}/i.raw`),
      await sha(`${dir}/q.raw`),
      `${label}: contents of ${id || "active"}`,
    );
  }
}

async function runCase(c: Case) {
  await withTempDir("instar-snapw-", async (dir) => {
    await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...c.create, "q.qcow2", c.size);
    await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
    for (const [n, step] of c.steps.entries()) {
      if ("io" in step) {
        // qemu-io's compressed writes run in parallel and land in either
        // order: write once, then copy (the copies were equal but for dates).
        await sh(dir, "qemu-io", ...step.io.flatMap((x) => ["-c", x]), "q.qcow2");
        await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
        continue;
      }
      const label = `${c.name} step ${n} snapshot ${step.snap.join(" ")}`;
      const before = await Deno.readFile(`${dir}/i.qcow2`);
      const q = await qemuImg(["snapshot", ...step.snap, "q.qcow2"], dir);
      const i = await instarHere(["snapshot", ...step.snap, "i.qcow2"], dir);
      assertEquals(i, asInstar({ ...q, stderr: q.stderr.replaceAll("q.qcow2", "i.qcow2") }), label);
      if (step.fails) {
        // qemu leaves a leaked L1 copy behind; instar writes nothing.
        assert(q.code !== 0);
        assertEquals(await Deno.readFile(`${dir}/i.qcow2`), before, `${label}: instar wrote on failure`);
        return;
      }
      await compare(dir, label, n === c.steps.length - 1);
    }
  });
}

// The default run takes every other case (v3, v2, extended L2, a new refcount
// block, -a past the width, refcount_bits=1); INSTAR_FULL_TESTS=1 all of them.
for (const c of sweep(CASES, 2)) {
  Deno.test({ name: `snapshot -c/-a/-d as qemu-img: ${c.name}`, ignore: !ready, fn: () => runCase(c) });
}

Deno.test({
  name: "snapshot on a qemu-made image with snapshots and a data-less table entry order",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-snapw-", async (dir) => {
      // Snapshots qemu-img made first (several, one deleted), then instar's actions.
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "8M");
      await sh(dir, "qemu-io", "-c", "write -P 9 0 2M", "q.qcow2");
      for (const s of ["a", "b", "c"]) await sh(dir, "qemu-img", "snapshot", "-c", s, "q.qcow2");
      await sh(dir, "qemu-img", "snapshot", "-d", "b", "q.qcow2");
      await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
      for (const args of [["-c", "d"], ["-a", "c"], ["-d", "a"], ["-d", "c"], ["-c", "e"]]) {
        const q = await qemuImg(["snapshot", ...args, "q.qcow2"], dir);
        const i = await instarHere(["snapshot", ...args, "i.qcow2"], dir);
        assertEquals(i.code, q.code);
        await compare(dir, args.join(" "), args[1] === "e");
      }
    }),
});

Deno.test({
  name: "snapshot errors as qemu-img prints them",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-snapw-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "s.qcow2", "1M");
      await sh(dir, "qemu-img", "snapshot", "-c", "one", "s.qcow2");
      // A raw disk with an MBR (instar probes raw only for files that look like disks).
      const mbr = new Uint8Array(1 << 20);
      mbr[446 + 4] = 0x83;
      new DataView(mbr.buffer).setUint32(446 + 8, 256, true);
      new DataView(mbr.buffer).setUint32(446 + 12, 1024, true);
      mbr[510] = 0x55;
      mbr[511] = 0xaa;
      await Deno.writeFile(`${dir}/r.img`, mbr);
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2", "1M");
      await sh(dir, "qemu-img", "bitmap", "--add", "b.qcow2", "bm");
      await sh(dir, "qemu-img", "snapshot", "-c", "one", "b.qcow2");
      // The corrupt bit (incompatible feature bit 1): qemu refuses a read-write open.
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "c.qcow2", "1M");
      const c = await Deno.readFile(`${dir}/c.qcow2`);
      c[79] |= 2;
      await Deno.writeFile(`${dir}/c.qcow2`, c);
      const cases = [
        ["snapshot", "-a", "nope", "s.qcow2"],
        ["snapshot", "-d", "nope", "s.qcow2"],
        ["snapshot", "-d", "1", "s.qcow2"], // -d looks names up only
        ["snapshot", "-c", "x", "r.img"],
        ["snapshot", "-a", "x", "r.img"],
        ["snapshot", "-d", "x", "r.img"],
        ["snapshot", "-a", "one", "b.qcow2"],
        ["snapshot", "-U", "-c", "x", "s.qcow2"],
        ["snapshot", "-c", "x", "missing.qcow2"],
        ["snapshot", "c.qcow2"],
        ["snapshot", "-c", "x", "c.qcow2"],
      ];
      for (const args of cases) {
        const before = await Promise.all(["s.qcow2", "r.img", "b.qcow2"].map((f) => sha(`${dir}/${f}`)));
        // (qemu-img rewrites the bitmaps of b.qcow2 on every read-write open.)
        const q = await qemuImg(args, dir);
        before[2] = await sha(`${dir}/b.qcow2`);
        assertEquals(await instarHere(args, dir), asInstar(q), args.join(" "));
        const again = await Promise.all(["s.qcow2", "r.img", "b.qcow2"].map((f) => sha(`${dir}/${f}`)));
        assertEquals(again, before, `instar ${args.join(" ")} changed a file`);
      }
      // A running VM (qemu-io) holds the image: both refuse with qemu's lock text.
      const child = new Deno.Command("qemu-io", {
        args: ["-c", "sleep 100000", "s.qcow2"],
        cwd: dir,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        const ino = (await Deno.stat(`${dir}/s.qcow2`)).ino;
        for (let i = 0; !(await Deno.readTextFile("/proc/locks")).includes(`:${ino} `); i++) {
          if (i > 200) throw new Error("qemu-io took no lock");
          await new Promise((r) => setTimeout(r, 25));
        }
        const q = await qemuImg(["snapshot", "-c", "x", "s.qcow2"], dir);
        assert(q.stderr.includes("lock"), q.stderr);
        assertEquals(await instarHere(["snapshot", "-c", "x", "s.qcow2"], dir), asInstar(q));
      } finally {
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
        await child.status;
      }
      const l = await exec("qemu-img", ["snapshot", "-l", "s.qcow2"], dir);
      assertEquals(l.stdout.split("\n").length, 4, "no snapshot was added under the lock");
    }),
});

Deno.test({
  name: "snapshot -c/-d rewrite an older table entry (16 bytes of extra data) as qemu-img does",
  ignore: !ready,
  fn: () =>
    withTempDir("instar-snapw-", async (dir) => {
      // QEMU before 5.2 stored no icount: extra_data_size 16. Make such an
      // entry from one qemu-img wrote (the last one, so nothing moves after it).
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "4M");
      await sh(dir, "qemu-io", "-c", "write -P 1 0 128k", "q.qcow2");
      await sh(dir, "qemu-img", "snapshot", "-c", "old", "q.qcow2");
      const b = await Deno.readFile(`${dir}/q.qcow2`);
      const dv = new DataView(b.buffer);
      const at = Number(dv.getBigUint64(64));
      assertEquals(dv.getUint32(at + 36), 24);
      const strings = dv.getUint16(at + 12) + dv.getUint16(at + 14);
      dv.setUint32(at + 36, 16);
      b.copyWithin(at + 56, at + 64, at + 64 + strings);
      b.fill(0, at + 56 + strings, at + 64 + strings);
      await Deno.writeFile(`${dir}/q.qcow2`, b);
      await Deno.copyFile(`${dir}/q.qcow2`, `${dir}/i.qcow2`);
      assertEquals((await qemuImg(["check", "q.qcow2"], dir)).code, 0);
      for (const args of [["-c", "new"], ["-d", "new"], ["-a", "old"]]) {
        const q = await qemuImg(["snapshot", ...args, "q.qcow2"], dir);
        const i = await instarHere(["snapshot", ...args, "i.qcow2"], dir);
        assertEquals(i, asInstar(q), args.join(" "));
        await compare(dir, args.join(" "), args[0] === "-a");
      }
    }),
});
