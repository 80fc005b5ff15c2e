"""The Dockerfile and .dockerignore, read as text: the properties the image promises
(multi-stage, non-root, a health check, one image for API and worker, no index host
written in), checked without a Docker engine. tests/deploy/test_image.py checks the
built image itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def test_multi_stage_from_a_base_chosen_by_build_arg() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    assert all(s[0][1].startswith("${BASE_IMAGE}") for s in all_stages)
    args = [rest for word, rest in instructions()[:3] if word == "ARG"]
    assert any(a.startswith("BASE_IMAGE=") for a in args), "BASE_IMAGE must be declared before FROM"
    # The final stage takes only the built venv from the builder, not the sources.
    final = all_stages[-1]
    copies = [rest for word, rest in final if word == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies)
    assert not any(re.search(r"\b(uv\.lock|pyproject\.toml)\b", c) for c in copies)


def test_final_stage_runs_as_a_fixed_non_root_user() -> None:
    final = stages()[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Nothing after USER switches back to root.
    after = final[[w for w, _ in final].index("USER") :]
    assert all(not (w == "USER" and r.split(":")[0] in ("root", "0")) for w, r in after)


def test_healthcheck_entrypoint_and_one_image_for_api_and_worker() -> None:
    final = dict(stages()[-1])
    assert "HEALTHCHECK" in final and "crewgraph-healthcheck" in final["HEALTHCHECK"]
    assert final["ENTRYPOINT"] == '["crewgraph"]'
    assert final["CMD"] == '["serve"]'  # `docker run IMAGE worker` runs the worker
    assert "CREWGRAPH_DATA_DIR=/var/lib/crewgraph" in final["ENV"]


def test_no_index_host_or_credential_is_written_in() -> None:
    """The index comes in through build args; the Dockerfile names no host."""
    code = "\n".join(f"{w} {r}" for w, r in instructions())
    assert not re.search(r"https?://", code)
    for arg in ("PIP_INDEX_URL", "UV_INDEX_URL", "EXTRA_CA_CERTS"):
        assert f"ARG {arg}=" in code
    # ...and they stay in the builder stage.
    final = "\n".join(f"{w} {r}" for w, r in stages()[-1])
    assert "INDEX_URL" not in final and "EXTRA_CA_CERTS" not in final


def test_dependencies_install_from_the_lock_with_hashes() -> None:
    assert "uv export --frozen --no-dev" in re.sub(r"\s+", " ", DOCKERFILE)
    assert "--require-hashes" in DOCKERFILE


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for path in (".env", ".crewgraph", ".venv", ".git", "tests", "deploy/k8s"):
        assert path not in allowed
    # Every path the Dockerfile copies from the context is allowed in.
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                top = src.split("/")[0] if not src.startswith("deploy/") else "deploy/docker"
                assert top in allowed, src
