// Test-only entry point, used in place of main.ts where /dev/kvm is not
// usable (tests/support/kvm.ts): the same CLI, with each guest operation run
// as its hosted build (tests/support/hosted_runner.ts). Never shipped: the
// product's main.ts runs guests only in the VM.
import { run } from "../../lib/cli/run.ts";
import { setGuestRunnerForTests } from "../../lib/vmm/guest.ts";
import { hostedRunGuest } from "./hosted_runner.ts";

setGuestRunnerForTests(hostedRunGuest);
Deno.exit(await run(Deno.args));
