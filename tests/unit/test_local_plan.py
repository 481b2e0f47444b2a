"""`torchyard run`'s plan of the pods: every process gets its own free metrics port."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from torchyard.api import TrainingJob, load_manifest
from torchyard.api.contract import DEFAULT_METRICS_PORT, Env
from torchyard.local import METRICS_TARGETS_FILE, free_port_blocks, plan_pods


def test_port_blocks_are_free_consecutive_and_disjoint() -> None:
    sizes = [1, 4, 4, 2]
    starts = free_port_blocks(sizes)
    blocks = [range(start, start + size) for start, size in zip(starts, sizes, strict=True)]
    ports = [p for block in blocks for p in block]
    assert len(set(ports)) == len(ports)
    for port in ports:  # released again, for the workers to bind
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("procs", [1, 4])
def test_each_process_serves_on_its_own_port_recorded_for_prometheus(
    tmp_path: Path, procs: int
) -> None:
    job = load_manifest(EXAMPLES / "digits-ddp.yaml")
    assert isinstance(job, TrainingJob)
    job.spec.procs_per_worker = procs
    with socket.socket() as taken:  # something else on the default port (or already busy)
        with contextlib.suppress(OSError):
            taken.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
            taken.listen()
        pods = plan_pods(job, tmp_path, tmp_path / "pvc", attempt=0)
    assert len(pods) == job.spec.workers
    served = []
    for pod in pods:
        base = int(pod.env[Env.METRICS_PORT])
        # the worker serves TORCHYARD_METRICS_PORT + LOCAL_RANK
        assert pod.metrics_ports == [base + r for r in range(procs)]
        served += pod.metrics_ports
    assert len(set(served)) == len(served) == job.spec.workers * procs
    assert DEFAULT_METRICS_PORT not in served
    assert int(pods[0].env[Env.MASTER_PORT]) not in served
    groups = json.loads((tmp_path / METRICS_TARGETS_FILE).read_text())
    assert [t for g in groups for t in g["targets"]] == [f"127.0.0.1:{p}" for p in served]


def test_relative_inputs_resolve_beside_the_manifest_and_outputs_stay(tmp_path: Path) -> None:
    """`torchyard run some/dir/job.yaml` from anywhere: a relative file:// input found beside
    the manifest is taken from there; one that is not stays relative to the run's directory;
    outputs (the model store, checkpoints) always stay where the run starts."""
    from torchyard.api.manifest import parse_job
    from torchyard.local_prepare import with_manifest_relative_inputs

    folder = tmp_path / "examples"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "sentences.txt").write_text("a sentence\n")
    (folder / "store").mkdir()
    doc = {
        "apiVersion": "torchyard.io/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "rel"},
        "spec": {
            "source": {"model": {"huggingface": {"path": "file://missing-model"}}},
            "data": {"uri": "file://data/sentences.txt", "format": "text"},
            "steps": [{"quantize": {"method": "dynamicInt8"}}],
            "accuracyCriterion": {"metric": "cosine"},
            "output": {"modelName": "m", "storage": "file://store"},
        },
    }
    job = with_manifest_relative_inputs(parse_job(doc), folder / "job.yaml")
    spec = job.spec
    assert spec.data.uri == f"file://{(folder / 'data' / 'sentences.txt').resolve()}"
    assert spec.source.model is not None
    assert spec.source.model.huggingface is not None
    assert spec.source.model.huggingface.path == "file://missing-model"
    assert spec.output.storage == "file://store"
