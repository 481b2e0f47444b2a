"""Where a cluster job's model goes, checked before its worker pods exist — pure.

A worker with no model store falls back to a folder inside its own container: the model
and every checkpoint vanish with the pod, a group restart cannot resume and a CompressionJob
cannot find the trained model. So a cluster job needs ``spec.output.storage`` or the
operator's ``--default-storage`` (chart ``operator.defaultStorage``); without either it
waits with ``StorageNotConfigured`` and no pod is created. Every ``pvc://<claim>/…`` it
names must exist in its namespace: a pod whose claim is missing stays Pending forever
(``FailedScheduling``), so the job waits with ``StorageClaimNotFound`` instead, and proceeds
on the reconcile after the claim appears. (``torchyard run`` fills in its local store and
never gets here.) docs/storage.md.
"""

from __future__ import annotations

from typing import Any

from torchyard.api.constants import Reason
from torchyard.state.ownership import Refusal

DEFAULT_STORAGE_SETTINGS = (
    "the operator's --default-storage (Helm chart value operator.defaultStorage)"
)


def resolved_output_storage(spec_storage: str | None, default_storage: str | None) -> str | None:
    """The model store a job's workers get: its own ``spec.output.storage``, else the
    operator's default."""
    return spec_storage or default_storage or None


def storage_refusal(
    kind: str, spec_storage: str | None, default_storage: str | None
) -> Refusal | None:
    """``StorageNotConfigured`` (temporary: setting either lets the job proceed) when neither
    the job nor the operator names a model store; None otherwise."""
    if resolved_output_storage(spec_storage, default_storage) is not None:
        return None
    return Refusal(
        Reason.STORAGE_NOT_CONFIGURED,
        f"no model store: set spec.output.storage on the {kind} (e.g. pvc://<claim>/models) "
        f"or {DEFAULT_STORAGE_SETTINGS}; without one the workers would write the model and "
        "checkpoints inside their containers, lost with the pods. No pod is created until "
        "one is set (docs/storage.md)",
        temporary=True,
    )


def pod_claims(pod_spec: dict[str, Any]) -> list[str]:
    """The PersistentVolumeClaims a pod spec mounts, each once, in order: the operator's
    pvc:// volumes and any a ``spec.podTemplate`` adds (a missing one hangs the pod alike)."""
    claims: list[str] = []
    for volume in pod_spec.get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and claim not in claims:
            claims.append(str(claim))
    return claims


def claim_refusal(
    namespace: str, claim: str, pvc: dict[str, Any] | None, from_default: bool
) -> Refusal | None:
    """``StorageClaimNotFound`` for a claim a job mounts that does not exist (``pvc`` None)
    or is being deleted; None for a claim that exists (bound or not: a claim that waits for
    its first consumer binds when the pod is scheduled). ``from_default``: the claim comes
    from the operator's default store, not from the job's spec."""
    if pvc is not None and not (pvc.get("metadata") or {}).get("deletionTimestamp"):
        return None
    state = "does not exist" if pvc is None else "is being deleted"
    where = DEFAULT_STORAGE_SETTINGS if from_default else "the job's spec"
    return Refusal(
        Reason.STORAGE_CLAIM_NOT_FOUND,
        f"PersistentVolumeClaim {claim!r} (pvc://{claim}/…, named by {where}) {state} in "
        f"namespace {namespace}: create it there (docs/storage.md); the worker pods are "
        "created once it exists (retried with backoff)",
        temporary=True,
    )


__all__ = [
    "DEFAULT_STORAGE_SETTINGS",
    "claim_refusal",
    "pod_claims",
    "resolved_output_storage",
    "storage_refusal",
]
