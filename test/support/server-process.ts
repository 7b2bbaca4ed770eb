// Starts the real server (main.ts) as a child process on port 0 and waits for its "ready"
// log line, which carries the bound URL. A Node server gets the suite's network guard too:
// stopping it fails when it tried to reach anything but loopback.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const NETWORK_GUARD = fileURLToPath(new URL('./network-guard.mjs', import.meta.url));

export interface ServerProcess {
  url: string;
  child: ChildProcess;
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function startServerProcess(
  command: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 30_000,
): Promise<ServerProcess> {
  const guarded = command === process.execPath ? ['--import', NETWORK_GUARD, ...args] : args;
  const child = spawn(command, guarded, {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', BIND_HOST: '127.0.0.1', BIND_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in time:\n${output}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      for (const line of output.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const parsed = JSON.parse(line);
          if (parsed.msg === 'ready') {
            clearTimeout(timer);
            resolve(String(parsed.url).replace(/\/$/, ''));
          }
        } catch {
          // A partial line; the rest comes with the next chunk.
        }
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${output}`));
    });
  });
  child.removeAllListeners('exit');
  return {
    url,
    child,
    output: () => output,
    async stop(signal = 'SIGTERM') {
      let code = child.exitCode;
      if (code === null) {
        const exited = new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
        child.kill(signal);
        code = await exited;
      }
      if (output.includes('NETWORK GUARD')) throw new Error(`the server tried to reach an address other than loopback:\n${output}`);
      return code;
    },
  };
}
