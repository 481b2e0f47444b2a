"""`torchyard convert` on public Kubeflow manifests, its field mapping, and runs of the results.

The manifests under ``kubeflow/`` are public examples copied unchanged; kubeflow/SOURCES.md
names each one's repository, path and commit:

- kubeflow/training-operator ``examples/pytorch/cpu-demo/demo.yaml`` (+ ``demo.py``),
  ``examples/pytorch/elastic/echo/echo.yaml`` (+ ``echo.py``),
  ``examples/pytorch/elastic/imagenet/imagenet.yaml``, ``examples/pytorch/simple.yaml``,
  ``examples/pytorch/mnist/v1/pytorch_job_mnist_nccl.yaml``;
- kubernetes-sigs/kueue ``site/static/examples/jobs/sample-pytorchjob.yaml``;
- kubeflow/trainer ``examples/yaml/advanced/02-kueue-integration.yaml``,
  ``examples/yaml/02-runtime-patches.yaml``, ``examples/yaml/basic/04-pytorch-simple.yaml``,
  ``docs/operator-guides/podtemplate-overrides.md`` (Example 7).

Every one converts to a TrainingJob that ``torchyard validate`` accepts; the runnable ones
(a DDP all-reduce under ``torchrun``, Kubeflow's elastic echo under ``python -m
torch.distributed.run``, a TrainJob's inline ``torchrun --no-python python3 -c`` script) run
with ``torchyard run`` as real processes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.worker.helpers import run_local
from torchyard.api import check_manifests
from torchyard.cli import app
from torchyard.convert import ConvertError, convert_text
from torchyard.convert.job import cpu_count, pod_template_supported, procs_per_worker
from torchyard.convert.launch import strip_launch_flags
from torchyard.convert.notes import Notes

KUBEFLOW = Path(__file__).parent / "kubeflow"
FIXTURES = sorted(KUBEFLOW.glob("*.yaml"))
# Containers that give only args: the image's ENTRYPOINT, as its Dockerfile says (SOURCES.md);
# the docs example's image is a placeholder, so is its entrypoint here.
ENTRYPOINTS = {
    "mnist-nccl.yaml": "python /opt/mnist/src/mnist.py",
    "trainjob-multiple-overrides.yaml": "python /opt/train.py",
}
runner = CliRunner()


def _convert_cli(*args: str) -> Any:
    return runner.invoke(app, ["convert", *args])


def _convert(path: Path) -> str:
    args = [str(path)]
    if path.name in ENTRYPOINTS:
        args += ["--entrypoint", ENTRYPOINTS[path.name]]
    result = _convert_cli(*args)
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


def test_at_least_five_public_examples_of_each_api_generation() -> None:
    kinds = [d["kind"] for p in FIXTURES for d in yaml.safe_load_all(p.read_text()) if d]
    assert kinds.count("PyTorchJob") >= 5
    assert kinds.count("TrainJob") >= 3


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_public_example_converts_to_a_valid_trainingjob(path: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{path.stem}.yaml"
    out.write_text(_convert(path))
    check = check_manifests(out)
    assert not check.errors, [e.errors for e in check.errors]
    assert [j.kind for j in check.jobs] == ["TrainingJob"]
    validated = runner.invoke(app, ["validate", str(out)])
    assert validated.exit_code == 0, validated.stderr


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_a_container_with_only_args_needs_the_entrypoint(name: str) -> None:
    result = _convert_cli(str(KUBEFLOW / name))
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = str(result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "--entrypoint" in lines[0]


def test_notes_say_what_was_dropped_and_why() -> None:
    result = _convert_cli(str(KUBEFLOW / "elastic-imagenet.yaml"))
    assert result.exit_code == 0
    notes = str(result.stderr)
    for field in ("minReplicas", "maxReplicas", "maxRestarts", "metrics", "rdzvBackend"):
        assert re.search(rf"dropped: spec\.elasticPolicy\.{field}: \S", notes), field
    assert "restartPolicy (OnFailure)" in notes


def test_multi_document_input_from_stdin_keeps_the_order() -> None:
    text = "\n---\n".join(
        (KUBEFLOW / name).read_text() for name in ("cpu-demo.yaml", "trainjob-pytorch-simple.yaml")
    )
    result = runner.invoke(app, ["convert", "-"], input=text)
    assert result.exit_code == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["torchrun-cpu", "pytorch-mnist"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: a}\n", "Job (batch/v1) is not"),
        ("apiVersion: kubeflow.org/v1\nkind: TFJob\nmetadata: {name: a}\n", "TFJob"),
        (
            "apiVersion: trainer.kubeflow.org/v1alpha1\nkind: TrainJob\nmetadata: {name: a}\n"
            "spec: {runtimeRef: {name: deepspeed-distributed}, trainer: {command: [ds]}}\n",
            "not a torch-distributed runtime",
        ),
        (
            "apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata: {name: a}\n"
            "spec: {pytorchReplicaSpecs: {Launcher: {replicas: 1}}}\n",
            "unknown replica type",
        ),
        (
            "apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata: {name: a}\n"
            "spec: {pytorchReplicaSpecs: {Worker: {replicas: two}}}\n",
            "malformed PyTorchJob",
        ),
        ("kind: [unclosed\n", "not valid YAML"),
        ("---\n", "no manifest"),
    ],
    ids=["job", "tfjob", "deepspeed-runtime", "replica-type", "malformed", "yaml", "empty"],
)
def test_what_cannot_be_converted_is_one_line_and_exit_1(text: str, expected: str) -> None:
    result = runner.invoke(app, ["convert", "-"], input=text)
    assert result.exit_code == 1
    lines = str(result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]


def test_a_bad_document_is_named_by_its_number() -> None:
    good = (KUBEFLOW / "simple.yaml").read_text()
    with pytest.raises(ConvertError, match=r"^document 2: Job"):
        convert_text(good + "\n---\napiVersion: batch/v1\nkind: Job\n")


@pytest.mark.parametrize(
    ("command", "kept", "nnodes", "nproc"),
    [
        (["torchrun", "train.py"], ["torchrun", "train.py"], None, None),
        (
            ["torchrun", "--nnodes=2", "--nproc_per_node", "4", "--max-restarts=3", "t.py", "-x"],
            ["torchrun", "--max-restarts=3", "t.py", "-x"],
            "2",
            "4",
        ),
        (
            [
                "python3",
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=8",
                "t.py",
            ],
            ["python3", "-m", "torch.distributed.run", "t.py"],
            None,
            "8",
        ),
        (
            [
                "/usr/bin/python",
                "-m",
                "torch.distributed.run",
                "--rdzv_backend=c10d",
                "--rdzv_endpoint",
                "host:29400",
                "--rdzv-id",
                "j",
                "-m",
                "pkg.train",
                "--lr",
                "1",
            ],
            ["/usr/bin/python", "-m", "torch.distributed.run", "-m", "pkg.train", "--lr", "1"],
            None,
            None,
        ),
        (
            [
                "torchrun",
                "--no-python",
                "--master_addr=x",
                "--master_port=1",
                "--node_rank=0",
                "python3",
                "-c",
                "print(1)",
            ],
            ["torchrun", "--no-python", "python3", "-c", "print(1)"],
            None,
            None,
        ),
        # Not torchrun: left alone, flags of the user's own script included.
        (["python", "train.py", "--nnodes=2"], ["python", "train.py", "--nnodes=2"], None, None),
    ],
    ids=["plain", "shape-flags", "module-standalone", "rendezvous", "no-python", "not-torchrun"],
)
def test_launch_flags_the_operator_sets_are_taken_out(
    command: list[str], kept: list[str], nnodes: str | None, nproc: str | None
) -> None:
    notes = Notes()
    launch = strip_launch_flags(command, "command", notes)
    assert (launch.command, launch.nnodes, launch.nproc_per_node) == (kept, nnodes, nproc)
    assert len(notes.items) == (len(command) - len(kept) > 0) * len(
        [t for t in command if t.startswith("--") and t not in kept]
    )


# ---------------------------------------------------------------- the conversion table

PYTORCHJOB = """
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata:
  name: table
  namespace: team-a
  labels: {kueue.x-k8s.io/queue-name: lq, app: x}
