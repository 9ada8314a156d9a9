"""Where asm-proxy runs relative to the Envoy that calls it, and so how that Envoy reaches it.

| mode | asm-proxy | Envoy reaches it |
| --- | --- | --- |
| sidecar | a container in the workload's pod | a Unix socket on an emptyDir both mount |
| node | a DaemonSet pod on each node | a Unix socket in a hostPath directory |
| central | a Deployment behind a Service | TCP to the Service's name, with mTLS |

The paths and names here are the ones deploy/ uses; flags of `asm-proxy render` override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["sidecar", "node", "central"]
MODES: tuple[Mode, ...] = ("sidecar", "node", "central")

#: Mount point of the socket directory in both containers (sidecar: an emptyDir).
SIDECAR_SOCKET = "/var/run/asm-proxy/ext_proc.sock"
#: The node's socket directory (a hostPath, mounted at the same path everywhere).
NODE_SOCKET = "/var/run/asm-proxy-node/ext_proc.sock"
CENTRAL_SERVICE = "asm-proxy"
CENTRAL_NAMESPACE = "asm-proxy"
CENTRAL_PORT = 18080
CLUSTER_DOMAIN = "cluster.local"
#: Where deploy/ mounts Envoy's client certificate for asm-proxy's own mTLS (envoy target).
CLIENT_CERT_DIR = "/etc/asm-proxy/client"
#: The label a workload carries when asm-proxy runs beside it (sidecar) or its node's
#: socket is mounted into its istio-proxy (node): deploy/ sets it, the EnvoyFilter selects
#: on it, so no workload gets a filter pointing at a socket it cannot reach.
MODE_LABEL = "asm-proxy/mode"


@dataclass(frozen=True)
class ClientTls:
    """Envoy's side of asm-proxy's own mTLS (central mode, plain Envoy): its certificate and
    key, the CA that signed asm-proxy's, and the name asm-proxy's certificate must carry."""

    cert: str = f"{CLIENT_CERT_DIR}/tls.crt"
    key: str = f"{CLIENT_CERT_DIR}/tls.key"
    ca: str = f"{CLIENT_CERT_DIR}/ca.crt"
    server_name: str = ""


@dataclass(frozen=True)
class Placement:
    mode: Mode
    #: "unix:/path" (one per worker: PATH.0 ... with several) or "host:port".
    endpoints: tuple[str, ...]
    #: Central mode: the Service's FQDN and port (Istio names its cluster after them).
    host: str = ""
    port: int = 0
    #: Central mode on plain Envoy: asm-proxy's own mTLS.
    tls: ClientTls | None = None
    #: The Istio namespace the Envoy-side objects go to.
    namespace: str = ""

    @property
    def unix(self) -> bool:
        return self.endpoints[0].startswith("unix:")


def socket_endpoints(path: str, workers: int) -> tuple[str, ...]:
    """The addresses of a Unix socket served by `workers` workers (supervisor.py's scheme:
    PATH itself with one worker, PATH.0 ... PATH.N-1 with several)."""
    if workers <= 1:
        return (f"unix:{path}",)
    return tuple(f"unix:{path}.{i}" for i in range(workers))


def placement(
    mode: Mode,
    *,
    workers: int = 1,
    socket: str | None = None,
    service: str = CENTRAL_SERVICE,
    service_namespace: str = CENTRAL_NAMESPACE,
    port: int = CENTRAL_PORT,
    cluster_domain: str = CLUSTER_DOMAIN,
    tls: ClientTls | None = None,
    namespace: str = "",
) -> Placement:
    """How Envoy reaches asm-proxy in `mode`, with deploy/'s defaults."""
    if mode == "central":
        host = f"{service}.{service_namespace}.svc.{cluster_domain}"
        client = tls or ClientTls()
        if not client.server_name:
            client = ClientTls(client.cert, client.key, client.ca, host)
        return Placement(
            mode,
            (f"{host}:{port}",),
            host=host,
            port=port,
            tls=client,
            namespace=namespace or service_namespace,
        )
    path = socket or (SIDECAR_SOCKET if mode == "sidecar" else NODE_SOCKET)
    return Placement(mode, socket_endpoints(path, workers), namespace=namespace)
