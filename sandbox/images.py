"""Sandbox images. Never pulled (no registry is reachable): built locally from Debian's
packages by ``scripts/build-sandbox-image.sh`` and loaded with ``docker import``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain.errors import NotConfigured

if TYPE_CHECKING:  # aiodocker is only needed once a Docker backend is in use
    import aiodocker

DEFAULT_IMAGE = os.environ.get("CREWGRAPH_SANDBOX_IMAGE", "crewgraph/sandbox-python:1")
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-sandbox-image.sh"


def build_hint(name: str) -> str:
    return (
        f"build it with `scripts/build-sandbox-image.sh {name}` (after scripts/docker-up.sh); "
        "sandbox images are built from Debian's packages and never pulled"
    )


async def ensure_image(docker: aiodocker.Docker, name: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """Inspect data of image ``name``; :class:`NotConfigured` when it is missing."""
    from aiodocker.exceptions import DockerError

    try:
        info: dict[str, Any] = await docker.images.inspect(name)
    except DockerError as exc:
        if exc.status == 404:
            raise NotConfigured(
                f"sandbox image {name!r} is not in the Docker engine; {build_hint(name)}",
                extensions={"image": name},
            ) from None
        raise NotConfigured(f"cannot inspect sandbox image {name!r}: {exc.message}") from None
    return info


async def image_exists(docker: aiodocker.Docker, name: str = DEFAULT_IMAGE) -> bool:
    try:
        await ensure_image(docker, name)
    except NotConfigured:
        return False
    return True
