"""auth: JWT (JWKS), API keys and Basic authentication with per-path rules.

    - name: auth
      type: auth
      phase: AUTHN
      config:
        jwt:
          providers:
            - name: corp
              issuer: https://idp.example.com
              audiences: [orders-api]
              jwksUri: https://idp.example.com/.well-known/jwks.json
              claimsToHeaders: {x-user: sub}
        rules:
          - {match: [{paths: [{prefix: /public}]}], anonymous: true}

See docs/plugins/auth.md for every field.
"""

from asm_proxy_handlers.auth.plugin import AuthPlugin

__all__ = ["AuthPlugin"]
