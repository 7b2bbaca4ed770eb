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
    return { field: field ?? what, message: field ? `${field}: ${issue.message}` : `${what} ${issue.message}` };
  });
  const fields = [...new Set(problems.map((problem) => problem.field))];
  throw new BadRequestError(problems.map((problem) => problem.message).join('; '), fields);
}

export const LeaseToken = v.pipe(v.string(), v.uuid('must be a lease token (a UUID)'));
