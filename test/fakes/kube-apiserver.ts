/**
 * An in-memory fake of the Kubernetes API server for tests.
 *
 * It speaks the real wire protocol (JSON over HTTP/HTTPS), so code under test can
 * use the real `@kubernetes/client-node` against it. It copies the parts of the
 * apiserver's behaviour that our code relies on and that are easy to get wrong
 * against a naive mock:
 *
 *  - optimistic concurrency: a global, monotonically increasing resourceVersion,
 *    409 Conflict on stale PUTs and on patches that carry a resourceVersion,
 *  - the exact Status bodies (reason, message, details) for NotFound, AlreadyExists,
 *    Conflict, Invalid, Forbidden, Unauthorized,
 *  - the 256 KiB total annotation size limit,
 *  - namespaces that stay `Terminating` for a while and take their contents with them,
 *  - TokenRequests whose tokens die with their ServiceAccount (or when they expire, which an
 *    API server that caps token lifetimes makes earlier than asked),
 *  - watches (newline-delimited JSON events, resourceVersion resumption, 410 Expired).
 *
 * On top of that it records every request and can inject faults (error statuses,
 * latency, hanging requests, connection resets, concurrent writers).
 *
 * Resource kinds are data (`ResourceDefinition`), so adding a kind is usually a
 * one-entry change to `BUILTIN_RESOURCES` or a `registerResource()` call.
 */
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { parse as parseYaml } from 'yaml';

// ---------------------------------------------------------------------------
// Object and Status shapes
// ---------------------------------------------------------------------------

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
  retryAfterSeconds?: number;
}

/** The `Status` object the apiserver returns for errors (and some deletes). */
export interface KubeStatus {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  details?: StatusDetails;
  code: number;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

// ---------------------------------------------------------------------------
// Resource table
// ---------------------------------------------------------------------------

/**
 * Describes one REST resource. Everything resource-specific the fake knows lives
 * here; the HTTP handlers are generic over it.
 */
export interface ResourceDefinition {
  /** API group, '' for the core group. */
  group: string;
  version: string;
  /** URL segment, e.g. 'services'. Also used as `details.kind` in Status bodies (as the real apiserver does). */
  plural: string;
  kind: string;
  namespaced: boolean;
  /** Returns a validation error message for a bad name, or undefined if the name is acceptable. */
  validateName?: (name: string) => string | undefined;
  /**
   * The real apiserver answers DELETE with the deleted object for some kinds
   * (services, serviceaccounts) and with a Success Status for most others.
   */
  returnDeletedObject?: boolean;
  /** Server-side defaulting on create (e.g. allocate a clusterIP). Mutates `obj`. */
  prepareForCreate?: (obj: KubeObject, ctx: PrepareContext) => void;
  /** Server-side handling on update (e.g. keep status that PUT may not change). Mutates `next`. */
  prepareForUpdate?: (next: KubeObject, prev: KubeObject, ctx: PrepareContext) => void;
}

export interface PrepareContext {
  /** Hands out unique cluster IPs so several Services don't collide. */
  allocateClusterIp(): string;
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

// The messages below are copied from k8s.io/apimachinery/pkg/util/validation so that
// tests asserting on them behave as they would against a real cluster.
export function validateDns1123Label(name: string): string | undefined {
  if (name.length > 63) return 'must be no more than 63 characters';
  if (!DNS1123_LABEL.test(name)) {
    return "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
  }
  return undefined;
}

export function validateDns1035Label(name: string): string | undefined {
  if (name.length > 63) return 'must be no more than 63 characters';
  if (!DNS1035_LABEL.test(name)) {
    return "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
  }
  return undefined;
}

export function validateDns1123Subdomain(name: string): string | undefined {
  if (name.length > 253) return 'must be no more than 253 characters';
  if (!DNS1123_SUBDOMAIN.test(name)) {
    return "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
  }
  return undefined;
}

/** RBAC objects only need to be valid URL path segments. */
export function validatePathSegmentName(name: string): string | undefined {
  if (name === '.' || name === '..') return `may not be '${name}'`;
  if (name.includes('/')) return "may not contain '/'";
  if (name.includes('%')) return "may not contain '%'";
  return undefined;
}

const RBAC_GROUP = 'rbac.authorization.k8s.io';

export const BUILTIN_RESOURCES: readonly ResourceDefinition[] = [
  {
    group: '',
    version: 'v1',
    plural: 'namespaces',
    kind: 'Namespace',
    namespaced: false,
    validateName: validateDns1123Label,
    prepareForCreate(obj) {
      // The apiserver always adds the "kubernetes" finalizer (keeping any others the client
      // asked for), starts namespaces Active and stamps the immutable name label (since 1.21).
      const asked = asRecord(obj.spec)?.finalizers;
      const finalizers = Array.isArray(asked) ? asked.map(String) : [];
      obj.spec = { finalizers: finalizers.includes('kubernetes') ? finalizers : [...finalizers, 'kubernetes'] };
      obj.status = { phase: 'Active' };
      obj.metadata.labels = { ...obj.metadata.labels, 'kubernetes.io/metadata.name': obj.metadata.name ?? '' };
    },
    prepareForUpdate(next, prev) {
      // status (the Terminating phase in particular) is owned by the server.
      next.status = structuredClone(prev.status);
      next.spec = structuredClone(prev.spec);
      next.metadata.labels = { ...next.metadata.labels, 'kubernetes.io/metadata.name': prev.metadata.name ?? '' };
    },
  },
  {
    group: '',
    version: 'v1',
    plural: 'services',
    kind: 'Service',
    namespaced: true,
    validateName: validateDns1035Label,
    returnDeletedObject: true,
    prepareForCreate(obj, ctx) {
      const spec = asRecord(obj.spec) ?? {};
      spec.type ??= 'ClusterIP';
      spec.sessionAffinity ??= 'None';
      if (spec.type !== 'ExternalName' && spec.clusterIP === undefined) {
        spec.clusterIP = ctx.allocateClusterIp();
      }
      if (typeof spec.clusterIP === 'string' && spec.clusterIPs === undefined) spec.clusterIPs = [spec.clusterIP];
      obj.spec = spec;
      // Status cannot be set on create through the main resource.
      obj.status = { loadBalancer: {} };
    },
    prepareForUpdate(next, prev) {
      // Clients commonly send a Service without the allocated IPs; the apiserver keeps them.
      const nextSpec = asRecord(next.spec) ?? {};
      const prevSpec = asRecord(prev.spec) ?? {};
      if (nextSpec.clusterIP === undefined && prevSpec.clusterIP !== undefined) nextSpec.clusterIP = prevSpec.clusterIP;
      if (nextSpec.clusterIPs === undefined && prevSpec.clusterIPs !== undefined) nextSpec.clusterIPs = structuredClone(prevSpec.clusterIPs);
      next.spec = nextSpec;
      next.status = structuredClone(prev.status);
    },
  },
  {
    group: '',
    version: 'v1',
    plural: 'serviceaccounts',
    kind: 'ServiceAccount',
    namespaced: true,
    validateName: validateDns1123Subdomain,
    returnDeletedObject: true,
  },
  { group: '', version: 'v1', plural: 'configmaps', kind: 'ConfigMap', namespaced: true, validateName: validateDns1123Subdomain },
  { group: '', version: 'v1', plural: 'nodes', kind: 'Node', namespaced: false, validateName: validateDns1123Subdomain },
  { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true, validateName: validateDns1123Subdomain },
  { group: RBAC_GROUP, version: 'v1', plural: 'clusterrolebindings', kind: 'ClusterRoleBinding', namespaced: false, validateName: validatePathSegmentName },
  { group: RBAC_GROUP, version: 'v1', plural: 'clusterroles', kind: 'ClusterRole', namespaced: false, validateName: validatePathSegmentName },
  { group: RBAC_GROUP, version: 'v1', plural: 'rolebindings', kind: 'RoleBinding', namespaced: true, validateName: validatePathSegmentName },
  { group: RBAC_GROUP, version: 'v1', plural: 'roles', kind: 'Role', namespaced: true, validateName: validatePathSegmentName },
];

function apiVersionOf(def: ResourceDefinition): string {
  return def.group ? `${def.group}/${def.version}` : def.version;
}

/** "services" or "clusterrolebindings.rbac.authorization.k8s.io", as used in apiserver messages. */
function qualifiedResource(def: ResourceDefinition): string {
  return def.group ? `${def.plural}.${def.group}` : def.plural;
}

/** "Service" or "ClusterRoleBinding.rbac.authorization.k8s.io", as used in Invalid messages. */
function qualifiedKind(def: ResourceDefinition): string {
  return def.group ? `${def.kind}.${def.group}` : def.kind;
}

// ---------------------------------------------------------------------------
// Status builders (shapes copied from k8s.io/apimachinery/pkg/api/errors)
// ---------------------------------------------------------------------------

/** Thrown inside handlers; turned into a Status response. */
export class KubeApiError extends Error {
  constructor(
    readonly status: KubeStatus,
    readonly headers: Record<string, string> = {},
  ) {
    super(status.message);
  }
}

function failure(code: number, reason: string, message: string, details?: StatusDetails): KubeStatus {
  const status: KubeStatus = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
  if (details) status.details = details;
  return status;
}

function resourceDetails(def: ResourceDefinition, name: string): StatusDetails {
  return def.group ? { name, group: def.group, kind: def.plural } : { name, kind: def.plural };
}

export function notFoundStatus(def: ResourceDefinition, name: string): KubeStatus {
  return failure(404, 'NotFound', `${qualifiedResource(def)} "${name}" not found`, resourceDetails(def, name));
}

export function alreadyExistsStatus(def: ResourceDefinition, name: string): KubeStatus {
  return failure(409, 'AlreadyExists', `${qualifiedResource(def)} "${name}" already exists`, resourceDetails(def, name));
}

export function conflictStatus(def: ResourceDefinition, name: string, why = 'the object has been modified; please apply your changes to the latest version and try again'): KubeStatus {
  return failure(409, 'Conflict', `Operation cannot be fulfilled on ${qualifiedResource(def)} "${name}": ${why}`, resourceDetails(def, name));
}

export interface FieldError {
  field: string;
  /** e.g. FieldValueInvalid, FieldValueTooLong, FieldValueRequired */
  reason: string;
  /** e.g. 'Too long: must have at most 262144 bytes' */
  message: string;
}

export function invalidStatus(def: ResourceDefinition, name: string, errors: FieldError[]): KubeStatus {
  const rendered = errors.map((e) => `${e.field}: ${e.message}`);
  const summary = rendered.length === 1 ? rendered[0] : `[${rendered.join(', ')}]`;
  const details: StatusDetails = { name, kind: def.kind, causes: errors.map((e) => ({ reason: e.reason, message: e.message, field: e.field })) };
  if (def.group) details.group = def.group;
  return failure(422, 'Invalid', `${qualifiedKind(def)} "${name}" is invalid: ${summary}`, details);
}

function forbiddenStatus(def: ResourceDefinition, name: string, why: string): KubeStatus {
  return failure(403, 'Forbidden', `${qualifiedResource(def)} "${name}" is forbidden: ${why}`, resourceDetails(def, name));
}

function badRequest(message: string): KubeStatus {
  return failure(400, 'BadRequest', message);
}

const UNAUTHORIZED: KubeStatus = failure(401, 'Unauthorized', 'Unauthorized');

const ROUTE_NOT_FOUND: KubeStatus = failure(404, 'NotFound', 'the server could not find the requested resource', {});

/** Default reason/message per status code for injected failures (mirrors NewGenericServerResponse). */
function genericStatus(code: number, route: RouteInfo | undefined, method: string): KubeStatus {
  const def = route?.def;
  const name = route?.name ?? '';
  switch (code) {
    case 400:
      return badRequest('the server rejected our request for an unknown reason');
    case 401:
      return UNAUTHORIZED;
    case 403:
      return def ? forbiddenStatus(def, name, 'injected by fake apiserver') : failure(403, 'Forbidden', 'forbidden: injected by fake apiserver');
    case 404:
      return def && name ? notFoundStatus(def, name) : ROUTE_NOT_FOUND;
    case 409:
      if (def && name && method !== 'POST') return conflictStatus(def, name);
      if (def && name) return alreadyExistsStatus(def, name);
      return failure(409, method === 'POST' ? 'AlreadyExists' : 'Conflict', 'the server reported a conflict');
    case 410:
      return failure(410, 'Expired', 'the resource version is too old (injected)');
    case 422:
      return failure(422, 'Invalid', 'the server rejected our request due to an error in our request', {});
    case 429:
      return failure(429, 'TooManyRequests', 'the server has received too many requests and has asked us to try again later', { retryAfterSeconds: 1 });
    case 500:
      return failure(500, 'InternalError', 'Internal error occurred: injected failure', { causes: [{ message: 'injected failure' }] });
    case 503:
      return failure(503, 'ServiceUnavailable', 'the server is currently unable to handle the request');
    case 504:
      return failure(504, 'Timeout', 'Timeout: request did not complete within the allotted timeout', {});
    default:
      return failure(code, code >= 500 ? 'InternalError' : 'Unknown', `the server responded with the status code ${code} (injected)`);
  }
}

// ---------------------------------------------------------------------------
// Patch helpers (pure, exported for direct unit testing)
// ---------------------------------------------------------------------------

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function asRecord(value: unknown): Record<string, unknown> | undefined {
  return isRecord(value) ? value : undefined;
}

export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((item, i) => deepEqual(item, b[i]));
  }
  if (isRecord(a) && isRecord(b)) {
    const aKeys = Object.keys(a).filter((k) => a[k] !== undefined);
    const bKeys = Object.keys(b).filter((k) => b[k] !== undefined);
    return aKeys.length === bKeys.length && aKeys.every((k) => deepEqual(a[k], b[k]));
  }
  return false;
}

