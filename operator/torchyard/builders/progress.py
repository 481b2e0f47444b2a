"""Pure builder: what a worker pod needs to POST live progress to the operator.

A projected service-account token (audience ``torchyard.io/progress``, 10 minutes, refreshed
by the kubelet) mounted read-only, and three variables: the job's progress URL, the token
file and the CA that signed the operator's serving certificate (docs/architecture.md,
"Live progress"). The token only authenticates the pod to the operator — the worker's service
account needs no Kubernetes API rights for it, and the API server refuses a token of this
audience. Without an endpoint (``None``) the pod gets nothing and the worker does not post.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torchyard.api.constants import COMPRESSION_JOB_PLURAL, TRAINING_JOB_PLURAL
from torchyard.api.contract import (
    PROGRESS_TOKEN_AUDIENCE,
    PROGRESS_TOKEN_DIR,
    PROGRESS_VOLUME,
    WORKER_CONTAINER,
    Env,
)

PLURALS = {"TrainingJob": TRAINING_JOB_PLURAL, "CompressionJob": COMPRESSION_JOB_PLURAL}
TOKEN_FILE = "token"
TOKEN_SECONDS = 600
"""The shortest lifetime the API server issues; the kubelet rotates it at 80%."""


@dataclass(frozen=True)
class ProgressEndpoint:
    """Where the operator takes progress: ``base_url`` (``https://host:port``) and the PEM of
    the CA the workers verify it with."""

    base_url: str
    ca_pem: str
    audience: str = PROGRESS_TOKEN_AUDIENCE


def progress_path(namespace: str, plural: str, name: str) -> str:
    """The endpoint's path for one job (the server parses the same shape)."""
    return f"/v1/progress/{namespace}/{plural}/{name}"


def with_progress(
    pod_spec: dict[str, Any],
    endpoint: ProgressEndpoint | None,
    *,
    kind: str,
    namespace: str,
    name: str,
) -> dict[str, Any]:
    """A copy of ``pod_spec`` whose worker container can post progress (unchanged: None)."""
    if endpoint is None:
        return pod_spec
    spec = copy.deepcopy(pod_spec)
    spec.setdefault("volumes", []).append(
        {
            "name": PROGRESS_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": endpoint.audience,
                            "expirationSeconds": TOKEN_SECONDS,
                            "path": TOKEN_FILE,
                        }
                    }
                ]
            },
        }
    )
    url = endpoint.base_url.rstrip("/") + progress_path(namespace, PLURALS[kind], name)
    for c in spec.get("containers") or []:
        if c.get("name") != WORKER_CONTAINER:
            continue
        c.setdefault("volumeMounts", []).append(
            {"name": PROGRESS_VOLUME, "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True}
        )
        c.setdefault("env", []).extend(
            [
                {"name": Env.PROGRESS_URL, "value": url},
                {"name": Env.PROGRESS_TOKEN_FILE, "value": f"{PROGRESS_TOKEN_DIR}/{TOKEN_FILE}"},
                {"name": Env.PROGRESS_CA, "value": endpoint.ca_pem},
            ]
        )
    return spec


__all__ = ["TOKEN_SECONDS", "ProgressEndpoint", "progress_path", "with_progress"]
