// VMDK descriptors naming many extent files: qemu-img's twoGbMaxExtentSparse
// and twoGbMaxExtentFlat images of 100 GiB (50 extents) and 2 TiB (1024
// extents, the cap, limits.VMDK_MAX_FILES) with data written by qemu-io in
// several extents. info, map, check, measure print what qemu-img prints;
// convert writes the disk qemu-img reads; compare agrees, across two such
// images too (two chains of 1025 inputs each). One more extent than the cap is
// refused before any extent file is opened. Extent files are sparse (flat) or
// a few KiB (sparse), so the 2 TiB images cost a few MiB. qemu-img itself
// takes minutes to map, check or compare the 2 TiB ones: the default run
// checks their info and compares the 100 GiB ones; INSTAR_FULL_TESTS=1 runs
// every command on every image.
import { deepStrictEqual as assertEquals, match } from "node:assert/strict";
import { assertSameHere, built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";
import { FULL_TESTS } from "./support/full.ts";

const ready = built() && haveQemuImg();

/** Writes spread over several extents (offsets inside a 100 GiB disk, the last one's end scaled up). */
function writes(size: string): string[] {
  const last = size === "2T" ? "2047G" : "99G";
  return [
    "write -P 0x11 0 1M",
    "write -P 0x22 2047M 2M", // across the first two extents
    "write -P 0x33 40G 64k",
    "write -z 41G 64k",
    `write -P 0x44 ${last} 1M`,
  ];
}

async function make(dir: string, name: string, subformat: string, size: string): Promise<void> {
  await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", "-o", `subformat=${subformat}`, name, size);
  await sh(dir, "qemu-io", "-f", "vmdk", ...writes(size).flatMap((w) => ["-c", w]), name);
}

Deno.test(
  { name: "vmdk: twoGbMaxExtent images of 100 GiB and 2 TiB (up to 1024 extents)", ignore: !ready },
  async (t) => {
    await useHostedGuestsWithoutKvm();
    await withTempDir("instar-vmdk-many-", async (dir) => {
      const images: [string, string, string][] = [
        ["s100.vmdk", "twoGbMaxExtentSparse", "100G"],
        ["f100.vmdk", "twoGbMaxExtentFlat", "100G"],
        ["s2t.vmdk", "twoGbMaxExtentSparse", "2T"],
        ["f2t.vmdk", "twoGbMaxExtentFlat", "2T"],
      ];
      for (const [name, sub, size] of images) await make(dir, name, sub, size);
      for (const [name, , size] of images) {
        const cmds = size === "2T" && !FULL_TESTS
          ? [["info"], ["info", "--output=json"]]
          : [["info"], ["info", "--output=json"], ["map", "--output=json"], ["check"]];
        for (const args of cmds) {
          await t.step(`${args.join(" ")} ${name}`, async () => {
            await assertSameHere([...args, name], dir);
          });
        }
      }
      for (const name of FULL_TESTS ? ["s100.vmdk", "f2t.vmdk"] : ["s100.vmdk", "f100.vmdk"]) {
        await t.step(`map, measure ${name}`, async () => {
          await assertSameHere(["map", name], dir);
          await assertSameHere(["measure", "-O", "qcow2", name], dir);
        });
      }
      for (const name of FULL_TESTS ? ["s100.vmdk", "s2t.vmdk"] : ["s100.vmdk"]) {
        await t.step(`convert -O qcow2 ${name}`, async () => {
          const out = `${name}.qcow2`;
          const i = await instarHere(["convert", "-O", "qcow2", name, out], dir);
          assertEquals(i, { code: 0, stdout: "", stderr: "" });
          assertEquals(
            (await qemuImg(["compare", "-F", "qcow2", name, out], dir)).stdout,
            "Images are identical.\n",
          );
          assertEquals((await qemuImg(["check", out], dir)).code, 0);
        });
      }
      await t.step("convert -O raw f100.vmdk", async () => {
        const i = await instarHere(["convert", "-O", "raw", "f100.vmdk", "f100.raw"], dir);
        assertEquals(i.code, 0, i.stderr);
        assertEquals((await qemuImg(["compare", "-F", "raw", "f100.vmdk", "f100.raw"], dir)).code, 0);
      });
      const [a, b] = FULL_TESTS ? ["s2t.vmdk", "f2t.vmdk"] : ["s100.vmdk", "f100.vmdk"];
      await t.step(`compare ${a} ${b}, and a mismatch`, async () => {
        await assertSameHere(["compare", a, b], dir);
        await sh(dir, "qemu-io", "-f", "vmdk", "-c", "write -P 0x55 60G 512", b);
        await assertSameHere(["compare", a, b], dir);
      });
      await t.step("1025 extents: refused, nothing opened", async () => {
        const desc = await Deno.readTextFile(`${dir}/f2t.vmdk`);
        const extra = 'RW 2048 FLAT "f2t-f1025.vmdk" 0\n';
        await Deno.writeTextFile(
          `${dir}/over.vmdk`,
          desc.replace(/(RW \d+ FLAT "f2t-f1024\.vmdk" 0\n)/, `$1${extra}`),
        );
        const r = await instarHere(["info", "over.vmdk"], dir);
        assertEquals(r.code, 1, r.stderr);
        match(
          r.stderr,
          /^instar: Could not open 'over\.vmdk': The VMDK descriptor names 1025 extents; instar opens at most 1024 extent files\n$/,
        );
      });
    });
  },
);
