"""The plugin contract is checked when a class is defined and when it is loaded."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from asm_proxy.api import Chunk, Event, Http, Plugin, PluginConfig, PluginDefinitionError
from asm_proxy.testing import check_config


class TestHookNames:
    def test_a_misspelt_hook_is_refused_with_a_suggestion(self) -> None:
        """`on_request_header` is not silently ignored: the class is refused, named."""
        with pytest.raises(PluginDefinitionError) as caught:

            class Typo(Plugin):
                def on_request_header(self, http: Http) -> None: ...

        message = str(caught.value)
        assert "Typo.on_request_header is not a hook" in message
        assert "did you mean on_request_headers?" in message

    def test_an_inherited_misspelling_is_refused_too(self) -> None:
        """A mixin's on_* method counts as the plugin's."""

        class Mixin:
            def on_respose_headers(self, http: Http) -> None: ...

        with pytest.raises(PluginDefinitionError, match="on_respose_headers is not a hook"):

            class Mixed(Mixin, Plugin):
                pass

    def test_helpers_not_named_on_are_free(self) -> None:
        """Only on_* names are reserved; hooks found are the class's events."""

        class Fine(Plugin):
            def helper(self) -> None: ...

            def on_request_headers(self, http: Http) -> None: ...

            async def on_response_body(self, http: Http) -> None: ...

        assert Fine.hooks == {Event.REQUEST_HEADERS, Event.RESPONSE_BODY}
        assert Fine.async_hooks == {Event.RESPONSE_BODY}


class TestHookSignatures:
    def test_a_chunk_hook_without_the_chunk_is_refused(self) -> None:
        with pytest.raises(PluginDefinitionError) as caught:

            class NoChunk(Plugin):
                def on_request_body_chunk(self, http: Http) -> None: ...

        assert "NoChunk.on_request_body_chunk(self, http)" in str(caught.value)
        assert "called as on_request_body_chunk(self, http, chunk)" in str(caught.value)

    def test_a_hook_with_an_extra_required_argument_is_refused(self) -> None:
        with pytest.raises(PluginDefinitionError, match="does not fit the hook"):

            class Extra(Plugin):
                def on_request_headers(self, http: Http, other: int) -> None: ...

    def test_a_required_keyword_only_argument_is_refused(self) -> None:
        with pytest.raises(PluginDefinitionError, match="does not fit the hook"):

            class Keyword(Plugin):
                def on_request_headers(self, http: Http, *, flag: bool) -> None: ...

    def test_defaults_and_varargs_fit(self) -> None:
        class Flexible(Plugin):
            def on_request_headers(self, http: Http, extra: int = 0) -> None: ...

            def on_response_body_chunk(self, *args: object) -> None: ...

        assert Flexible.hooks == {Event.REQUEST_HEADERS, Event.RESPONSE_BODY_CHUNK}

    def test_config_must_be_a_plugin_config(self) -> None:
        with pytest.raises(PluginDefinitionError, match=r"BadConfig\.Config must be"):

            class BadConfig(Plugin):
                Config = dict  # type: ignore[assignment]


class Narrowing(Plugin):
    class Config(PluginConfig):
        hooks: list[str] = []

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        if config.hooks:
            self.hooks = frozenset(config.hooks)  # type: ignore[arg-type]

    def on_request_headers(self, http: Http) -> None: ...

    def on_response_body_chunk(self, http: Http, chunk: Chunk) -> None: ...


class Overreaching(Plugin):
    def __init__(self, config: PluginConfig) -> None:
        super().__init__(config)
        self.hooks = frozenset({Event.REQUEST_HEADERS, Event.RESPONSE_TRAILERS})

    def on_request_headers(self, http: Http) -> None: ...


class TestAtLoad:
    def test_widening_hooks_past_the_methods_is_refused(self) -> None:
        """An event the class has no method for cannot be asked for."""
        (problem,) = check_config(
            "plugins:\n  - {name: wide, type: 'tests.unit.test_plugin_contract:Overreaching'}\n"
        ).problems
        assert "self.hooks names on_response_trailers, which the class does not define" in problem

    def test_narrowing_hooks_with_names_is_refused_at_load(self) -> None:
        """self.hooks must hold Events; strings are named in the config problem."""
        problems = check_config(
            "plugins:\n"
            "  - name: narrow\n"
            "    type: tests.unit.test_plugin_contract:Narrowing\n"
            "    config: {hooks: [on_request_headers]}\n"
        ).problems
        (problem,) = problems
        assert problem.startswith("asm-proxy.yaml:3: plugin plugins[0] \"narrow\": field 'type': ")
        assert "self.hooks must be a set of Event members" in problem

    def test_a_broken_plugin_module_is_a_config_problem(self, tmp_path: Path) -> None:
        """A class refused at definition makes its import fail; validate names why."""
        (tmp_path / "typo_plugin.py").write_text(
            textwrap.dedent(
                """
                from asm_proxy.api import Http, Plugin

                class Typo(Plugin):
                    def on_request_header(self, http: Http) -> None: ...
                """
            )
        )
        sys.path.insert(0, str(tmp_path))
        try:
            problems = check_config(
                "plugins:\n  - {name: typo, type: 'typo_plugin:Typo'}\n"
            ).problems
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("typo_plugin", None)
        (problem,) = problems
        assert "importing 'typo_plugin' failed: PluginDefinitionError" in problem
        assert "typo_plugin.Typo.on_request_header is not a hook" in problem
