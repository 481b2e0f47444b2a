"""Pure builders: a job spec in, the Kubernetes objects that run its workers out.

Per job (DESIGN §3): a ConfigMap holding the resolved manifest, an Indexed batch/v1 Job (one
pod per worker, completion index = node rank) and, when there is more than one worker, a
headless Service giving the pods DNS names to rendezvous by. The operator applies
these; `torchyard run` starts the same pod command with the same environment as local
processes. Nothing here talks to a cluster, so everything here is unit-tested as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from torchyard.api import CompressionJob, TrainingJob, dump
from torchyard.api.common import ModelSpec, PodMetadata, ResourceSpec, RunPolicy, SchedulingSpec
from torchyard.api.constants import (
    COMPRESSION_CHILD_SUFFIX,
    COMPRESSION_JOB_KIND,
    DEFAULT_TRAINER_IMAGE,
    TRAINER_GID,
)
from torchyard.api.contract import (
    COSCHEDULING_GROUP,
    DEFAULT_MASTER_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PVC_ROOT,
    LOOPBACK_HOST,
    POD_DISRUPTION_CONDITION,
    SPEC_MOUNT_DIR,
    TERMINATION_MESSAGE_PATH,
    VOLCANO_GROUP,
    Annotation,
    Env,
    Label,
    permanent_exit_codes,
    pvc_claim,
)
from torchyard.builders.disruption import disruption_pod_fields, shutdown_env
from torchyard.builders.podtemplate import apply_pod_template
from torchyard.builders.progress import ProgressEndpoint, with_progress

Manifest = dict[str, Any]
GangMode = Literal["volcano", "coscheduling", "kueue", "none"]

SPEC_FILE = "spec.yaml"
_SAFE_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# torchrun itself, through a wrapper that keeps the failed rank's exit code (plain torchrun
# exits 1 for any failure, which would make an OOM kill look like a permanent user error).
DEFAULT_COMMAND = ("python", "-m", "torchyard_trainer.launch", "-m", "torchyard_trainer")
# Local rank r of a pod serves its metrics on TORCHYARD_METRICS_PORT + r, declared as the container
# port ``metrics-<r>`` (15 characters at most: procsPerWorker <= 64 leaves plenty of room); the
# chart's PodMonitor keeps every port whose name matches METRICS_PORT_NAME_REGEX.
METRICS_PORT_NAME_PREFIX = "metrics-"
METRICS_PORT_NAME_REGEX = "metrics-[0-9]+"


@dataclass(frozen=True)
class Workload:
    """What the builders need of a job, whatever its kind."""

    kind: str
    name: str
    namespace: str
    workers: int
    procs_per_worker: int
    resources: ResourceSpec
    image: str | None
    image_pull_policy: str | None
    command: list[str] | None
    env: list[tuple[str, str]]
    pod_metadata: PodMetadata
    run_policy: RunPolicy
    scheduling: SchedulingSpec
    storage_uris: list[str] = field(default_factory=list)
    kueue_queue: str | None = None
    """The Kueue LocalQueue: ``spec.scheduling.queue``, else the job's own
    ``kueue.x-k8s.io/queue-name`` label (:func:`kueue_queue_of`)."""
    kueue_priority_class: str | None = None
    """The job's ``kueue.x-k8s.io/priority-class`` label (a WorkloadPriorityClass)."""
    pod_template: dict[str, Any] | None = None
    """``spec.podTemplate`` as a PodTemplateSpec dict, merged last (builders.podtemplate)."""

    @property
    def world_size(self) -> int:
        return self.workers * self.procs_per_worker


def kueue_queue_of(job: TrainingJob | CompressionJob) -> str | None:
    """The LocalQueue a job names: ``spec.scheduling.queue``, else the
    ``kueue.x-k8s.io/queue-name`` label on the job itself (how Kueue users label every
    workload). Both set and different is an invalid job: the state machine fails it before
    anything is built (:func:`torchyard.state.kueue.kueue_label_conflict`, the same rule)."""
    return job.spec.scheduling.queue or job.metadata.labels.get(Label.KUEUE_QUEUE_NAME) or None


def _model_uris(model: ModelSpec | None) -> list[str | None]:
    """Where a model's weights are read from: its checkpoint, its Hugging Face directory."""
    if model is None:
        return []
    return [model.checkpoint, model.huggingface.path if model.huggingface else None]


