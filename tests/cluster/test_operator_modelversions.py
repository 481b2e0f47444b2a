"""ModelVersions on the real control plane: made by the operator when jobs produce models,
listed by kubectl with their lineage, aliases moved by promotion (CLI and plain kubectl patch),
artifacts re-verified, deletion behind a finalizer that survives an operator kill.

The workers do not run on KWOK nodes: as in test_operator_compression.py the test plays the
kubelet for the pods whose result matters (termination message with the result JSON), and
writes the version folders a worker would have written (weights + model card) into a local
store the operator reads (file://, as a store on a PVC mounted in the operator reads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.cluster.opkit import (
    REPO_ROOT,
    condition,
    create,
    event_reasons,
    example,
    get,
    held,
    running_operator,
    wait_phase,
    wait_running_pods,
)

from torchyard.api.constants import GROUP, VERSION, ConditionType, Phase, Reason
from torchyard_devcluster import finish_pod_as_kubelet
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster

PLURAL = "modelversions"


def write_version(store: Path, model: str, n: int, lineage: dict[str, Any]) -> dict[str, Any]:
    """A version folder as a worker writes it; returns the result's ``model`` entry."""
    vdir = store / model / f"v{n}"
    vdir.mkdir(parents=True)
    weights = os.urandom(4096)
    (vdir / "model.safetensors").write_bytes(weights)
    sha = hashlib.sha256(weights).hexdigest()
    uri = f"file://{vdir}"
    card = {"name": model, "version": n, "uri": uri, "sha256": sha, "bytes": len(weights),
            "metrics": {"accuracy": 0.9}, "lineage": lineage, "specHash": "ab" * 32,
            "data": {"builtin": "digits"}}  # fmt: skip
    (vdir / "model-card.json").write_text(json.dumps(card))
    return {"name": model, "version": n, "uri": uri, "sha256": sha, "metrics": {"accuracy": 0.9}}


