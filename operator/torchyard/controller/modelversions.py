"""Kopf handlers of ModelVersions (thin; the decisions are in :mod:`torchyard.state.modelversion`).

- a job that succeeded with a model gets its ModelVersion (create-or-get by the deterministic
  name ``<model>-v<N>``: a restarted operator finds the one it made) — :func:`record_job_version`,
  called from each job kind's one ``on.event`` handler (controller/__init__.py);
- every ModelVersion event reconciles the aliases of that version's model (one holder each,
  newest assignment wins, an Event on each move) and gives a new version its phase;
- a timer re-verifies the artifact where the operator can read the store (file://, or pvc://
  under the claims' mount point) and marks a vanished or altered one Missing;
- deletion (Kopf's finalizer) applies ``artifactPolicy`` before the object goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client

from torchyard.api.constants import (
    COMPRESSION_JOB_PLURAL,
    GROUP,
    TRAINING_JOB_KIND,
    TRAINING_JOB_PLURAL,
    VERSION,
    Phase,
)
from torchyard.api.contract import (
    DEFAULT_PVC_ROOT,
    Env,
    StorageURIError,
    local_path,
    pvc_claim,
)
from torchyard.api.modelversion import (
    MODEL_LABEL,
    MODEL_VERSION_ANNOTATION,
    MODEL_VERSION_PLURAL,
    version_name,
)
from torchyard.controller.kube import RAW, Kube, reason
from torchyard.state.modelversion import (
    alias_moves,
    artifact_phase,
    build_version,
    parent_from,
    resolve_ref,
    stamp_patches,
)
from torchyard.state.modelversion_source import ref_model, version_ref_of
from torchyard.state.observed import SourceInfo

log = logging.getLogger("torchyard.modelversions")

WEIGHTS = "model.safetensors"
CARD = "model-card.json"
VERIFY_INTERVAL = float(os.environ.get("TORCHYARD_VERIFY_INTERVAL_SECONDS", "300"))
"""Seconds between two checks of one version's artifact (a setting: read at start)."""
TOMBSTONE = ".deleting-"
"""A version directory being deleted is first renamed to this hidden name (one atomic step:
readers skip hidden entries), so a kill mid-delete never leaves a half-removed version."""

Body = dict[str, Any]


def _plain(body: Mapping[str, Any]) -> Body:
    return {k: body[k] for k in body}


def _kube(memo: kopf.Memo) -> Kube:
    kube: Kube = memo.reconciler.kube
    return kube


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def version_dir(uri: str) -> Path | None:
    """Where a version's files are on this machine; None for a store the operator cannot read:
    an object store, or a claim not mounted at ``$TORCHYARD_PVC_ROOT/<claim>``. The chart's
    operator mounts no claim (they live in the jobs' namespaces): a folder absent there says
    nothing about the artifact, and taking it for gone marked every pvc:// version Missing
    (found by tests/real/test_serving_real.py)."""
    root = Path(os.environ.get(Env.PVC_ROOT, DEFAULT_PVC_ROOT))
    try:
        path = local_path(uri, root)
    except StorageURIError:
        return None
    claim = pvc_claim(uri)
    return None if claim is not None and not (root / claim).is_dir() else path


def _read_card(uri: str) -> Body | None:
    path = version_dir(uri)
    try:
        return dict(json.loads((path / CARD).read_text())) if path else None
    except (OSError, ValueError):
        return None


