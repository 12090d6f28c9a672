// End-to-end compatibility for VHD (vpc) and VHDX: for images made here by
// qemu-img and qemu-io, instar prints exactly what qemu-img 7.2 prints
// (stdout, stderr with our name, exit code) for info, check and map, and
// convert/compare/measure read them as qemu-img does.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { assertSame, built, haveQemuImg, instar, qemuImg, sh } from "./cli_helpers.ts";
import { sameBytes } from "./support/bytes.ts";

const ready = built() && haveQemuImg();

/** Images of both formats, with data, zero writes and odd sizes. */
async function makeImages(dir: string): Promise<[string, string[]][]> {
  const list: [string, string[], string, string[]][] = [
    ["dyn.vhd", ["-f", "vpc"], "64M", ["write -P 1 0 1M", "write -P 2 5M 64k", "write -z 9M 1M"]],
    ["odd.vhd", ["-f", "vpc"], "1000M", ["write -P 3 500M 512k"]],
    ["forced.vhd", ["-f", "vpc", "-o", "force_size=on"], "100M", ["write -P 4 99M 1M"]],
    ["fixed.vhd", ["-f", "vpc", "-o", "subformat=fixed"], "16M", ["write -P 5 1M 4k"]],
    ["b1.vhdx", ["-f", "vhdx", "-o", "block_size=1M"], "64M", ["write -P 6 1M 3M", "write -z 10M 2M"]],
    ["b8.vhdx", ["-f", "vhdx", "-o", "block_size=8M"], "100M", ["write -P 7 0 64k", "write -P 8 90M 1M"]],
    ["b32.vhdx", ["-f", "vhdx", "-o", "block_size=32M,log_size=2M"], "200M", ["write -P 9 33M 5M"]],
    ["fixed.vhdx", ["-f", "vhdx", "-o", "subformat=fixed"], "8M", ["write -P 10 0 1M"]],
  ];
  const out: [string, string[]][] = [];
  for (const [name, opts, size, writes] of list) {
    await sh(dir, "qemu-img", "create", "-q", ...opts, name, size);
    const fmt = opts[1];
    if (writes.length) await sh(dir, "qemu-io", "-f", fmt, ...writes.flatMap((w) => ["-c", w]), name);
    out.push([name, ["-f", fmt]]);
  }
  // qemu-img's own writers, from raw.
  await sh(dir, "qemu-img", "create", "-q", "-f", "raw", "src.raw", "40M");
  await sh(dir, "qemu-io", "-f", "raw", "-c", "write -P 11 3M 2M", "-c", "write -P 12 30M 64k", "src.raw");
  for (const fmt of ["vpc", "vhdx"]) {
    const name = `conv.${fmt}`;
    await sh(dir, "qemu-img", "convert", "-f", "raw", "-O", fmt, "src.raw", name);
    out.push([name, ["-f", fmt]]);
  }
  return out;
}

