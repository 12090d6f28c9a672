// libFuzzer dictionary files (the -dict= syntax, shared with AFL): one entry
// per line, `name="value"` or `"value"`, `#` comments, escapes \\ \" and
// \xHH inside the quotes.

export function parseDict(text: string, file = "dictionary"): Uint8Array[] {
  const out: Uint8Array[] = [];
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (line === "" || line.startsWith("#")) continue;
    const q = line.indexOf('"');
    if (q < 0 || !line.endsWith('"') || q === line.length - 1) {
      throw new Error(`Parse error in ${file} line ${n + 1}: ${line}`);
    }
    const bytes: number[] = [];
    const body = line.slice(q + 1, -1);
    for (let i = 0; i < body.length; i++) {
      const c = body[i];
      if (c !== "\\") {
        bytes.push(body.charCodeAt(i) & 0xff);
        continue;
      }
      const e = body[++i];
      if (e === "\\" || e === '"') bytes.push(e.charCodeAt(0));
      else if (e === "x" && /^[0-9a-fA-F]{2}$/.test(body.slice(i + 1, i + 3))) {
        bytes.push(parseInt(body.slice(i + 1, i + 3), 16));
        i += 2;
      } else throw new Error(`Parse error in ${file} line ${n + 1}: bad escape`);
    }
    if (bytes.length) out.push(new Uint8Array(bytes));
  }
  return out;
}
