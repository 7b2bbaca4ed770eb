// Input validation at the edges: valibot schemas, failures become a 400 that names the fields.

import { closest, distance } from 'fastest-levenshtein';
import * as v from 'valibot';
import { BadRequestError } from './errors.ts';

/** The schema of `key` inside an object schema (through optional, nullable and pipe wrappers). */
function entryOf(schema: unknown, key: string): unknown {
  let current = schema as { entries?: Record<string, unknown>; wrapped?: unknown; pipe?: unknown[] } | undefined;
  for (let depth = 0; current && depth < 8; depth++) {
    if (current.entries) return Object.hasOwn(current.entries, key) ? current.entries[key] : undefined;
    current = (current.wrapped ?? current.pipe?.[0]) as typeof current;
  }
  return undefined;
}

/**
 * Where an issue is, as far as the schema names it: the path stops before a key the client
 * made up (a label key, an unknown field), so that a 400 never echoes the client's input.
 */
export function fieldOf(schema: unknown, issue: v.BaseIssue<unknown>): string | undefined {
  const names: string[] = [];
  let current = schema;
  for (const item of issue.path ?? []) {
    if (typeof item.key !== 'string') break;
    const next = entryOf(current, item.key);
    if (next === undefined) break;
    names.push(item.key);
    current = next;
  }
  return names.length > 0 ? names.join('.') : undefined;
}

/** The known keys of an object schema (through wrappers), for suggestions. */
function keysOf(schema: unknown): string[] {
  let current = schema as { entries?: Record<string, unknown>; wrapped?: unknown; pipe?: unknown[] } | undefined;
  for (let depth = 0; current && depth < 8; depth++) {
    if (current.entries) return Object.keys(current.entries);
    current = (current.wrapped ?? current.pipe?.[0]) as typeof current;
  }
  return [];
}

/** A name fit to be quoted back: what a client would have meant as a field name. */
const PLAIN_NAME = /^[\w.-]{1,64}$/;

/**
 * A field the schema does not know (a strict object's extra key): named, with the closest
 * known name when one is close, so that `cluster-regex` is not silently ignored.
 */
function unknownField(schema: unknown, issue: v.BaseIssue<unknown>): { field: string; message: string } | undefined {
  if (!issue.type.startsWith('strict_') || issue.expected !== 'never') return undefined;
  const path = issue.path ?? [];
  const key = path.at(-1)?.key;
  if (typeof key !== 'string') return undefined;
  let parent = schema;
  const names: string[] = [];
  for (const item of path.slice(0, -1)) {
    if (typeof item.key !== 'string') break;
    parent = entryOf(parent, item.key);
    names.push(item.key);
  }
  const shown = PLAIN_NAME.test(key) ? key : '(a field whose name is not shown)';
  const field = [...names, PLAIN_NAME.test(key) ? key : '(unknown field)'].join('.');
  const known = keysOf(parent);
  // A dash for an underscore is the commonest slip; otherwise the nearest name, if it is near.
  const typed = key.toLowerCase().replaceAll('-', '_');
  const near = known.length > 0 && PLAIN_NAME.test(key) ? closest(typed, known) : undefined;
  const hint = near !== undefined && distance(typed, near) <= Math.max(2, Math.floor(near.length / 3)) ? ` (did you mean ${[...names, near].join('.')}?)` : '';
  return { field, message: `${[...names, shown].join('.')}: not a field of this request${hint}; known: ${known.join(', ')}` };
}

export function parseInput<const TSchema extends v.GenericSchema>(
  schema: TSchema,
  input: unknown,
  what = 'request body',
): v.InferOutput<TSchema> {
  const parsed = v.safeParse(schema, input);
  if (parsed.success) return parsed.output;
  const problems = parsed.issues.map((issue) => {
    const unknown = unknownField(schema, issue);
    if (unknown) return unknown;
    const field = fieldOf(schema, issue);
    // valibot reports a missing key as an issue of the enclosing object, with its message.
    const message = /^(strict_|loose_)?object$/.test(issue.type) ? 'is required' : issue.message;
    return { field: field ?? what, message: field ? `${field}: ${message}` : `${what} ${message}` };
  });
  const fields = [...new Set(problems.map((problem) => problem.field))];
  throw new BadRequestError(problems.map((problem) => problem.message).join('; '), fields);
}

/** A request body: a JSON object (not an array, not a string), then the schema. */
export function parseBody<const TSchema extends v.GenericSchema>(schema: TSchema, body: unknown): v.InferOutput<TSchema> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new BadRequestError('request body must be a JSON object', ['request body']);
  }
  return parseInput(schema, body);
}

export const LeaseToken = v.pipe(v.string(), v.uuid('must be a lease token (a UUID)'));

/** A lease's length in seconds: a whole number from 1 to MAX_LEASE_SECONDS. */
export function durationSchema(maxLeaseSeconds: number) {
  const duration = `must be an integer number of seconds from 1 to ${maxLeaseSeconds}`;
  return v.pipe(v.number(duration), v.integer(duration), v.minValue(1, duration), v.maxValue(maxLeaseSeconds, duration));
}