def workload_of(job: TrainingJob | CompressionJob, namespace: str = "default") -> Workload:
    spec = job.spec
    uris = [spec.output.storage]
    if isinstance(job, TrainingJob):
        # A user's own command may leave model and data out (the API allows it).
        data, model, distill = job.spec.data, job.spec.model, job.spec.distillation
        uris += [job.spec.checkpoint.storage, data.uri if data else None]
        uris += _model_uris(model) + _model_uris(distill.teacher.model if distill else None)
        procs, command = job.spec.procs_per_worker, job.spec.command
    else:
        # The source weights are read in the pod too: a claim of theirs is mounted as well.
        uris += [job.spec.data.uri, *_model_uris(job.spec.source.model)]
        procs, command = 1, None
    return Workload(
        kind=job.kind,
        name=job.metadata.name,
        namespace=job.metadata.namespace or namespace,
        workers=spec.workers,
        procs_per_worker=procs,
        resources=spec.resources,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=command,
        env=[(e.name, e.value) for e in spec.env],
        pod_metadata=spec.pod_metadata,
        run_policy=spec.run_policy,
        scheduling=spec.scheduling,
        storage_uris=[u for u in uris if u],
        kueue_queue=kueue_queue_of(job),
        kueue_priority_class=job.metadata.labels.get(Label.KUEUE_PRIORITY_CLASS) or None,
        pod_template=spec.pod_template.wire() if spec.pod_template else None,
    )


def child_name(kind: str, name: str) -> str:
    """The base name of a job's children (Service, worker Job, PodGroup; the ConfigMap adds
    ``-spec``). A TrainingJob's children carry its own name — the DNS names its workers and
    torchrun scripts see (``<name>-0.<name>``) stay what Kubeflow users expect; a
    CompressionJob's carry ``-cj``, so a TrainingJob and a CompressionJob of the same name
    (a natural choice for a chain) each get their own."""
    return f"{name}{COMPRESSION_CHILD_SUFFIX}" if kind == COMPRESSION_JOB_KIND else name


def service_name(kind: str, name: str) -> str:
    return child_name(kind, name)


def configmap_name(kind: str, name: str) -> str:
    return f"{child_name(kind, name)}-spec"


def podgroup_name(kind: str, name: str) -> str:
    return child_name(kind, name)


def worker_job_name(kind: str, name: str) -> str:
    return child_name(kind, name)


def needs_service(workers: int) -> bool:
    """Only pods of a multi-worker job look each other up. A one-worker job's processes share
    one pod and rendezvous on its loopback address, as under ``torchyard run``: no Service
    (and no Endpoints/EndpointSlice the control plane keeps for it), which for a sweep of
    one-worker jobs was three of the objects each job cost the cluster."""
    return workers > 1


def master_address(kind: str, name: str, namespace: str, workers: int) -> str:
    """Rank 0's address: the Indexed Job's pod hostname within the headless Service, or the
    loopback address when the job has a single worker (:func:`needs_service`)."""
    if not needs_service(workers):
        return LOOPBACK_HOST
    return f"{worker_job_name(kind, name)}-0.{service_name(kind, name)}.{namespace}.svc"


def selector_labels(kind: str, name: str) -> dict[str, str]:
    return {Label.JOB_NAME: name, Label.JOB_KIND: kind.lower(), Label.ROLE: "worker"}


def _common_labels(w: Workload) -> dict[str, str]:
    return {**selector_labels(w.kind, w.name), Label.MANAGED_BY: Label.MANAGED_BY_VALUE}


def pvc_mounts(uris: list[str]) -> list[tuple[str, str]]:
    """(claim, mount path) for every pvc://<claim>/... URI, each claim once."""
    claims: dict[str, str] = {}
    for uri in uris:
        claim = pvc_claim(uri)
        if claim:
            claims.setdefault(claim, f"{DEFAULT_PVC_ROOT}/{claim}")
    return sorted(claims.items())


def metrics_ports(w: Workload) -> list[tuple[str, int]]:
    """(port name, port) of every process of a pod: local rank r serves the base port + r."""
    return [
        (f"{METRICS_PORT_NAME_PREFIX}{r}", DEFAULT_METRICS_PORT + r)
        for r in range(w.procs_per_worker)
    ]