spec:
  nprocPerNode: "4"
  elasticPolicy: {minReplicas: 1, maxReplicas: 4}
  runPolicy:
    cleanPodPolicy: All
    backoffLimit: 7
    ttlSecondsAfterFinished: 600
    activeDeadlineSeconds: 3600
    suspend: true
    schedulingPolicy: {queue: lq, priorityClass: high, minAvailable: 3}
  pytorchReplicaSpecs:
    Master:
      replicas: 1
      restartPolicy: ExitCode
      template: &tpl
        metadata:
          labels: {team: ml}
          annotations: {a: b}
        spec:
          serviceAccountName: trainer-sa
          imagePullSecrets: [{name: regcred}]
          nodeSelector: {gpu: a100}
          tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
          priorityClassName: high
          volumes:
            - {name: dshm, emptyDir: {medium: Memory, sizeLimit: 16Gi}}
            - {name: data, persistentVolumeClaim: {claimName: data}}
          containers:
            - name: pytorch
              image: registry.example/train:1
              imagePullPolicy: IfNotPresent
              command: [torchrun, --nnodes=4, train.py]
              args: [--epochs, "3"]
              env:
                - {name: NCCL_DEBUG, value: INFO}
                - {name: TOKEN, valueFrom: {secretKeyRef: {name: s, key: t}}}
                - {name: MASTER_PORT, value: "1234"}
              resources:
                requests: {cpu: "8", memory: 64Gi, nvidia.com/gpu: 4, rdma/ib: 1}
                limits: {memory: 64Gi, nvidia.com/gpu: 4, rdma/ib: 1}
              volumeMounts:
                - {name: dshm, mountPath: /dev/shm}
                - {name: data, mountPath: /data}
              ports: [{name: pytorchjob-port, containerPort: 23456}]
            - {name: sidecar, image: busybox}
    Worker:
      replicas: 3
      restartPolicy: ExitCode
      template: *tpl
