"""The Kubernetes side of the operator's own I/O: status, events, Secrets, peering."""
