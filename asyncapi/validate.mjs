// Validates an AsyncAPI document with the official parser (@asyncapi/parser, pinned by package-lock.json): the
// JSON Schema of the AsyncAPI version, $ref resolution, payload and header schemas, and the parser's Spectral
// ruleset. The parser's 3.x ruleset does not check message examples (its 2.x one does), so this script also
// validates every message example's payload and headers against the message's resolved schemas with Ajv:
// storyline's examples are frames written by the server's own encoders, so this checks the code's real output
// against the schemas. Prints every diagnostic; exits 1 on any error or on a warning that is not allow-listed
// below, 2 when the file cannot be read. Usage: node validate.mjs [file] (default: storyline.yaml beside it).
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import Ajv from 'ajv';

// Warnings that do not apply to this document, by rule code, each with the reason. Empty: every warning fails.
const ALLOWED_WARNINGS = new Map([]);

const file = process.argv[2] ?? new URL('storyline.yaml', import.meta.url).pathname;
let source;
try {
  source = await readFile(file, 'utf8');
} catch (e) {
  console.error(`asyncapi: cannot read ${file}: ${e.message}`);
  process.exit(2);
}

const parser = new Parser();
const { document, diagnostics } = await parser.parse(source, { source: file });

const names = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};
let errors = 0;
let warnings = 0;
let allowed = 0;
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  let tag = names[d.severity] ?? `severity ${d.severity}`;
  if (d.severity === DiagnosticSeverity.Error) {
    errors += 1;
  } else if (d.severity === DiagnosticSeverity.Warning) {
    if (ALLOWED_WARNINGS.has(d.code)) {
      allowed += 1;
      tag = `warning (allowed: ${ALLOWED_WARNINGS.get(d.code)})`;
    } else {
      warnings += 1;
    }
  }
  console.log(`${file}${line} ${tag} [${d.code}] ${where}: ${d.message}`);
}
if (!document && errors === 0) {
  // The parser returns no document only with an error diagnostic; do not let an unexpected result pass.
  console.log(`${file} error: the parser returned no document`);
  errors += 1;
}
if (document) {
  // Draft-07 (the base of the AsyncAPI Schema format). Not strict: OpenAPI-style annotations such as `example`
  // and `format: int64` (utoipa's) are not draft-07 vocabulary, and formats are annotations here.
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  for (const message of document.messages()) {
    const schemas = { payload: message.payload()?.json(), headers: message.headers()?.json() };
    message.examples().all().forEach((example, i) => {
      const values = { payload: example.payload(), headers: example.headers() };
      for (const part of ['payload', 'headers']) {
        const where = `${message.id()}.examples.${i}.${part}`;
        if (values[part] === undefined) continue;
        if (schemas[part] === undefined) {
          errors += 1;
          console.log(`${file} error [storyline-message-example] ${where}: example has ${part} but the message has no ${part} schema`);
          continue;
        }
        const validate = ajv.compile(schemas[part]);
        if (!validate(values[part])) {
          errors += 1;
          console.log(`${file} error [storyline-message-example] ${where}: ${ajv.errorsText(validate.errors)}`);
        }
      }
    });
  }
  const version = document.version();
  const channels = document.channels().length;
  const operations = document.operations().length;
  const messages = document.messages().length;
  console.log(`${file}: AsyncAPI ${version}, ${channels} channels, ${operations} operations, ${messages} messages`);
}
const extra = allowed ? ` (${allowed} allow-listed)` : '';
console.log(`asyncapi: ${errors} errors, ${warnings} warnings${extra}`);
process.exit(errors === 0 && warnings === 0 ? 0 : 1);