def post_event(kube: Kube, body: Body, why: str, message: str) -> None:
    meta = body.get("metadata") or {}
    now = _now()
    ev = {
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": why,
        "message": message[:1024],
        "type": "Normal",
        "source": {"component": "torchyard-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.call("create", "events", kube.core.create_namespaced_event, meta["namespace"], ev)
    except client.ApiException as exc:  # an Event is never worth failing a handler
        log.warning("could not post event %s: %s", why, reason(exc))


# ------------------------------------------------------------------ jobs -> versions


def resolve_source_version(kube: Kube, ns: str, ref: str) -> SourceInfo:
    """What a job's ``source.modelVersion`` / ``initFrom.modelVersion`` names now (for the
    state machine)."""
    found = resolve_ref(ref, list_versions(kube, ns, ref_model(ref)))
    if found is None:
        return SourceInfo(found=False)
    spec = found["spec"]
    entry = {"name": spec["model"], "version": spec["version"], "uri": spec["artifact"]["uri"]}
    if spec["artifact"].get("sha256"):
        entry["sha256"] = spec["artifact"]["sha256"]
    return SourceInfo(found=True, phase=(found.get("status") or {}).get("phase"), model=entry)


def _source_model(kube: Kube, kind: str, job: Body) -> Body | None:
    """The model the job started from (for the parent): the version its source.modelVersion
    or initFrom.modelVersion resolved to, or the model its source TrainingJob produced."""
    resolved: Body | None = (job.get("status") or {}).get("sourceVersion")
    if resolved:
        return resolved
    ref = ((job.get("spec") or {}).get("source") or {}).get("trainingJobRef")
    if kind == TRAINING_JOB_KIND or not ref:
        return None
    try:
        src = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, job["metadata"]["namespace"], TRAINING_JOB_PLURAL, ref
        )
    except client.ApiException:
        return None
    model: Body | None = (src.get("status") or {}).get("model")
    return model


def has_model_to_record(job: Mapping[str, Any]) -> bool:
    """The job succeeded with a named model at a URI: what a ModelVersion is made of."""
    status = job.get("status") or {}
    model = status.get("model") or {}
    return bool(status.get("phase") == Phase.SUCCEEDED and model.get("name") and model.get("uri"))


def record_version(kube: Kube, kind: str, job: Body, known: set[tuple[str, str]]) -> None:
    """Create the ModelVersion of a succeeded job's model unless it exists (create-or-get)."""
    if not has_model_to_record(job):
        return
    model = job["status"]["model"]
    ns = job["metadata"]["namespace"]
    name = version_name(str(model["name"]), int(model["version"]))
    annotations = job["metadata"].get("annotations") or {}
    if (ns, name) in known or annotations.get(MODEL_VERSION_ANNOTATION) == name:
        return  # made before: by this run, or one before it (a deleted version stays deleted)
    card = _read_card(str(model["uri"]))
    parent = parent_from(kind, job.get("spec") or {}, card, _source_model(kube, kind, job))
    body = build_version(kind, job, card, parent)
    try:
        kube.call(
            "create",
            MODEL_VERSION_PLURAL,
            kube.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            MODEL_VERSION_PLURAL,
            body,
        )
        log.info("ModelVersion %s/%s created for %s %s", ns, name, kind, job["metadata"]["name"])
    except client.ApiException as exc:
        if exc.status != 409:  # 409: made before (an earlier run of the operator): fine
            raise kopf.TemporaryError(f"ModelVersion {name}: {reason(exc)}", delay=5) from exc
    plural = TRAINING_JOB_PLURAL if kind == TRAINING_JOB_KIND else COMPRESSION_JOB_PLURAL
    patch = {"metadata": {"annotations": {MODEL_VERSION_ANNOTATION: name}}}
    try:
        kube.call("patch", plural, kube.custom.patch_namespaced_custom_object, GROUP, VERSION,
                  ns, plural, job["metadata"]["name"], patch, **RAW)  # fmt: skip
    except client.ApiException as exc:
        if exc.status != 404:  # 404: the job is gone already; its version stays
            raise kopf.TemporaryError(f"annotating {name}: {reason(exc)}", delay=5) from exc
    known.add((ns, name))


async def record_job_version(kind: str, body: Mapping[str, Any], memo: kopf.Memo) -> None:
    """On every event of a TrainingJob or CompressionJob: its ModelVersion once it succeeded
    with a model. Called from the kind's one ``on.event`` handler (controller/__init__.py),
    not a handler of its own: Kopf's machinery around each handler call cost more than the
    reconciler's own handler in a 2,000-job burst, for a check that is false on all but a
    job's last events."""
    # Checked here first: a thread hop and a copy of the body for every event of every job
    # was 4% of the operator's CPU in a 2,000-job burst.
    if not has_model_to_record(body):
        return
    known = memo.setdefault("model_versions", set())
    await asyncio.to_thread(record_version, _kube(memo), kind, _plain(body), known)


# ------------------------------------------------------------------ aliases


def _patch(kube: Kube, ns: str, name: str, body: Body, status: bool = False) -> None:
    fn = (
        kube.custom.patch_namespaced_custom_object_status
        if status
        else kube.custom.patch_namespaced_custom_object
    )
    kube.call("patch", MODEL_VERSION_PLURAL, fn, GROUP, VERSION, ns, MODEL_VERSION_PLURAL, name,
              body, **RAW)  # fmt: skip


def list_versions(kube: Kube, ns: str, model: str) -> list[Body]:
    got = kube.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, MODEL_VERSION_PLURAL, label_selector=f"{MODEL_LABEL}={model}"
    )
    return list(got.get("items") or [])


def reconcile_aliases(kube: Kube, ns: str, model: str) -> None:
    """One holder per alias of ``model``: take it off the older holders, stamp the holder."""
    versions = list_versions(kube, ns, model)
    by_name = {v["metadata"]["name"]: v for v in versions}
    for move in alias_moves(versions):
        for loser in move.losers:
            old = by_name[loser]
            keep = [a for a in old["spec"].get("aliases") or [] if a != move.alias]
            # resourceVersion in the patch: a concurrent change of the loser fails it (409)
            # and the handler runs again on fresh state instead of overwriting it.
            meta = {"resourceVersion": old["metadata"]["resourceVersion"]}
            _patch(kube, ns, loser, {"metadata": meta, "spec": {"aliases": keep}})
            message = f"alias {move.alias} moved from {loser} to {move.winner}"
            post_event(kube, old, "AliasRemoved", message)
            post_event(kube, by_name[move.winner], "AliasAssigned", message)
            old["spec"]["aliases"] = keep
    for name, stamps in stamp_patches(versions, _now()).items():
        _patch(kube, ns, name, {"status": {"aliasSince": stamps}}, status=True)


