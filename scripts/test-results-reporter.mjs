// A node:test reporter that records every leaf test's file, name and outcome as JSON, so
// `npm run security:register` can prove that the tests the findings register names really ran
// and passed in the last run (a register that points at skipped or missing tests is drift).
import { relative } from 'node:path';

export default async function* resultsReporter(source) {
  const results = [];
  const started = new Date().toISOString();
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const data = event.data;
    // Suites (describe) report too; only leaf tests carry a test's own outcome.
    if (data.details?.type === 'suite') continue;
    let status = event.type === 'test:pass' ? 'passed' : 'failed';
    if (data.skip !== undefined) status = 'skipped';
    else if (data.todo !== undefined) status = 'todo';
    results.push({
      file: data.file ? relative(process.cwd(), data.file) : null,
      name: data.name,
      status,
    });
  }
  yield `${JSON.stringify({ started, finished: new Date().toISOString(), results }, null, 1)}\n`;
}
