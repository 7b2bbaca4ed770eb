// Input validation at the edges: valibot schemas, failures become a 400 that names the fields.

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

export function parseInput<const TSchema extends v.GenericSchema>(
  schema: TSchema,
  input: unknown,
  what = 'request body',
): v.InferOutput<TSchema> {
  const parsed = v.safeParse(schema, input);
  if (parsed.success) return parsed.output;
  const problems = parsed.issues.map((issue) => {
    const field = fieldOf(schema, issue);
    // valibot reports a missing key as an issue of the enclosing object, with its message.
    const message = issue.type === 'object' || issue.type === 'loose_object' ? 'is required' : issue.message;
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
