// The client <-> service wire format; vmm/client/protocol.h is the C side
// and docs/service.md the description. Everything in a request is the
// client's word, but the client runs with the service's own uid (the VMM
// library checked SO_PEERCRED), so a request can ask for nothing the user
// could not do directly: these checks are about shape, not trust.

export const REQ_HEAD_SIZE = 40;
export const REQ_MAGIC = "INSTAR\x01\n";
export const RLIM_NONE = 0xffff_ffff_ffff_ffffn;

export interface Request {
  cwd: string;
  args: string[];
  env: Record<string, string>;
  /** Soft limits of the client; undefined when unlimited. */
  rlimitAs?: bigint;
  rlimitCpu?: bigint;
}

export class ProtocolError extends Error {}

const dec = new TextDecoder("utf-8", { fatal: false });

/** Decodes a request the VMM library read (header + NUL-terminated strings). */
export function decodeRequest(bytes: Uint8Array): Request {
  if (bytes.length < REQ_HEAD_SIZE) throw new ProtocolError("short request");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dec.decode(bytes.subarray(0, 8)) !== REQ_MAGIC) throw new ProtocolError("bad magic");
  const len = dv.getUint32(8, true);
  const argc = dv.getUint32(12, true);
  const envc = dv.getUint32(16, true);
  if (len !== bytes.length) throw new ProtocolError("bad length");
  const as = dv.getBigUint64(24, true);
  const cpu = dv.getBigUint64(32, true);
  const strings: string[] = [];
  let at = REQ_HEAD_SIZE;
  while (at < bytes.length) {
    const nul = bytes.indexOf(0, at);
    if (nul < 0) throw new ProtocolError("unterminated string");
    strings.push(dec.decode(bytes.subarray(at, nul)));
    at = nul + 1;
  }
  if (strings.length !== 1 + argc + envc) throw new ProtocolError("bad string count");
  const [cwd, ...rest] = strings;
  if (!cwd.startsWith("/")) throw new ProtocolError("the working directory is not absolute");
  const env: Record<string, string> = {};
  for (const e of rest.slice(argc)) {
    const eq = e.indexOf("=");
    if (eq > 0) env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  return {
    cwd,
    args: rest.slice(0, argc),
    env,
    rlimitAs: as === RLIM_NONE ? undefined : as,
    rlimitCpu: cpu === RLIM_NONE ? undefined : cpu,
  };
}

/** Where client and service meet without flags: $INSTAR_SOCKET, else
 * $XDG_RUNTIME_DIR/instar.sock, else /run/instar/<uid>.sock. */
export function socketPath(env: (name: string) => string | undefined = (n) => Deno.env.get(n)): string {
  const s = env("INSTAR_SOCKET");
  if (s) return s;
  const x = env("XDG_RUNTIME_DIR");
  if (x) return `${x}/instar.sock`;
  return `/run/instar/${Deno.uid() ?? 0}.sock`;
}
