"""AI runtime adapters: LiteLLM calls, CrewAI factories, event bridge, tool adapters, and the
local scripted OpenAI-compatible model.

Importing this package first makes LiteLLM and CrewAI offline and private by default (no
telemetry, no version checks, no price-map download, nothing written to the user's home):
both read these variables when they are imported, so they are set here, before any
submodule imports them. An operator's explicit value wins (`setdefault`).
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS: dict[str, str] = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "LITELLM_TELEMETRY": "False",
}

for _name, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
# The service's own tracing may export over OTLP later; until an endpoint is configured
# the OpenTelemetry SDK CrewAI pulls in stays off.
if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
