// Loaded first in every test process (`npm test`, and the servers the tests start, with
// --import): the suite may connect to loopback only. Every TCP and TLS client connection in
// Node goes through net.Socket.prototype.connect (http, https, http2 and so gRPC, fetch, the
// cloud SDKs), so a connection to anything else is refused there, before a name is even looked
// up; the attempt is printed with where it was made, and a test file that made one fails at its
// end. `.ci/run` also runs the suite in a network namespace with nothing but loopback, for what
// might slip past this. Plain JavaScript: it is loaded before any TypeScript loader.

import net from 'node:net';
import process from 'node:process';

/** @type {string[]} */
const violations = [];

/** @param {string} host */
export function isLoopback(host) {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (bare === 'localhost' || bare.endsWith('.localhost')) return true;
  if (net.isIPv4(bare)) return bare.startsWith('127.');
  if (net.isIPv6(bare)) return bare === '::1' || /^(0{0,4}:){7}0{0,3}1$/.test(bare) || /^::ffff:127\./.test(bare);
  return false;
}

/**
 * Where a connect call goes: a host and port, or undefined for a local socket path.
 * @param {unknown[]} args
 */
function targetOf(args) {
  // Node passes its own normalised [options, callback] array from net.connect().
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  if (typeof first === 'object' && first !== null) {
    const options = /** @type {{ host?: unknown; port?: unknown; path?: unknown }} */ (first);
    if (typeof options.path === 'string') return undefined;
    return { host: typeof options.host === 'string' && options.host !== '' ? options.host : 'localhost', port: options.port };
  }
  if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    return { host: typeof args[1] === 'string' ? args[1] : 'localhost', port: first };
  }
  return undefined;
}

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = /** @type {typeof connect} */ (
  function guardedConnect(/** @type {unknown[]} */ ...args) {
    const target = targetOf(args);
    if (target && !isLoopback(target.host)) {
      const where = new Error(`the test suite tried to connect to ${target.host}:${String(target.port)}; tests may reach loopback only`);
      violations.push(where.stack ?? where.message);
      process.stderr.write(`\nNETWORK GUARD: ${where.stack}\n`);
      const refused = Object.assign(new Error(where.message), { code: 'ENETUNREACH' });
      process.nextTick(() => this.destroy(refused));
      return this;
    }
    return connect.apply(this, /** @type {never} */ (args));
  }
);

/** The attempts so far, emptied: for the guard's own test. */
export function takeViolations() {
  return violations.splice(0);
}

// In a test file's process, the file fails at its end if it tried to leave the machine.
if (process.env.NODE_TEST_CONTEXT) {
  const { after } = await import('node:test');
  after(() => {
    if (violations.length > 0) {
      throw new Error(`${violations.length} connection(s) to addresses other than loopback were attempted:\n${violations.join('\n\n')}`);
    }
  });
}
