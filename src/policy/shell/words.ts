/**
 * Evaluate a tree-sitter-bash word node to what the shell would pass as argv: quotes removed,
 * escapes resolved, tilde and brace expansion applied. Anything whose value is only known at
 * run time (parameter expansion, command substitution, arithmetic) is marked dynamic.
 */
import type { SyntaxNode as Node } from './syntax.js';

export interface WordValue {
  /** Possible values after brace expansion (usually exactly one). */
  values: string[];
  /** Depends on run-time values ($VAR, $(...), $((...))). */
  dynamic: boolean;
  /** Contains an unquoted glob character (*, ?, [). */
  glob: boolean;
  /** Set when the word is something the parser and a real shell might disagree on. */
  problem: string | null;
}

// Markers for unquoted brace-expansion syntax, kept apart from quoted `{`, `,` and `}`.
const OPEN = '\u0001';
const COMMA = '\u0002';
const CLOSE = '\u0003';
const MAX_BRACE_RESULTS = 256;

interface Builder {
  text: string;
  dynamic: boolean;
  glob: boolean;
  braces: boolean;
  problem: string | null;
  source: string;
}

/**
 * `source` is the text the tree was parsed from; `end` may end the word early (a newline the
 * grammar glued onto it).
 */
export function evaluateWord(
  node: Node,
  home: string,
  source: string,
  type: string = node.type,
  end?: number,
): WordValue {
  // Fast path: a plain word with nothing to unescape or expand.
  if (type === 'word') {
    const text = source.slice(node.startIndex, end ?? node.endIndex);
    if (!/[\\{},~*?[\n$]/.test(text))
      return { values: [text], dynamic: false, glob: false, problem: null };
  }
  const b: Builder = {
    text: '',
    dynamic: false,
    glob: false,
    braces: false,
    problem: null,
    source,
  };
  append(node, b, true, type);
  let text = b.text;
  if (text.startsWith('~') && !b.dynamic) {
    const slash = text.indexOf('/');
    const user = slash === -1 ? text.slice(1) : text.slice(1, slash);
    if (user === '') text = home + (slash === -1 ? '' : text.slice(slash));
    else b.dynamic = true; // ~user, ~+, ~-: resolved by the shell at run time
  }
  let values: string[];
  if (b.braces) {
    const expanded = expandBraces(text);
    if (expanded === null) {
      values = [stripMarkers(text)];
      b.problem ??= 'brace expansion too large or malformed';
    } else values = expanded;
  } else values = [text];
  return { values, dynamic: b.dynamic, glob: b.glob, problem: b.problem };
}

function textOf(node: Node, b: Builder): string {
  return b.source.slice(node.startIndex, node.endIndex);
}

function append(node: Node, b: Builder, unquoted: boolean, type: string = node.type): void {
  switch (type) {
    case 'word':
      appendUnquoted(textOf(node, b), b, unquoted);
      return;
    case 'number':
      // `BASE#$(…)` and `BASE#${…}` are numbers whose value is computed at run time.
      if (node.namedChildren.length > 0) b.dynamic = true;
      b.text += textOf(node, b);
      return;
    case 'variable_name':
      b.text += textOf(node, b);
      return;
    case 'raw_string': {
      const t = textOf(node, b);
      b.text += t.slice(1, t.length - 1);
      return;
    }
    case 'ansi_c_string': {
      const t = textOf(node, b);
      b.text += decodeAnsiC(t.slice(2, t.length - 1), b);
      return;
    }
    case 'string':
    case 'translated_string':
      if (node.children.length === 0) {
        // A plain "…" string (see SyntaxNode.children): nothing to unescape or expand.
        const t = textOf(node, b);
        b.text += t.slice(1, t.length - 1);
        return;
      }
      for (const child of node.children) {
        const childType = child.type;
        if (childType === 'string_content') b.text += unescapeDoubleQuoted(textOf(child, b));
        else if (childType === '"' || childType === '$"' || childType === '$') {
          if (childType === '$' && child.startIndex !== node.startIndex) b.text += '$';
        } else if (child.isNamed) {
          b.dynamic = true;
          b.text += textOf(child, b);
        }
      }
      return;
    case 'concatenation':
      for (const child of node.children) append(child, b, unquoted);
      return;
    case 'simple_expansion':
    case 'expansion':
    case 'command_substitution':
    case 'process_substitution':
    case 'arithmetic_expansion':
      b.dynamic = true;
      b.text += textOf(node, b);
      return;
    default:
      // Unknown word syntax (extglob, brace ranges the grammar models, …): keep the text, flag it.
      b.dynamic = true;
      b.text += textOf(node, b);
      b.problem ??= `unsupported word syntax (${type})`;
  }
}

function appendUnquoted(text: string, b: Builder, unquoted: boolean): void {
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === '\\') {
      const next = text[i + 1];
      i++;
      if (next === undefined || next === '\n') continue; // line continuation
      b.text += next;
      continue;
    }
    if (c === '\n' && unquoted) {
      // A real shell ends the command at an unescaped newline; the grammar glued words together.
      b.problem ??= 'a newline inside a word (the parser and the shell would disagree)';
    }
    if (unquoted && (c === '*' || c === '?' || c === '[')) b.glob = true;
    if (unquoted && c === '{') {
      b.braces = true;
      b.text += OPEN;
    } else if (unquoted && c === '}') b.text += CLOSE;
    else if (unquoted && c === ',') b.text += COMMA;
    else b.text += c;
  }
}

