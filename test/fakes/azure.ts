/**
 * A fake of Azure for tests: Azure Resource Manager's managed-cluster calls and an Entra ID
 * token authority, on one HTTPS server (127.0.0.1, the test certificate), so that the real
 * @azure/arm-containerservice and @azure/identity (MSAL inside) can be pointed at it.
 *
 * Entra ID, as MSAL asks for it with a custom authority host and instance discovery off:
 *  - GET  /{tenant}/v2.0/.well-known/openid-configuration (issuer on this host, as MSAL checks)
 *  - GET  /{tenant}/discovery/v2.0/keys
 *  - POST /{tenant}/oauth2/v2.0/token, client_credentials with client_secret: the tenant, the
 *    client id and the secret are checked (AADSTS errors in Entra's shape otherwise), and an
 *    opaque access token is issued per `.default` scope, with expires_in.
 * Resource Manager:
 *  - GET  /subscriptions/{sub}/providers/Microsoft.ContainerService/managedClusters
 *  - GET  /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters
 *    paginated (`nextLink` with a `$skipToken`), `pageSize` clusters a page
 *  - POST …/managedClusters/{name}/listClusterAdminCredential and …/listClusterUserCredential
 *    (`kubeconfigs: [{ name, value: base64 of a kubeconfig }]`), as AKS builds them
 * Every ARM call needs `api-version` and a Bearer token this authority issued for the ARM
 * audience (`<url>/.default`); else 400/401 in ARM's error shape. Failures can be switched on for
 * a subscription or a resource group, or for the next calls; every request is recorded.
 */

import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { stringify } from 'yaml';
import { readBody } from './kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './tls-fixture.ts';

/** The AKS AAD server application: what kubelogin asks Entra ID for a cluster token. */
export const AKS_SERVER_APP_ID = '6dae42f8-4368-4678-94ff-3960e28e3630';

export interface FakeManagedCluster {
  subscriptionId: string;
  resourceGroup: string;
  name: string;
  location: string;
  tags?: Record<string, string>;
  provisioningState: string;
  powerState: 'Running' | 'Stopped';
  kubernetesVersion: string;
  currentKubernetesVersion?: string;
  fqdn?: string;
  privateFqdn?: string;
  agentPools: { name: string; vmSize: string; count: number }[];
  /** Entra ID integration (managed AAD). */
  aad?: { tenantId: string };
  disableLocalAccounts?: boolean;
  /** What the credential kubeconfigs name: the API server URL and its CA (PEM). */
  kubeServer: string;
  kubeCaPem: string;
  /** The token of the admin (and, with local accounts, user) kubeconfig. */
  adminToken: string;
  /** Put a client certificate and key in the admin kubeconfig too, as AKS does. */
  clientCertificate?: { cert: string; key: string };
}

export function makeManagedCluster(fields: Partial<FakeManagedCluster> & Pick<FakeManagedCluster, 'subscriptionId' | 'resourceGroup' | 'name'>): FakeManagedCluster {
  return {
    location: 'westeurope',
    provisioningState: 'Succeeded',
    powerState: 'Running',
    kubernetesVersion: '1.31',
    currentKubernetesVersion: '1.31.5',
    fqdn: `${fields.name}-dns-${randomBytes(4).toString('hex')}.aks.localhost`,
    agentPools: [{ name: 'nodepool1', vmSize: 'Standard_D4s_v5', count: 3 }],
    kubeServer: `https://${fields.name}.aks.localhost:443`,
    kubeCaPem: TEST_TLS_CERT,
    adminToken: randomBytes(32).toString('hex'),
    ...fields,
  };
}

export interface IssuedEntraToken {
  token: string;
  tenantId: string;
  clientId: string;
  /** The `.default` scope it was issued for, e.g. `6dae42f8-…/.default`. */
  scope: string;
  expiresAt: number;
}

export interface AzureRequest {
  method: string;
  /** The path, without the query. */
  path: string;
  query: Record<string, string>;
  /** The status answered. */
  status: number;
  /** Which part of the fake answered. */
  kind: 'authority' | 'arm';
}

export interface ArmFailure {
  status: number;
  code: string;
  message: string;
  /** Seconds, for the Retry-After header (429). */
  retryAfter?: number;
}

export interface FakeAzureOptions {
  tenantId: string;
  clientId: string;
  clientSecret: string;
  /** Clusters a page of a listing. Default 2. */
  pageSize?: number;
  /** Subscriptions that exist (those of seeded clusters are added). */
  subscriptions?: string[];
  /** Lifetime of issued access tokens, in seconds. Default 3599, as Entra ID's. */
  tokenSeconds?: number;
}

