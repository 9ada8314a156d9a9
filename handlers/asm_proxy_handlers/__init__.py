"""asm-proxy's built-in plugins, packaged and found like any third-party plugin.

Each plugin is one module (or package, as `auth`) that imports only `asm_proxy.api`; the
distribution registers them under the `asm_proxy.plugins` entry point group
(handlers/pyproject.toml), so `type: headers` in a config resolves the way
`type: my_plugin` does for anyone's package.
"""
