// `npm run security:register`: checks docs/security/findings.md against the code and the last
// full test run. It fails on drift: a seed finding missing or listed twice, a control whose file
// or function is gone, a test that does not exist, did not run, or did not pass, a README whose
// counts no longer match. Run `npm test` first (it records .test-results/last-run.json).
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const range = (prefix, from, to) =>
  Array.from({ length: to - from + 1 }, (_, i) => `${prefix}${from + i}`);

/**
 * Every finding ID of the four seed reviews, as the register spells them. 001 reuses some
 * section numbers, so repeats get a letter in document order (#2b, #3b, #3c, #4b); its
 * hardening checklist items are HC-n. 002's cross-cutting themes are T-n. 003's sixteen issues
 * are numbered inside their unit (U1.1 …), checked by count below. 004's designs are D-n.
 */
export const EXPECTED_IDS = [
  ...['#0', '#1', '#2', '#3', '#3b', '#4', '#2b', '#3c', '#4b'].map((id) => `001 ${id}`),
  ...range('001 #', 5, 15),
  ...range('001 HC-', 1, 13),
  ...range('002 C-', 1, 2),
  ...range('002 H-', 1, 11),
  ...range('002 M-', 1, 24),
  ...range('002 L-', 1, 16),
  ...range('002 T-', 1, 5),
  ...range('003 R', 1, 6),
  ...range('003 KTD', 1, 5),
  ...range('004 C-', 1, 2),
  ...range('004 H-', 1, 3),
  ...range('004 M-', 1, 6),
  ...range('004 L-', 1, 3),
  ...range('004 D-', 1, 4),
];
export const AGENTKIT_ISSUE_COUNT = 16;
const AGENTKIT_UNITS = range('U', 1, 6);

const HEADER = ['ID', 'Finding', 'How it could arise in Palisade', 'Control', 'Test', 'Status'];
const ID_PATTERN = /^00[1-4] \S+$/;

function cells(line) {
  const trimmed = line.trim();
  if (!trimmed.startsWith('|') || !trimmed.endsWith('|')) return undefined;
  // `\|` inside a cell is an escaped pipe, not a separator.
  return trimmed
    .slice(1, -1)
    .split(/(?<!\\)\|/)
    .map((c) => c.trim());
}

/** Parse the register's table rows (every Markdown table with the register's header). */
export function parseRegister(text) {
  const rows = [];
  const problems = [];
  let inTable = false;
  text.split('\n').forEach((line, index) => {
    const c = cells(line);
    if (!c) {
      inTable = false;
      return;
    }
    if (c.join('|') === HEADER.join('|')) {
      inTable = true;
      return;
    }
    if (!inTable || c.every((x) => /^:?-+:?$/.test(x))) return;
    const lineNo = index + 1;
    if (c.length !== HEADER.length) {
      problems.push(`line ${lineNo}: expected ${HEADER.length} cells, found ${c.length}`);
      return;
    }
    const [id, finding, arise, control, test, status] = c;
    rows.push({ line: lineNo, id, finding, arise, control, test, status });
  });
  return { rows, problems };
}

