"""Built-in plugins, one module each. Imported only when a config uses them."""

from __future__ import annotations

#: type name -> "module:Class"
BUILTINS: dict[str, str] = {
    "headers": "asm_proxy.handlers.headers:HeadersPlugin",
    "direct_response": "asm_proxy.handlers.direct_response:DirectResponsePlugin",
    "auth": "asm_proxy.handlers.auth:AuthPlugin",
    "nacos": "asm_proxy.handlers.nacos:NacosPlugin",
    "reverse_dns": "asm_proxy.handlers.reverse_dns:ReverseDnsPlugin",
    "body_log": "asm_proxy.handlers.body_log:BodyLogPlugin",
}