/** RFC 7386 JSON merge patch: objects merge recursively, null deletes, everything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return structuredClone(patch);
  const result: Record<string, unknown> = isRecord(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

export type JsonPatchOperation =
  | { op: 'add' | 'replace' | 'test'; path: string; value: unknown }
  | { op: 'remove'; path: string }
  | { op: 'move' | 'copy'; from: string; path: string };

/** `kind` tells the caller which apiserver error to map this to. */
export class JsonPatchError extends Error {
  constructor(
    message: string,
    readonly kind: 'malformed' | 'failed',
  ) {
    super(message);
  }
}

function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw new JsonPatchError(`invalid JSON pointer: ${JSON.stringify(pointer)}`, 'malformed');
  return pointer
    .slice(1)
    .split('/')
    .map((token) => token.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function arrayIndex(token: string, length: number, allowEnd: boolean): number | undefined {
  if (allowEnd && token === '-') return length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) return undefined;
  const index = Number(token);
  return index <= (allowEnd ? length : length - 1) ? index : undefined;
}

/** Resolves the container holding the last token of `tokens`, or throws a 'failed' error. */
function resolveParent(doc: unknown, tokens: string[], pointer: string, op: string): unknown {
  let current = doc;
  for (const token of tokens.slice(0, -1)) {
    if (Array.isArray(current)) {
      const index = arrayIndex(token, current.length, false);
      if (index === undefined) throw new JsonPatchError(`${op} operation does not apply: doc is missing path: "${pointer}"`, 'failed');
      current = current[index];
    } else if (isRecord(current) && token in current) {
      current = current[token];
    } else {
      throw new JsonPatchError(`${op} operation does not apply: doc is missing path: "${pointer}"`, 'failed');
    }
  }
  return current;
}

function getAtPointer(doc: unknown, pointer: string, op: string): unknown {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) return doc;
  const parent = resolveParent(doc, tokens, pointer, op);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) {
    const index = arrayIndex(last, parent.length, false);
    if (index !== undefined) return parent[index];
  } else if (isRecord(parent) && last in parent) {
    return parent[last];
  }
  throw new JsonPatchError(`${op} operation does not apply: doc is missing key: ${pointer}`, 'failed');
}

/** Returns the new document (the root may be replaced). */
function addAtPointer(doc: unknown, pointer: string, value: unknown, op: string, mustExist: boolean): unknown {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) return value;
  const parent = resolveParent(doc, tokens, pointer, op);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) {
    const index = arrayIndex(last, parent.length, !mustExist);
    if (index === undefined) throw new JsonPatchError(`${op} operation does not apply: index out of bounds: ${pointer}`, 'failed');
    if (mustExist) parent[index] = value;
    else parent.splice(index, 0, value);
  } else if (isRecord(parent)) {
    if (mustExist && !(last in parent)) throw new JsonPatchError(`${op} operation does not apply: doc is missing key: ${pointer}`, 'failed');
    parent[last] = value;
  } else {
    throw new JsonPatchError(`${op} operation does not apply: doc is missing path: ${pointer}`, 'failed');
  }
  return doc;
}

function removeAtPointer(doc: unknown, pointer: string, op: string): unknown {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) throw new JsonPatchError(`${op} operation does not apply: cannot remove the document root`, 'failed');
  const parent = resolveParent(doc, tokens, pointer, op);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) {
    const index = arrayIndex(last, parent.length, false);
    if (index === undefined) throw new JsonPatchError(`${op} operation does not apply: index out of bounds: ${pointer}`, 'failed');
    return parent.splice(index, 1)[0];
  }
  if (isRecord(parent) && last in parent) {
    const removed = parent[last];
    delete parent[last];
    return removed;
  }
  throw new JsonPatchError(`${op} operation does not apply: doc is missing key: ${pointer}`, 'failed');
}

function parseJsonPatch(ops: unknown): JsonPatchOperation[] {
  if (!Array.isArray(ops)) throw new JsonPatchError('json: cannot unmarshal object into Go value of type jsonpatch.Patch', 'malformed');
  return ops.map((raw): JsonPatchOperation => {
    if (!isRecord(raw) || typeof raw.op !== 'string' || typeof raw.path !== 'string') {
      throw new JsonPatchError(`invalid JSON patch operation: ${JSON.stringify(raw)}`, 'malformed');
    }
    switch (raw.op) {
      case 'add':
      case 'replace':
      case 'test':
        if (!('value' in raw)) throw new JsonPatchError(`${raw.op} operation is missing "value"`, 'malformed');
        return { op: raw.op, path: raw.path, value: raw.value };
      case 'remove':
        return { op: 'remove', path: raw.path };
      case 'move':
      case 'copy':
        if (typeof raw.from !== 'string') throw new JsonPatchError(`${raw.op} operation is missing "from"`, 'malformed');
        return { op: raw.op, from: raw.from, path: raw.path };
      default:
        throw new JsonPatchError(`Unexpected kind: ${raw.op}`, 'malformed');
    }
  });
}

/** RFC 6902 JSON patch. Does not mutate `doc`. Throws JsonPatchError. */
export function applyJsonPatch(doc: unknown, operations: unknown): unknown {
  let result: unknown = structuredClone(doc);
  for (const operation of parseJsonPatch(operations)) {
    switch (operation.op) {
      case 'add':
        result = addAtPointer(result, operation.path, structuredClone(operation.value), 'add', false);
        break;
      case 'replace':
        result = addAtPointer(result, operation.path, structuredClone(operation.value), 'replace', true);
        break;
      case 'remove':
        removeAtPointer(result, operation.path, 'remove');
        break;
      case 'test': {
        let actual: unknown;
        try {
          actual = getAtPointer(result, operation.path, 'test');
        } catch {
          actual = undefined;
        }
        if (!deepEqual(actual, operation.value)) {
          throw new JsonPatchError(`testing value ${operation.path} failed: test failed`, 'failed');
        }
        break;
      }
      case 'move': {
        const value = removeAtPointer(result, operation.from, 'move');
        result = addAtPointer(result, operation.path, value, 'move', false);
        break;
      }
      case 'copy': {
        const value = structuredClone(getAtPointer(result, operation.from, 'copy'));
        result = addAtPointer(result, operation.path, value, 'copy', false);
        break;
      }
    }
  }
  return result;
}