const REF = /^`([^`]+)`\s+(.+)$/;

function refs(cell) {
  if (cell === '—' || cell === '-' || cell === '') return [];
  return cell.split(/<br\s*\/?>/).map((part) => part.trim());
}

/**
 * Check parsed rows. `root` is the repository; `results` the last full run's leaf tests
 * ({file, name, status}); `readme` the README text (its counts line is checked).
 */
export function checkRegister({ rows, problems: parseProblems }, { root, results, readme }) {
  const problems = [...parseProblems];
  const seen = new Map();
  const fileCache = new Map();
  const read = (path) => {
    if (!fileCache.has(path)) {
      const full = join(root, path);
      fileCache.set(path, existsSync(full) ? readFileSync(full, 'utf8') : undefined);
    }
    return fileCache.get(path);
  };
  const passed = new Set(
    results.filter((r) => r.status === 'passed').map((r) => `${r.file}\u0000${r.name}`),
  );
  const ran = new Map(results.map((r) => [`${r.file}\u0000${r.name}`, r.status]));
  const counts = { covered: 0, na: 0, open: 0 };

  for (const row of rows) {
    const where = `line ${row.line} (${row.id})`;
    if (!ID_PATTERN.test(row.id)) problems.push(`${where}: malformed ID`);
    if (seen.has(row.id))
      problems.push(`${where}: ${row.id} is listed twice (also line ${seen.get(row.id)})`);
    else seen.set(row.id, row.line);
    if (row.finding.length === 0 || row.arise.length === 0)
      problems.push(`${where}: the finding and how it could arise must not be empty`);

    let kind;
    if (row.status === 'covered') kind = 'covered';
    else if (/^n\/a: \S/.test(row.status)) kind = 'na';
    else if (/^open: \S/.test(row.status)) kind = 'open';
    else {
      problems.push(
        `${where}: status must be "covered", "n/a: <reason>" or "open: <plan>", got ${JSON.stringify(row.status)}`,
      );
      continue;
    }
    counts[kind]++;

    for (const ref of refs(row.control)) {
      const m = REF.exec(ref);
      if (!m) {
        problems.push(`${where}: control ${JSON.stringify(ref)} is not \`file\` \`name\``);
        continue;
      }
      const name = m[2].replace(/^`|`$/g, '');
      const source = read(m[1]);
      if (source === undefined) problems.push(`${where}: control file ${m[1]} does not exist`);
      else if (!source.includes(name)) problems.push(`${where}: ${name} does not occur in ${m[1]}`);
    }
    const tests = refs(row.test);
    if (kind === 'covered') {
      if (refs(row.control).length === 0)
        problems.push(`${where}: a covered finding names its control`);
      if (tests.length === 0)
        problems.push(`${where}: a covered finding names the test that proves it`);
    }
    for (const ref of tests) {
      const m = /^`([^`]+)`\s+›\s+(.+)$/.exec(ref);
      if (!m) {
        problems.push(`${where}: test ${JSON.stringify(ref)} is not \`file\` › name`);
        continue;
      }
      const [, file, name] = m;
      const source = read(file);
      if (source === undefined) {
        problems.push(`${where}: test file ${file} does not exist`);
        continue;
      }
      const key = `${file}\u0000${name}`;
      if (passed.has(key)) continue;
      const status = ran.get(key);
      problems.push(
        status
          ? `${where}: test "${name}" in ${file} ${status} in the last run`
          : `${where}: test "${name}" in ${file} did not run in the last full test run (renamed, skipped or missing?)`,
      );
    }
  }

  for (const id of EXPECTED_IDS)
    if (!seen.has(id)) problems.push(`${id} is missing from the register`);
  const agentkit = [...seen.keys()].filter((id) => /^003 U\d+\.\d+$/.test(id));
  if (agentkit.length !== AGENTKIT_ISSUE_COUNT)
    problems.push(
      `003 lists ${agentkit.length} issues as U<unit>.<n>; the review has ${AGENTKIT_ISSUE_COUNT}`,
    );
  for (const unit of AGENTKIT_UNITS)
    if (!agentkit.some((id) => id.startsWith(`003 ${unit}.`)))
      problems.push(`003 ${unit} has no issue row (003 ${unit}.1 …)`);
  const expected = new Set(EXPECTED_IDS);
  for (const id of seen.keys())
    if (!expected.has(id) && !/^003 U[1-6]\.\d+$/.test(id))
      problems.push(`${id} (line ${seen.get(id)}) is not a finding of the seed reviews`);

  const countsLine = `${counts.covered} covered · ${counts.na} not applicable · ${counts.open} open`;
  if (readme !== undefined && !readme.includes(countsLine))
    problems.push(`README.md must state the register's counts as "${countsLine}"`);
  return { problems, counts, countsLine };
}