"""

TRAINJOB = """
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata: {name: tj}
spec:
  runtimeRef: {name: torch-distributed}
  suspend: true
  activeDeadlineSeconds: 100
  initializer: {dataset: {storageUri: "hf://x"}}
  trainer:
    image: img
    command: [torchrun]
    args: [--nproc_per_node=2, train.py]
    numNodes: 3
    numProcPerNode: 2
    env: [{name: A, value: "1"}]
    resourcesPerNode: {limits: {nvidia.com/gpu: 2, memory: 8Gi}}
  podTemplateOverrides:
    - targetJobs: [{name: node}]
      metadata: {labels: {kueue.x-k8s.io/queue-name: q}}
      spec:
        serviceAccountName: sa
        tolerations: [{operator: Exists}]
        containers:
          - name: node
            env: [{name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}]
"""


def _get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value.get(part)
        if value is None:
            return None
    return value


@pytest.fixture(scope="module")
def table_pytorchjob() -> dict[str, Any]:
    (conversion,) = convert_text(PYTORCHJOB)
    return conversion.manifest


@pytest.fixture(scope="module")
def table_trainjob() -> dict[str, Any]:
    (conversion,) = convert_text(TRAINJOB)
    return conversion.manifest


PYTORCHJOB_TABLE = [
    # (Kubeflow field, TrainingJob field, value)
    ("metadata.name", "metadata.name", "table"),
    ("metadata.namespace", "metadata.namespace", "team-a"),
    ("metadata.labels[kueue queue]", "metadata.labels.kueue.x-k8s.io/queue-name", "lq"),
    ("container image", "spec.image", "registry.example/train:1"),
    ("container imagePullPolicy", "spec.imagePullPolicy", "IfNotPresent"),
    ("command + args, --nnodes out", "spec.command", ["torchrun", "train.py", "--epochs", "3"]),
    ("env value", "spec.env", [{"name": "NCCL_DEBUG", "value": "INFO"}]),
    ("Master + Worker replicas", "spec.workers", 4),
    ("nprocPerNode", "spec.procsPerWorker", 4),
    ("nvidia.com/gpu", "spec.resources.gpu", 4),
    ("requests.cpu", "spec.resources.cpu", "8"),
    ("limits.memory", "spec.resources.memory", "64Gi"),
    ("/dev/shm emptyDir sizeLimit", "spec.resources.sharedMemory", "16Gi"),
    ("template labels", "spec.podMetadata.labels", {"team": "ml"}),
    ("template annotations", "spec.podMetadata.annotations", {"a": "b"}),
    ("restartPolicy", "spec.runPolicy.retryPolicy", "ExitCode"),
    ("runPolicy.cleanPodPolicy", "spec.runPolicy.cleanPodPolicy", "All"),
    ("runPolicy.backoffLimit", "spec.runPolicy.backoffLimit", 7),
    ("runPolicy.ttlSecondsAfterFinished", "spec.runPolicy.ttlSecondsAfterFinished", 600),
    ("runPolicy.activeDeadlineSeconds", "spec.runPolicy.activeDeadlineSeconds", 3600),
    # A Kueue job is created suspended for Kueue; the operator suspends its worker Job itself.
    ("runPolicy.suspend of a Kueue job", "spec.runPolicy.suspend", None),
    ("schedulingPolicy.queue", "spec.scheduling.queue", "lq"),
    ("schedulingPolicy.priorityClass", "spec.scheduling.priorityClassName", "high"),
    ("nodeSelector", "spec.scheduling.nodeSelector", {"gpu": "a100"}),
    (
        "tolerations",
        "spec.scheduling.tolerations",
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    ),
]
POD_TEMPLATE_TABLE = [
    ("serviceAccountName", "spec.podTemplate.spec.serviceAccountName", "trainer-sa"),
    ("imagePullSecrets", "spec.podTemplate.spec.imagePullSecrets", [{"name": "regcred"}]),
    (
        "other volumes",
        "spec.podTemplate.spec.volumes",
        [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    ),
    ("the training container", "spec.podTemplate.spec.containers.0.name", "worker"),
    (
        "env valueFrom (a Secret)",
        "spec.podTemplate.spec.containers.0.env",
        [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}],
    ),
    (
        "other volumeMounts",
        "spec.podTemplate.spec.containers.0.volumeMounts",
        [{"name": "data", "mountPath": "/data"}],
    ),
    (
        "other resources (RDMA)",
        "spec.podTemplate.spec.containers.0.resources",
        {"requests": {"rdma/ib": 1}, "limits": {"rdma/ib": 1}},
    ),
    ("sidecar container", "spec.podTemplate.spec.containers.1.name", "sidecar"),
]
TRAINJOB_TABLE = [
    ("trainer.image", "spec.image", "img"),
    ("trainer.command + args, --nproc_per_node out", "spec.command", ["torchrun", "train.py"]),
    ("trainer.numNodes", "spec.workers", 3),
    ("trainer.numProcPerNode", "spec.procsPerWorker", 2),
    ("trainer.env", "spec.env", [{"name": "A", "value": "1"}]),
    ("resourcesPerNode gpu", "spec.resources.gpu", 2),
    ("resourcesPerNode memory", "spec.resources.memory", "8Gi"),
    ("spec.suspend of a Kueue job", "spec.runPolicy.suspend", None),
    ("spec.activeDeadlineSeconds", "spec.runPolicy.activeDeadlineSeconds", 100),
    ("override pod label kueue queue", "metadata.labels.kueue.x-k8s.io/queue-name", "q"),
    ("override tolerations", "spec.scheduling.tolerations", [{"operator": "Exists"}]),
]


def _lookup(doc: dict[str, Any], path: str) -> Any:
    """`path` with dotted label keys (kueue.x-k8s.io/queue-name) read as one key."""
    if ".labels." in path:
        head, key = path.split(".labels.", 1)
        return (_get(doc, head + ".labels") or {}).get(key)
    return _get(doc, path)


@pytest.mark.parametrize(("source", "target", "value"), PYTORCHJOB_TABLE)
def test_pytorchjob_mapping(table_pytorchjob: dict, source: str, target: str, value: Any) -> None:
    assert _lookup(table_pytorchjob, target) == value, source


@pytest.mark.parametrize(("source", "target", "value"), POD_TEMPLATE_TABLE)
def test_pytorchjob_pod_template_mapping(
    table_pytorchjob: dict, source: str, target: str, value: Any
) -> None:
    if not pod_template_supported():
        pytest.skip("this TrainingJob has no spec.podTemplate")
    assert _lookup(table_pytorchjob, target) == value, source


@pytest.mark.parametrize(("source", "target", "value"), TRAINJOB_TABLE)
def test_trainjob_mapping(table_trainjob: dict, source: str, target: str, value: Any) -> None:
    assert _lookup(table_trainjob, target) == value, source


def test_suspend_is_kept_for_a_job_outside_kueue() -> None:
    text = TRAINJOB.replace("kueue.x-k8s.io/queue-name: q", "team: a")
    (conversion,) = convert_text(text)
    assert conversion.manifest["spec"]["runPolicy"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in conversion.manifest["metadata"].get("labels", {})


def test_what_is_not_carried_over_is_named() -> None:
    (pj,) = convert_text(PYTORCHJOB)
    lines = [n.line() for n in pj.notes]
    expected = [
        r"^dropped: .*env\[2\] \(MASTER_PORT\): .*operator sets it",
        r"^dropped: .*ports: ",
        r"^dropped: spec\.elasticPolicy\.minReplicas: ",
        r"^dropped: spec\.runPolicy\.schedulingPolicy\.minAvailable: ",
        r"^changed: .*--nnodes=4: moved to spec.workers",
        r"^changed: spec\.pytorchReplicaSpecs\.Master: folded into the workers",
        r"^moved: .*dshm.*sharedMemory",
        r"^dropped: suspend: true: .*Kueue",
    ]
    for pattern in expected:
        assert any(re.search(pattern, line) for line in lines), (pattern, lines)
    (tj,) = convert_text(TRAINJOB)
    tlines = [n.line() for n in tj.notes]
    assert any(line.startswith("dropped: spec.initializer: ") for line in tlines), tlines
    assert any(line.startswith("dropped: spec.runtimeRef: ") for line in tlines), tlines


# ---------------------------------------------------------------- runs (real processes)


def _run_converted(name: str, script: str | None, tmp_path: Path) -> list[str]:
    """Convert kubeflow/<name>, run it with `torchyard run` in tmp_path (the Kubeflow script
    beside it), and return every pod's log."""
    manifest = tmp_path / name
    manifest.write_text(_convert(KUBEFLOW / name))
    if script:
        shutil.copy(KUBEFLOW / script, tmp_path / script)
    proc = run_local(manifest, tmp_path)
    doc = yaml.safe_load(manifest.read_text())
    run_dir = tmp_path / "torchyard-runs" / doc["metadata"]["name"]
    logs = [p.read_text() for p in sorted(run_dir.glob("pod-*/log.txt"))]
    assert proc.returncode == 0, proc.stderr[-3000:] + "".join(logs)[-3000:]
    assert len(logs) == doc["spec"]["workers"]
    return logs


