// Kubernetes API clients with a deadline on every call, so that a hung API server cannot hold a
// request (or a janitor) forever. Built like KubeConfig.makeApiClient, plus a middleware that
// gives each request an AbortSignal that fires after the timeout.

import { ServerConfiguration, createConfiguration, type KubeConfig, type RequestContext, type ResponseContext } from '@kubernetes/client-node';

type ApiConstructor<T> = new (configuration: ReturnType<typeof createConfiguration>) => T;

export function makeClient<T>(kubeConfig: KubeConfig, Api: ApiConstructor<T>, timeoutMs: number): T {
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw new Error('the kubeconfig has no current cluster');
  const configuration = createConfiguration({
    baseServer: new ServerConfiguration(cluster.server, {}),
    authMethods: { default: kubeConfig },
    promiseMiddleware: [
      {
        pre: async (context: RequestContext) => {
          context.setSignal(AbortSignal.timeout(timeoutMs));
          return context;
        },
        post: async (response: ResponseContext) => response,
      },
    ],
  });
  return new Api(configuration);
}
