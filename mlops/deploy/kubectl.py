"""`kubectl apply` of a rendered manifest, refusing clearly when kubectl or a cluster is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.retry import with_retries


def kubectl_apply(manifest: Path, namespace: str, context: str | None = None) -> str:
    """Apply `manifest` with server-side strict validation; kubectl's output."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise MlopsError("--apply needs kubectl on PATH and a cluster with KServe; without them, apply the "
                         f"rendered manifest yourself: kubectl apply -n {namespace} -f {manifest}")
    ctx = ["--context", context] if context else []
    # without a current context kubectl falls back to localhost:8080, where a local `mlops serve` may well listen
    current = subprocess.run([kubectl, *ctx, "config", "current-context"], capture_output=True, text=True, timeout=30)
    if current.returncode != 0:
        why = current.stderr.strip() or "no current context"
        raise MlopsError(f"--apply: kubectl has no cluster configured ({why}): point KUBECONFIG at a cluster with "
                         "KServe, or pass --context")
    cmd = [kubectl, *ctx, "apply", "--validate=strict", "-n", namespace, "-f", str(manifest)]

    def apply() -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise KubectlFailed(f"kubectl apply -f {manifest} failed: {(proc.stderr or proc.stdout).strip()}")
        return proc.stdout.strip()

    # apply is idempotent: a repeat after an API server blip converges on the same objects
    return with_retries(apply, f"kubectl apply -f {manifest}", transient=transient_kubectl)


class KubectlFailed(MlopsError):
    """kubectl exited non-zero; its message says why."""


# What kubectl prints when the API server (or etcd behind it) did not answer, not when it refused the objects:
# a validation error, a forbidden verb or a missing CRD is never retried.
TRANSIENT = ("connection refused", "connection reset by peer", "i/o timeout", "tls handshake timeout",
             "etcdserver: request timed out", "etcdserver: leader changed", "context deadline exceeded",
             "the server is currently unable to handle the request", "unexpected eof",
             "http2: client connection lost", "server closed the connection", "too many requests",
             "the object has been modified", "(serviceunavailable)", "(internalerror)", "(timeout)")


def transient_kubectl(exc: BaseException) -> bool:
    if isinstance(exc, subprocess.TimeoutExpired):
        return True
    text = str(exc).lower()
    return isinstance(exc, KubectlFailed) and any(t in text for t in TRANSIENT)


class KubectlApplier:
    """A rollout applier: each step's manifest goes to the cluster."""

    def __init__(self, namespace: str, context: str | None = None) -> None:
        self.namespace = namespace
        self.context = context

    def __call__(self, stable: Any, canary: Any, percent: int, manifest: Path) -> None:
        kubectl_apply(manifest, self.namespace, self.context)
