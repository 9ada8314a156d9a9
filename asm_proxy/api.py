"""What a plugin author imports: `from asm_proxy.api import Plugin, PluginConfig, Http, Respond`."""

from asm_proxy.body import Body, Chunk
from asm_proxy.exchange import Http, Request, Response
from asm_proxy.headers import Headers
from asm_proxy.identity import Workload
from asm_proxy.offload import OffloadError, offload, prepare_offload
from asm_proxy.plugin import HOOKS, BodyAccess, FailStrategy, Phase, Plugin, PluginConfig, Respond

__all__ = [
    "HOOKS",
    "Body",
    "BodyAccess",
    "Chunk",
    "FailStrategy",
    "Headers",
    "Http",
    "OffloadError",
    "Phase",
    "Plugin",
    "PluginConfig",
    "Request",
    "Respond",
    "Response",
    "Workload",
    "offload",
    "prepare_offload",
]