# ------------------------------------------------------------------ artifact checks


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_artifact(spec: Body, seen: dict[str, tuple[int, int, str]]) -> tuple[str, str] | None:
    """(phase, message) of the version's artifact; None where the store is not readable here.
    ``seen`` caches digests by (size, mtime), so an unchanged file is not hashed again."""
    artifact = spec.get("artifact") or {}
    path = version_dir(str(artifact.get("uri", "")))
    if path is None:
        return None
    weights = path / WEIGHTS
    if not weights.is_file():
        return artifact_phase(False, None, None)
    st = weights.stat()
    cached = seen.get(str(weights))
    if cached is None or cached[:2] != (st.st_size, st.st_mtime_ns):
        cached = (st.st_size, st.st_mtime_ns, _digest(weights))
        seen[str(weights)] = cached
    return artifact_phase(True, cached[2], artifact.get("sha256"))


def verify(kube: Kube, body: Body, seen: dict[str, tuple[int, int, str]]) -> None:
    """Write the artifact's phase where it changed (or the version has none yet)."""
    meta, status = body["metadata"], body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return
    found = check_artifact(body.get("spec") or {}, seen)
    phase, message = found or ("Ready", "store not readable by the operator; not verified")
    if status.get("phase") == phase and status.get("message") == message:
        return
    patch = {"phase": phase, "message": message, "lastVerified": _now()}
    _patch(kube, meta["namespace"], meta["name"], {"status": patch}, status=True)
    if phase != status.get("phase") and status.get("phase"):
        post_event(kube, body, f"Artifact{phase}", message)


def wake_waiting(memo: kopf.Memo, ns: str, model: str) -> None:
    """Reconcile now the jobs whose source.modelVersion / initFrom.modelVersion names
    ``model`` (a job Waiting for a version starts when it appears or gets its alias, not on a
    later event)."""
    r = memo.reconciler
    for (kind, kns, name), body in list(r.cache.objects.items()):
        ref = version_ref_of(kind, body)
        if kns == ns and ref is not None and ref_model(ref) == model:
            r.enqueue((kind, kns, name), 0.0)


@kopf.on.event(GROUP, VERSION, MODEL_VERSION_PLURAL)
async def _model_version_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    if event.get("type") == "DELETED":
        return
    kube, plain = _kube(memo), _plain(body)
    model = str((plain.get("spec") or {}).get("model"))
    ns = str(body.metadata.namespace)
    try:
        await asyncio.to_thread(reconcile_aliases, kube, ns, model)
        wake_waiting(memo, ns, model)
        if not (plain.get("status") or {}).get("phase"):
            seen = memo.setdefault("digests", {})
            await asyncio.to_thread(verify, kube, plain, seen)
    except client.ApiException as exc:
        # on.event handlers are not retried by Kopf: the next event (ours or the loser's
        # patch) brings the version back here, and the timer looks again.
        log.warning("ModelVersion %s/%s: %s", ns, body.metadata.name, reason(exc))


@kopf.timer(GROUP, VERSION, MODEL_VERSION_PLURAL, interval=VERIFY_INTERVAL)
async def _model_version_verify(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    seen = memo.setdefault("digests", {})
    kube, plain = _kube(memo), _plain(body)
    await asyncio.to_thread(verify, kube, plain, seen)
    model = str((plain.get("spec") or {}).get("model"))
    await asyncio.to_thread(reconcile_aliases, kube, str(body.metadata.namespace), model)


# ------------------------------------------------------------------ deletion


def delete_artifact(uri: str) -> str:
    """Delete a version's directory: rename to a hidden tombstone (atomic), then remove it.
    Run again after a kill, it finishes a tombstone left behind."""
    path = version_dir(uri)
    if path is None:
        raise kopf.PermanentError(f"{uri}: the operator cannot reach this store to delete it")
    tomb = path.parent / f"{TOMBSTONE}{path.name}"
    if path.exists():
        path.rename(tomb)
    if tomb.exists():
        shutil.rmtree(tomb)
    return f"artifact {uri} deleted"


@kopf.on.delete(GROUP, VERSION, MODEL_VERSION_PLURAL)
async def _model_version_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    kube, plain = _kube(memo), _plain(body)
    meta, spec = plain["metadata"], plain.get("spec") or {}
    if (plain.get("status") or {}).get("phase") != "Deleting":
        patch = {"status": {"phase": "Deleting", "message": "applying the artifact policy"}}
        await asyncio.to_thread(_patch, kube, meta["namespace"], meta["name"], patch, True)
    if spec.get("artifactPolicy") != "Delete":
        return
    uri = str((spec.get("artifact") or {}).get("uri"))
    try:
        message = await asyncio.to_thread(delete_artifact, uri)
    except OSError as exc:
        raise kopf.TemporaryError(f"could not delete {uri}: {exc}", delay=5) from exc
    log.info("ModelVersion %s/%s: %s", meta["namespace"], meta["name"], message)


__all__ = [
    "check_artifact",
    "delete_artifact",
    "list_versions",
    "reconcile_aliases",
    "record_version",
    "resolve_source_version",
    "verify",
]
