// Structured JSON logs (pino), or the same lines made readable for a person at a terminal
// (pino-pretty). Secrets are never passed to the logger; the redaction below is a second line
// of defence for fields that must never be printed even by mistake, in both formats.

import { pino, type DestinationStream, type Logger } from 'pino';
import pretty from 'pino-pretty';

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

export type LogFormat = 'json' | 'pretty';

/** A logger for the process: JSON lines, or pretty ones (coloured when `colour`) on stdout. */
export function processLogger(level: string, format: LogFormat, colour: boolean): Logger {
  if (format === 'json') return createLogger(level);
  return createLogger(level, pretty({ colorize: colour, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service', singleLine: true, sync: true }));
}

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
