"""The image's HEALTHCHECK: exit 0 when CREWGRAPH_HEALTHCHECK_URL (default: this
container's /healthz) answers 2xx within the timeout, 1 otherwise. Standard library only,
so the image needs no curl."""

import os
import sys
import urllib.request

port = os.environ.get("CREWGRAPH_PORT", "8000")
url = os.environ.get("CREWGRAPH_HEALTHCHECK_URL") or f"http://127.0.0.1:{port}/healthz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as exc:
    print(f"healthcheck {url}: {exc}", file=sys.stderr)
    sys.exit(1)
