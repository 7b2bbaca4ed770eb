// Hand-off facts for a lessee, in kube-control's vocabulary: the cluster DNS (domain, Service
// IP, port), a stable cluster tag, the registry location, and whether GPU nodes exist.

import type { Logger } from 'pino';
import { ClusterAccess, ignoreMissing } from './cluster-access.ts';
import type { Cluster } from './providers/types.ts';

export interface Dns {
  domain: string;
  service_ip: string;
  port: number;
}

export interface HandOffFacts {
  dns: Dns | null;
  cluster_tag: string;
  registry_location: string | null;
  gpu: boolean;
}

const DNS_SERVICES = ['kube-dns', 'coredns'];
const DNS_CACHE_MS = 10 * 60_000;

export class Facts {
  private readonly dnsCache = new Map<string, { dns: Dns | null; until: number }>();

  constructor(
    private readonly access: ClusterAccess,
    private readonly domain: string,
    private readonly logger: Logger,
    /** Off for pools the claimer must not reach into (the example pool's clusters do not exist). */
    private readonly lookUpDns: (cluster: Cluster) => boolean = () => true,
  ) {}

  async for(cluster: Cluster): Promise<HandOffFacts> {
    return { dns: await this.dns(cluster), cluster_tag: cluster.tag, registry_location: cluster.registryLocation, gpu: cluster.gpu };
  }

  /** The cluster DNS Service's IP from kube-system; null (and a warning) when it cannot be read. */
  private async dns(cluster: Cluster): Promise<Dns | null> {
    if (!this.lookUpDns(cluster)) return null;
    const cached = this.dnsCache.get(cluster.id);
    if (cached && cached.until > Date.now()) return cached.dns;
    let dns: Dns | null = null;
    try {
      const { core } = await this.access.clientsFor(cluster);
      for (const name of DNS_SERVICES) {
        const service = await ignoreMissing(core.readNamespacedService({ name, namespace: 'kube-system' }));
        const ip = service?.spec?.clusterIP;
        if (!service || !ip) continue;
        const ports = service.spec?.ports ?? [];
        const port = ports.find((candidate) => candidate.name === 'dns') ?? ports.find((candidate) => candidate.port === 53) ?? ports[0];
        dns = { domain: this.domain, service_ip: ip, port: port?.port ?? 53 };
        break;
      }
    } catch (error) {
      this.logger.warn({ err: error, cluster: cluster.id }, 'could not read the cluster DNS Service');
      return null;
    }
    this.dnsCache.set(cluster.id, { dns, until: Date.now() + DNS_CACHE_MS });
    return dns;
  }
}