// ---------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------

type Selector = (obj: KubeObject) => boolean;

/** Splits on commas that are not inside parentheses (set-based requirements contain commas). */
function splitSelector(selector: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = '';
  for (const ch of selector) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

/** Supports `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`. */
export function parseLabelSelector(selector: string): Selector {
  const requirements = splitSelector(selector).map((term): Selector => {
    let m = /^([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(term);
    if (m) {
      const [, key, op, rawValues] = m;
      const values = new Set(rawValues.split(',').map((v) => v.trim()));
      return op === 'in'
        ? (obj) => obj.metadata.labels?.[key] !== undefined && values.has(obj.metadata.labels[key])
        : (obj) => obj.metadata.labels?.[key] === undefined || !values.has(obj.metadata.labels[key]);
    }
    m = /^([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)$/.exec(term);
    if (m) {
      const [, key, op, value] = m;
      return op === '!=' ? (obj) => obj.metadata.labels?.[key] !== value : (obj) => obj.metadata.labels?.[key] === value;
    }
    m = /^(!?)([^\s!=(),]+)$/.exec(term);
    if (m) {
      const [, negate, key] = m;
      return negate ? (obj) => obj.metadata.labels?.[key] === undefined : (obj) => obj.metadata.labels?.[key] !== undefined;
    }
    throw new KubeApiError(badRequest(`unable to parse requirement: ${JSON.stringify(term)}`));
  });
  return (obj) => requirements.every((r) => r(obj));
}

function fieldValue(obj: KubeObject, path: string): string | undefined {
  let current: unknown = obj;
  for (const part of path.split('.')) {
    const record = asRecord(current);
    if (!record) return undefined;
    current = record[part];
  }
  return current === undefined || current === null ? undefined : String(current);
}

/**
 * Supports `path=v`, `path==v`, `path!=v` on any dotted path. (The real apiserver only
 * accepts a per-kind allowlist, always including metadata.name and metadata.namespace.)
 */
export function parseFieldSelector(selector: string): Selector {
  const requirements = splitSelector(selector).map((term): Selector => {
    const m = /^([^!=]+?)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (!m) throw new KubeApiError(badRequest(`invalid selector: '${selector}'; can't understand '${term}'`));
    const [, path, op, value] = m;
    return op === '!=' ? (obj) => (fieldValue(obj, path) ?? '') !== value : (obj) => (fieldValue(obj, path) ?? '') === value;
  });
  return (obj) => requirements.every((r) => r(obj));
}

// ---------------------------------------------------------------------------
// Public types of the fake
// ---------------------------------------------------------------------------

/** What the fake saw for one HTTP request. `status` is filled in once the response is sent. */
export interface RecordedRequest {
  method: string;
  /** Path without the query string, e.g. /api/v1/namespaces/default/services/foo */
  path: string;
  query: URLSearchParams;
  contentType: string | undefined;
  body: string;
  /** Bearer token, if any. */
  token: string | undefined;
  /** Anything other than GET/HEAD/OPTIONS. */
  isWrite: boolean;
  isWatch: boolean;
  /** Resource plural, if the path addressed a known resource. */
  resource?: string;
  namespace?: string;
  name?: string;
  subresource?: string;
  status?: number;
  receivedAt: number;
}

export type RequestMatcher = (req: RecordedRequest) => boolean;

export interface MatchCriteria {
  method?: string | string[];
  resource?: string;
  namespace?: string;
  name?: string;
  subresource?: string;
  path?: string | RegExp;
  writesOnly?: boolean;
}

/** Convenience builder for matchers: `matchRequest({method: 'PUT', resource: 'services'})`. */
export function matchRequest(criteria: MatchCriteria): RequestMatcher {
  const methods = criteria.method === undefined ? undefined : [criteria.method].flat().map((m) => m.toUpperCase());
  return (req) =>
    (methods === undefined || methods.includes(req.method)) &&
    (criteria.resource === undefined || req.resource === criteria.resource) &&
    (criteria.namespace === undefined || req.namespace === criteria.namespace) &&
    (criteria.name === undefined || req.name === criteria.name) &&
    (criteria.subresource === undefined || req.subresource === criteria.subresource) &&
    (criteria.writesOnly !== true || req.isWrite) &&
    (criteria.path === undefined || (typeof criteria.path === 'string' ? req.path === criteria.path : criteria.path.test(req.path)));
}

/** Handle for an armed fault rule. */
export interface FaultHandle {
  /** How many more requests the rule will affect. */
  readonly remaining: number;
  /** Disarm the rule. */
  cancel(): void;
}

/** Handle returned by `hang()`. */
export interface HangHandle {
  /** Requests currently held. */
  readonly held: number;
  /** Stop holding new requests; already-held ones stay held. */
  stop(): void;
  /** Stop holding new requests and process the held ones normally (late arrival). */
  release(): void;
}

export interface FailNextOptions {
  match?: RequestMatcher;
  /** Override the Status reason / message (defaults follow the real apiserver's generic responses). */
  reason?: string;
  message?: string;
  /** Sets a Retry-After header and details.retryAfterSeconds. */
  retryAfterSeconds?: number;
}

export interface ConflictNextWriteOptions {
  /** Resource plural; default 'services'. */
  resource?: string;
  match?: RequestMatcher;
  /** How many writes to conflict; default 1. */
  count?: number;
  /** What the simulated concurrent writer changes (the resourceVersion is bumped regardless). */
  mutate?: (obj: KubeObject) => void;
}

export interface IssuedToken {
  token: string;
  namespace: string;
  serviceAccount: string;
  serviceAccountUid: string;
  audiences: string[];
  issuedAt: Date;
  expirationTimestamp: Date;
}

export interface FakeKubeApiserverOptions {
  /** Delay before every request is handled. */
  latencyMs?: number;
  /** Serve HTTPS with this certificate (PEM). */
  tls?: { cert: string; key: string };
  /**
   * Authenticates requests. Returning false answers 401. /healthz, /readyz, /livez and
   * /version are exempt, as they are for anonymous users on a real cluster. May be async, as a
   * webhook authenticator is (an EKS token is checked by re-signing it).
   */
  requireToken?: (token: string | undefined, fake: FakeKubeApiserver) => boolean | Promise<boolean>;
  /**
   * How long a deleted namespace stays Terminating before it and its contents are
   * removed. Default 0: removed right after the DELETE is answered.
   */
  namespaceDeletionDelayMs?: number;
  /** Creating namespaced objects in a namespace that doesn't exist → 404 (as on a real cluster). Default false, for terser tests. */
  strictNamespaces?: boolean;
  /**
   * What kube-controller-manager's ServiceAccount controller does: every namespace gets a
   * `default` ServiceAccount, made again (with a new uid) whenever it is deleted while its
   * namespace is Active. Default false, for terser tests.
   */
  serviceAccountController?: boolean;
  /** gitVersion reported by GET /version. */
  gitVersion?: string;
  /** Extra resource kinds, in addition to BUILTIN_RESOURCES. */
  resources?: ResourceDefinition[];
  /** Default audiences for TokenRequests that don't name any. */
  defaultAudiences?: string[];
  /**
   * kube-apiserver's --service-account-max-token-expiration: a TokenRequest for longer is
   * granted this many seconds, and its status says so. The real flag must be at least 1h; any
   * value is allowed here, so that tests need not wait an hour for a token to die.
   */
  maxTokenExpirationSeconds?: number;
}

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

interface RouteInfo {
  def: ResourceDefinition;
  namespace?: string;
  name?: string;
  subresource?: string;
}

interface StoredEvent {
  rv: number;
  type: WatchEventType;
  def: ResourceDefinition;
  object: KubeObject;
  /** The object before a MODIFIED event; lets label-selector watches synthesize ADDED/DELETED. */
  previous?: KubeObject;
}

interface Watcher {
  def: ResourceDefinition;
  filter: Selector;
  res: ServerResponse;
  timer?: NodeJS.Timeout;
}

interface FaultRule<T> {
  remaining: number;
  match: RequestMatcher;
  payload: T;
}

interface HeldRequest {
  resume: () => void;
}

const ANNOTATIONS_SIZE_LIMIT = 256 * 1024;
const WATCH_HISTORY_LIMIT = 10_000;
const MATCH_ALL: RequestMatcher = () => true;
// Same alphabet the apiserver uses for generateName suffixes (no vowels, no confusables).
const NAME_SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';

function storeKey(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}

export function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJsonBody(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch (err) {
    throw new KubeApiError(badRequest(`the body of the request could not be decoded: ${(err as Error).message}`));
  }
}

function parseObjectBody(body: string): KubeObject {
  const parsed = parseJsonBody(body);
  if (!isRecord(parsed)) throw new KubeApiError(badRequest('the body of the request must be a JSON object'));
  const metadata = asRecord(parsed.metadata) ?? {};
  return { ...parsed, metadata: metadata as ObjectMeta };
}

function annotationsSize(annotations: Record<string, string> | undefined): number {
  let total = 0;
  for (const [key, value] of Object.entries(annotations ?? {})) {
    total += Buffer.byteLength(key, 'utf8') + Buffer.byteLength(String(value), 'utf8');
  }
  return total;
}

function base64url(value: string | Buffer): string {
  return Buffer.from(value).toString('base64url');
}

/** Real apiservers answer list items without kind/apiVersion; code must not depend on them. */
function asListItem(obj: KubeObject): KubeObject {
  const { kind: _kind, apiVersion: _apiVersion, ...rest } = obj;
  return rest as KubeObject;
}

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

export class FakeKubeApiserver {
  /** Base URL, e.g. http://127.0.0.1:43125 */
  url = '';
  /** Every request received, in arrival order. Cleared in place by resetCounts(). */
  readonly requests: RecordedRequest[] = [];
  /** Every token issued through TokenRequest or issueToken(). */
  readonly tokens: IssuedToken[] = [];

  private readonly server: HttpServer | HttpsServer;
  private readonly scheme: 'http' | 'https';
  private readonly resources: ResourceDefinition[] = [];
  private readonly stores = new Map<ResourceDefinition, Map<string, KubeObject>>();
  private rv = 1000; // arbitrary start, so "0" and small numbers are never valid versions
  private events: StoredEvent[] = [];
  /** Watches asking for a resourceVersion below this get 410 Expired. */
  private compactedRv = 0;
  private readonly watchers = new Set<Watcher>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly namespaceTimers = new Map<string, NodeJS.Timeout>();
  private latencyMs: number;
  private namespaceDeletionDelayMs: number;
  private requireToken: FakeKubeApiserverOptions['requireToken'];
  private readonly strictNamespaces: boolean;
  private readonly serviceAccountController: boolean;
  /** Namespaces removed at once by deleteObject(): no controller recreates anything in them. */
  private readonly removingNamespaces = new Set<string>();
  private readonly gitVersion: string;
  private readonly defaultAudiences: string[];
  private readonly maxTokenExpirationSeconds: number | undefined;
  private failRules: FaultRule<{ code: number; options: FailNextOptions }>[] = [];
  private resetRules: FaultRule<null>[] = [];
  private dropAnswerRules: FaultRule<null>[] = [];
  private conflictRules: FaultRule<ConflictNextWriteOptions & { resource: string }>[] = [];
  private hangRules: { match: RequestMatcher; active: boolean; held: HeldRequest[]; applyAbandoned: boolean }[] = [];
  private nextClusterIp = 10;
  private closed = false;

  constructor(options: FakeKubeApiserverOptions = {}) {
    this.latencyMs = options.latencyMs ?? 0;
    this.namespaceDeletionDelayMs = options.namespaceDeletionDelayMs ?? 0;
    this.requireToken = options.requireToken;
    this.strictNamespaces = options.strictNamespaces ?? false;
    this.serviceAccountController = options.serviceAccountController ?? false;
    this.gitVersion = options.gitVersion ?? 'v1.30.0-fake';
    this.defaultAudiences = options.defaultAudiences ?? ['https://kubernetes.default.svc.cluster.local'];
    this.maxTokenExpirationSeconds = options.maxTokenExpirationSeconds;
    for (const def of [...BUILTIN_RESOURCES, ...(options.resources ?? [])]) this.registerResource(def);
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      this.guard(res, this.handle(req, res));
    };
    this.scheme = options.tls ? 'https' : 'http';
    this.server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler) : createHttpServer(handler);
  }

  /** @internal Use startFakeKubeApiserver(). */
  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = this.server.address() as AddressInfo;
    this.url = `${this.scheme}://127.0.0.1:${port}`;
  }

  /** Stops the server, ends watches, drops held requests and pending timers. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const timer of [...this.timers, ...this.namespaceTimers.values()]) clearTimeout(timer);
    this.timers.clear();
    this.namespaceTimers.clear();
    for (const watcher of this.watchers) this.endWatch(watcher);
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Keep-alive sockets and hung requests would otherwise keep close() waiting.
    this.server.closeAllConnections();
    await closing;
  }

  // ---- configuration ------------------------------------------------------

  /** Adds a resource kind (see BUILTIN_RESOURCES for examples). */
  registerResource(def: ResourceDefinition): void {
    const existing = this.resources.findIndex((r) => r.group === def.group && r.version === def.version && r.plural === def.plural);
    if (existing >= 0) {
      this.stores.delete(this.resources[existing]);
      this.resources.splice(existing, 1);
    }
    this.resources.push(def);
    this.stores.set(def, new Map());
  }

  setLatency(ms: number): void {
    this.latencyMs = ms;
  }

  setNamespaceDeletionDelay(ms: number): void {
    this.namespaceDeletionDelayMs = ms;
  }

  setRequireToken(check: FakeKubeApiserverOptions['requireToken']): void {
    this.requireToken = check;
  }

  /** Builds the argument for `KubeConfig.loadFromOptions()` pointing at this fake. */
  kubeConfigOptions(token = 'fake-token'): {
    clusters: { name: string; server: string; skipTLSVerify: boolean }[];
    users: { name: string; token: string }[];
    contexts: { name: string; cluster: string; user: string }[];
    currentContext: string;
  } {
    return {
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'fake-user', token }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'fake-user' }],
      currentContext: 'fake',
    };
  }

  // ---- observation --------------------------------------------------------

  /** Clears the request log (in place, so held references see it emptied). */
  resetCounts(): void {
    this.requests.length = 0;
  }

  /** Number of non-GET requests received since the last resetCounts(). */
  get writeCount(): number {
    return this.requests.filter((r) => r.isWrite).length;
  }

  countRequests(match: RequestMatcher | MatchCriteria = MATCH_ALL): number {
    const matcher = typeof match === 'function' ? match : matchRequest(match);
    return this.requests.filter(matcher).length;
  }

  /** The current (latest) resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  // ---- fault injection ----------------------------------------------------

  /** Answers the next `count` matching requests with `code` and a Status body, without applying them. */
  failNext(count: number, code: number, options: FailNextOptions = {}): FaultHandle {
    return this.addRule(this.failRules, count, options.match, { code, options });
  }

  /**
   * Applies the next `count` matching requests, then destroys the socket instead of answering:
   * the client cannot tell whether its write landed (a timeout or reset after the commit).
   */
  dropAnswerNext(count: number, match?: RequestMatcher): FaultHandle {
    return this.addRule(this.dropAnswerRules, count, match, null);
  }

  /** Destroys the socket of the next `count` matching requests (client sees ECONNRESET / socket hang up). */
  resetNext(count: number, match?: RequestMatcher): FaultHandle {
    return this.addRule(this.resetRules, count, match, null);
  }

  /**
   * Holds matching requests without answering until release() or close(). Only
   * requests that arrive while the rule is active are held. By default a held request whose
   * client has gone away by then is dropped; with `applyAbandoned` it is still applied, as by
   * an apiserver whose storage was slow: the write lands long after its client gave up.
   */
  hang(match: RequestMatcher = MATCH_ALL, options: { applyAbandoned?: boolean } = {}): HangHandle {
    const rule = { match, active: true, held: [] as HeldRequest[], applyAbandoned: options.applyAbandoned ?? false };
    this.hangRules.push(rule);
    return {
      get held() {
        return rule.held.length;
      },
      stop: () => {
        rule.active = false;
      },
      release: () => {
        rule.active = false;
        for (const held of rule.held.splice(0)) held.resume();
      },
    };
  }

  /**
   * Simulates a concurrent writer: the next PUT/PATCH to an existing object of the
   * resource (default services) first bumps the stored object's resourceVersion
   * (emitting a MODIFIED watch event), then is answered 409 Conflict. Requests whose
   * target doesn't exist are processed normally and don't consume the rule.
   */
  conflictNextWrite(options: ConflictNextWriteOptions = {}): FaultHandle {
    const resource = options.resource ?? 'services';
    return this.addRule(this.conflictRules, options.count ?? 1, options.match, { ...options, resource });
  }

  /**
   * Makes all future watches that resume from a resourceVersion older than now fail
   * with 410 Expired, like etcd compaction does.
   */
  compactWatchHistory(): void {
    this.compactedRv = this.rv;
    this.events = [];
  }

  /** Ends all open watch streams cleanly (as an apiserver restart or watch timeout would). */
  closeWatches(): void {
    for (const watcher of this.watchers) this.endWatch(watcher);
  }

  get activeWatchCount(): number {
    return this.watchers.size;
  }

  // ---- direct state access -------------------------------------------------

  /** Resolves 'services', 'Service', 'service' or 'clusterrolebindings.rbac.authorization.k8s.io'. */
  resource(kind: string): ResourceDefinition {
    const lower = kind.toLowerCase();
    const def = this.resources.find(
      (r) => r.plural === lower || r.kind.toLowerCase() === lower || `${r.plural}.${r.group}` === lower,
    );
    if (!def) throw new Error(`fake kube-apiserver: unknown resource kind ${JSON.stringify(kind)}`);
    return def;
  }

  /** A copy of the stored object, or undefined. `namespace` is ignored for cluster-scoped kinds. */
  getObject(kind: string, namespace: string | undefined, name: string): KubeObject | undefined {
    const def = this.resource(kind);
    const obj = this.store(def).get(storeKey(def.namespaced ? namespace : undefined, name));
    return obj && structuredClone(obj);
  }

  /** Copies of stored objects, optionally limited to one namespace, sorted by namespace/name. */
  listObjects(kind: string, namespace?: string): KubeObject[] {
    const def = this.resource(kind);
    return this.sortedObjects(def, namespace).map((o) => structuredClone(o));
  }

  /**
   * Seeds or overwrites an object without HTTP, validation or preconditions. Fills in
   * uid/creationTimestamp when missing, bumps the resourceVersion and notifies watches.
   */
  putObject(kind: string, obj: KubeObject): KubeObject {
    const def = this.resource(kind);
    const copy = structuredClone(obj);
    copy.metadata ??= {};
    const name = copy.metadata.name;
    if (!name) throw new Error('fake kube-apiserver: putObject needs metadata.name');
    if (def.namespaced) copy.metadata.namespace ??= 'default';
    else delete copy.metadata.namespace;
    const prev = this.store(def).get(storeKey(copy.metadata.namespace, name));
    copy.apiVersion = apiVersionOf(def);
    copy.kind = def.kind;
    copy.metadata.uid ??= prev?.metadata.uid ?? randomUUID();
    copy.metadata.creationTimestamp ??= prev?.metadata.creationTimestamp ?? new Date().toISOString();
    return structuredClone(prev ? this.commitUpdate(def, prev, copy) : this.commitCreate(def, copy));
  }

  /** Removes an object immediately (namespaces: with their contents). Returns whether it existed. */
  deleteObject(kind: string, namespace: string | undefined, name: string): boolean {
    const def = this.resource(kind);
    if (def.plural === 'namespaces' && def.group === '') {
      if (!this.store(def).has(storeKey(undefined, name))) return false;
      this.finalizeNamespace(name);
      return true;
    }
    const obj = this.store(def).get(storeKey(def.namespaced ? namespace : undefined, name));
    if (!obj) return false;
    this.commitDelete(def, obj);
    return true;
  }

  /** Completes a pending (delayed) namespace deletion now. */
  finishNamespaceDeletion(name: string): void {
    const timer = this.namespaceTimers.get(name);
    if (timer) clearTimeout(timer);
    this.namespaceTimers.delete(name);
    this.finalizeNamespace(name);
  }

  // ---- tokens -----------------------------------------------------------------

  /** Issues a token for an existing ServiceAccount without HTTP. */
  issueToken(namespace: string, serviceAccount: string, options: { audiences?: string[]; expirationSeconds?: number } = {}): IssuedToken {
    const sa = this.store(this.resource('serviceaccounts')).get(storeKey(namespace, serviceAccount));
    if (!sa) throw new Error(`fake kube-apiserver: serviceaccount ${namespace}/${serviceAccount} does not exist`);
    return this.mintToken(sa, options.audiences ?? this.defaultAudiences, options.expirationSeconds ?? 3600);
  }

  /** True if the token was issued here, hasn't expired and its ServiceAccount (same uid) still exists. */
  isTokenValid(token: string | undefined): boolean {
    const issued = this.tokens.find((t) => t.token === token);
    if (!issued || issued.expirationTimestamp.getTime() <= Date.now()) return false;
    const sa = this.store(this.resource('serviceaccounts')).get(storeKey(issued.namespace, issued.serviceAccount));
    return sa?.metadata.uid === issued.serviceAccountUid;
  }

  /** The record for a token issued here, if any. */
  findToken(token: string): IssuedToken | undefined {
    return this.tokens.find((t) => t.token === token);
  }

  // ---- request handling ----------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const url = new URL(req.url ?? '/', 'http://fake.invalid');
    const method = (req.method ?? 'GET').toUpperCase();
    const route = this.parseRoute(url.pathname);
    const authorization = req.headers.authorization;
    const record: RecordedRequest = {
      method,
      path: url.pathname,
      query: url.searchParams,
      contentType: req.headers['content-type'],
      body,
      token: authorization?.startsWith('Bearer ') ? authorization.slice('Bearer '.length) : undefined,
      isWrite: !['GET', 'HEAD', 'OPTIONS'].includes(method),
      isWatch: ['true', '1'].includes(url.searchParams.get('watch') ?? ''),
      resource: route?.def.plural,
      namespace: route?.namespace,
      name: route?.name,
      subresource: route?.subresource,
      receivedAt: Date.now(),
    };
    this.requests.push(record);
    res.on('finish', () => {
      record.status = res.statusCode;
    });

    if (this.latencyMs > 0) await this.sleep(this.latencyMs);
    if (this.closed) return;

    if (this.takeRule(this.resetRules, record)) {
      req.socket.destroy();
      return;
    }
    if (this.takeRule(this.dropAnswerRules, record)) {
      const drop = () => {
        req.socket.destroy();
        return res;
      };
      res.writeHead = drop as typeof res.writeHead;
      res.end = drop as typeof res.end;
      res.write = (() => true) as typeof res.write;
    }
    const hangRule = this.hangRules.find((r) => r.active && r.match(record));
    if (hangRule) {
      hangRule.held.push({ resume: () => this.guard(res, this.process(record, route, res, hangRule.applyAbandoned)) });
      return;
    }
    const failRule = this.takeRule(this.failRules, record);
    if (failRule) {
      const { code, options } = failRule.payload;
      const status = structuredClone(genericStatus(code, route, method));
      if (options.reason) status.reason = options.reason;
      if (options.message) status.message = options.message;
      const headers: Record<string, string> = {};
      const retryAfter = options.retryAfterSeconds ?? status.details?.retryAfterSeconds;
      if (retryAfter !== undefined) {
        headers['Retry-After'] = String(retryAfter);
        status.details = { ...status.details, retryAfterSeconds: retryAfter };
      }
      this.sendStatus(res, status, headers);
      return;
    }
    await this.process(record, route, res);
  }

  /** A bug in the fake must show up as a 500, not as an unhandled rejection that kills the test run. */
  private guard(res: ServerResponse, work: Promise<void>): void {
    work.catch((err: unknown) => {
      if (!res.headersSent && !res.destroyed) {
        this.sendStatus(res, failure(500, 'InternalError', `Internal error occurred: ${String(err)}`));
      }
    });
  }

  private async process(record: RecordedRequest, route: RouteInfo | undefined, res: ServerResponse, evenIfAbandoned = false): Promise<void> {
    if (this.closed || (res.destroyed && !evenIfAbandoned)) return;
    try {
      const publicPath = ['/healthz', '/readyz', '/livez', '/version'].includes(record.path);
      if (!publicPath && this.requireToken && !(await this.requireToken(record.token, this))) throw new KubeApiError(UNAUTHORIZED);
      this.applyConflictRule(record, route);
      await this.dispatch(record, route, res);
    } catch (err) {
      if (err instanceof KubeApiError) this.sendStatus(res, err.status, err.headers);
      else throw err;
    }
  }

  private async dispatch(req: RecordedRequest, route: RouteInfo | undefined, res: ServerResponse): Promise<void> {
    switch (req.path) {
      case '/healthz':
      case '/readyz':
      case '/livez':
        res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' }).end('ok');
        return;
      case '/version': {
        const [, major = '1', minor = '30'] = /^v(\d+)\.(\d+)/.exec(this.gitVersion) ?? [];
        this.sendJson(res, 200, { major, minor, gitVersion: this.gitVersion, gitCommit: 'fake', gitTreeState: 'clean', buildDate: '2024-01-01T00:00:00Z', goVersion: 'go1.22.0', compiler: 'gc', platform: 'linux/amd64' });
        return;
      }
      case '/api':
        this.sendJson(res, 200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: '127.0.0.1:443' }] });
        return;
      // Discovery, as kubectl does it before a `get`: the groups, and each group version's resources.
      case '/apis': {
        const groups = [...new Set(this.resources.filter((def) => def.group !== '').map((def) => `${def.group}/${def.version}`))].map((groupVersion) => {
          const [group = '', version = ''] = groupVersion.split('/');
          return { name: group, versions: [{ groupVersion, version }], preferredVersion: { groupVersion, version } };
        });
        this.sendJson(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups });
        return;
      }
      case '/apis/authentication.k8s.io/v1/tokenreviews':
        if (req.method === 'POST') return this.tokenReview(req, res);
        break;
    }
    const discovery = /^\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))$/.exec(req.path);
    if (discovery && req.method === 'GET') {
      const [group, version] = discovery[1] ? ['', discovery[1]] : [discovery[2] ?? '', discovery[3] ?? ''];
      const resources = this.resources
        .filter((def) => def.group === group && def.version === version)
        .map((def) => ({ name: def.plural, singularName: def.kind.toLowerCase(), namespaced: def.namespaced, kind: def.kind, verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'] }));
      if (resources.length === 0) throw new KubeApiError(ROUTE_NOT_FOUND);
      this.sendJson(res, 200, { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: group ? `${group}/${version}` : version, resources });
      return;
    }
    if (!route) throw new KubeApiError(ROUTE_NOT_FOUND);
    const { def, namespace, name, subresource } = route;

    if (subresource !== undefined) {
      if (def.plural === 'serviceaccounts' && def.group === '' && subresource === 'token' && req.method === 'POST' && namespace && name) {
        return this.tokenRequest(req, namespace, name, res);
      }
      throw new KubeApiError(ROUTE_NOT_FOUND);
    }
    // Namespaced kinds can be listed/watched across namespaces, but not written that way.
    if (def.namespaced && namespace === undefined && !(req.method === 'GET' && name === undefined)) {
      throw new KubeApiError(ROUTE_NOT_FOUND);
    }

    if (name === undefined) {
      switch (req.method) {
        case 'GET':
          return req.isWatch ? this.startWatch(def, namespace, undefined, req.query, res) : this.list(def, namespace, req.query, res);
        case 'POST':
          return this.create(def, namespace, req, res);
        case 'DELETE':
          return this.deleteCollection(def, namespace, req.query, res);
      }
    } else {
      switch (req.method) {
        case 'GET':
          return req.isWatch ? this.startWatch(def, namespace, name, req.query, res) : this.get(def, namespace, name, res);
        case 'PUT':
          return this.replace(def, namespace, name, req, res);
        case 'PATCH':
          return this.patch(def, namespace, name, req, res);
        case 'DELETE':
          return this.delete(def, namespace, name, req, res);
      }
    }
    throw new KubeApiError(failure(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource', {}));
  }

  /**
   * /api/v1/... and /apis/GROUP/VERSION/...: `namespaces/NS/PLURAL[/NAME[/SUB]]` or
   * `PLURAL[/NAME[/SUB]]`. `namespaces/NAME/...` is ambiguous with a subresource of a
   * namespace, so it is only read as a namespaced path when PLURAL is a namespaced kind.
   */
  private parseRoute(pathname: string): RouteInfo | undefined {
    let parts: string[];
    try {
      parts = pathname.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      return undefined;
    }
    let group: string;
    let version: string;
    let rest: string[];
    if (parts[0] === 'api' && parts.length >= 2) {
      [group, version, rest] = ['', parts[1], parts.slice(2)];
    } else if (parts[0] === 'apis' && parts.length >= 3) {
      [group, version, rest] = [parts[1], parts[2], parts.slice(3)];
    } else {
      return undefined;
    }
    const find = (plural: string | undefined, namespaced?: boolean): ResourceDefinition | undefined =>
      this.resources.find((r) => r.group === group && r.version === version && r.plural === plural && (namespaced === undefined || r.namespaced === namespaced));
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      const def = find(rest[2], true);
      if (def) {
        if (rest.length > 5) return undefined;
        return { def, namespace: rest[1], name: rest[3], subresource: rest[4] };
      }
    }
    const def = find(rest[0]);
    if (!def || rest.length > 3) return undefined;
    return { def, name: rest[1], subresource: rest[2] };
  }

  // ---- verbs ----------------------------------------------------------------------

  private get(def: ResourceDefinition, namespace: string | undefined, name: string, res: ServerResponse): void {
    this.sendJson(res, 200, this.mustGet(def, namespace, name));
  }

  private list(def: ResourceDefinition, namespace: string | undefined, query: URLSearchParams, res: ServerResponse): void {
    const filter = this.selectorFromQuery(query, undefined);
    let items = this.sortedObjects(def, namespace).filter(filter);

    // Pagination: the continue token carries the last key returned. Unlike the real
    // apiserver, later pages are read from the current state, not a snapshot.
    const continueToken = query.get('continue');
    if (continueToken) {
      let start: string;
      try {
        start = String(JSON.parse(Buffer.from(continueToken, 'base64url').toString('utf8')).start);
      } catch {
        throw new KubeApiError(badRequest('continue key is not valid'));
      }
      items = items.filter((o) => storeKey(o.metadata.namespace, o.metadata.name ?? '') > start);
    }
    const metadata: Record<string, unknown> = { resourceVersion: String(this.rv) };
    const limit = Number(query.get('limit') ?? 0);
    if (limit > 0 && items.length > limit) {
      const last = items[limit - 1];
      metadata.continue = base64url(JSON.stringify({ start: storeKey(last.metadata.namespace, last.metadata.name ?? ''), rv: this.rv }));
      metadata.remainingItemCount = items.length - limit;
      items = items.slice(0, limit);
    }
    this.sendJson(res, 200, { kind: `${def.kind}List`, apiVersion: apiVersionOf(def), metadata, items: items.map(asListItem) });
  }

  private create(def: ResourceDefinition, namespace: string | undefined, req: RecordedRequest, res: ServerResponse): void {
    const obj = parseObjectBody(req.body);
    const meta = obj.metadata;
    if (def.namespaced) {
      if (meta.namespace !== undefined && meta.namespace !== '' && meta.namespace !== namespace) {
        throw new KubeApiError(badRequest('the namespace of the provided object does not match the namespace sent on the request'));
      }
      meta.namespace = namespace;
    } else {
      delete meta.namespace;
    }
    if (!meta.name && meta.generateName) {
      let suffix = '';
      for (const byte of randomBytes(5)) suffix += NAME_SUFFIX_ALPHABET[byte % NAME_SUFFIX_ALPHABET.length];
      meta.name = `${meta.generateName}${suffix}`;
    }
    const name = meta.name ?? '';
    if (name && def.namespaced && namespace) this.assertNamespaceAcceptsCreate(def, namespace, name);
    if (meta.resourceVersion) {
      // etcd3 storage rejects this with a plain error, which the apiserver turns into a 500.
      throw new KubeApiError(failure(500, 'Unknown', 'resourceVersion should not be set on objects to be created'));
    }
    obj.apiVersion = apiVersionOf(def);
    obj.kind = def.kind;
    delete meta.deletionTimestamp;
    meta.uid = randomUUID();
    meta.creationTimestamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    def.prepareForCreate?.(obj, this.prepareContext);
    this.validate(def, obj);
    if (this.store(def).has(storeKey(meta.namespace, name))) throw new KubeApiError(alreadyExistsStatus(def, name));
    if (this.isDryRun(req.query)) {
      this.sendJson(res, 201, obj);
      return;
    }
    this.sendJson(res, 201, this.commitCreate(def, obj));
  }

  private replace(def: ResourceDefinition, namespace: string | undefined, name: string, req: RecordedRequest, res: ServerResponse): void {
    const next = parseObjectBody(req.body);
    if (next.metadata.name !== undefined && next.metadata.name !== name) {
      throw new KubeApiError(badRequest(`the name of the object (${next.metadata.name}) does not match the name on the URL (${name})`));
    }
    if (def.namespaced && next.metadata.namespace !== undefined && next.metadata.namespace !== '' && next.metadata.namespace !== namespace) {
      throw new KubeApiError(badRequest('the namespace of the provided object does not match the namespace sent on the request'));
    }
    const prev = this.mustGetStored(def, namespace, name);
    this.sendJson(res, 200, this.update(def, prev, next, req.query));
  }

  private patch(def: ResourceDefinition, namespace: string | undefined, name: string, req: RecordedRequest, res: ServerResponse): void {
    const contentType = (req.contentType ?? '').split(';')[0].trim().toLowerCase();
    const prev = this.store(def).get(storeKey(def.namespaced ? namespace : undefined, name));
    let patched: unknown;
    switch (contentType) {
      case 'application/json-patch+json': {
        if (!prev) throw new KubeApiError(notFoundStatus(def, name));
        try {
          patched = applyJsonPatch(prev, parseJsonBody(req.body));
        } catch (err) {
          if (!(err instanceof JsonPatchError)) throw err;
          // Mirrors the apiserver: undecodable patch → 400, patch that doesn't apply → 422 without causes.
          if (err.kind === 'malformed') throw new KubeApiError(badRequest(err.message));
          throw new KubeApiError(failure(422, 'Invalid', 'the server rejected our request due to an error in our request', {}), { 'X-Fake-Apiserver-Detail': err.message });
        }
        break;
      }
      // Strategic merge patch is treated as a plain merge patch: lists are replaced, not merged by key.
      case 'application/merge-patch+json':
      case 'application/strategic-merge-patch+json': {
        if (!prev) throw new KubeApiError(notFoundStatus(def, name));
        const patch = parseJsonBody(req.body);
        if (!isRecord(patch)) throw new KubeApiError(badRequest('the body of the request must be a JSON object'));
        patched = mergePatch(prev, patch);
        break;
      }
      // Server-side apply, approximated: create if missing, otherwise merge. Field ownership is not tracked.
      case 'application/apply-patch+yaml': {
        if (!req.query.get('fieldManager')) {
          throw new KubeApiError(failure(422, 'Invalid', 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch', { kind: 'PatchOptions', group: 'meta.k8s.io', causes: [{ reason: 'FieldValueRequired', message: 'Required value: is required for apply patch', field: 'fieldManager' }] }));
        }
        let applied: unknown;
        try {
          applied = parseYaml(req.body);
        } catch (err) {
          throw new KubeApiError(badRequest(`error decoding YAML: ${(err as Error).message}`));
        }
        if (!isRecord(applied)) throw new KubeApiError(badRequest('the body of the request must be an object'));
        if (!prev) {
          const obj: KubeObject = { ...applied, metadata: { ...(asRecord(applied.metadata) ?? {}), name } };
          this.create(def, namespace, { ...req, body: JSON.stringify(obj) }, res);
          return;
        }
        patched = mergePatch(prev, applied);
        break;
      }
      default:
        throw new KubeApiError(failure(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json`));
    }
    if (!isRecord(patched)) throw new KubeApiError(badRequest('the patched object is not a JSON object'));
    const next: KubeObject = { ...patched, metadata: (asRecord(patched.metadata) ?? {}) as ObjectMeta };
    if (next.metadata.name !== name) {
      throw new KubeApiError(badRequest(`the name of the object (${String(next.metadata.name)}) does not match the name on the URL (${name})`));
    }
    this.sendJson(res, 200, this.update(def, prev as KubeObject, next, req.query));
  }

  private delete(def: ResourceDefinition, namespace: string | undefined, name: string, req: RecordedRequest, res: ServerResponse): void {
    const obj = this.mustGetStored(def, namespace, name);
    const options = req.body.trim() ? asRecord(parseJsonBody(req.body)) : undefined;
    const preconditions = asRecord(options?.preconditions);
    if (typeof preconditions?.uid === 'string' && preconditions.uid !== obj.metadata.uid) {
      throw new KubeApiError(conflictStatus(def, name, `Precondition failed: UID in precondition: ${preconditions.uid}, UID in object meta: ${obj.metadata.uid}`));
    }
    if (typeof preconditions?.resourceVersion === 'string' && preconditions.resourceVersion !== obj.metadata.resourceVersion) {
      throw new KubeApiError(conflictStatus(def, name, `Precondition failed: ResourceVersion in precondition: ${preconditions.resourceVersion}, ResourceVersion in object meta: ${obj.metadata.resourceVersion}`));
    }
    if (this.isDryRun(req.query)) {
      this.sendJson(res, 200, obj);
      return;
    }
    if (def.group === '' && def.plural === 'namespaces') {
      this.sendJson(res, 200, this.beginNamespaceDeletion(name));
      return;
    }
    const deleted = this.commitDelete(def, obj);
    if (def.returnDeletedObject) {
      this.sendJson(res, 200, deleted);
      return;
    }
    const details: StatusDetails = { name, kind: def.plural, uid: obj.metadata.uid };
    if (def.group) details.group = def.group;
    this.sendJson(res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details });
  }

  private deleteCollection(def: ResourceDefinition, namespace: string | undefined, query: URLSearchParams, res: ServerResponse): void {
    const victims = this.sortedObjects(def, namespace).filter(this.selectorFromQuery(query, undefined));
    const deleted: KubeObject[] = [];
    for (const obj of victims) {
      if (def.group === '' && def.plural === 'namespaces') deleted.push(this.beginNamespaceDeletion(obj.metadata.name ?? ''));
      else deleted.push(this.commitDelete(def, obj));
    }
    this.sendJson(res, 200, { kind: `${def.kind}List`, apiVersion: apiVersionOf(def), metadata: { resourceVersion: String(this.rv) }, items: deleted.map(asListItem) });
  }

  /** Shared by PUT and PATCH. */
  private update(def: ResourceDefinition, prev: KubeObject, next: KubeObject, query: URLSearchParams): KubeObject {
    const name = prev.metadata.name ?? '';
    // A resourceVersion in the submitted/patched object is an optimistic-concurrency precondition.
    if (next.metadata.resourceVersion && next.metadata.resourceVersion !== prev.metadata.resourceVersion) {
      throw new KubeApiError(conflictStatus(def, name));
    }
    if (next.metadata.uid && next.metadata.uid !== prev.metadata.uid) {
      throw new KubeApiError(conflictStatus(def, name, `Precondition failed: UID in precondition: ${next.metadata.uid}, UID in object meta: ${prev.metadata.uid}`));
    }
    next.apiVersion = apiVersionOf(def);
    next.kind = def.kind;
    next.metadata.name = name;
    if (def.namespaced) next.metadata.namespace = prev.metadata.namespace;
    else delete next.metadata.namespace;
    // System fields can't be changed by clients.
    next.metadata.uid = prev.metadata.uid;
    next.metadata.creationTimestamp = prev.metadata.creationTimestamp;
    if (prev.metadata.deletionTimestamp) next.metadata.deletionTimestamp = prev.metadata.deletionTimestamp;
    else delete next.metadata.deletionTimestamp;
    next.metadata.resourceVersion = prev.metadata.resourceVersion;
    def.prepareForUpdate?.(next, prev, this.prepareContext);
    this.validate(def, next);
    // Like the real apiserver, a no-op update doesn't create a new resourceVersion or event.
    if (deepEqual(next, prev)) return structuredClone(prev);
    if (this.isDryRun(query)) return structuredClone(next);
    const updated = this.commitUpdate(def, prev, next);
    // The last finalizer of a Terminating namespace was removed: it goes now.
    if (def.group === '' && def.plural === 'namespaces' && this.namespaceUnblocked(updated)) {
      const stored = this.store(def).get(storeKey(undefined, name));
      if (stored) this.commitDelete(def, stored);
    }
    return updated;
  }

  private validate(def: ResourceDefinition, obj: KubeObject): void {
    const name = obj.metadata.name ?? '';
    const errors: FieldError[] = [];
    if (!name) {
      errors.push({ field: 'metadata.name', reason: 'FieldValueRequired', message: 'Required value: name or generateName is required' });
    } else {
      const nameError = def.validateName?.(name);
      if (nameError) errors.push({ field: 'metadata.name', reason: 'FieldValueInvalid', message: `Invalid value: ${JSON.stringify(name)}: ${nameError}` });
    }
    if (annotationsSize(obj.metadata.annotations) > ANNOTATIONS_SIZE_LIMIT) {
      errors.push({ field: 'metadata.annotations', reason: 'FieldValueTooLong', message: `Too long: must have at most ${ANNOTATIONS_SIZE_LIMIT} bytes` });
    }
    if (errors.length > 0) throw new KubeApiError(invalidStatus(def, name, errors));
  }

  // ---- namespaces -------------------------------------------------------------------

  /** Mirrors the NamespaceLifecycle admission plugin. */
  private assertNamespaceAcceptsCreate(def: ResourceDefinition, namespace: string, name: string): void {
    const ns = this.store(this.resource('namespaces')).get(storeKey(undefined, namespace));
    if (!ns) {
      if (this.strictNamespaces) throw new KubeApiError(notFoundStatus(this.resource('namespaces'), namespace));
      return;
    }
    if (ns.metadata.deletionTimestamp) {
      throw new KubeApiError(forbiddenStatus(def, name, `unable to create new content in namespace ${namespace} because it is being terminated`));
    }
  }

  private beginNamespaceDeletion(name: string): KubeObject {
    const def = this.resource('namespaces');
    const ns = this.mustGetStored(def, undefined, name);
    if (ns.metadata.deletionTimestamp) return structuredClone(ns);
    const terminating = structuredClone(ns);
    terminating.metadata.deletionTimestamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    terminating.status = { ...asRecord(ns.status), phase: 'Terminating' };
    const result = this.commitUpdate(def, ns, terminating);
    if (this.namespaceDeletionDelayMs <= 0) {
      // Still answer with the Terminating object, as a real apiserver would.
      this.runNamespaceController(name);
    } else {
      const timer = setTimeout(() => {
        this.namespaceTimers.delete(name);
        this.runNamespaceController(name);
      }, this.namespaceDeletionDelayMs);
      this.namespaceTimers.set(name, timer);
    }
    return result;
  }

  /** Removes a namespace and everything in it at once, whatever its finalizers say. */
  private finalizeNamespace(name: string): void {
    this.removingNamespaces.add(name);
    try {
      this.deleteNamespaceContents(name);
      const def = this.resource('namespaces');
      const ns = this.store(def).get(storeKey(undefined, name));
      if (ns) this.commitDelete(def, ns);
    } finally {
      this.removingNamespaces.delete(name);
    }
  }

  private deleteNamespaceContents(name: string): void {
    for (const def of this.resources) {
      if (!def.namespaced) continue;
      for (const obj of this.sortedObjects(def, name)) this.commitDelete(def, obj);
    }
  }

  /**
   * What the namespace controller does: delete everything inside and remove its own
   * `kubernetes` finalizer. The namespace goes only once no finalizer is left: another
   * spec.finalizers entry or any metadata.finalizers entry (whose controller may never come)
   * keeps it Terminating, as on a real cluster.
   */
  private runNamespaceController(name: string): void {
    this.deleteNamespaceContents(name);
    const def = this.resource('namespaces');
    const ns = this.store(def).get(storeKey(undefined, name));
    if (!ns) return;
    const next = structuredClone(ns);
    const spec = asRecord(next.spec) ?? {};
    spec.finalizers = (Array.isArray(spec.finalizers) ? spec.finalizers : []).filter((finalizer) => finalizer !== 'kubernetes');
    next.spec = spec;
    if (this.namespaceUnblocked(next)) {
      this.commitDelete(def, ns);
      return;
    }
    next.status = {
      ...asRecord(ns.status),
      phase: 'Terminating',
      conditions: [{ type: 'NamespaceFinalizersRemaining', status: 'True', reason: 'SomeFinalizersRemain', message: 'Some finalizers remain on the namespace' }],
    };
    this.commitUpdate(def, ns, next);
  }

  private namespaceUnblocked(ns: KubeObject): boolean {
    const pending = (finalizers: unknown) => Array.isArray(finalizers) && finalizers.length > 0;
    return Boolean(ns.metadata.deletionTimestamp) && !pending(asRecord(ns.spec)?.finalizers) && !pending(ns.metadata.finalizers);
  }

  // ---- tokens --------------------------------------------------------------------------

  private tokenRequest(req: RecordedRequest, namespace: string, name: string, res: ServerResponse): void {
    const saDef = this.resource('serviceaccounts');
    const sa = this.mustGetStored(saDef, namespace, name);
    this.assertNamespaceAcceptsCreate(saDef, namespace, name);
    const body = req.body.trim() ? parseObjectBody(req.body) : { metadata: {} };
    const spec = asRecord(body.spec) ?? {};
    const requestedSeconds = typeof spec.expirationSeconds === 'number' ? spec.expirationSeconds : 3600;
    const tokenRequestDef: ResourceDefinition = { group: 'authentication.k8s.io', version: 'v1', plural: 'tokenrequests', kind: 'TokenRequest', namespaced: true };
    if (requestedSeconds < 600) {
      throw new KubeApiError(invalidStatus(tokenRequestDef, name, [{ field: 'spec.expirationSeconds', reason: 'FieldValueInvalid', message: `Invalid value: ${requestedSeconds}: may not specify a duration less than 10 minutes` }]));
    }
    if (requestedSeconds > 2 ** 32) {
      throw new KubeApiError(invalidStatus(tokenRequestDef, name, [{ field: 'spec.expirationSeconds', reason: 'FieldValueInvalid', message: `Invalid value: ${requestedSeconds}: may not specify a duration larger than 2^32 seconds` }]));
    }
    // Validated as asked, then capped, as the real registry does.
    const expirationSeconds = Math.min(requestedSeconds, this.maxTokenExpirationSeconds ?? requestedSeconds);
    const audiences = Array.isArray(spec.audiences) && spec.audiences.length > 0 ? spec.audiences.map(String) : this.defaultAudiences;
    const issued = this.mintToken(sa, audiences, expirationSeconds);
    this.sendJson(res, 201, {
      kind: 'TokenRequest',
      apiVersion: 'authentication.k8s.io/v1',
      metadata: { name, namespace, creationTimestamp: null },
      spec: { audiences, expirationSeconds, boundObjectRef: spec.boundObjectRef ?? null },
      status: { token: issued.token, expirationTimestamp: issued.expirationTimestamp.toISOString().replace(/\.\d{3}Z$/, 'Z') },
    });
  }

  /** Tokens are JWT-shaped (unsigned, random signature) so code that decodes claims works. */
  private mintToken(sa: KubeObject, audiences: string[], expirationSeconds: number): IssuedToken {
    const issuedAt = new Date();
    const expirationTimestamp = new Date(issuedAt.getTime() + expirationSeconds * 1000);
    const namespace = sa.metadata.namespace ?? '';
    const serviceAccount = sa.metadata.name ?? '';
    const header = { alg: 'RS256', kid: 'fake-kube-apiserver' };
    const claims = {
      aud: audiences,
      exp: Math.floor(expirationTimestamp.getTime() / 1000),
      iat: Math.floor(issuedAt.getTime() / 1000),
      nbf: Math.floor(issuedAt.getTime() / 1000),
      iss: 'https://kubernetes.default.svc.cluster.local',
      jti: randomUUID(),
      sub: `system:serviceaccount:${namespace}:${serviceAccount}`,
      'kubernetes.io': { namespace, serviceaccount: { name: serviceAccount, uid: sa.metadata.uid } },
    };
    const token = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}.${base64url(randomBytes(32))}`;
    const issued: IssuedToken = { token, namespace, serviceAccount, serviceAccountUid: sa.metadata.uid ?? '', audiences, issuedAt, expirationTimestamp };
    this.tokens.push(issued);
    return issued;
  }

  private tokenReview(req: RecordedRequest, res: ServerResponse): void {
    const body = parseObjectBody(req.body);
    const token = asRecord(body.spec)?.token;
    const issued = typeof token === 'string' && this.isTokenValid(token) ? this.findToken(token) : undefined;
    const status = issued
      ? {
          authenticated: true,
          user: {
            username: `system:serviceaccount:${issued.namespace}:${issued.serviceAccount}`,
            uid: issued.serviceAccountUid,
            groups: ['system:serviceaccounts', `system:serviceaccounts:${issued.namespace}`, 'system:authenticated'],
          },
          audiences: issued.audiences,
        }
      : { user: {}, error: 'invalid bearer token' };
    this.sendJson(res, 201, { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec: body.spec ?? {}, status });
  }

  // ---- watches ---------------------------------------------------------------------------

  private startWatch(def: ResourceDefinition, namespace: string | undefined, name: string | undefined, query: URLSearchParams, res: ServerResponse): void {
    const selector = this.selectorFromQuery(query, name);
    const filter: Selector = (obj) => (namespace === undefined || obj.metadata.namespace === namespace) && selector(obj);
    const rvParam = query.get('resourceVersion') ?? '';
    const fromRv = rvParam === '' || rvParam === '0' ? undefined : Number(rvParam);
    if (fromRv !== undefined && !Number.isInteger(fromRv)) {
      throw new KubeApiError(badRequest(`resourceVersion: Invalid value: "${rvParam}": strconv.ParseUint: parsing "${rvParam}": invalid syntax`));
    }
    // No Content-Length, so Node uses chunked encoding; each event is one line.
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const watcher: Watcher = { def, filter, res };

    if (fromRv === undefined) {
      // No resourceVersion: start with the current state, as synthetic ADDED events.
      for (const obj of this.sortedObjects(def, namespace).filter(filter)) this.writeEvent(watcher, 'ADDED', obj);
    } else if (fromRv < this.compactedRv) {
      this.writeEvent(watcher, 'ERROR', failure(410, 'Expired', `too old resource version: ${fromRv} (${this.compactedRv})`));
      res.end();
      return;
    } else {
      for (const event of this.events) if (event.rv > fromRv) this.deliver(watcher, event);
    }

    this.watchers.add(watcher);
    res.on('close', () => this.endWatch(watcher));
    const timeoutSeconds = Number(query.get('timeoutSeconds') ?? 0);
    if (timeoutSeconds > 0) watcher.timer = setTimeout(() => this.endWatch(watcher), timeoutSeconds * 1000);
  }

  private endWatch(watcher: Watcher): void {
    if (watcher.timer) clearTimeout(watcher.timer);
    this.watchers.delete(watcher);
    if (!watcher.res.writableEnded) watcher.res.end();
  }

  /** Translates a store event into what this watcher should see, given its filter. */
  private deliver(watcher: Watcher, event: StoredEvent): void {
    if (event.def !== watcher.def) return;
    const matchesNow = watcher.filter(event.object);
    if (event.type === 'MODIFIED') {
      const matchedBefore = event.previous ? watcher.filter(event.previous) : false;
      if (matchesNow && matchedBefore) this.writeEvent(watcher, 'MODIFIED', event.object);
      else if (matchesNow) this.writeEvent(watcher, 'ADDED', event.object);
      else if (matchedBefore) this.writeEvent(watcher, 'DELETED', event.object);
    } else if (matchesNow) {
      this.writeEvent(watcher, event.type, event.object);
    }
  }

  private writeEvent(watcher: Watcher, type: WatchEventType | 'ERROR', object: KubeObject | KubeStatus): void {
    if (watcher.res.writableEnded || watcher.res.destroyed) return;
    watcher.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  // ---- store primitives --------------------------------------------------------------------

  private store(def: ResourceDefinition): Map<string, KubeObject> {
    let store = this.stores.get(def);
    if (!store) {
      store = new Map();
      this.stores.set(def, store);
    }
    return store;
  }

  private sortedObjects(def: ResourceDefinition, namespace: string | undefined): KubeObject[] {
    return [...this.store(def).entries()]
      .filter(([, obj]) => !def.namespaced || namespace === undefined || obj.metadata.namespace === namespace)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, obj]) => obj);
  }

  private mustGetStored(def: ResourceDefinition, namespace: string | undefined, name: string): KubeObject {
    const obj = this.store(def).get(storeKey(def.namespaced ? namespace : undefined, name));
    if (!obj) throw new KubeApiError(notFoundStatus(def, name));
    return obj;
  }

  private mustGet(def: ResourceDefinition, namespace: string | undefined, name: string): KubeObject {
    return structuredClone(this.mustGetStored(def, namespace, name));
  }

  private nextRv(): string {
    this.rv += 1;
    return String(this.rv);
  }

  private commitCreate(def: ResourceDefinition, obj: KubeObject): KubeObject {
    const stored = structuredClone(obj);
    stored.metadata.resourceVersion = this.nextRv();
    this.store(def).set(storeKey(stored.metadata.namespace, stored.metadata.name ?? ''), stored);
    this.emit({ rv: this.rv, type: 'ADDED', def, object: stored });
    if (def.group === '' && def.plural === 'namespaces') this.ensureDefaultServiceAccount(stored.metadata.name ?? '');
    return structuredClone(stored);
  }

  /** The ServiceAccount controller (when enabled): a `default` account in every Active namespace. */
  private ensureDefaultServiceAccount(namespace: string): void {
    if (!this.serviceAccountController || this.removingNamespaces.has(namespace)) return;
    const ns = this.store(this.resource('namespaces')).get(storeKey(undefined, namespace));
    const def = this.resource('serviceaccounts');
    if (!ns || ns.metadata.deletionTimestamp || this.store(def).has(storeKey(namespace, 'default'))) return;
    this.commitCreate(def, {
      apiVersion: 'v1',
      kind: 'ServiceAccount',
      metadata: { name: 'default', namespace, uid: randomUUID(), creationTimestamp: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z') },
    });
  }

  private commitUpdate(def: ResourceDefinition, prev: KubeObject, next: KubeObject): KubeObject {
    const stored = structuredClone(next);
    stored.metadata.resourceVersion = this.nextRv();
    this.store(def).set(storeKey(stored.metadata.namespace, stored.metadata.name ?? ''), stored);
    this.emit({ rv: this.rv, type: 'MODIFIED', def, object: stored, previous: prev });
    return structuredClone(stored);
  }

  /** The DELETED event carries the object at a new resourceVersion, as with etcd. */
  private commitDelete(def: ResourceDefinition, obj: KubeObject): KubeObject {
    this.store(def).delete(storeKey(obj.metadata.namespace, obj.metadata.name ?? ''));
    const tombstone = structuredClone(obj);
    tombstone.metadata.resourceVersion = this.nextRv();
    this.emit({ rv: this.rv, type: 'DELETED', def, object: tombstone });
    if (def.group === '' && def.plural === 'serviceaccounts' && obj.metadata.name === 'default') {
      this.ensureDefaultServiceAccount(obj.metadata.namespace ?? '');
    }
    return structuredClone(tombstone);
  }

  private emit(event: StoredEvent): void {
    this.events.push(event);
    if (this.events.length > WATCH_HISTORY_LIMIT) {
      const dropped = this.events.splice(0, this.events.length - WATCH_HISTORY_LIMIT);
      this.compactedRv = dropped[dropped.length - 1].rv;
    }
    for (const watcher of this.watchers) this.deliver(watcher, event);
  }

  // ---- helpers --------------------------------------------------------------------------------

  private readonly prepareContext: PrepareContext = {
    allocateClusterIp: () => {
      const n = this.nextClusterIp++;
      return `10.96.${Math.floor(n / 256) % 256}.${n % 256}`;
    },
  };

  private selectorFromQuery(query: URLSearchParams, name: string | undefined): Selector {
    const labels = query.get('labelSelector');
    const fields = query.get('fieldSelector');
    const labelFilter = labels ? parseLabelSelector(labels) : undefined;
    const fieldFilter = fields ? parseFieldSelector(fields) : undefined;
    return (obj) =>
      (name === undefined || obj.metadata.name === name) && (labelFilter?.(obj) ?? true) && (fieldFilter?.(obj) ?? true);
  }

  private isDryRun(query: URLSearchParams): boolean {
    return query.getAll('dryRun').includes('All');
  }

  private applyConflictRule(req: RecordedRequest, route: RouteInfo | undefined): void {
    if (!route || !route.name || route.subresource || !['PUT', 'PATCH'].includes(req.method)) return;
    const { def, namespace, name } = route;
    const stored = this.store(def).get(storeKey(def.namespaced ? namespace : undefined, name));
    if (!stored) return;
    const rule = this.takeRule(this.conflictRules, req, (r) => r.payload.resource === def.plural);
    if (!rule) return;
    const modified = structuredClone(stored);
    rule.payload.mutate?.(modified);
    // Bump even if mutate() changed nothing: the point is that the client's version is now stale.
    this.commitUpdate(def, stored, modified);
    throw new KubeApiError(conflictStatus(def, name));
  }

  private addRule<T>(rules: FaultRule<T>[], count: number, match: RequestMatcher | undefined, payload: T): FaultHandle {
    const rule: FaultRule<T> = { remaining: count, match: match ?? MATCH_ALL, payload };
    rules.push(rule);
    return {
      get remaining() {
        return rule.remaining;
      },
      cancel: () => {
        rule.remaining = 0;
      },
    };
  }

  /** Finds the first armed rule matching the request and consumes one use of it. */
  private takeRule<T>(rules: FaultRule<T>[], req: RecordedRequest, extra: (rule: FaultRule<T>) => boolean = () => true): FaultRule<T> | undefined {
    const rule = rules.find((r) => r.remaining > 0 && extra(r) && r.match(req));
    if (rule) rule.remaining -= 1;
    return rule;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }

  private sendJson(res: ServerResponse, code: number, body: unknown, headers: Record<string, string> = {}): void {
    if (res.headersSent || res.destroyed) return;
    const payload = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload), ...headers });
    res.end(payload);
  }

  private sendStatus(res: ServerResponse, status: KubeStatus, headers: Record<string, string> = {}): void {
    this.sendJson(res, status.code, status, headers);
  }
}

/** Starts a fake apiserver on 127.0.0.1 with an ephemeral port. Remember to `await fake.close()`. */
export async function startFakeKubeApiserver(options: FakeKubeApiserverOptions = {}): Promise<FakeKubeApiserver> {
  const fake = new FakeKubeApiserver(options);
  await fake.listen();
  return fake;
}
