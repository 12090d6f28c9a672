// GNU getopt_long as qemu-img uses it: optstring starting with ':' (no
// diagnostics from getopt itself), argument permutation (operands may come
// after options), unique-prefix abbreviation of long options, "--" ends
// options. Errors name argv[optind - 1] exactly like qemu-img's
// missing_argument()/unrecognized_option().
import { usageError } from "./messages.ts";

export interface LongOption {
  name: string;
  hasArg: boolean;
  /** Short letter or a name for the handler. */
  id: string;
  /** instar's own option, not qemu-img's: see the prefix rule in getopt. */
  instar?: boolean;
}

export interface Parsed {
  id: string;
  value?: string;
}

/**
 * Walks argv (argv[0] is the command name) and calls `on` for each option in
 * order, so a handler error stops parsing where qemu-img would. Returns the
 * operands. `stopAtOperand` gives the "+" (POSIXLY_CORRECT) behaviour.
 */
export function getopt(
  argv: string[],
  shortSpec: string,
  longs: LongOption[],
  on: (p: Parsed) => void,
  stopAtOperand = false,
): string[] {
  const operands: string[] = [];
  let lastOperand: string | undefined;
  let i = 1;
  while (i < argv.length) {
    const a = argv[i];
    if (a === "--") {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      const exact = longs.find((l) => l.name === name);
      let opt = exact;
      if (!opt) {
        // An abbreviation qemu-img accepts keeps its meaning: instar's own
        // options only match a prefix no qemu-img option of the command has
        // (so `map --max` stays --max-length next to --max-spool).
        const all = longs.filter((l) => l.name.startsWith(name));
        const qemu = all.filter((l) => !l.instar);
        const cands = qemu.length ? qemu : all;
        const distinct = cands.filter((c, k) =>
          cands.findIndex((d) => d.id === c.id && d.hasArg === c.hasArg) === k
        );
        if (distinct.length === 1) opt = cands[0];
      }
      if (!opt) throw usageError(`unrecognized option '${a}'`);
      if (!opt.hasArg) {
        if (eq >= 0) throw usageError(`unrecognized option '${a}'`);
        on({ id: opt.id });
        i++;
      } else if (eq >= 0) {
        on({ id: opt.id, value: a.slice(eq + 1) });
        i++;
      } else if (i + 1 < argv.length) {
        on({ id: opt.id, value: argv[i + 1] });
        i += 2;
      } else {
        throw usageError(`missing argument for option '${a}'`);
      }
      continue;
    }
    if (a.startsWith("-") && a.length > 1) {
      let j = 1;
      let next = i + 1;
      while (j < a.length) {
        const c = a[j++];
        const last = j === a.length;
        const at = c === ":" || c === ";" ? -1 : shortSpec.indexOf(c);
        if (at < 0) {
          // optind moves past this element only when c was its last character.
          throw usageError(`unrecognized option '${last ? a : (lastOperand ?? argv[i - 1])}'`);
        }
        if (shortSpec[at + 1] === ":") {
          if (!last) {
            on({ id: c, value: a.slice(j) });
          } else if (next < argv.length) {
            on({ id: c, value: argv[next] });
            next++;
          } else {
            throw usageError(`missing argument for option '${a}'`);
          }
          break;
        }
        on({ id: c });
      }
      i = next;
      continue;
    }
    if (stopAtOperand) {
      operands.push(...argv.slice(i));
      break;
    }
    operands.push(a);
    lastOperand = a;
    i++;
  }
  return operands;
}