def worker_env(w: Workload, restart_count: int = 0) -> list[dict[str, Any]]:
    """The DESIGN §3 environment, in the order a reader expects it."""
    master = master_address(w.kind, w.name, w.namespace, w.workers)
    env: list[dict[str, Any]] = [
        {"name": Env.NNODES, "value": str(w.workers)},
        {"name": Env.NPROC_PER_NODE, "value": str(w.procs_per_worker)},
        {
            "name": Env.NODE_RANK,
            "valueFrom": {"fieldRef": {"fieldPath": _index_field()}},
        },
        {"name": Env.MASTER_ADDR, "value": master},
        {"name": Env.MASTER_PORT, "value": str(DEFAULT_MASTER_PORT)},
        # For scripts that do not go through torchrun (Kubeflow's PyTorchJob convention).
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(DEFAULT_MASTER_PORT)},
    ]
    if w.procs_per_worker == 1:
        # One process per pod: the pod's rank is the process rank. With several processes
        # torchrun assigns these itself, and a pod-level value would be wrong.
        env += [
            {"name": "WORLD_SIZE", "value": str(w.world_size)},
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": _index_field()}}},
        ]
    env += [
        {"name": Env.SPEC, "value": f"{SPEC_MOUNT_DIR}/{SPEC_FILE}"},
        {"name": Env.METRICS_PORT, "value": str(DEFAULT_METRICS_PORT)},
        {"name": Env.JOB_NAME, "value": w.name},
        {"name": Env.NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": Env.RESULT_FILE, "value": TERMINATION_MESSAGE_PATH},
        {"name": Env.RESTART_COUNT, "value": str(restart_count)},
        shutdown_env(w.run_policy),
    ]
    env += [{"name": n, "value": v} for n, v in w.env]
    return env


def _index_field() -> str:
    return f"metadata.annotations['{Annotation.COMPLETION_INDEX}']"


def _resources(r: ResourceSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if r.cpu is not None:
        requests["cpu"] = str(r.cpu)
    if r.memory is not None:
        requests["memory"] = limits["memory"] = str(r.memory)
    if r.gpu:
        # Extended resources must have requests == limits.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(r.gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def exit_code_rules(policy: RunPolicy) -> list[dict[str, Any]]:
    """podFailurePolicy: which failures end the job at once, which do not count at all.

    Everything else fails the batch Job (backoffLimit 0) and the operator decides whether to
    restart the whole group: DDP and pipeline ranks hang when one peer is replaced alone.
    """
    rules: list[dict[str, Any]] = [
        # Preemption, eviction, node loss: not the workload's fault, but its peers cannot go on
        # without it, so the Job fails at once (first rule: whatever the exit code) and the
        # operator restarts the whole group without counting it against backoffLimit
        # (state/disruption.py). "Ignore" would replace the one pod under a running group.
        {"action": "FailJob", "onPodConditions": [{"type": POD_DISRUPTION_CONDITION}]},
    ]
    if policy.retry_policy == "ExitCode":
        permanent = permanent_exit_codes(policy)
        rules.append(
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": "worker",
                    "operator": "In",
                    "values": permanent,
                },
            }
        )
    return rules


