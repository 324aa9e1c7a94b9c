"""`make bench`: N BatchComputeAttachments attached and detached at ARM's throttle limits.

Runs the operator through its real entry point against a real kube-apiserver + etcd and the
ARM emulator (per-subscription throttling on, 50 ms latency, 2 s long-running operations),
then reports how close attach and detach come to the throttle-imposed lower bound, how many
ARM and Kubernetes writes each attachment costs, what the steady state costs, and the
operator's memory and CPU.
"""
