// `convert -O host_device` (lib/convert/host_device.ts): onto a loop device
// (a node of the test's own) it writes what `-O raw` writes there, and every
// refusal (a regular file, a missing or directory target, -o, -c, -n) is
// qemu-img's, byte for byte.
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { asInstar, built, haveQemuImg, instar, qemuImg, sh, withTempDir } from "./cli_helpers.ts";
import { loopDevice } from "./support/loop_device.ts";

const ready = built() && haveQemuImg();

Deno.test(
  { name: "convert -O host_device: onto a block device, and qemu-img's refusals", ignore: !ready },
  async (t) => {
    await withTempDir("instar-hdev-", async (dir) => {
      await sh(dir, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "4M");
      await sh(dir, "qemu-io", "-c", "write -P 5 1M 1M", "-c", "write -z 3M 64k", "src.qcow2");
      await sh(dir, "qemu-img", "convert", "-O", "raw", "src.qcow2", "want.raw");
      await Deno.writeFile(`${dir}/file.img`, new Uint8Array(8 << 20));
      await Deno.mkdir(`${dir}/d`);
      const same = async (args: string[]) => {
        const q = await qemuImg(args, dir);
        assertEquals(await instar(args, dir), asInstar(q), args.join(" "));
      };
      await t.step("refusals without a device", async () => {
        for (
          const args of [
            ["convert", "-O", "host_device", "src.qcow2", "file.img"],
            ["convert", "-O", "host_device", "src.qcow2", "missing.img"],
            ["convert", "-O", "host_device", "src.qcow2", "d"],
            ["convert", "-n", "-O", "host_device", "src.qcow2", "file.img"],
            ["convert", "-O", "host_device", "-o", "preallocation=full", "src.qcow2", "file.img"],
            ["convert", "-O", "host_device", "-o", "nocow=on", "src.qcow2", "file.img"],
            ["convert", "-O", "host_device", "-c", "src.qcow2", "file.img"],
            ["convert", "-O", "host_device", "-o", "help", "src.qcow2", "file.img"],
            ["convert", "-O", "host_device", "-o", "help"],
          ]
        ) {
          await same(args);
        }
        assertEquals(Deno.statSync(`${dir}/file.img`).size, 8 << 20);
      });
      const big = await loopDevice(dir, "big", 16 << 20);
      if (!big) return; // not root, or no loop devices
      try {
        await t.step("a block device: written in place, the rest kept, the node left", async () => {
          for (const extra of [[], ["-n"], ["-o", "preallocation=off"]]) {
            await Deno.writeFile(big.node, new Uint8Array(16 << 20).fill(0xaa));
            const r = await instar(["convert", ...extra, "-O", "host_device", "src.qcow2", "big"], dir);
            assertEquals(r, { stdout: "", stderr: "", code: 0 });
            assert(Deno.statSync(big.node).isBlockDevice, "the device node was replaced");
            const got = await Deno.readFile(big.node);
            const want = await Deno.readFile(`${dir}/want.raw`);
            assertEquals(got.subarray(0, want.length), want);
            assert(got.subarray(want.length).every((b) => b === 0xaa), "the device past the image changed");
          }
          await same(["convert", "-O", "host_device", "-o", "preallocation=falloc", "src.qcow2", "big"]);
          await same(["convert", "-O", "host_device", "-o", "nocow=on", "src.qcow2", "big"]);
          await same(["convert", "-O", "host_device", "-o", "help", "src.qcow2", "big"]);
        });
        const small = await loopDevice(dir, "small", 1 << 20);
        if (!small) return;
        try {
          await t.step("a device smaller than the image", async () => {
            await same(["convert", "-O", "host_device", "src.qcow2", "small"]);
          });
        } finally {
          await small.detach();
        }
      } finally {
        await big.detach();
      }
    });
  },
);
