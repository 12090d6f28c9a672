// The caller's stdin and stdout as byte streams, for `-` image names and
// `inspect -`. In the direct CLI they are the process's own descriptors; in
// a request `instar serve` runs they are the descriptors the thin client
// passed (lib/service/serve.ts puts them in the host context), so a
// pipeline through the client behaves as it does directly. The host moves
// opaque bytes through these and never looks at them.
import { hostContext } from "./context.ts";

export interface HostStdio {
  /** Reads into p: the count, or null at the end of the stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of bytes to stdout: the count. A reader that went away is Deno.errors.BrokenPipe. */
  write(bytes: Uint8Array): Promise<number>;
  /** Whether stdin (0) or stdout (1) is a terminal. */
  isTerminal(which: 0 | 1): boolean;
  /** A path that stats as stdin (0) or stdout (1) (a /proc/self/fd entry). */
  statPath(which: 0 | 1): string;
}

const processStdio: HostStdio = {
  read: (p) => Deno.stdin.read(p),
  write: (b) => Deno.stdout.write(b),
  isTerminal: (which) => which === 0 ? Deno.stdin.isTerminal() : Deno.stdout.isTerminal(),
  statPath: (which) => `/proc/self/fd/${which}`,
};

/** The current command's stdin and stdout. */
export function hostStdio(): HostStdio {
  return hostContext().stdio ?? processStdio;
}
