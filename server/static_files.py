"""Static files served with fixed response headers (the pages' Content-Security-Policy,
cache and opener policies), for GraphiQL's and the dashboard's files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


class HeaderedStaticFiles(StaticFiles):
    """`StaticFiles` adding `headers` to every file it serves. With `optional=True` a
    missing directory answers 404 to every path instead of failing every request (a
    copy that only `make install` puts there)."""

    def __init__(
        self, *, directory: Path, headers: Mapping[str, str], optional: bool = False
    ) -> None:
        super().__init__(directory=directory, check_dir=not optional)
        self._headers = dict(headers)
        self._optional = optional

    async def check_config(self) -> None:
        try:
            await super().check_config()
        except RuntimeError:
            if not self._optional:
                raise

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(self._headers)
        return response
