// Structured JSON logs (pino). Secrets are never passed to the logger; the redaction below is a
// second line of defence for fields that must never be printed even by mistake.

import { pino, type DestinationStream, type Logger } from 'pino';

export const REDACTED_PATHS = [
  'token',
  'kubeconfig',
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  '*.token',
  '*.kubeconfig',
  '*.authorization',
  'accountJson',
  '*.accountJson',
  'private_key',
  '*.private_key',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { service: 'k8s-claimer' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}
