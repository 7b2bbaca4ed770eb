// Input validation at the edges: valibot schemas, failures become a 400 that names the fields.

import * as v from 'valibot';
import { BadRequestError } from './errors.ts';

export function parseInput<const TSchema extends v.GenericSchema>(
  schema: TSchema,
  input: unknown,
  what = 'request body',
): v.InferOutput<TSchema> {
  const parsed = v.safeParse(schema, input);
  if (parsed.success) return parsed.output;
  const problems = parsed.issues.map((issue) => {
    const field = v.getDotPath(issue);
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
