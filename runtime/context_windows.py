"""Models' context windows from LiteLLM's bundled model catalogue (no download)."""

from __future__ import annotations

import sys
from functools import lru_cache

import runtime  # noqa: F401  # offline defaults, before LiteLLM is imported


def context_window(provider: str, model: str) -> int | None:
    """The model's input window in tokens, or None when the catalogue does not know it.

    Only asks once LiteLLM is loaded (a model call loads it): importing it here would
    cost seconds on the request path for a number that has a sane default."""
    if "litellm" not in sys.modules:
        return None
    return _lookup(provider, model)


@lru_cache(maxsize=1024)
def _lookup(provider: str, model: str) -> int | None:
    litellm = sys.modules["litellm"]
    for name in (f"{provider}/{model}", model):
        try:
            info = litellm.get_model_info(name)
        except Exception:
            continue
        value = info.get("max_input_tokens") or info.get("max_tokens")
        if isinstance(value, int) and value > 0:
            return value
    return None
