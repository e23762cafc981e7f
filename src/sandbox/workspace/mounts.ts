import { readFile } from 'node:fs/promises';

export interface MountEntry {
  majorMinor: string;
  mountPoint: string;
  fsType: string;
  source: string;
  mountOptions: string;
  superOptions: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, octal: string) =>
    String.fromCharCode(parseInt(octal, 8)),
  );
}

/** Parses /proc/self/mountinfo (see proc(5)); malformed lines are skipped. */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.length === 0) continue;
    const separator = line.indexOf(' - ');
    if (separator < 0) continue;
    const before = line.slice(0, separator).split(' ');
    const after = line.slice(separator + 3).split(' ');
    const majorMinor = before[2];
    const mountPoint = before[4];
    const mountOptions = before[5];
    const fsType = after[0];
    const source = after[1];
    const superOptions = after[2];
    if (
      majorMinor === undefined ||
      mountPoint === undefined ||
      mountOptions === undefined ||
      fsType === undefined ||
      source === undefined ||
      superOptions === undefined
    ) {
      continue;
    }
    entries.push({
      majorMinor,
      mountPoint: unescapeMountField(mountPoint),
      fsType,
      source: unescapeMountField(source),
      mountOptions,
      superOptions,
    });
  }
  return entries;
}

export async function readMounts(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}
