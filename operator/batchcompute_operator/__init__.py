"""Kubernetes operator that attaches Azure Batch accounts to Azure ML workspaces."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

GROUP = "batchcompute.azureml.dev"
VERSION = "v1alpha1"
PLURAL = "batchcomputeattachments"
KIND = "BatchComputeAttachment"

DISTRIBUTION = "batchcompute-operator"

# The version is written once, in pyproject.toml, and read back from the installed package's
# metadata (the image, `pip install`, and the editable install of `make venv` all have it).
try:
    __version__ = _distribution_version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
