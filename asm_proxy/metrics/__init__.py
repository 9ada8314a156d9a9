"""asm-proxy's metrics: what workers record (store, declared), the server's own families and
the observers that fill them (serving), and the supervisor's one scrape of every worker
(exposition, which alone imports prometheus-client)."""

from asm_proxy.metrics.store import REGISTRY, Registry

__all__ = ["REGISTRY", "Registry"]
