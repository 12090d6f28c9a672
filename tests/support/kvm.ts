// Whether this machine can run instar's guests in KVM. Some machines have a
// kvm module but no usable /dev/kvm (a PVM guest cannot nest: "kvm-pvm: this
// kernel is itself a kvm-pvm guest; not binding"). Tests that exercise the
// VMM itself are skipped there; tests of the CLI run the guest programs'
// hosted builds instead (tests/support/hosted_main.ts), so every parser,
// planner and printer is still checked against qemu-img.
export const KVM: boolean = (() => {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return true;
  } catch {
    return false;
  }
})();

const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

// Without KVM the CLI tests need the hosted programs (build/host/<op>):
// built once here, in the test process, before any test spawns the CLI
// (scripts/build.sh builds only what the product embeds).
if (!KVM) {
  const r = new Deno.Command("make", { args: ["-s", "-C", `${REPO}/guest/host`], stdout: "null", stderr: "piped" })
    .outputSync();
  if (!r.success) throw new Error(`make -C guest/host failed: ${new TextDecoder().decode(r.stderr)}`);
}

/** The module a test spawns as the instar CLI on this machine. */
export const CLI_ENTRY = KVM ? `${REPO}/main.ts` : `${REPO}/tests/support/hosted_main.ts`;

/** Says once why VM tests were skipped (the suite's summary line counts them). */
export function noteKvm(): void {
  if (!KVM) console.error("instar tests: /dev/kvm is not usable here: VMM tests skipped, guests run hosted");
}

/** For tests that call the CLI in process: without KVM, run guests hosted. */
export async function useHostedGuestsWithoutKvm(): Promise<void> {
  if (KVM) return;
  const { setGuestRunnerForTests } = await import("../../lib/vmm/guest.ts");
  const { hostedRunGuest } = await import("./hosted_runner.ts");
  setGuestRunnerForTests(hostedRunGuest);
}
