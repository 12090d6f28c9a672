// convert -c -o compression_type=zstd from VMDK sources (monolithicSparse,
// streamOptimized with deflated grains, twoGbMaxExtentSparse over several
// extent files, monolithicFlat): the convert_zstd guest links the vmdk reader
// (guest/compress/zlib_trim.c made the room). The output holds the disk
// qemu-img reads from the source and from qemu-img's own zstd output, its
// clusters are zstd-compressed, and qemu-img check finds it clean.
import { deepStrictEqual as assertEquals, match } from "node:assert/strict";
import { built, haveQemuImg, instarHere, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { useHostedGuestsWithoutKvm } from "./support/kvm.ts";

const ready = built() && haveQemuImg();

Deno.test(
  { name: "vmdk: convert -c -o compression_type=zstd from every vmdk subformat", ignore: !ready },
  async (t) => {
    await useHostedGuestsWithoutKvm();
    await withTempDir("instar-vmdk-zstd-", async (dir) => {
      const io = ["-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 3M 64k", "-c", "write -z 5M 64k"];
      await sh(dir, "qemu-img", "create", "-q", "-f", "vmdk", "m.vmdk", "8M");
      await sh(dir, "qemu-io", "-f", "vmdk", ...io, "m.vmdk");
      await sh(
        dir,
        "qemu-img",
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "m.vmdk",
        "so.vmdk",
      );
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "fl.vmdk",
        "8M",
      );
      await sh(dir, "qemu-io", "-f", "vmdk", ...io, "fl.vmdk");
      await sh(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        "tw.vmdk",
        "5G",
      );
      await sh(
        dir,
        "qemu-io",
        "-f",
        "vmdk",
        "-c",
        "write -P 0x33 2047M 2M",
        "-c",
        "write -P 0x44 4G 64k",
        "tw.vmdk",
      );
      for (const name of ["m.vmdk", "so.vmdk", "fl.vmdk", "tw.vmdk"]) {
        await t.step(name, async () => {
          const args = ["convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", name];
          assertEquals(await instarHere([...args, `${name}.i.qcow2`], dir), {
            code: 0,
            stdout: "",
            stderr: "",
          });
          assertEquals((await qemuImg([...args, `${name}.q.qcow2`], dir)).code, 0);
          for (const other of [name, `${name}.q.qcow2`]) {
            const c = await qemuImg(["compare", other, `${name}.i.qcow2`], dir);
            assertEquals(c.stdout, "Images are identical.\n", c.stderr);
          }
          const check = await qemuImg(["check", `${name}.i.qcow2`], dir);
          assertEquals(check.code, 0, check.stdout);
          match(check.stdout, /100\.00% compressed clusters/);
          match((await qemuImg(["info", `${name}.i.qcow2`], dir)).stdout, /compression type: zstd/);
        });
      }
    });
  },
);
