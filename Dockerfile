# syntax=docker/dockerfile:1
#
# The operator image: `python -m batchcompute_operator` in a virtualenv on python:3.11-slim,
# as an unprivileged numeric user, ready for a read-only root file system.
#
#   make image     # = docker build --build-arg VERSION=<pyproject.toml's version> -t <repo>:<version> .
#
# Every dependency comes from requirements.lock with --require-hashes (the runtime
# dependencies and the build backend, nothing else); the operator is then built from source
# without build isolation, by the locked setuptools, so a rebuild of the same commit
# installs the same files. Only operator/batchcompute_operator is copied into the image.
#
# The `emulator` stage is the ARM emulator of the test bed, for `make e2e` on kind only
# (docker build --target emulator); it is never released.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: a self-contained virtualenv at /opt/venv --------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, for layer caching.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
# README.md and LICENSE are package metadata (pyproject.toml names them).
COPY pyproject.toml README.md LICENSE ./
COPY operator/batchcompute_operator/ operator/batchcompute_operator/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check
# The image is labelled with VERSION: it must be the version just installed.
ARG VERSION
RUN test -n "$VERSION" || { echo "build with --build-arg VERSION=... (make image)"; exit 1; }; \
    installed=$(python -c 'import importlib.metadata as m; print(m.version("batchcompute-operator"))'); \
    test "$installed" = "$VERSION" \
      || { echo "VERSION=$VERSION but pyproject.toml says $installed"; exit 1; }
# Nothing installs packages at run time: drop the installers from the virtualenv.
RUN pip uninstall --yes pip setuptools

# -- the ARM emulator, for make e2e only -----------------------------------------------------
FROM ${PYTHON_IMAGE} AS emulator

RUN groupadd --system --gid 10001 batchcompute \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin batchcompute
# Its dependencies (aiohttp, cryptography) are the operator's, from the same lock.
COPY --from=builder /opt/venv /opt/venv
COPY operator/batchcompute_testbed/ /opt/testbed/batchcompute_testbed/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/testbed \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "batchcompute_testbed.emulator"]

# -- runtime (the default target) ------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION
LABEL org.opencontainers.image.title="batchcompute-operator" \
      org.opencontainers.image.description="Kubernetes operator that attaches Azure Batch accounts to Azure Machine Learning workspaces as compute targets" \
      org.opencontainers.image.source="https://github.com/batchcompute-operator/batchcompute-operator" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"

# A named entry for the numeric user: Python's getpass and some libraries look the user up
# in /etc/passwd. No home directory, no login shell.
RUN groupadd --system --gid 10001 batchcompute \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin batchcompute

COPY --from=builder /opt/venv /opt/venv

# The root file system is mounted read-only in the cluster: no bytecode is written, and
# everything temporary goes to /tmp (an emptyDir volume there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp

USER 10001:10001
WORKDIR /tmp

# BCO_HEALTH_PORT (/healthz, /readyz) and BCO_METRICS_PORT (/metrics); the Deployment
# defines the probes.
EXPOSE 8080 8081

ENTRYPOINT ["python", "-m", "batchcompute_operator"]