/** Cross-check the embedded ID list against the seed files when they are on this machine. */
export function checkSeeds(seedsDir) {
  const problems = [];
  const files = existsSync(seedsDir) ? readFileSync(join(seedsDir, 'README.md'), 'utf8') : '';
  if (!files) return { problems, checked: false };
  const expected = new Set(EXPECTED_IDS);
  const text = (prefix) => {
    const name = {
      '001': '001_360292e3a5451eec.txt',
      '002': '002_866b375ee365baf4.txt',
      '003': '003_5a626aa0a195886d.txt',
    }[prefix];
    const path = join(seedsDir, name);
    return existsSync(path) ? readFileSync(path, 'utf8') : '';
  };
  for (const id of new Set(text('002').match(/\b[CHML]-\d+\b/g) ?? []))
    if (!expected.has(`002 ${id}`))
      problems.push(`seed 002 mentions ${id}, the register list lacks it`);
  const sections = text('001').match(/^### (?:~~)?(\d+)\./gm) ?? [];
  const numbered = EXPECTED_IDS.filter((id) => /^001 #/.test(id));
  if (sections.length !== numbered.length)
    problems.push(
      `seed 001 has ${sections.length} numbered sections, the register list ${numbered.length}`,
    );
  const checklist = (text('001').split('Hardening Checklist')[1] ?? '').split('\n---')[0];
  const items = checklist.match(/^- \[[ x]\]/gm) ?? [];
  if (items.length !== EXPECTED_IDS.filter((id) => id.startsWith('001 HC-')).length)
    problems.push(`seed 001's hardening checklist has ${items.length} items`);
  for (const id of new Set(files.match(/^- ([CHML]-\d+):/gm)?.map((l) => l.slice(2, -1)) ?? []))
    if (!expected.has(`004 ${id}`))
      problems.push(`seed 004 lists ${id}, the register list lacks it`);
  for (const id of new Set(text('003').match(/\b(?:R\d|KTD\d)\b/g) ?? []))
    if (!expected.has(`003 ${id}`))
      problems.push(`seed 003 mentions ${id}, the register list lacks it`);
  return { problems, checked: true };
}

function main() {
  const root = resolve(import.meta.dirname, '..');
  const args = process.argv.slice(2);
  const at = args.indexOf('--results');
  const resultsPath = resolve(
    root,
    at >= 0 && args[at + 1] ? args[at + 1] : '.test-results/last-run.json',
  );
  const registerPath = join(root, 'docs/security/findings.md');
  if (!existsSync(registerPath)) {
    console.error('docs/security/findings.md does not exist.');
    return 1;
  }
  if (!existsSync(resultsPath)) {
    console.error(`${resultsPath} does not exist: run the whole suite first (npm test).`);
    return 1;
  }
  const results = JSON.parse(readFileSync(resultsPath, 'utf8')).results;
  const registerText = readFileSync(registerPath, 'utf8');
  const parsed = parseRegister(registerText);
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const { problems, countsLine } = checkRegister(parsed, { root, results, readme });
  if (!registerText.includes(countsLine))
    problems.push(`docs/security/findings.md must state its counts as "${countsLine}"`);
  const seedsDir = process.env.PALISADE_SEEDS_DIR ?? resolve(root, '..', 'shared', 'seeds');
  const seeds = checkSeeds(seedsDir);
  problems.push(...seeds.problems);
  console.log(
    `findings register: ${parsed.rows.length} findings — ${countsLine}` +
      (seeds.checked ? '' : ' (seed files not found; ID list not cross-checked)'),
  );
  if (problems.length > 0) {
    console.error(`${problems.length} problem(s):`);
    for (const p of problems) console.error(`  - ${p}`);
    return 1;
  }
  console.log('ok: every finding is listed once and every named test passed in the last run.');
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = main();
