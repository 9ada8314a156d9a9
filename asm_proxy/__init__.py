"""asm-proxy: an out-of-process extension server for Envoy's ext_proc and ext_authz filters."""

from asm_proxy.api import Http, Phase, Plugin, PluginConfig, Respond

__version__ = "0.1.0"

__all__ = ["Http", "Phase", "Plugin", "PluginConfig", "Respond", "__version__"]
