// The temporary files of a command that writes a new image (convert, dd):
// the output is built under a temporary name beside the target (an unnamed
// O_TMPFILE where the file system allows) and put in place only when
// complete; every temporary is removed on failure, exit or cancel.
import { UnnamedFile } from "../vmm/unnamed_file.ts";
import { Cancelled, hostPath, trapSignals } from "../host/context.ts";

/** A fresh temporary name beside the target (same filesystem, so rename is atomic). */
function tempBeside(target: string, tag: string): string {
  const slash = target.lastIndexOf("/");
  const dir = slash >= 0 ? target.slice(0, slash + 1) : "";
  const base = slash >= 0 ? target.slice(slash + 1) : target;
  const rand = crypto.getRandomValues(new Uint32Array(2)).join("");
  return `${dir}.${base}.instar-${tag}-${rand}`;
}

/** Removes the temporary files on failure, exit or cancel (SIGINT/SIGTERM to the
 * direct CLI, a cancel from the service's client): the guest is stopped and the
 * command returns 130/143 through run(), with nothing left under the target name. */
export class TempFiles {
  paths: string[] = [];
  /** Unnamed outputs (O_TMPFILE) by the path they are written through. */
  #unnamed = new Map<string, UnnamedFile>();
  #trap = trapSignals();
  // The list is kept: a step already under way may create a file again, and the
  // final removeAll() takes it too.
  #onCancel = () => this.#remove();
  constructor() {
    this.#trap.signal.addEventListener("abort", this.#onCancel);
  }
  /** Throws when the command was cancelled (checked before the rename). */
  checkCancelled() {
    if (this.#trap.signal.aborted) throw new Cancelled();
  }
  async create(target: string, tag: string): Promise<string> {
    for (;;) {
      const p = tempBeside(target, tag);
      try {
        const f = await Deno.open(hostPath(p), { write: true, createNew: true, mode: 0o644 });
        f.close();
        this.paths.push(p);
        return p;
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
    }
  }
  /** The output's file: unnamed (O_TMPFILE) beside the target where the file
   * system allows, so a killed convert leaves nothing; else a named temporary. */
  async createOutput(target: string): Promise<string> {
    const slash = target.lastIndexOf("/");
    const u = await UnnamedFile.create(slash >= 0 ? target.slice(0, slash + 1) : ".");
    if (!u) return await this.create(target, "out");
    this.#unnamed.set(u.path, u);
    return u.path;
  }
  /** Puts the finished output in place of `target` (linkat, or rename of the named temporary). */
  async commit(out: string, target: string): Promise<void> {
    const u = this.#unnamed.get(out);
    if (!u) {
      await Deno.rename(hostPath(out), hostPath(target));
      this.paths = this.paths.filter((p) => p !== out);
      return;
    }
    // No target yet: the name appears complete, at once. Else link beside it and rename over it.
    if (!u.link(target)) {
      let tmp;
      do tmp = tempBeside(target, "out"); while (!u.link(tmp));
      this.paths.push(tmp);
      await Deno.rename(hostPath(tmp), hostPath(target));
      this.paths = this.paths.filter((p) => p !== tmp);
    }
    u.close();
    this.#unnamed.delete(out);
  }
  #remove() {
    for (const p of this.paths) {
      try {
        Deno.removeSync(hostPath(p));
      } catch { /* already gone */ }
    }
    for (const u of this.#unnamed.values()) u.close();
    this.#unnamed.clear();
  }
  removeAll() {
    this.#remove();
    this.paths = [];
  }
  dispose() {
    this.#trap.signal.removeEventListener("abort", this.#onCancel);
    this.#trap.dispose();
  }
}
