"""direct_response: answer matching requests from asm-proxy itself, without the upstream.

    - name: maintenance
      type: direct_response
      match: [{paths: [{prefix: /old-api}]}]
      config: {status: 410, body: "this API is gone\n", headers: {content-type: text/plain}}

Useful for retired paths, maintenance windows and canned health answers.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from asm_proxy.api import Http, Plugin, PluginConfig, Respond


class DirectResponseConfig(PluginConfig):
    status: int = 200
    body: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    details: str = "asm_proxy_direct_response"

    @field_validator("status")
    @classmethod
    def _status(cls, value: int) -> int:
        if not 200 <= value <= 599:
            raise ValueError("status must be a final HTTP status (200-599)")
        return value


class DirectResponsePlugin(Plugin):
    Config = DirectResponseConfig

    def __init__(self, config: DirectResponseConfig) -> None:
        super().__init__(config)
        self.response = Respond(
            status=config.status,
            body=config.body,
            headers=dict(config.headers),
            details=config.details.replace(" ", "_"),
        )

    def on_request_headers(self, http: Http) -> Respond:
        return self.response