function unescapeDoubleQuoted(text: string): string {
  if (!text.includes('\\')) return text;
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    const next = text[i + 1];
    if (c === '\\' && next !== undefined && '$`"\\\n'.includes(next)) {
      if (next !== '\n') out += next;
      i++;
    } else out += c;
  }
  return out;
}

function decodeAnsiC(body: string, b: Builder): string {
  let out = '';
  for (let i = 0; i < body.length; i++) {
    const c = body[i] as string;
    if (c !== '\\') {
      out += c;
      continue;
    }
    const n = body[++i];
    switch (n) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case 'a':
        out += '\x07';
        break;
      case 'b':
        out += '\b';
        break;
      case 'e':
      case 'E':
        out += '\x1b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'v':
        out += '\v';
        break;
      case '\\':
      case "'":
      case '"':
      case '?':
        out += n;
        break;
      case 'x': {
        let hex = '';
        while (hex.length < 2 && /[0-9a-fA-F]/.test(body[i + 1] ?? '')) hex += body[++i];
        if (hex === '') out += '\\x';
        else out += String.fromCharCode(parseInt(hex, 16));
        break;
      }
      case 'u':
      case 'U':
      case 'c':
        // Unicode and control escapes are rare in commands; refuse to guess.
        b.problem ??= `unsupported $'\\${n}' escape`;
        b.dynamic = true;
        out += `\\${n}`;
        break;
      default:
        if (n !== undefined && n >= '0' && n <= '7') {
          let oct = n;
          while (oct.length < 3 && /[0-7]/.test(body[i + 1] ?? '')) oct += body[++i];
          out += String.fromCharCode(parseInt(oct, 8) & 0xff);
        } else out += '\\' + (n ?? '');
    }
  }
  return out;
}

function stripMarkers(text: string): string {
  return text.replaceAll(OPEN, '{').replaceAll(COMMA, ',').replaceAll(CLOSE, '}');
}

/** Bash brace expansion over the marked text (comma lists, nested). Null when it would explode. */
function expandBraces(text: string): string[] | null {
  const results: string[] = [];
  const ok = expandInto(text, results);
  return ok ? results.map(stripMarkers) : null;
}

function expandInto(text: string, out: string[]): boolean {
  const open = text.indexOf(OPEN);
  if (open === -1) {
    out.push(text);
    return out.length <= MAX_BRACE_RESULTS;
  }
  // Find the matching close and top-level commas.
  let depth = 0;
  const commas: number[] = [];
  let close = -1;
  for (let i = open; i < text.length; i++) {
    const c = text[i];
    if (c === OPEN) depth++;
    else if (c === CLOSE) {
      depth--;
      if (depth === 0) {
        close = i;
        break;
      }
    } else if (c === COMMA && depth === 1) commas.push(i);
  }
  const prefix = text.slice(0, open);
  if (close === -1 || commas.length === 0) {
    // Not a brace expansion ({} or {x} or unbalanced): the braces are literal.
    const literalEnd = close === -1 ? open + 1 : close + 1;
    const literal = stripMarkers(text.slice(open, literalEnd));
    const rest: string[] = [];
    if (!expandInto(text.slice(literalEnd), rest)) return false;
    for (const r of rest) {
      out.push(prefix + literal + r);
      if (out.length > MAX_BRACE_RESULTS) return false;
    }
    return true;
  }
  const suffix = text.slice(close + 1);
  const bounds = [open, ...commas, close];
  for (let k = 0; k + 1 < bounds.length; k++) {
    const part = text.slice((bounds[k] as number) + 1, bounds[k + 1] as number);
    if (!expandInto(prefix + part + suffix, out)) return false;
  }
  return true;
}
