"""The real tiny local model as an LLM provider of every new tenant (laptop profile).

`crewgraph serve` starts (or finds) the model; registration then adds this provider to the
new tenant's schema (persistence/seed.py), next to the scripted one.
The model listens on a fixed loopback port (`CREWGRAPH_LOCAL_MODEL_PORT`), so the stored
base URL stays valid across restarts.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from domain.providers import LlmProvider
from server.local_model import MODEL_ALIAS, PROVIDER_NAME

# A 135M model on two shared cores: a CrewAI agent step can take tens of seconds.
TIMEOUT_SECONDS = 300.0


def local_model_provider(base_url: str, now: datetime) -> LlmProvider:
    """SmolLM2 behind llama.cpp's OpenAI-compatible server: no key, no price."""
    return LlmProvider(
        id=str(uuid.uuid4()),
        name=PROVIDER_NAME,
        provider="openai",
        model=MODEL_ALIAS,
        base_url=base_url,
        api_key=None,
        version=1,
        created_at=now,
        updated_at=now,
        timeout_seconds=TIMEOUT_SECONDS,
        max_retries=0,
    )
