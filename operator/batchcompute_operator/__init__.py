"""Kubernetes operator that attaches Azure Batch accounts to Azure ML workspaces."""

GROUP = "batchcompute.azureml.dev"
VERSION = "v1alpha1"
PLURAL = "batchcomputeattachments"
KIND = "BatchComputeAttachment"

__version__ = "0.1.0"
