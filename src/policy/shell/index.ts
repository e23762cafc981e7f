export { ShellParser } from './parser.js';
export {
  analyseShell,
  commandName,
  type ShellAnalysis,
  type ShellCommand,
  type FileAccess,
  type Problem,
  type AnalyseOptions,
} from './analyze.js';
