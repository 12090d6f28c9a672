// A loop device as a device node of the test's own (root only), for the
// tests that convert onto a block device.

export /** A loop device over a new file of `bytes` filled with 0xaa, as a node in `dir` (root only; undefined elsewhere). */
async function loopDevice(
  dir: string,
  name: string,
  bytes: number,
): Promise<{ node: string; detach: () => Promise<void> } | undefined> {
  await Deno.writeFile(`${dir}/${name}.img`, new Uint8Array(bytes).fill(0xaa));
  const lo = await new Deno.Command("losetup", {
    args: ["-f", "--show", `${dir}/${name}.img`],
    stdout: "piped",
    stderr: "null",
  })
    .output().catch(() => undefined);
  if (!lo?.success) return undefined;
  const dev = new TextDecoder().decode(lo.stdout).trim();
  const detach = async () => {
    await new Deno.Command("losetup", { args: ["-d", dev] }).output();
  };
  // A node of the test's own for the same device: a regression that replaced
  // the target with a file would replace this one, never one in /dev.
  const st = await new Deno.Command("stat", { args: ["-c", "%t %T", dev], stdout: "piped" }).output();
  const [maj, min] = new TextDecoder().decode(st.stdout).trim().split(" ").map((h) =>
    String(parseInt(h, 16))
  );
  const mk = await new Deno.Command("mknod", { args: [`${dir}/${name}`, "b", maj, min] }).output();
  if (!mk.success) {
    await detach();
    return undefined;
  }
  return { node: `${dir}/${name}`, detach };
}
