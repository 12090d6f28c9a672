// instar resize of VMDK images (monolithicSparse, streamOptimized), which
// qemu-img 7.2 refuses to resize ("Image format driver does not support
// resize"). Images are made here by qemu-img and qemu-io (streamOptimized is
// read-only in qemu: its data is written into a raw source first, then
// `qemu-img convert -O vmdk -o subformat=streamOptimized`); after each resize:
//   - `qemu-img info` reports the requested virtual size, and libvmdk's
//     `vmdkinfo` reports it as the media size;
//   - `qemu-img check` is clean;
//   - the guest data below the old size (below the new size on a shrink),
//     flattened with `qemu-img convert -O raw`, is unchanged, and a grown
//     range reads as zeroes; on a grown monolithicSparse image qemu-io
//     writes and reads back a grain in the grown range.
// A grow past the grain tables qemu allocated builds new grain directories
// and tables at the end of the file. Refusals (a shrink over grains with
// data or without --shrink, a streamOptimized grow over a short last grain,
// a grow over grain table entries past the old size, flat and split images,
// preallocation, a size that is not whole sectors) exit 1 with the files'
// bytes unchanged.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { digest, isZero } from "./support/bytes.ts";

await useHostedGuestsWithoutKvm();

const haveVmdkinfo = (() => {
  try {
    return new Deno.Command("vmdkinfo", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();
const ready = built() && haveQemuImg();
const MiB = 1024 * 1024;

async function virtualSize(path: string, dir: string): Promise<bigint> {
  const o = await qemuImg(["info", "-f", "vmdk", "--output=json", path], dir);
  assertEquals(o.code, 0, o.stderr);
  return BigInt(JSON.parse(o.stdout)["virtual-size"]);
}

async function flat(path: string, dir: string, out: string): Promise<Uint8Array> {
  await sh(dir, "qemu-img", "convert", "-f", "vmdk", "-O", "raw", path, out);
  return await Deno.readFile(`${dir}/${out}`);
}

/** libvmdk's media size for `path`. */
async function vmdkinfoSize(path: string, dir: string): Promise<bigint> {
  const o = await new Deno.Command("vmdkinfo", { args: [path], cwd: dir, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(o.stdout);
  assert(o.success, text + new TextDecoder().decode(o.stderr));
  const m = /Media size:.*\((\d+) bytes\)/.exec(text);
  assert(m, text);
  return BigInt(m[1]);
}

async function qemuIo(dir: string, fmt: string, file: string, cmds: string[]): Promise<void> {
  const o = await new Deno.Command("qemu-io", {
    args: ["-f", fmt, ...cmds.flatMap((c) => ["-c", c]), file],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
  assertEquals(o.code, 0, text);
  assert(!/fail|error/i.test(text), text);
}

/** A size in qemu's suffix notation, as bytes. */
function bytesOf(s: string): bigint {
  const m = /^(\d+)([kMG]?)$/.exec(s)!;
  return BigInt(m[1]) * ({ "": 1n, k: 1024n, M: 1n << 20n, G: 1n << 30n }[m[2]] as bigint);
}

type Kind = "sparse" | "zeroed" | "stream";

/** Makes `img` of `kind` and `size` holding pattern 0x5a + i at each write. */
async function makeImage(dir: string, kind: Kind, size: string, writes: [number, number][], zeroes = false) {
  if (kind === "stream") {
    await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "src.raw", size);
    for (const [i, [off, len]] of writes.entries()) {
      await qemuIo(dir, "raw", "src.raw", [`write -P ${0x5a + i} ${off} ${len}`]);
    }
    await sh(
      dir,
      "qemu-img",
      "convert",
      "-f",
      "raw",
      "-O",
      "vmdk",
      "-o",
      "subformat=streamOptimized",
      "src.raw",
      "img",
    );
    return;
  }
  const o = kind === "zeroed" ? ["-o", "zeroed_grain=on"] : [];
  await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", ...o, "img", size);
  for (const [i, [off, len]] of writes.entries()) {
    await qemuIo(dir, "vmdk", "img", [`write ${zeroes && i > 0 ? "-z" : `-P ${0x5a + i}`} ${off} ${len}`]);
  }
}

interface Case {
  name: string;
  kind: Kind;
  size: string;
  writes: [number, number][];
  /** Writes after the first are `write -z` (zeroed grains with zeroed_grain=on). */
  zeroes?: boolean;
  to: string;
  shrink?: boolean;
}

const CASES: Case[] = [
  // past the grain tables qemu made (one per 32 MiB): new directories and tables at the end
  {
    name: "monolithicSparse grow past its grain tables",
    kind: "sparse",
    size: "4M",
    writes: [[0, MiB], [3 * MiB, MiB]],
    to: "40M",
  },
  { name: "monolithicSparse 10M -> 160M", kind: "sparse", size: "10M", writes: [[9 * MiB, MiB]], to: "160M" },
  {
    name: "monolithicSparse zeroed_grain odd grow past its grain tables",
    kind: "zeroed",
    size: "3333k",
    writes: [[0, MiB], [2 * MiB, MiB]],
    zeroes: true,
    to: "77777k",
  },
  {
    name: "streamOptimized grow past its grain tables",
    kind: "stream",
    size: "4M",
    writes: [[0, MiB], [3 * MiB, MiB]],
    to: "70M",
  },
  {
    name: "monolithicSparse grow",
    kind: "sparse",
    size: "4M",
    writes: [[0, MiB], [3 * MiB, MiB]],
    to: "20M",
  },
  {
    name: "monolithicSparse odd grow",
    kind: "sparse",
    size: "3333k",
    writes: [[0, 3333 * 1024]],
    to: "31111k",
  },
  {
    name: "monolithicSparse zeroed_grain grow",
    kind: "zeroed",
    size: "4M",
    writes: [[0, MiB], [2 * MiB, MiB]],
    zeroes: true,
    to: "32M",
  },
  {
    name: "monolithicSparse shrink",
    kind: "sparse",
    size: "8M",
    writes: [[0, 2 * MiB]],
    to: "3M",
    shrink: true,
  },
  {
    name: "monolithicSparse odd shrink into a grain with data",
    kind: "sparse",
    size: "8M",
    writes: [[0, 2 * MiB + 4096]],
    to: "2050k",
    shrink: true,
  },
  {
    name: "monolithicSparse zeroed_grain shrink over zeroed grains",
    kind: "zeroed",
    size: "8M",
    writes: [[0, MiB], [4 * MiB, 2 * MiB]],
    zeroes: true,
    to: "2M",
    shrink: true,
  },
  {
    name: "streamOptimized grow",
    kind: "stream",
    size: "4M",
    writes: [[0, 64 * 1024], [MiB, 100 * 1024]],
    to: "24M",
  },
  {
    // the partial last grain holds no data (one that does is refused below)
    name: "streamOptimized odd grow",
    kind: "stream",
    size: "3001k",
    writes: [[MiB, MiB]],
    to: "9999k",
  },
  {
    name: "streamOptimized shrink",
    kind: "stream",
    size: "8M",
    writes: [[0, MiB], [MiB + 512, 3000]],
    to: "5001k",
    shrink: true,
  },
];

Deno.test({ name: "resize of vmdk images qemu-img made", ignore: !ready }, async (t) => {
  for (const c of CASES) {
    await t.step(c.name, async () => {
      const dir = await Deno.makeTempDir({ prefix: "instar-resize-vmdk-" });
      try {
        await makeImage(dir, c.kind, c.size, c.writes, c.zeroes);
        const oldSize = await virtualSize("img", dir);
        const before = await flat("img", dir, "before.raw");
        const args = ["resize", "-f", "vmdk", ...(c.shrink ? ["--shrink"] : []), "img", c.to];
        const r = await instarHere(args, dir);
        assertEquals(r, { stdout: "Image resized.\n", stderr: "", code: 0 }, `instar ${args.join(" ")}`);
        const got = await virtualSize("img", dir);
        assertEquals(got, bytesOf(c.to));
        if (haveVmdkinfo) assertEquals(await vmdkinfoSize("img", dir), got);
        const chk = await qemuImg(["check", "-f", "vmdk", "img"], dir);
        assertEquals(chk.code, 0, chk.stdout + chk.stderr);
        assert(chk.stdout.includes("No errors were found on the image."), chk.stdout);
        const after = await flat("img", dir, "after.raw");
        assertEquals(BigInt(after.length), got);
        const keep = Number(oldSize < got ? oldSize : got);
        assertEquals(
          await digest(after.subarray(0, keep)),
          await digest(before.subarray(0, keep)),
          "data below the old size changed",
        );
        if (got > oldSize) assert(isZero(after.subarray(Number(oldSize))), "grown range not zero");
        if (got > oldSize && c.kind !== "stream") {
          // qemu writes into the grown range (the grain tables were there) and reads it back
          const at = (got - 65536n) / 65536n * 65536n;
          await qemuIo(dir, "vmdk", "img", [`write -P 0x6c ${at} 64k`, `read -P 0x6c ${at} 64k`]);
          const chk2 = await qemuImg(["check", "-f", "vmdk", "img"], dir);
          assertEquals(chk2.code, 0, chk2.stdout + chk2.stderr);
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});

interface Refusal {
  name: string;
  kind: Kind;
  create?: string[];
  size: string;
  writes?: [number, number][];
  prep?: (path: string) => Promise<void>;
  args: string[];
  stderr: RegExp;
}

/** Sets entry `index` of the grain table the first directory entry names to `value`. */
async function setGrainEntry(path: string, index: number, value: number): Promise<void> {
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  const gd = Number(dv.getBigUint64(56, true)) * 512;
  const gt = dv.getUint32(gd, true) * 512;
  dv.setUint32(gt + index * 4, value, true);
  await Deno.writeFile(path, b);
}

const REFUSALS: Refusal[] = [
  {
    name: "monolithicSparse: shrink over a grain with data",
    kind: "sparse",
    size: "8M",
    writes: [[0, MiB], [6 * MiB, 4096]],
    args: ["--shrink", "6M"],
    stderr: /^instar: Could not resize 'img': Cannot shrink: VMDK grains past the new end hold data\n$/,
  },
  {
    name: "streamOptimized: shrink over a grain with data",
    kind: "stream",
    size: "8M",
    writes: [[7 * MiB, 512]],
    args: ["--shrink", "4M"],
    stderr: /^instar: Could not resize 'img': Cannot shrink: VMDK grains past the new end hold data\n$/,
  },
  {
    // qemu compressed the partial last grain short: a grown read of it would fail
    name: "streamOptimized: grow with data in the partial last grain",
    kind: "stream",
    size: "3001k",
    writes: [[46 * 65536, 4096]], // grain 46 of 47
    args: ["9999k"],
    stderr:
      /^instar: Could not resize 'img': Cannot grow: the partial last grain of the streamOptimized VMDK holds data\n$/,
  },
  {
    // qemu never reads an entry past the capacity (check is clean); a grow would expose it
    name: "monolithicSparse: grow over a grain table entry past the old size",
    kind: "sparse",
    size: "4M",
    writes: [[0, MiB]],
    prep: (p) => setGrainEntry(p, 100, 128),
    args: ["8M"],
    stderr:
      /^instar: Could not resize 'img': Cannot grow: the VMDK grain table has entries past the old size\n$/,
  },
  {
    name: "monolithicSparse: shrink without --shrink (qemu's words)",
    kind: "sparse",
    size: "8M",
    args: ["4M"],
    stderr: /^instar: Use the --shrink option to perform a shrink operation\.\ninstar: warning: Shrinking/,
  },
  {
    name: "monolithicSparse: a size that is not whole sectors",
    kind: "sparse",
    size: "4M",
    args: ["5000001"],
    stderr: /^instar: Could not resize 'img': New VMDK size must be a positive multiple of 512\n$/,
  },
  {
    name: "monolithicSparse: --preallocation=full",
    kind: "sparse",
    size: "4M",
    args: ["--preallocation=full", "8M"],
    stderr: /^instar: Could not resize 'img': instar does not preallocate when resizing vmdk images\n$/,
  },
  ...["monolithicFlat", "twoGbMaxExtentSparse"].map((sub): Refusal => ({
    name: `${sub}: not a single sparse file`,
    kind: "sparse",
    create: ["-o", `subformat=${sub}`],
    size: "4M",
    args: ["8M"],
    stderr: /^instar: Could not resize 'img': instar resizes only single-file sparse VMDK images/,
  })),
];

Deno.test({ name: "resize of vmdk refuses cleanly, writing nothing", ignore: !ready }, async (t) => {
  for (const c of REFUSALS) {
    await t.step(c.name, async () => {
      const dir = await Deno.makeTempDir({ prefix: "instar-resize-vmdk-" });
      try {
        if (c.create) await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", ...c.create, "img", c.size);
        else await makeImage(dir, c.kind, c.size, c.writes ?? []);
        if (c.prep) {
          await c.prep(`${dir}/img`);
          const chk = await qemuImg(["check", "-f", "vmdk", "img"], dir);
          assertEquals(chk.code, 0, chk.stdout + chk.stderr);
        }
        const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
        const hashes = await Promise.all(files.map(async (f) => digest(await Deno.readFile(`${dir}/${f}`))));
        const size = c.args[c.args.length - 1];
        const r = await instarHere(["resize", "-f", "vmdk", ...c.args.slice(0, -1), "img", size], dir);
        assertEquals(r.code, 1, r.stderr);
        assertEquals(r.stdout, "");
        assert(c.stderr.test(r.stderr), r.stderr);
        const now = await Promise.all(files.map(async (f) => digest(await Deno.readFile(`${dir}/${f}`))));
        assertEquals(now, hashes, "a file changed");
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});
