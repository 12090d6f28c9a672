import { fullVersion, INSTAR_VERSION, NEWEST, type Profile } from "./version.ts";

/** `instar --version`: callers that parse `qemu-img version ([0-9.]*)` (cinder) find the
 * version of the qemu-img whose output instar reproduces. */
export function versionText(profile: Profile = NEWEST): string {
  return `instar version ${INSTAR_VERSION} (qemu-img version ${fullVersion(profile)} compatible)\n` +
    "Parses every image inside a KVM sandbox.\n";
}

export function helpText(profile?: Profile): string {
  return versionText(profile) +
    `usage: instar [standard options] command [command options]
Safe, qemu-img compatible disk image utility

    '-h', '--help'       display this help and exit
    '-V', '--version'    output version information and exit

Command syntax:
  check [-f fmt] [--output=ofmt] [-q] [-U] filename
  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
  map [-f fmt] [--output=ofmt] [--start-offset=offset] [--max-length=len] [-U] filename

instar's own commands:
  serve [--socket PATH] [--jobs N]           the service the thin client talks to
  install-client DIR [--name NAME]           write the thin client (e.g. as qemu-img)
  config                                     print the effective backing-file policy
  inspect [--output=ofmt] FILE|-             an upload gate's verdict: format, size, safe/unsafe

instar options (accepted by every command):
  --qemu-version X.Y   print output the way qemu-img X.Y does (default: the
                       installed qemu-img's version, else the newest known)
  --unsafe-quirks      read files that look like raw disks without a partition
                       table, or carry another format's signature, as raw
  --backing-dir DIR    also allow backing files inside DIR (repeatable; by
                       default only the top image's directory is allowed;
                       see also /etc/instar/instar.toml, INSTAR_BACKING_DIRS)

Supported formats: qcow2 raw
`;
}
