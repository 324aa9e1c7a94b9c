# syntax=docker/dockerfile:1
#
# The operator image: `python -m batchcompute_operator` in a virtualenv on python:3.11-slim,
# as an unprivileged numeric user, ready for a read-only root file system.
#
#   docker build -t ghcr.io/batchcompute-operator/batchcompute-operator:0.1.0 .
#
# Dependencies are pinned by requirements.lock (a constraints file), so a rebuild of the
# same commit installs the same versions. The test bed package (operator/batchcompute_testbed,
# the kube-apiserver harness and the ARM emulator) is not in the build context
# (.dockerignore), so it is not installed.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: a self-contained virtualenv at /opt/venv --------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, for layer caching; README.md is optional (a glob that may match
# nothing), pyproject.toml declares it.
COPY requirements.lock pyproject.toml README.m[d] ./
COPY operator/ operator/
RUN pip install --no-cache-dir -c requirements.lock . \
    && pip check
# Nothing installs packages at run time: drop the installers from the virtualenv.
RUN pip uninstall --yes pip setuptools

# -- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
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

# kopf's liveness endpoint (BCO_HEALTH_PORT); probes are defined by the Deployment.
EXPOSE 8080

ENTRYPOINT ["python", "-m", "batchcompute_operator"]
