# Crewgraph: the API (`crewgraph serve`) and the worker (`crewgraph worker`) from one image.
#
#   make image                                   # here: the base built locally, no registry
#   docker build -t crewgraph:dev .              # elsewhere: the public Python base
#   docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm ...
#
# Two stages: `builder` installs the locked dependencies (uv.lock, hash-checked) and the
# project into /opt/venv; the runtime stage copies only that venv onto the same base, so
# no build tool, cache or index setting reaches the final image. The package index is
# whatever the build is given (build args below; empty = the tools' defaults), never a
# host named here.
#
# Runs as uid 10001 with a read-only root: everything it writes goes to
# /var/lib/crewgraph (CREWGRAPH_DATA_DIR) and /tmp; mount both writable (a volume / an
# emptyDir) when the root is read-only.

# Any Debian-like image with python3.11 on PATH (python3 -m venv must work).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# Index settings for pip (which installs uv) and uv (which installs the lock). In the
# builder stage only: the runtime stage never sees them.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG UV_INDEX_URL=
ARG UV_EXTRA_INDEX_URL=
# PEM certificates the build's HTTPS must also trust (a TLS-inspecting proxy's CA);
# added to the base's bundle for the builder stage only.
ARG EXTRA_CA_CERTS=
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
# /opt/build-env.sh, sourced by every RUN below: empty build args must not reach the
# tools as empty URLs, and EXTRA_CA_CERTS joins the trusted roots.
RUN set -eu; \
    { echo 'for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL UV_INDEX_URL UV_EXTRA_INDEX_URL; do'; \
      echo '  eval "val=\${$v:-}"; [ -n "$val" ] || unset "$v"; done'; \
      echo 'if [ -s /opt/build-ca.pem ]; then'; \
      echo '  export SSL_CERT_FILE=/opt/build-ca.pem PIP_CERT=/opt/build-ca.pem UV_NATIVE_TLS=1'; \
      echo 'fi'; } > /opt/build-env.sh; \
    if [ -n "${EXTRA_CA_CERTS}" ]; then \
      { cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true; \
        printf '%s\n' "${EXTRA_CA_CERTS}"; } > /opt/build-ca.pem; \
    fi; \
    . /opt/build-env.sh; \
    python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --quiet "uv==${UV_VERSION}" \
    && /opt/uv/bin/uv venv --quiet --python "$(command -v python3)" /opt/venv
WORKDIR /src
# The lock first: the dependency layer is reused until uv.lock or pyproject.toml change.
COPY pyproject.toml uv.lock ./
RUN set -eu; . /opt/build-env.sh; \
    /opt/uv/bin/uv export --frozen --no-dev --no-emit-project --format requirements-txt \
      --quiet -o /tmp/requirements.txt \
    && /opt/uv/bin/uv pip install --quiet --python /opt/venv/bin/python \
      --require-hashes --no-deps -r /tmp/requirements.txt
COPY README.md ./
COPY domain ./domain
COPY schema ./schema
COPY resolvers ./resolvers
COPY persistence ./persistence
COPY sandbox ./sandbox
COPY runtime ./runtime
COPY server ./server
RUN set -eu; . /opt/build-env.sh; \
    /opt/uv/bin/uv pip install --quiet --python /opt/venv/bin/python --no-deps . \
    && /opt/venv/bin/crewgraph --help >/dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="crewgraph" \
      org.opencontainers.image.description="Crewgraph API and worker (crewgraph serve | worker)"
# A fixed uid/gid, so volume ownership and Kubernetes' runAsUser agree across builds.
RUN groupadd --gid 10001 crewgraph \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/crewgraph \
       --no-create-home --shell /usr/sbin/nologin crewgraph \
    && mkdir -p /var/lib/crewgraph \
    && chown 10001:10001 /var/lib/crewgraph
COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/bin/crewgraph-healthcheck
# HOME and the XDG dirs under the data dir: CrewAI, LiteLLM and the embedded services
# write there, never into the (read-only) image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/crewgraph \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_DATA_HOME=/var/lib/crewgraph/.local/share \
    CREWGRAPH_DATA_DIR=/var/lib/crewgraph \
    CREWGRAPH_HOST=0.0.0.0 \
    CREWGRAPH_PORT=8000
USER 10001:10001
WORKDIR /var/lib/crewgraph
VOLUME ["/var/lib/crewgraph"]
EXPOSE 8000
# /healthz of the API; a worker container sets CREWGRAPH_HEALTHCHECK_URL to its metrics
# port (docker-compose.yml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "/usr/local/bin/crewgraph-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["crewgraph"]
CMD ["serve"]