@pytest.mark.worker
def test_converted_ddp_example_runs_with_torchyard_run(tmp_path: Path) -> None:
    """cpu-demo: Master + Worker with nprocPerNode 2 and `torchrun demo.py`: 2 pods × 2
    processes all-reduce a 1 each, so every rank must see the world size 4 and the sum 4."""
    logs = _run_converted("cpu-demo.yaml", "demo.py", tmp_path)
    text = "".join(logs)
    ranks = sorted(
        int(r) for r in re.findall(r"rank (\d+) world_size 4 result tensor\(\[4\]\)", text)
    )
    assert ranks == [0, 1, 2, 3], text[-3000:]


@pytest.mark.worker
def test_kubeflow_python_m_torch_distributed_run_example_runs(tmp_path: Path) -> None:
    """elastic-echo: Kubeflow's `python -m torch.distributed.run ./echo.py`, its script
    unchanged, on 2 pods: each rank prints the group it joined."""
    logs = _run_converted("elastic-echo.yaml", "echo.py", tmp_path)
    text = "".join(logs)
    ranks = sorted(int(r) for r in re.findall(r"rank=(\d+), world_size = 2", text))
    assert ranks == [0, 1], text[-3000:]


@pytest.mark.worker
def test_converted_trainjob_inline_script_runs(tmp_path: Path) -> None:
    """runtime-patches: a TrainJob whose trainer runs `torchrun --no-python python3 -c …` on
    2 nodes with an env var of its own. Its runtime's numProcPerNode is auto, which Kubeflow
    resolves from resourcesPerNode's 4 CPUs: 2 pods × 4 processes, every rank in one group."""
    logs = _run_converted("trainjob-runtime-patches.yaml", None, tmp_path)
    text = "".join(logs)
    # A pod's ranks share its stdout and the manifest sets PYTHONUNBUFFERED=1, so print's text
    # and its newline are two writes and two ranks' lines can interleave ("RANK: 1RANK: 0\n\n",
    # as in a real pod): count the tokens, not whole lines (LOCAL_RANK is not a RANK).
    assert sorted(int(r) for r in re.findall(r"(?<!_)RANK: (\d+)", text)) == list(range(8))
    assert text.count("WORLD_SIZE: 8") == 8, text[-3000:]
    assert text.count("CUSTOM_VAR: custom-value") == 8


@pytest.mark.parametrize(
    ("value", "gpus", "cpus", "expected"),
    [
        ("4", 0, None, 4),
        (2, 8, None, 2),
        ("auto", 8, 16, 8),
        ("gpu", 2, None, 2),
        ("auto", 0, 6, 6),
        ("cpu", 4, 6, 6),
        ("auto", 0, None, 1),
        (None, 4, 4, None),
    ],
)
def test_procs_per_node_words_resolve_as_kubeflow_trainer_does(
    value: Any, gpus: int, cpus: int | None, expected: int | None
) -> None:
    notes = Notes()
    assert procs_per_worker(value, gpus, cpus, "p", notes) == expected
    assert len(notes.items) == (isinstance(value, str) and not value.isdigit())


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("500m", 1), ("2500m", 3), ("4", 4), (3, 3), ("1.5", 2), (None, None)],
)
def test_cpu_quantities_round_up_to_whole_cpus(quantity: Any, expected: int | None) -> None:
    assert cpu_count(quantity) == expected