def build_service(w: Workload) -> Manifest:
    """Headless Service giving each worker a stable DNS name; not-ready addresses are published
    so that ranks never race rank 0's DNS record at start-up."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(w.kind, w.name),
            "namespace": w.namespace,
            "labels": _common_labels(w),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(w.kind, w.name),
            "ports": [
                {
                    "name": "rendezvous",
                    "port": DEFAULT_MASTER_PORT,
                    "targetPort": DEFAULT_MASTER_PORT,
                },
                *(
                    {"name": name, "port": port, "targetPort": port}
                    for name, port in metrics_ports(w)
                ),
            ],
        },
    }


def build_spec_configmap(job: TrainingJob | CompressionJob, w: Workload) -> Manifest:
    """The resolved manifest (defaults filled in) that every worker reads from TORCHYARD_SPEC."""
    resolved = dump(job)
    resolved.pop("status", None)
    # Readable by whoever may read ConfigMaps: no env values (secrets reach the pods through
    # valueFrom/envFrom only), and no pod template (it is the pod's, not the trainer's).
    spec = resolved["spec"]
    spec["env"] = [{"name": e["name"]} for e in spec.get("env") or []]
    spec.pop("podTemplate", None)
    meta = resolved["metadata"]
    resolved["metadata"] = {"name": meta["name"], "namespace": w.namespace}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(w.kind, w.name),
            "namespace": w.namespace,
            "labels": _common_labels(w),
        },
        # libyaml's emitter where PyYAML has it: the pure-Python one was a tenth of the
        # operator's CPU in a 2,000-job burst (the same YAML, read back by safe_load).
        "data": {SPEC_FILE: yaml.dump(resolved, Dumper=_SAFE_DUMPER, sort_keys=False)},
    }


@dataclass
class _GangPlacement:
    """What a gang mode changes on the Job and its pod template."""

    scheduler_name: str | None
    pod_labels: dict[str, str]
    pod_annotations: dict[str, str]
    job_labels: dict[str, str]
    suspend: bool


def _gang_placement(w: Workload, gang: GangMode, restart_count: int) -> _GangPlacement:
    sched = w.scheduling
    placement = _GangPlacement(
        scheduler_name=sched.scheduler_name,
        pod_labels={**w.pod_metadata.labels, **_common_labels(w)},
        pod_annotations={
            **w.pod_metadata.annotations,
            Annotation.RESTART_COUNT: str(restart_count),
        },
        job_labels=_common_labels(w),
        suspend=w.run_policy.suspend,
    )
    if gang == "volcano":
        placement.scheduler_name = placement.scheduler_name or "volcano"
        placement.pod_annotations[Annotation.VOLCANO_GROUP_NAME] = podgroup_name(w.kind, w.name)
    elif gang == "coscheduling":
        placement.pod_labels[Label.COSCHEDULING_POD_GROUP] = podgroup_name(w.kind, w.name)
    elif gang == "kueue" and w.kueue_queue:
        # Kueue admits the whole Job at once (its quota is the gang) by un-suspending it.
        placement.job_labels[Label.KUEUE_QUEUE_NAME] = w.kueue_queue
        placement.suspend = True
    if w.kueue_priority_class:
        # Kueue reads the WorkloadPriorityClass from the Job it makes the Workload for, never
        # from the Job's owner. Copied whatever the gang mode: a Kueue set up to manage Jobs
        # without a queue label (manageJobsWithoutQueueName, a default LocalQueue) reads it too.
        placement.job_labels[Label.KUEUE_PRIORITY_CLASS] = w.kueue_priority_class
    return placement


SHM_PER_GPU_PROCESS_GI = 2
"""Default /dev/shm per process of a multi-process GPU pod: NCCL's intra-node buffers and
DataLoader workers' batches both live there, and the container runtime's 64 MiB is too small."""


def shared_memory(w: Workload) -> str | None:
    """Size of /dev/shm: ``resources.sharedMemory``, else 2 GiB × procsPerWorker for a GPU pod
    running several processes (docs/gpu.md), else none (the runtime's 64 MiB)."""
    if w.resources.shared_memory is not None:
        return str(w.resources.shared_memory)
    if w.resources.gpu > 0 and w.procs_per_worker > 1:
        return f"{SHM_PER_GPU_PROCESS_GI * w.procs_per_worker}Gi"
    return None


def _volumes(w: Workload) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, worker volumeMounts): the spec ConfigMap, /dev/shm, every pvc:// claim."""
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": configmap_name(w.kind, w.name)}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "spec", "mountPath": SPEC_MOUNT_DIR, "readOnly": True}]
    shm = shared_memory(w)
    if shm is not None:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for i, (claim, path) in enumerate(pvc_mounts(w.storage_uris)):
        volumes.append({"name": f"storage-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"storage-{i}", "mountPath": path})
    return volumes, mounts


def _worker_container(
    w: Workload, image: str, restart_count: int, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if w.image is None:
        security["runAsNonRoot"] = True  # the released trainer image runs as uid 1000
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": list(w.command or DEFAULT_COMMAND),
        "env": worker_env(w, restart_count),
        "ports": [
            {"name": "rendezvous", "containerPort": DEFAULT_MASTER_PORT},
            *({"name": name, "containerPort": port} for name, port in metrics_ports(w)),
        ],
        "resources": _resources(w.resources),
        "volumeMounts": mounts,
        "securityContext": security,
        # The result JSON is written to the termination log; logs help when a worker crashes.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if w.image_pull_policy:
        container["imagePullPolicy"] = w.image_pull_policy
    return container


def _pod_spec(
    w: Workload, container: dict[str, Any], volumes: list[dict[str, Any]], scheduler: str | None
) -> dict[str, Any]:
    sched = w.scheduling
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        # The claims are mounted owned by root: fsGroup lets the trainer image's non-root
        # user write them, and OnRootMismatch skips the recursive chown of a big volume whose
        # root already has the group. spec.podTemplate may override both (docs/storage.md).
        "securityContext": {"fsGroup": TRAINER_GID, "fsGroupChangePolicy": "OnRootMismatch"},
    }
    if needs_service(w.workers):
        pod_spec = {"subdomain": service_name(w.kind, w.name), **pod_spec}
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    pod_spec.update(disruption_pod_fields(w.run_policy, list(sched.tolerations)))
    if sched.affinity:
        pod_spec["affinity"] = dict(sched.affinity)
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if scheduler:
        pod_spec["schedulerName"] = scheduler
    return pod_spec


def build_worker_job(
    w: Workload,
    *,
    gang: GangMode = "none",
    restart_count: int = 0,
    default_image: str = DEFAULT_TRAINER_IMAGE,
    progress: ProgressEndpoint | None = None,
) -> Manifest:
    """The Indexed batch/v1 Job running the worker pods."""
    placement = _gang_placement(w, gang, restart_count)
    volumes, mounts = _volumes(w)
    container = _worker_container(w, w.image or default_image, restart_count, mounts)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": worker_job_name(w.kind, w.name),
            "namespace": w.namespace,
            "labels": placement.job_labels,
            "annotations": {Annotation.RESTART_COUNT: str(restart_count)},
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": w.workers,
            "parallelism": w.workers,
            # One failed pod fails the Job; the operator restarts the whole group (see above).
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": exit_code_rules(w.run_policy)},
            "suspend": placement.suspend,
            "template": apply_pod_template(
                {
                    "metadata": {
                        "labels": placement.pod_labels,
                        "annotations": placement.pod_annotations,
                    },
                    "spec": with_progress(
                        _pod_spec(w, container, volumes, placement.scheduler_name),
                        progress,
                        kind=w.kind,
                        namespace=w.namespace,
                        name=w.name,
                    ),
                },
                w.pod_template,
            ),
        },
    }


