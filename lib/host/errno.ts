// strerror()-style words for a Deno file-system error, as qemu prints an
// errno ("No such file or directory"). Shared by every layer that reports a
// host file operation (lib/cli re-exports it from lib/cli/image.ts).
const ERRNO_TEXT: Record<string, string> = {
  NotFound: "No such file or directory",
  PermissionDenied: "Permission denied",
  NotADirectory: "Not a directory",
  FilesystemLoop: "Too many levels of symbolic links",
  InvalidData: "Invalid argument",
};

/** strerror()-style text for a Deno file-system error. */
export function errnoText(e: unknown): string {
  if (e instanceof Error) {
    for (const [name, text] of Object.entries(ERRNO_TEXT)) {
      const cls = (Deno.errors as Record<string, unknown>)[name];
      if (typeof cls === "function" && e instanceof (cls as new () => Error)) return text;
    }
    const m = /^(.*?) \(os error \d+\)/.exec(e.message);
    if (m) return m[1].replace(/:.*$/, "");
    return e.message;
  }
  return String(e);
}
