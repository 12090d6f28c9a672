// The backing allowlist from config files and INSTAR_BACKING_DIRS
// (lib/config/config.ts, docs/config.md): a nova-style `_base/` chain and a
// Proxmox linked clone are allowed by configuration alone; a path outside
// every allowed directory and a json: name stay refused; image_dir = false
// with no directories is the empty policy; `instar config` prints the
// merged policy; bad files are clear errors.
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { checkBacking, makePolicy, PolicyError } from "../lib/chain/policy.ts";
import { withHostContext } from "../lib/host/context.ts";
import { built, CLI_ENTRY, haveQemuImg, instar, REPO, sh } from "./cli_helpers.ts";

/** A tree with a nova instance disk, its _base, a Proxmox clone and a victim outside. */
async function tree(): Promise<string> {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "instar-cfg-" }));
  for (
    const d of [
      "nova/instances/uuid1",
      "nova/instances/_base",
      "pve/images/100",
      "pve/images/101",
      "etc",
      "home",
    ]
  ) {
    await Deno.mkdir(`${root}/${d}`, { recursive: true });
  }
  for (const f of ["nova/instances/_base/abc123", "pve/images/100/base-100-disk-0.qcow2", "etc/secret"]) {
    await Deno.writeFile(`${root}/${f}`, new Uint8Array(512));
  }
  await Deno.writeFile(`${root}/nova/instances/uuid1/disk`, new Uint8Array(512));
  await Deno.writeFile(`${root}/pve/images/101/vm-101-disk-0.qcow2`, new Uint8Array(512));
  return root;
}

/** Runs fn with the environment a client would send (no process env leaks in). */
function withEnv<T>(env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  return withHostContext({ env }, fn);
}

async function allowed(
  root: string,
  env: Record<string, string>,
  top: string,
  name: string,
  cli: string[] = [],
) {
  return await withEnv(env, async () => {
    const policy = await makePolicy(`${root}/${top}`, cli);
    return await checkBacking(policy, `${root}/${top}`, name, 0, new Set());
  });
}