Deno.test({ name: "vhd/vhdx: info, check and map print what qemu-img prints", ignore: !ready }, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "instar-vhd-" });
  try {
    for (const [name, fmt] of await makeImages(dir)) {
      for (const out of ["human", "json"]) {
        for (const cmd of ["info", "check", "map"]) {
          // Probed (dynamic disks carry their magic at offset 0) and with -f.
          const forms = name.startsWith("fixed.vhd") && !name.endsWith("x") ? [fmt] : [[], fmt];
          for (const f of forms) {
            await t.step(`${cmd} --output=${out} ${f.join(" ")} ${name}`, async () => {
              await assertSame([cmd, `--output=${out}`, ...f, name], dir);
            });
          }
        }
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test(
  { name: "vhd/vhdx: convert, compare and measure read them as qemu-img does", ignore: !ready },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "instar-vhd-conv-" });
    try {
      const images = await makeImages(dir);
      // A qcow2 overlay on a vhdx and on a vpc: chains below qcow2 overlays.
      for (const [base, fmt] of [["b8.vhdx", "vhdx"], ["dyn.vhd", "vpc"]]) {
        const top = `over-${base}.qcow2`;
        await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", fmt, top);
        await sh(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 13 2M 128k", top);
        images.push([top, ["-f", "qcow2"]]);
      }
      for (const [name, fmt] of images) {
        await t.step(`convert -O raw ${name}`, async () => {
          await sh(dir, "qemu-img", "convert", ...fmt, "-O", "raw", name, `${name}.q.raw`);
          const i = await instar(["convert", ...fmt, "-O", "raw", name, `${name}.i.raw`], dir);
          assertEquals(i.code, 0, i.stderr);
          assert(await sameBytes(`${dir}/${name}.i.raw`, `${dir}/${name}.q.raw`));
        });
        for (const extra of [[], ["-c"]]) {
          await t.step(`convert -O qcow2 ${extra.join(" ")} ${name}`, async () => {
            const out = `${name}${extra.length ? ".c" : ""}.i.qcow2`;
            const i = await instar(["convert", ...fmt, "-O", "qcow2", ...extra, name, out], dir);
            assertEquals(i.code, 0, i.stderr);
            const c = await qemuImg(["compare", "-f", "raw", "-F", "qcow2", `${name}.q.raw`, out], dir);
            assertEquals(c.stdout, "Images are identical.\n");
            assertEquals((await qemuImg(["check", out], dir)).code, 0);
          });
        }
        await t.step(`compare ${name} against its raw copy, and -s`, async () => {
          await assertSame(["compare", ...fmt, "-F", "raw", name, `${name}.q.raw`], dir);
          await assertSame(["compare", "-s", ...fmt, "-F", "raw", name, `${name}.q.raw`], dir);
        });
        for (const target of ["qcow2", "raw"]) {
          await t.step(`measure -O ${target} ${name}`, async () => {
            await assertSame(["measure", "-O", target, ...fmt, name], dir);
            await assertSame(["measure", "--output=json", "-O", target, ...fmt, name], dir);
          });
        }
      }
      await t.step("compare across formats", async () => {
        await assertSame(["compare", "dyn.vhd", "b1.vhdx"], dir);
        await assertSame(["compare", "conv.vpc", "conv.vhdx"], dir);
        await assertSame(["compare", "-s", "conv.vpc", "conv.vhdx"], dir);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test({ name: "vhd/vhdx: hostile headers fail as qemu-img fails, fast", ignore: !ready }, async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "instar-vhd-bad-" });
  try {
    await sh(dir, "qemu-img", "create", "-q", "-f", "vpc", "v.vhd", "64M");
    await sh(dir, "qemu-img", "create", "-q", "-f", "vhdx", "x.vhdx", "64M");
    const patch = (src: string, dst: string, at: number, bytes: number[]) => {
      const b = Deno.readFileSync(`${dir}/${src}`);
      b.set(bytes, at);
      Deno.writeFileSync(`${dir}/${dst}`, b);
    };
    // vpc: the footer checksum (the copy at the end still opens, as in qemu),
    // both footers' checksums, the dynamic header's magic, block size 0,
    // max table entries near 2^32.
    patch("v.vhd", "sum.vhd", 64, [0xff]);
    const size = Deno.statSync(`${dir}/v.vhd`).size;
    patch("sum.vhd", "sums.vhd", size - 512 + 64, [0xff]);
    patch("v.vhd", "dynmagic.vhd", 512, [0x41]);
    patch("v.vhd", "bs0.vhd", 512 + 32, [0, 0, 0, 0]);
    patch("v.vhd", "bat.vhd", 512 + 28, [0xff, 0xff, 0xff, 0xf0]);
    // vhdx: both headers' CRCs broken; the region table's CRC broken.
    patch("x.vhdx", "hdrs.vhdx", 64 * 1024 + 4, [0xde, 0xad]);
    patch("hdrs.vhdx", "hdrs.vhdx", 128 * 1024 + 4, [0xde, 0xad]);
    patch("x.vhdx", "region.vhdx", 192 * 1024 + 4, [0xde, 0xad]);
    patch("x.vhdx", "region2.vhdx", 256 * 1024 + 4, [0xde, 0xad]);
    for (
      const name of [
        "sum.vhd",
        "sums.vhd",
        "dynmagic.vhd",
        "bs0.vhd",
        "bat.vhd",
        "hdrs.vhdx",
        "region.vhdx",
        "region2.vhdx",
      ]
    ) {
      for (const cmd of ["info", "check", "map"]) {
        await t.step(`${cmd} ${name}`, async () => {
          const t0 = performance.now();
          await assertSame([cmd, name], dir);
          assert(performance.now() - t0 < 20000, "took too long");
        });
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

export { assertEquals, instar, qemuImg };
