"""Providers are checked at write time against LiteLLM's own list (kept in the domain,
which never imports LiteLLM), and keys must be sendable as an HTTP header."""

from __future__ import annotations

import pytest

from domain.errors import BadUserInput
from domain.llm_provider_names import LITELLM_PROVIDERS
from domain.providers import ProviderInput, _validate


def test_the_domains_list_is_litellms_list() -> None:
    import runtime  # noqa: F401  # offline defaults before LiteLLM is imported
    from runtime.litellm_client import _load

    litellm = _load()
    known = {getattr(p, "value", p) for p in litellm.provider_list}
    assert set(LITELLM_PROVIDERS) == known, (
        "update domain/llm_provider_names.py to the pinned LiteLLM: "
        f"missing {sorted(known - LITELLM_PROVIDERS)}, gone {sorted(LITELLM_PROVIDERS - known)}"
    )


@pytest.mark.parametrize("name", ["openai", "anthropic", "ollama", "hosted_vllm", "Gemini"])
def test_known_providers_are_accepted(name: str) -> None:
    assert _validate(ProviderInput("p", name, "m")).provider == name.lower()


@pytest.mark.parametrize("name", ["opnai", "chatgpt4", "my-llm"])
def test_unknown_providers_are_refused_by_name(name: str) -> None:
    with pytest.raises(BadUserInput) as refused:
        _validate(ProviderInput("p", name, "m"))
    assert "unknown provider" in refused.value.fields["input.provider"]


@pytest.mark.parametrize("key", ["sk-new\nline", "sk-ü", "sk with space", "sk-\x00"])
def test_keys_that_cannot_be_sent_as_a_header_are_refused(key: str) -> None:
    with pytest.raises(BadUserInput) as refused:
        _validate(ProviderInput("p", "openai", "m", api_key=key))
    assert "input.apiKey" in refused.value.fields


def test_keys_lose_surrounding_whitespace() -> None:
    assert _validate(ProviderInput("p", "openai", "m", api_key=" sk-1\n")).api_key == "sk-1"
    assert _validate(ProviderInput("p", "openai", "m", api_key="  ")).api_key == ""