Deno.test("config: nova _base and Proxmox clones through config files and INSTAR_BACKING_DIRS", async (t) => {
  const root = await tree();
  const none = { INSTAR_SYSTEM_CONFIG: `${root}/etc/none.toml`, HOME: `${root}/home` };
  const nova = "nova/instances/uuid1/disk";
  const base = `${root}/nova/instances/_base/abc123`;
  const pve = "pve/images/101/vm-101-disk-0.qcow2";
  try {
    await t.step("by default only the image's own directory", async () => {
      await rejects(allowed(root, none, nova, base), PolicyError);
      await rejects(allowed(root, none, pve, "../100/base-100-disk-0.qcow2"), PolicyError);
    });
    await t.step("the system file allows _base", async () => {
      await Deno.writeTextFile(
        `${root}/etc/sys.toml`,
        `[backing]\ndirs = ["${root}/nova/instances/_base"]\n`,
      );
      const env = { ...none, INSTAR_SYSTEM_CONFIG: `${root}/etc/sys.toml` };
      const link = await allowed(root, env, nova, base);
      assertEquals(link.realPath, base);
      await rejects(allowed(root, env, nova, `${root}/etc/secret`), /outside the allowed directories/);
      await rejects(allowed(root, env, nova, 'json:{"file.filename":"/etc/passwd"}'), /json: and protocol/);
    });
    await t.step("the user file ($XDG_CONFIG_HOME) allows a Proxmox linked clone", async () => {
      await Deno.mkdir(`${root}/xdg/instar`, { recursive: true });
      await Deno.writeTextFile(
        `${root}/xdg/instar/instar.toml`,
        `[backing]\ndirs = ["${root}/pve/images/100"]\n`,
      );
      const env = { ...none, XDG_CONFIG_HOME: `${root}/xdg` };
      const link = await allowed(root, env, pve, "../100/base-100-disk-0.qcow2");
      assertEquals(link.filename, `${root}/pve/images/101/../100/base-100-disk-0.qcow2`);
      await rejects(allowed(root, env, nova, base), PolicyError);
    });
    await t.step("~/.config/instar/instar.toml when XDG_CONFIG_HOME is unset", async () => {
      await Deno.mkdir(`${root}/home/.config/instar`, { recursive: true });
      await Deno.writeTextFile(
        `${root}/home/.config/instar/instar.toml`,
        `[backing]\ndirs = ["${root}/nova/instances/_base"]\n`,
      );
      await allowed(root, none, nova, base);
      await Deno.remove(`${root}/home/.config`, { recursive: true });
    });
    await t.step("INSTAR_BACKING_DIRS (colon-separated)", async () => {
      const env = { ...none, INSTAR_BACKING_DIRS: `${root}/pve/images/100:${root}/nova/instances/_base` };
      await allowed(root, env, nova, base);
      await allowed(root, env, pve, "../100/base-100-disk-0.qcow2");
      await rejects(allowed(root, env, nova, `${root}/etc/secret`), PolicyError);
    });
    await t.step("the empty policy follows nothing, not even a sibling", async () => {
      await Deno.writeTextFile(`${root}/etc/gate.toml`, `[backing]\nimage_dir = false\ndirs = []\n`);
      await Deno.writeFile(`${root}/nova/instances/uuid1/victim.raw`, new Uint8Array(512));
      const env = { ...none, INSTAR_SYSTEM_CONFIG: `${root}/etc/gate.toml` };
      await rejects(allowed(root, env, nova, "victim.raw"), /policy is empty/);
      // ... and the default follows the sibling (the leak the empty policy exists for).
      await allowed(root, none, nova, "victim.raw");
    });
    await t.step(
      "a missing configured directory is skipped, a missing --backing-dir is an error",
      async () => {
        const env = { ...none, INSTAR_BACKING_DIRS: `${root}/nowhere` };
        await allowed(root, env, nova, "victim.raw");
        await rejects(allowed(root, none, nova, "victim.raw", [`${root}/nowhere`]), /does not exist/);
      },
    );
    await t.step("a malformed file is a clear error", async () => {
      await Deno.writeTextFile(`${root}/etc/bad.toml`, `[backing]\ndirs = "not a list"\n`);
      const env = { ...none, INSTAR_SYSTEM_CONFIG: `${root}/etc/bad.toml` };
      await rejects(allowed(root, env, nova, base), /backing\.dirs must be an array of strings/);
      await Deno.writeTextFile(`${root}/etc/bad.toml`, `[backing\n`);
      await rejects(allowed(root, env, nova, base), /Invalid config file/);
      await Deno.writeTextFile(`${root}/etc/bad.toml`, `[backing]\ndirs = ["relative/dir"]\n`);
      await rejects(allowed(root, env, nova, base), /not an absolute path/);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("config: `instar config` prints the merged policy", async () => {
  const root = await tree();
  try {
    await Deno.writeTextFile(`${root}/etc/sys.toml`, `[backing]\ndirs = ["/srv/base"]\n`);
    await Deno.mkdir(`${root}/xdg/instar`, { recursive: true });
    await Deno.writeTextFile(`${root}/xdg/instar/instar.toml`, `[backing]\nimage_dir = false\n`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${REPO}/main.ts`, "--backing-dir", "/cli/dir", "config"],
      env: {
        INSTAR_SYSTEM_CONFIG: `${root}/etc/sys.toml`,
        XDG_CONFIG_HOME: `${root}/xdg`,
        INSTAR_BACKING_DIRS: "/env/a:/env/b",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assert(text.includes(`# system file ${root}/etc/sys.toml: used`), text);
    assert(text.includes(`# user file ${root}/xdg/instar/instar.toml: used`), text);
    assert(text.includes("image_dir = false\n"), text);
    const dirs = [...text.matchAll(/^ {2}"([^"]*)",\s+# (.*)$/gm)].map((m) => [m[1], m[2]]);
    assertEquals(dirs, [
      ["/srv/base", "system file"],
      ["/env/a", "INSTAR_BACKING_DIRS"],
      ["/env/b", "INSTAR_BACKING_DIRS"],
      ["/cli/dir", "--backing-dir"],
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({
  name: "config: a qemu-img-made nova chain opens through INSTAR_BACKING_DIRS",
  ignore: !built() || !haveQemuImg(),
}, async () => {
  const root = await Deno.realPath(await Deno.makeTempDir({ prefix: "instar-cfg-" }));
  try {
    await Deno.mkdir(`${root}/instances/_base`, { recursive: true });
    await Deno.mkdir(`${root}/instances/uuid1`, { recursive: true });
    await sh(root, "qemu-img", "create", "-q", "-f", "raw", "instances/_base/abc", "16M");
    await sh(
      root,
      "qemu-img",
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      `${root}/instances/_base/abc`,
      "-F",
      "raw",
      "instances/uuid1/disk",
    );
    const refused = await instar(["info", "--backing-chain", "instances/uuid1/disk"], root);
    assert(refused.code !== 0, refused.stdout);
    const env = { INSTAR_BACKING_DIRS: `${root}/instances/_base` };
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI_ENTRY, "info", "--backing-chain", "instances/uuid1/disk"],
      cwd: root,
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