def register(kube: Kube, namespace: str, entry: dict[str, Any], policy: str = "Keep") -> None:
    """A ModelVersion made by hand for a version folder (the shape the operator makes)."""
    model = entry["name"]
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelVersion",
        "metadata": {"name": f"{model}-v{entry['version']}",
                     "labels": {f"{GROUP}/model": model}},
        "spec": {"model": model, "version": entry["version"], "artifactPolicy": policy,
                 "artifact": {"uri": entry["uri"], "sha256": entry["sha256"]},
                 "origin": {"source": "TrainingJob/j"}},
    }  # fmt: skip
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def mv(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        out: dict[str, Any] = kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        return out
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_mv(kube: Kube, namespace: str, name: str, what: str, check: Any) -> dict[str, Any]:
    def look() -> dict[str, Any] | None:
        obj = mv(kube, namespace, name)
        return obj if obj is not None and check(obj) else None

    out: dict[str, Any] = poll(look, timeout=120, what=f"{name}: {what}")
    return out


def phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def aliases(obj: dict[str, Any]) -> list[str]:
    return list(obj["spec"].get("aliases") or [])


def run(kube: Kube, *argv: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(kube.cluster.kubeconfig)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def torchyard(kube: Kube, *argv: str) -> str:
    return run(kube, sys.executable, "-m", "torchyard.cli", *argv)


def table(text: str) -> dict[str, dict[str, str]]:
    """kubectl's table by NAME: column -> cell, cut at the header's column starts."""
    head, *rows = text.rstrip().splitlines()
    names = head.split()
    starts = [head.index(f"{n} " if i < len(names) - 1 else n) for i, n in enumerate(names)]
    bounds = [*starts[1:], None]
    return {
        row.split()[0]: {n: row[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)}
        for row in rows
    }


def finish(kube: Kube, namespace: str, pods: list[Any], result: dict[str, Any]) -> None:
    for p in pods:
        rank = p.metadata.annotations["batch.kubernetes.io/job-completion-index"]
        message = json.dumps(result) if rank == "0" else None
        finish_pod_as_kubelet(kube.api_client, p.metadata.name, namespace, message)


def test_jobs_make_versions_promotion_moves_aliases_missing_artifacts(
    kube: Kube, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHYARD_VERIFY_INTERVAL_SECONDS", "1")
    store = tmp_path / "store"
    trained = write_version(store, "digits-mlp", 1, {"job": "digits-ddp", "kind": "TrainingJob"})
    source = {"name": "digits-mlp", "version": 1, "uri": trained["uri"]}
    pruned = write_version(
        store,
        "digits-mlp-pruned",
        1,
        {"job": "digits-prune", "kind": "CompressionJob", "source": source},
    )
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, held(example("digits-ddp.yaml")))
        create(kube, namespace, held(example("compress-prune.yaml")))
        pods = wait_running_pods(kube, namespace, "digits-ddp", 2)
        finish(kube, namespace, pods, {"status": "Succeeded", "model": trained})
        wait_phase(kube, namespace, "TrainingJob", "digits-ddp", Phase.SUCCEEDED)
        cpods = wait_running_pods(kube, namespace, "digits-prune", 1, kind="compressionjob")
        finish(kube, namespace, cpods, {"status": "Succeeded", "model": pruned})
        wait_phase(kube, namespace, "CompressionJob", "digits-prune", Phase.SUCCEEDED)
        for name in ("digits-mlp-v1", "digits-mlp-pruned-v1"):
            wait_mv(kube, namespace, name, "Ready", lambda o: phase(o) == "Ready")

        rows = table(run(kube, "kubectl", "get", "modelversions", "-n", namespace))
        assert rows["digits-mlp-v1"]["SOURCE"] == "TrainingJob/digits-ddp"
        assert rows["digits-mlp-v1"]["PARENT"] == ""
        assert rows["digits-mlp-pruned-v1"]["SOURCE"] == "CompressionJob/digits-prune"
        assert rows["digits-mlp-pruned-v1"]["PARENT"] == "digits-mlp-v1"
        assert rows["digits-mlp-pruned-v1"]["FORMAT"] == '["safetensors","sparse"]'
        ours = table(torchyard(kube, "models", "-n", namespace))
        for name, row in rows.items():  # `torchyard models`: the same columns, same cells
            assert {k: v for k, v in ours[name].items() if k not in ("AGE", "CREATED")} == {
                k: v for k, v in row.items() if k != "AGE"
            }
        first = mv(kube, namespace, "digits-mlp-v1")
        assert first is not None
        assert first["spec"]["origin"]["lineage"]["job"] == "digits-ddp"
        assert first["spec"]["artifact"]["sha256"] == trained["sha256"]
        assert not first["metadata"].get("ownerReferences")  # outlives its job
        job = get(kube, namespace, "TrainingJob", "digits-ddp") or {}
        assert job["metadata"]["annotations"][f"{GROUP}/model-version"] == "digits-mlp-v1"

        # A second version of the model, registered by hand (same shape the operator makes).
        second = write_version(store, "digits-mlp", 2, {"job": "other", "kind": "TrainingJob"})
        body = {k: v for k, v in first.items() if k in ("apiVersion", "kind", "spec")}
        body["metadata"] = {"name": "digits-mlp-v2", "labels": first["metadata"]["labels"]}
        body["spec"] = {**body["spec"], "version": 2, "aliases": []}
        body["spec"]["artifact"] = {**body["spec"]["artifact"], "uri": second["uri"],
                                    "sha256": second["sha256"]}  # fmt: skip
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        said = torchyard(kube, "promote", "digits-mlp@production", "1", "-n", namespace)
        assert "digits-mlp-v1" in said
        # A plain kubectl patch gives v2 the alias: the operator takes it off v1.
        run(kube, "kubectl", "patch", "modelversion", "digits-mlp-v2", "-n", namespace,
            "--type", "merge", "-p", '{"spec":{"aliases":["production"]}}')  # fmt: skip
        wait_mv(kube, namespace, "digits-mlp-v1", "alias gone", lambda o: not aliases(o))
        assert aliases(mv(kube, namespace, "digits-mlp-v2") or {"spec": {}}) == ["production"]
        # Promoting v1 again: v2 loses it.
        said = torchyard(kube, "promote", "digits-mlp@production", "v1", "-n", namespace)
        assert "was digits-mlp-v2" in said
        assert aliases(mv(kube, namespace, "digits-mlp-v2") or {"spec": {}}) == []
        assert aliases(mv(kube, namespace, "digits-mlp-v1") or {"spec": {}}) == ["production"]
        assert (
            event_reasons(kube, namespace, "digits-mlp-v2", "AliasRemoved").count("AliasRemoved")
            == 1
        )
        assert (
            event_reasons(kube, namespace, "digits-mlp-v1", "AliasAssigned").count("AliasAssigned")
            == 1
        )

        # The artifact vanishes: the timer marks the version Missing.
        shutil.rmtree(store / "digits-mlp-pruned" / "v1")
        gone = wait_mv(kube, namespace, "digits-mlp-pruned-v1", "Missing",
                       lambda o: phase(o) == "Missing")  # fmt: skip
        assert "gone" in gone["status"]["message"]
        assert phase(mv(kube, namespace, "digits-mlp-v1") or {}) == "Ready"


@contextlib.contextmanager
def undeletable(directory: Path) -> Iterator[None]:
    """Entries of ``directory`` cannot be renamed or removed while inside: mode 555, or as
    root (who ignores mode bits) the immutable attribute; skips where neither holds."""
    root = os.geteuid() == 0
    block = ["chattr", "+i"] if root else ["chmod", "555"]
    unblock = ["chattr", "-i"] if root else ["chmod", "755"]
    if shutil.which(block[0]) is None:
        pytest.skip(f"needs {block[0]}")
    subprocess.run([*block, str(directory)], check=True)
    try:
        try:
            (directory / "probe").mkdir()
        except OSError:
            pass
        else:
            (directory / "probe").rmdir()
            pytest.skip(f"{' '.join(block)} does not stop changes here")
        yield
    finally:
        subprocess.run([*unblock, str(directory)], check=True)


def test_deletion_applies_the_policy_and_survives_an_operator_kill(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    with running_operator(kube, namespace, tmp_path) as op:
        made = {}
        for model, policy in (("kept", "Keep"), ("dropped", "Delete")):
            entry = write_version(store, model, 1, {"job": "j", "kind": "TrainingJob"})
            register(kube, namespace, entry, policy)
            made[model] = wait_mv(
                kube, namespace, f"{model}-v1", "Ready with the finalizer",
                lambda o: phase(o) == "Ready" and bool(o["metadata"].get("finalizers")),
            )  # fmt: skip

        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kept-v1")
        poll(lambda: mv(kube, namespace, "kept-v1") is None or None, timeout=120, what="kept-v1")
        assert (store / "kept" / "v1" / "model.safetensors").is_file()  # Keep: files stay

        vdir = store / "dropped" / "v1"
        with undeletable(store / "dropped"):
            kube.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "dropped-v1"
            )
            wait_mv(kube, namespace, "dropped-v1", "Deleting", lambda o: phase(o) == "Deleting")
            op.kill()  # mid-delete: the policy has started and cannot finish yet
            left = mv(kube, namespace, "dropped-v1")
            assert left is not None
            assert left["metadata"].get("finalizers")
            assert left["metadata"].get("deletionTimestamp")
            # Not half-deleted: the object is there and so is the whole artifact.
            weights = (vdir / "model.safetensors").read_bytes()
            assert (
                hashlib.sha256(weights).hexdigest() == made["dropped"]["spec"]["artifact"]["sha256"]
            )
        op.start()
        poll(lambda: mv(kube, namespace, "dropped-v1") is None or None, timeout=120,
             what="dropped-v1 deleted after the restart")  # fmt: skip
        assert not vdir.exists()
        assert [p.name for p in (store / "dropped").iterdir()] == []  # no tombstone left


def test_compression_job_from_an_alias_waits_resolves_and_records_it(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    register(kube, namespace, write_version(store, "digits-mlp", 1, {"kind": "TrainingJob"}))
    job = held(example("compress-prune.yaml"))
    job["metadata"]["name"] = "prune-prod"
    job["spec"]["source"] = {"modelVersion": "digits-mlp@production"}
    with running_operator(kube, namespace, tmp_path):
        create(kube, namespace, job)
        waiting = wait_phase(kube, namespace, "CompressionJob", "prune-prod", Phase.WAITING)
        assert condition(waiting, ConditionType.WAITING)["reason"] == Reason.WAITING_FOR_SOURCE
        assert "spec.source.modelVersion digits-mlp@production" in waiting["status"]["message"]

        torchyard(kube, "promote", "digits-mlp@production", "1", "-n", namespace)
        (pod,) = wait_running_pods(kube, namespace, "prune-prod", 1, kind="compressionjob")
        started = get(kube, namespace, "CompressionJob", "prune-prod") or {}
        resolved = started["status"]["sourceVersion"]
        assert (resolved["name"], resolved["version"]) == ("digits-mlp", 1)
        # The workers read the version as a modelRef into its store (they cannot read aliases).
        specs = [
            yaml.safe_load(text)
            for cm in kube.core.list_namespaced_config_map(namespace).items
            for text in (cm.data or {}).values()
            if "CompressionJob" in text
        ]
        (source,) = [s["spec"]["source"] for s in specs]
        assert source == {"modelRef": {"name": "digits-mlp", "version": 1,
                                       "storage": f"file://{store}"}}  # fmt: skip

        # The card of what the worker wrote names no source: the parent comes from the job.
        out = write_version(store, "digits-mlp-pruned", 1, {"kind": "CompressionJob"})
        finish(kube, namespace, [pod], {"status": "Succeeded", "model": out})
        made = wait_mv(kube, namespace, "digits-mlp-pruned-v1", "made", lambda o: True)
        assert made["spec"]["origin"]["parent"] == "digits-mlp-v1"
