"""Everything a plugin may import: `from asm_proxy.api import Plugin, PluginConfig, Http, ...`.

The built-in plugins (the `asm-proxy-handlers` distribution) use nothing else, so whatever
they do, a third-party plugin can do too. Tests of plugins add `asm_proxy.testing`.
"""

from asm_proxy.body import Body, Chunk
from asm_proxy.config import HeaderMatch, MatchRule, StringMatch
from asm_proxy.durations import Duration, format_duration, parse_duration
from asm_proxy.events import Event, Side
from asm_proxy.exchange import Http, Request, Response
from asm_proxy.headers import ROUTING_HEADERS, Headers, media_type
from asm_proxy.hosts import normalize_host, split_host_port
from asm_proxy.identity import Workload
from asm_proxy.matching import RequestPredicate, compile_match
from asm_proxy.metrics.declared import Counter as CounterMetric
from asm_proxy.metrics.declared import CounterChild, GaugeChild, HistogramChild
from asm_proxy.metrics.declared import Gauge as GaugeMetric
from asm_proxy.metrics.declared import Histogram as HistogramMetric
from asm_proxy.offload import OffloadError, offload, prepare_offload
from asm_proxy.plugin import (
    HOOKS,
    BodyAccess,
    FailStrategy,
    Phase,
    Plugin,
    PluginConfig,
    PluginDefinitionError,
    Respond,
)
from asm_proxy.watched_files import FilesWatcher, WatchedFile, read_secret_file

__all__ = [
    "HOOKS",
    "ROUTING_HEADERS",
    "Body",
    "BodyAccess",
    "Chunk",
    "CounterChild",
    "CounterMetric",
    "Duration",
    "Event",
    "FailStrategy",
    "FilesWatcher",
    "GaugeChild",
    "GaugeMetric",
    "HeaderMatch",
    "Headers",
    "HistogramChild",
    "HistogramMetric",
    "Http",
    "MatchRule",
    "OffloadError",
    "Phase",
    "Plugin",
    "PluginConfig",
    "PluginDefinitionError",
    "Request",
    "RequestPredicate",
    "Respond",
    "Response",
    "Side",
    "StringMatch",
    "WatchedFile",
    "Workload",
    "compile_match",
    "format_duration",
    "media_type",
    "normalize_host",
    "offload",
    "parse_duration",
    "prepare_offload",
    "read_secret_file",
    "split_host_port",
]