def build_podgroup(w: Workload, gang: GangMode) -> Manifest | None:
    """The gang object for volcano or coscheduling; None for the other modes."""
    meta = {
        "name": podgroup_name(w.kind, w.name),
        "namespace": w.namespace,
        "labels": _common_labels(w),
    }
    if gang == "volcano":
        spec: dict[str, Any] = {"minMember": w.workers}
        if w.scheduling.queue:
            spec["queue"] = w.scheduling.queue
        if w.scheduling.priority_class_name:
            spec["priorityClassName"] = w.scheduling.priority_class_name
        return {
            "apiVersion": f"{VOLCANO_GROUP}/v1beta1",
            "kind": "PodGroup",
            "metadata": meta,
            "spec": spec,
        }
    if gang == "coscheduling":
        cspec: dict[str, Any] = {"minMember": w.workers}
        if w.scheduling.schedule_timeout_seconds:
            cspec["scheduleTimeoutSeconds"] = w.scheduling.schedule_timeout_seconds
        return {
            "apiVersion": f"{COSCHEDULING_GROUP}/v1alpha1",
            "kind": "PodGroup",
            "metadata": meta,
            "spec": cspec,
        }
    return None


@dataclass(frozen=True)
class Children:
    """Everything one job attempt needs, in the order to create it."""

    configmap: Manifest
    service: Manifest | None
    """The headless Service; None for a one-worker job (:func:`needs_service`)."""
    job: Manifest
    podgroup: Manifest | None

    def all(self) -> list[Manifest]:
        return [o for o in (self.configmap, self.service, self.podgroup, self.job) if o is not None]


def build_children(
    job: TrainingJob | CompressionJob,
    *,
    namespace: str = "default",
    gang: GangMode = "none",
    restart_count: int = 0,
    default_image: str = DEFAULT_TRAINER_IMAGE,
    progress: ProgressEndpoint | None = None,
) -> Children:
    w = workload_of(job, namespace)
    return Children(
        configmap=build_spec_configmap(job, w),
        service=build_service(w) if needs_service(w.workers) else None,
        job=build_worker_job(
            w,
            gang=gang,
            restart_count=restart_count,
            default_image=default_image,
            progress=progress,
        ),
        podgroup=build_podgroup(w, gang),
    )