const CONTAINER_SERVICE = 'Microsoft.ContainerService/managedClusters';

export class FakeAzure {
  /** https://127.0.0.1:<port>: both the authority host and the Resource Manager endpoint. */
  url = '';
  readonly requests: AzureRequest[] = [];
  readonly tokens: IssuedEntraToken[] = [];
  private clusters: FakeManagedCluster[] = [];
  private readonly failures = new Map<string, ArmFailure>();
  private failNextRules: { remaining: number; failure: ArmFailure }[] = [];
  private armLatencyMs = 0;
  private readonly server: Server;
  private readonly subscriptions: Set<string>;
  /** `<subscription>/<group>`, lower-cased: groups outlive the clusters seeded in them. */
  private readonly resourceGroups = new Set<string>();

  constructor(private readonly options: FakeAzureOptions) {
    this.subscriptions = new Set((options.subscriptions ?? []).map((id) => id.toLowerCase()));
    this.server = createServer({ cert: TEST_TLS_CERT, key: TEST_TLS_KEY }, (request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        if (!response.headersSent) this.reply(response, 500, { error: { code: 'InternalServerError', message: String(error) } });
      });
    });
  }

  /** @internal Use startFakeAzure(). */
  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => resolve());
    });
    this.url = `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closing;
  }

  /** The audience ARM calls' tokens must have been issued for. */
  get armScope(): string {
    return `${this.url}/.default`;
  }

  setClusters(clusters: FakeManagedCluster[]): void {
    this.clusters = [...clusters];
    for (const cluster of clusters) {
      this.subscriptions.add(cluster.subscriptionId.toLowerCase());
      this.resourceGroups.add(`${cluster.subscriptionId}/${cluster.resourceGroup}`.toLowerCase());
    }
  }

  /** Fails every ARM call under `subscription` (or `subscription/resourceGroup`); undefined: stops. */
  setFailure(scope: string, failure: ArmFailure | undefined): void {
    if (failure) this.failures.set(scope.toLowerCase(), failure);
    else this.failures.delete(scope.toLowerCase());
  }

  /** Fails the next `count` ARM calls, whatever they are. */
  failNext(count: number, failure: ArmFailure): void {
    this.failNextRules.push({ remaining: count, failure });
  }

  /** Delays every ARM answer (a slow or hanging Resource Manager). */
  setArmLatency(ms: number): void {
    this.armLatencyMs = ms;
  }

  /** What this authority issued the token for, while it is valid. */
  tokenInfo(token: string | undefined): IssuedEntraToken | undefined {
    const issued = this.tokens.find((entry) => entry.token === token);
    return issued && issued.expiresAt > Date.now() ? issued : undefined;
  }

  armRequests(): AzureRequest[] {
    return this.requests.filter((request) => request.kind === 'arm');
  }

  reset(): void {
    this.requests.length = 0;
    this.failures.clear();
    this.failNextRules = [];
    this.armLatencyMs = 0;
  }

  // ---- HTTP ---------------------------------------------------------------

  private reply(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const requestId = randomUUID();
    response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'x-ms-request-id': requestId, 'x-ms-correlation-request-id': requestId, ...headers });
    response.end(JSON.stringify(body));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', this.url);
    const body = await readBody(request);
    const record: AzureRequest = { method: request.method ?? 'GET', path: url.pathname, query: Object.fromEntries(url.searchParams), status: 0, kind: url.pathname.startsWith('/subscriptions/') ? 'arm' : 'authority' };
    this.requests.push(record);
    const answer = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
      record.status = status;
      this.reply(response, status, payload, headers);
    };
    if (record.kind === 'arm' && this.armLatencyMs > 0) await new Promise((resolve) => setTimeout(resolve, this.armLatencyMs).unref());
    if (response.destroyed) return;
    if (record.kind === 'arm') this.handleArm(request, url, answer);
    else this.handleAuthority(request, url, new URLSearchParams(body), answer);
  }

  // ---- Entra ID -------------------------------------------------------------

  private handleAuthority(request: IncomingMessage, url: URL, form: URLSearchParams, answer: Answer): void {
    const [tenant = '', ...rest] = url.pathname.split('/').filter(Boolean);
    const route = rest.join('/');
    const issuerBase = `${this.url}/${this.options.tenantId}`;
    if (tenant.toLowerCase() !== this.options.tenantId.toLowerCase()) {
      answer(400, entraError('invalid_request', 90002, `AADSTS90002: Tenant '${tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.`));
      return;
    }
    if (request.method === 'GET' && route === 'v2.0/.well-known/openid-configuration') {
      answer(200, {
        token_endpoint: `${issuerBase}/oauth2/v2.0/token`,
        token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
        jwks_uri: `${issuerBase}/discovery/v2.0/keys`,
        response_modes_supported: ['query', 'fragment', 'form_post'],
        subject_types_supported: ['pairwise'],
        id_token_signing_alg_values_supported: ['RS256'],
        response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
        scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
        issuer: `${issuerBase}/v2.0`,
        request_uri_parameter_supported: false,
        authorization_endpoint: `${issuerBase}/oauth2/v2.0/authorize`,
        device_authorization_endpoint: `${issuerBase}/oauth2/v2.0/devicecode`,
        end_session_endpoint: `${issuerBase}/oauth2/v2.0/logout`,
        tenant_region_scope: 'EU',
      });
      return;
    }
    if (request.method === 'GET' && route === 'discovery/v2.0/keys') {
      answer(200, { keys: [] });
      return;
    }
    if (request.method !== 'POST' || route !== 'oauth2/v2.0/token') {
      answer(404, { error: 'not_found' });
      return;
    }
    if (form.get('grant_type') !== 'client_credentials') {
      answer(400, entraError('unsupported_grant_type', 70003, 'AADSTS70003: The app requested an unsupported grant type.'));
      return;
    }
    const clientId = form.get('client_id') ?? '';
    if (clientId !== this.options.clientId) {
      answer(400, entraError('unauthorized_client', 700016, `AADSTS700016: Application with identifier '${clientId}' was not found in the directory '${tenant}'.`));
      return;
    }
    if (form.get('client_secret') !== this.options.clientSecret) {
      answer(401, entraError('invalid_client', 7000215, `AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${clientId}'.`));
      return;
    }
    const scopes = (form.get('scope') ?? '').split(' ').filter((scope) => scope.endsWith('/.default'));
    if (scopes.length !== 1) {
      answer(400, entraError('invalid_scope', 1002012, 'AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).'));
      return;
    }
    const seconds = this.options.tokenSeconds ?? 3599;
    const issued: IssuedEntraToken = { token: `entra.${randomBytes(24).toString('base64url')}`, tenantId: this.options.tenantId, clientId, scope: scopes[0], expiresAt: Date.now() + seconds * 1000 };
    this.tokens.push(issued);
    answer(200, { token_type: 'Bearer', expires_in: seconds, ext_expires_in: seconds, access_token: issued.token });
  }

  // ---- Resource Manager -------------------------------------------------------

  private handleArm(request: IncomingMessage, url: URL, answer: Answer): void {
    const authorization = request.headers.authorization ?? '';
    const token = /^Bearer (.+)$/.exec(authorization)?.[1];
    if (!token) {
      answer(401, armError('AuthenticationFailed', "Authentication failed. The 'Authorization' header is missing."), { 'www-authenticate': `Bearer authorization_uri="${this.url}/${this.options.tenantId}", error="invalid_token", error_description="The authentication failed because of missing 'Authorization' header."` });
      return;
    }
    const issued = this.tokenInfo(token);
    if (!issued || issued.scope !== this.armScope) {
      answer(401, armError('InvalidAuthenticationToken', 'The access token is invalid.'), { 'www-authenticate': `Bearer authorization_uri="${this.url}/${this.options.tenantId}", error="invalid_token", error_description="The access token is invalid."` });
      return;
    }
    const apiVersion = url.searchParams.get('api-version');
    if (!apiVersion) {
      answer(400, armError('MissingApiVersionParameter', "The api-version query parameter (?api-version=) is required for all requests."));
      return;
    }
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    // subscriptions/{sub}[/resourceGroups/{rg}]/providers/Microsoft.ContainerService/managedClusters[/{name}/{action}]
    const subscription = parts[1] ?? '';
    const inGroup = parts[2]?.toLowerCase() === 'resourcegroups';
    const group = inGroup ? parts[3] : undefined;
    const providerAt = inGroup ? 4 : 2;
    const resourceType = `${parts[providerAt + 1] ?? ''}/${parts[providerAt + 2] ?? ''}`;
    const [name, action] = parts.slice(providerAt + 3);
    if (parts[providerAt]?.toLowerCase() !== 'providers' || resourceType.toLowerCase() !== CONTAINER_SERVICE.toLowerCase()) {
      answer(404, armError('InvalidResourceType', `The resource type '${resourceType}' could not be found in the namespace '${parts[providerAt + 1] ?? ''}' for api version '${apiVersion}'.`));
      return;
    }
    const failure = this.failureFor(subscription, group);
    if (failure) {
      answer(failure.status, armError(failure.code, failure.message), failure.retryAfter === undefined ? {} : { 'retry-after': String(failure.retryAfter) });
      return;
    }
    if (!this.subscriptions.has(subscription.toLowerCase())) {
      answer(404, armError('SubscriptionNotFound', `The subscription '${subscription}' could not be found.`));
      return;
    }
    const inScope = this.clusters.filter(
      (cluster) => cluster.subscriptionId.toLowerCase() === subscription.toLowerCase() && (group === undefined || cluster.resourceGroup.toLowerCase() === group.toLowerCase()),
    );
    if (group !== undefined && !this.resourceGroups.has(`${subscription}/${group}`.toLowerCase())) {
      answer(404, armError('ResourceGroupNotFound', `Resource group '${group}' could not be found.`));
      return;
    }
    if (name === undefined) {
      if (request.method !== 'GET') {
        answer(405, armError('HttpMethodNotAllowed', `The HTTP method '${request.method}' is not supported.`));
        return;
      }
      const pageSize = this.options.pageSize ?? 2;
      const skip = Number(url.searchParams.get('$skipToken') ?? '0');
      const page = inScope.slice(skip, skip + pageSize);
      const next = new URL(url.pathname, this.url);
      next.searchParams.set('api-version', apiVersion);
      next.searchParams.set('$skipToken', String(skip + pageSize));
      answer(200, { value: page.map((cluster) => this.resourceOf(cluster)), ...(skip + pageSize < inScope.length && { nextLink: next.toString() }) });
      return;
    }
    const cluster = group === undefined ? undefined : inScope.find((candidate) => candidate.name.toLowerCase() === name.toLowerCase());
    if (!cluster) {
      answer(404, armError('ResourceNotFound', `The Resource '${CONTAINER_SERVICE}/${name}' under resource group '${group ?? ''}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix`));
      return;
    }
    if (request.method !== 'POST' || (action !== 'listClusterAdminCredential' && action !== 'listClusterUserCredential')) {
      answer(405, armError('HttpMethodNotAllowed', `The HTTP method '${request.method}' is not supported for '${action ?? ''}'.`));
      return;
    }
    if (action === 'listClusterAdminCredential') {
      if (cluster.disableLocalAccounts) {
        answer(400, armError('BadRequest', 'Getting static credential is not allowed because this cluster is set to disable local accounts.'));
        return;
      }
      answer(200, { kubeconfigs: [{ name: 'clusterAdmin', value: Buffer.from(this.adminKubeconfig(cluster)).toString('base64') }] });
      return;
    }
    answer(200, { kubeconfigs: [{ name: 'clusterUser', value: Buffer.from(this.userKubeconfig(cluster)).toString('base64') }] });
  }

  private failureFor(subscription: string, group: string | undefined): ArmFailure | undefined {
    const rule = this.failNextRules.find((candidate) => candidate.remaining > 0);
    if (rule) {
      rule.remaining--;
      return rule.failure;
    }
    return (group !== undefined ? this.failures.get(`${subscription}/${group}`.toLowerCase()) : undefined) ?? this.failures.get(subscription.toLowerCase());
  }

  /** A managed cluster as ARM answers it (the parts of 2025's API the provider may read). */
  private resourceOf(cluster: FakeManagedCluster): Record<string, unknown> {
    // ARM ids keep the resource group as it was created; the SDK user must not rely on case.
    const id = `/subscriptions/${cluster.subscriptionId}/resourcegroups/${cluster.resourceGroup}/providers/${CONTAINER_SERVICE}/${cluster.name}`;
    return {
      id,
      location: cluster.location,
      name: cluster.name,
      type: CONTAINER_SERVICE,
      ...(cluster.tags && { tags: cluster.tags }),
      sku: { name: 'Base', tier: 'Free' },
      identity: { type: 'SystemAssigned', principalId: randomUUID(), tenantId: this.options.tenantId },
      properties: {
        provisioningState: cluster.provisioningState,
        powerState: { code: cluster.powerState },
        kubernetesVersion: cluster.kubernetesVersion,
        ...(cluster.currentKubernetesVersion && { currentKubernetesVersion: cluster.currentKubernetesVersion }),
        dnsPrefix: `${cluster.name}-dns`,
        ...(cluster.fqdn && { fqdn: cluster.fqdn, azurePortalFQDN: cluster.fqdn.replace('.hcp.', '.portal.hcp.') }),
        ...(cluster.privateFqdn && { privateFQDN: cluster.privateFqdn, apiServerAccessProfile: { enablePrivateCluster: true } }),
        agentPoolProfiles: cluster.agentPools.map((pool) => ({
          name: pool.name,
          count: pool.count,
          vmSize: pool.vmSize,
          osDiskSizeGB: 128,
          osType: 'Linux',
          mode: pool.name === cluster.agentPools[0]?.name ? 'System' : 'User',
          type: 'VirtualMachineScaleSets',
          provisioningState: cluster.provisioningState,
          powerState: { code: cluster.powerState },
          orchestratorVersion: cluster.currentKubernetesVersion ?? cluster.kubernetesVersion,
        })),
        nodeResourceGroup: `MC_${cluster.resourceGroup}_${cluster.name}_${cluster.location}`,
        enableRBAC: true,
        ...(cluster.aad && { aadProfile: { managed: true, enableAzureRBAC: false, tenantID: cluster.aad.tenantId } }),
        disableLocalAccounts: cluster.disableLocalAccounts ?? false,
        networkProfile: { networkPlugin: 'azure', networkPluginMode: 'overlay', podCidr: '10.244.0.0/16', serviceCidr: '10.0.0.0/16', dnsServiceIP: '10.0.0.10' },
      },
    };
  }

  private kubeconfigOf(cluster: FakeManagedCluster, userName: string, user: Record<string, unknown>): string {
    const contextName = cluster.name;
    return stringify({
      apiVersion: 'v1',
      clusters: [{ cluster: { 'certificate-authority-data': Buffer.from(cluster.kubeCaPem).toString('base64'), server: cluster.kubeServer }, name: cluster.name }],
      contexts: [{ context: { cluster: cluster.name, user: userName }, name: contextName }],
      'current-context': contextName,
      kind: 'Config',
      preferences: {},
      users: [{ name: userName, user }],
    });
  }

  private adminKubeconfig(cluster: FakeManagedCluster): string {
    const certificate = cluster.clientCertificate;
    return this.kubeconfigOf(cluster, `clusterAdmin_${cluster.resourceGroup}_${cluster.name}`, {
      ...(certificate && {
        'client-certificate-data': Buffer.from(certificate.cert).toString('base64'),
        'client-key-data': Buffer.from(certificate.key).toString('base64'),
      }),
      token: cluster.adminToken,
    });
  }

  /** With Entra ID, what `az aks get-credentials` writes: kubelogin as an exec plugin. */
  private userKubeconfig(cluster: FakeManagedCluster): string {
    const userName = `clusterUser_${cluster.resourceGroup}_${cluster.name}`;
    if (!cluster.aad) return this.kubeconfigOf(cluster, userName, { token: cluster.adminToken });
    return this.kubeconfigOf(cluster, userName, {
      exec: {
        apiVersion: 'client.authentication.k8s.io/v1beta1',
        args: ['get-token', '--environment', 'AzurePublicCloud', '--server-id', AKS_SERVER_APP_ID, '--client-id', '80faf920-1908-4b52-b5ef-a8e7bedfc67a', '--tenant-id', cluster.aad.tenantId, '--login', 'devicecode'],
        command: 'kubelogin',
        env: null,
        installHint: 'kubelogin is not installed which is required to connect to AAD enabled cluster.',
        interactiveMode: 'IfAvailable',
        provideClusterInfo: false,
      },
    });
  }
}

type Answer = (status: number, payload: unknown, headers?: Record<string, string>) => void;

function armError(code: string, message: string): { error: { code: string; message: string } } {
  return { error: { code, message } };
}

function entraError(error: string, code: number, description: string): Record<string, unknown> {
  const traceId = randomUUID();
  const correlationId = randomUUID();
  const timestamp = new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  return {
    error,
    error_description: `${description} Trace ID: ${traceId} Correlation ID: ${correlationId} Timestamp: ${timestamp}`,
    error_codes: [code],
    timestamp,
    trace_id: traceId,
    correlation_id: correlationId,
    error_uri: 'https://127.0.0.1/error?code=' + code,
  };
}

export async function startFakeAzure(options: FakeAzureOptions): Promise<FakeAzure> {
  const fake = new FakeAzure(options);
  await fake.listen();
  return fake;
}
