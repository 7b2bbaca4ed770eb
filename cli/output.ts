// What the CLI hands to people and shells: the lease's variables as quoted `export` lines, the
// pool as a table, and the kubeconfig as a private file.

import { Buffer } from 'node:buffer';
import { replaceFileAtomically } from '../services/atomic-file.ts';
import type { GrantedLease, Pool } from './client.ts';
import { formatExpiry } from './durations.ts';
import { CliError, oneLine } from './errors.ts';

/** Single quotes keep every byte literal in sh; an embedded quote is closed, escaped, reopened. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** `IP` with prefix `CI` is `CI_IP`; a prefix that already ends in `_` is not doubled. */
export function variableName(name: string, prefix?: string): string {
  if (!prefix) return name;
  return prefix.endsWith('_') ? `${prefix}${name}` : `${prefix}_${name}`;
}

/** The variables of a lease, in the order the original Go CLI printed them. */
export function leaseVariables(granted: GrantedLease, kubeconfigPath?: string, prefix?: string): [string, string][] {
  const variables: [string, string][] = [
    ['IP', granted.ip],
    ['TOKEN', granted.token],
    ['CLUSTER_NAME', granted.cluster_name],
    ['EXPIRES_AT', granted.expires_at],
  ];
  if (kubeconfigPath !== undefined) variables.push(['KUBECONFIG', kubeconfigPath]);
  return variables.map(([name, value]) => [variableName(name, prefix), value]);
}

export function exportLines(variables: [string, string][]): string {
  return variables.map(([name, value]) => `export ${name}=${shellQuote(value)}\n`).join('');
}

/** The kubeconfig YAML from the grant's base64, or a clear error when there is none. */
export function decodeKubeconfig(granted: GrantedLease): Buffer {
  const kubeconfig = Buffer.from(granted.kubeconfig, 'base64');
  if (kubeconfig.length === 0) throw new CliError('the claimer granted a lease without a kubeconfig');
  return kubeconfig;
}

/**
 * Writes a secret so that it is never readable by others, not even for a moment (an existing
 * target keeps whatever mode it had, so writing into it in place could expose the secret).
 */
export async function writePrivateFile(path: string, content: Buffer): Promise<void> {
  try {
    await replaceFileAtomically(path, content);
  } catch (error) {
    const reason = error instanceof Error && 'code' in error ? String(error.code) : oneLine(String(error));
    throw new CliError(`cannot write the kubeconfig to ${oneLine(path)}: ${reason}`);
  }
}

/** GET /leases as columns NAME, LOCATION, STATE, EXPIRES, NOTE; `-` where nothing applies. */
export function poolTable(pool: Pool): string {
  const rows = [['NAME', 'LOCATION', 'STATE', 'EXPIRES', 'NOTE']];
  for (const cluster of pool.clusters) {
    const leased = cluster.state === 'leased';
    const expires = leased && cluster.seconds_left !== undefined ? formatExpiry(cluster.seconds_left) : '-';
    rows.push([oneLine(cluster.name), oneLine(cluster.location), oneLine(cluster.state), expires, leased && cluster.note ? oneLine(cluster.note, 60) : '-']);
  }
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  const lines = rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]! + 2))).join(''));
  if (pool.waiting > 0) lines.push(`${pool.waiting} waiting for a cluster`);
  return `${lines.join('\n')}\n`;
}
