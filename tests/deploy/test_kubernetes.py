"""deploy/k8s: the kustomize base and the dev/prod overlays render with `kubectl
kustomize` and every object passes the Kubernetes schemas (kubernetes-validate, strict:
an unknown field is an error), plus the properties the deployment relies on."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.crypto import box_from_settings
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes these manifests promise to work on (autoscaling/v2, policy/v1,
# batch/v1 ttlSecondsAfterFinished are all GA there) and the newest schemas shipped.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not on PATH (a python-svc machine has it: Debian package kubectl); "
    "kustomize is built into it",
)


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def prod_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with the prod overlay's secrets.env filled in (it is never
    committed; the overlay refuses to build without it)."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    example = (copy / "overlays/prod/secrets.env.example").read_text()
    key = base64.urlsafe_b64encode(b"k" * 32).decode()
    filled = (
        example.replace("CREWGRAPH_SECRET_KEY=", f"CREWGRAPH_SECRET_KEY={key}", 1)
        .replace("CREWGRAPH_JWT_SECRET=", "CREWGRAPH_JWT_SECRET=" + "j" * 40, 1)
        .replace("CREWGRAPH_METRICS_TOKEN=", "CREWGRAPH_METRICS_TOKEN=" + "m" * 20, 1)
    )
    (copy / "overlays/prod/secrets.env").write_text(filled)
    return copy


_RENDERED: dict[tuple[Path, str], list[dict[str, Any]]] = {}


def rendered(name: str, prod_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of the base or an overlay, once per module (about a second
    each)."""
    key = (prod_dir, name)
    if key not in _RENDERED:
        _RENDERED[key] = kustomize(prod_dir / ("base" if name == "base" else f"overlays/{name}"))
    return _RENDERED[key]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@needs_kubectl
@pytest.mark.parametrize("name", ["base", "dev", "prod"])
def test_renders_and_passes_the_kubernetes_schemas(name: str, prod_dir: Path) -> None:
    docs = rendered(name, prod_dir)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Job",
        "NetworkPolicy",
        "ConfigMap",
        "PodDisruptionBudget",
    } <= kinds
    if name != "base":
        assert "Secret" in kinds and "Namespace" in kinds
    for version in VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are errors."""
    doc = yaml.safe_load((K8S / "base/api-hpa.yaml").read_text())
    doc["spec"]["minReplica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)
    doc = yaml.safe_load((K8S / "base/api-deployment.yaml").read_text())
    doc["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


@needs_kubectl
def test_prod_overlay_refuses_to_build_without_its_secrets_file(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(copy / "overlays/prod")], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "secrets.env" in done.stderr


@needs_kubectl
@pytest.mark.parametrize("name", ["dev", "prod"])
def test_workloads_are_hardened_probed_and_sized(name: str, prod_dir: Path) -> None:
    docs = rendered(name, prod_dir)
    deployments = by_kind(docs, "Deployment")
    jobs = by_kind(docs, "Job")
    secret_names = set(by_kind(docs, "Secret"))
    config_names = set(by_kind(docs, "ConfigMap"))
    ours = [deployments["crewgraph-api"], deployments["crewgraph-worker"]]
    ours.append(jobs["crewgraph-migrate"])
    for workload in ours:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["image"].split(":")[0].endswith("crewgraph/crewgraph")
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        for key in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][key])
        # Writable scratch for a read-only root: the data dir and /tmp.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", "/var/lib/crewgraph"} <= mounts
        # The generated (hash-suffixed) Secret and ConfigMap are the ones referenced.
        refs = container["envFrom"]
        assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} <= secret_names
        assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= config_names

    api = deployments["crewgraph-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["args"] == ["serve"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grace = deployments["crewgraph-api"]["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] >= 20 + 10  # README: Lifecycle
    worker = deployments["crewgraph-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker"]
    assert worker["livenessProbe"]["httpGet"]["port"] == "metrics"
    migrate = jobs["crewgraph-migrate"]["spec"]["template"]["spec"]["containers"][0]
    assert migrate["args"] == ["migrate"]

    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for target in ("crewgraph-api", "crewgraph-worker"):
        hpa = hpas[target]
        assert hpa["spec"]["scaleTargetRef"]["name"] == target
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@needs_kubectl
@pytest.mark.parametrize("name", ["dev", "prod"])
def test_secrets_carry_the_settings_the_server_reads(name: str, prod_dir: Path) -> None:
    """The Secret's keys are the real variable names (server/settings.py), and its
    master key and JWT secret are ones the server accepts."""
    (secret,) = by_kind(rendered(name, prod_dir), "Secret").values()
    env = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for key in ("CREWGRAPH_SECRET_KEY", "CREWGRAPH_JWT_SECRET", "DATABASE_URL", "REDIS_URL"):
        assert env.get(key), key
    assert env.get("MONGODB_URL")
    settings = Settings.model_validate(
        {
            "secret_key": env["CREWGRAPH_SECRET_KEY"],
            "jwt_secret": env["CREWGRAPH_JWT_SECRET"],
            "database_url": env["DATABASE_URL"],
            "redis_url": env["REDIS_URL"],
            "mongodb_url": env["MONGODB_URL"],
        }
    )
    box = box_from_settings(settings.secret_key, None, env.get("CREWGRAPH_PREVIOUS_SECRET_KEYS"))
    assert box.__class__.__name__ == "AesGcmBox"
    assert len(settings.signing_secret) >= 32
    names = set(Settings.model_fields)
    for key in env:
        field = key.removeprefix("CREWGRAPH_").lower()
        assert field in names or key in {"DATABASE_URL", "REDIS_URL", "MONGODB_URL"}, key


@needs_kubectl
def test_network_policy_blocks_cloud_metadata_and_selects_every_crewgraph_pod(
    prod_dir: Path,
) -> None:
    docs = rendered("prod", prod_dir)
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    selector = policy["spec"]["podSelector"]["matchLabels"]
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    ]
    assert pods and all(selector.items() <= labels.items() for labels in pods)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    blocks = [
        to["ipBlock"]
        for rule in policy["spec"]["egress"]
        for to in rule.get("to", [])
        if "ipBlock" in to
    ]
    v4 = [b for b in blocks if b["cidr"] == "0.0.0.0/0"]
    assert v4 and all("169.254.0.0/16" in b.get("except", []) for b in v4)
    config = {k: v for c in by_kind(docs, "ConfigMap").values() for k, v in c["data"].items()}
    assert config["CREWGRAPH_ENV"] == "production"
    assert config["CREWGRAPH_WORKER_MODE"] == "arq"
