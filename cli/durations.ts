// Durations for the CLI: parses `90`, `30s`, `30m`, `2h`, `1h30m` into seconds and prints
// seconds back in the same compact form (also as "in 29m" for lease expiries).

const UNITS_PATTERN = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;

/** Seconds, or undefined when the text is not a plain number of seconds or an h/m/s duration. */
export function parseDuration(text: string): number | undefined {
  if (/^\d+$/.test(text)) return safeSeconds(Number(text));
  const match = UNITS_PATTERN.exec(text);
  // The pattern also matches "": every part is optional, so at least one must be present.
  if (!match || text === '') return undefined;
  const [, hours = '0', minutes = '0', seconds = '0'] = match;
  return safeSeconds(Number(hours) * 3600 + Number(minutes) * 60 + Number(seconds));
}

/** Digits past 2^53 would be rounded: refuse them rather than ask for a different length. */
function safeSeconds(seconds: number): number | undefined {
  return Number.isSafeInteger(seconds) ? seconds : undefined;
}

/** `5400` -> `1h30m`, `600` -> `10m`, `45` -> `45s`, `90000` -> `1d1h`: the two largest units. */
export function formatDuration(totalSeconds: number): string {
  const seconds = Math.max(0, Math.floor(totalSeconds));
  const parts: [number, string][] = [
    [Math.floor(seconds / 86400), 'd'],
    [Math.floor((seconds % 86400) / 3600), 'h'],
    [Math.floor((seconds % 3600) / 60), 'm'],
    [seconds % 60, 's'],
  ];
  const first = parts.findIndex(([amount]) => amount > 0);
  if (first === -1) return '0s';
  return parts
    .slice(first, first + 2)
    .filter(([amount]) => amount > 0)
    .map(([amount, unit]) => `${amount}${unit}`)
    .join('');
}

/** How long until an expiry, for people: `in 29m` (seconds only under a minute), or `expired`. */
export function formatExpiry(secondsLeft: number): string {
  if (secondsLeft <= 0) return 'expired';
  return `in ${formatDuration(secondsLeft >= 60 ? secondsLeft - (secondsLeft % 60) : secondsLeft)}`;
}
