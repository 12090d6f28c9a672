// A worker for tests/vmm_test.ts: it loads its own copy of the VMM library
// (a worker has its own module graph, so lib/vmm/ffi.ts dlopens anew), runs
// one guest, which installs the watchdog's kick handler from that copy, and
// answers with the run's status. The test then terminates the worker, which
// unloads the copy.
import { formats, ops } from "../../lib/abi/spec.ts";
import { runGuest } from "../../lib/vmm/sandbox.ts";

interface Job {
  binary: Uint8Array;
  input: string;
}

self.onmessage = async (e: MessageEvent<Job>) => {
  const r = await runGuest({
    op: "echo",
    binary: e.data.binary,
    opCode: ops.TEST,
    inputs: [{ path: e.data.input, format: formats.RAW }],
    timeoutMs: 5000,
    args: [0n, 8192n],
  });
  self.postMessage(r.status);
};
