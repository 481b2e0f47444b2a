"""``spec.podTemplate``: a core/v1 PodTemplateSpec merged into the worker pods the operator
builds (Kubeflow's PyTorchJob ``template`` / TrainJob ``podTemplateOverrides``).

The schema is typed only where a rule must read it (the fields the operator owns); everything
else is kept as written (``x-kubernetes-preserve-unknown-fields``) and judged by the API server
when the pod is created, as for any pod: a user's typo fails there, with the server's message.

Precedence, highest first (docs/gpu.md):
1. fields the operator owns: rejected here, naming the field (:data:`OWNED_POD_FIELDS`,
   the worker container's command/args/termination message, the contract env, the operator's
   volumes and mount paths, labels/annotations under ``torchyard.io/``);
2. ``spec.podTemplate``, merged strategic-merge style (containers, initContainers, volumes,
   imagePullSecrets and env by name, volumeMounts by mountPath, tolerations and envFrom
   appended, maps merged key by key, anything else replaced);
3. the job's own fields (``env``, ``podMetadata``, ``resources``, ``scheduling``, ``image``);
4. the operator's defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, StringConstraints

from torchyard.api.base import KubeModel, Rule
from torchyard.api.common import PodMetadata
from torchyard.api.contract import (
    OPERATOR_MOUNT_PATHS,
    OPERATOR_VOLUME_NAMES,
    OPERATOR_VOLUME_PREFIX,
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    WORKER_CONTAINER,
)

OPERATOR_LABEL_PREFIX: Final = "torchyard.io/"
"""Labels and annotations of this prefix on a worker pod are the operator's (selectors, the
restart count)."""

# Pod spec fields the operator sets on every worker pod, and why a user cannot.
OWNED_POD_FIELDS: Final = {
    "restartPolicy": "pods never restart in place: the operator restarts the whole group "
    "(spec.runPolicy)",
    "subdomain": "the workers' DNS names (the rendezvous address) come from the job's Service",
    "hostname": "the Indexed Job names the pods <job>-<index> (the rendezvous address)",
    "schedulerName": "set spec.scheduling.schedulerName (gang scheduling picks it)",
}
# Fields of the worker container the operator sets, and why a user cannot.
OWNED_WORKER_FIELDS: Final = {
    "command": "set spec.command (the built-in trainer's launcher when omitted)",
    "args": "set spec.command (the built-in trainer's launcher when omitted)",
    "terminationMessagePath": "the worker writes its result there for the operator",
    "terminationMessagePolicy": "the operator reads the result (or the log) from it",
    "image": "set spec.image",
}

POD_TEMPLATE_DESCRIPTION: Final = (
    "A core/v1 PodTemplateSpec merged into every worker pod: serviceAccountName (of the job's "
    "own namespace), volumes, imagePullSecrets, initContainers, sidecars, a container named "
    "``worker`` patching the worker (env valueFrom/envFrom, volumeMounts, securityContext, "
    "resources such as MIG, amd.com/gpu or rdma devices), nodeSelector, tolerations, "
    "affinity... Precedence: fields the operator owns are rejected, naming the field; then "
    "this template; then the job's own fields (env, podMetadata, resources, scheduling); then "
    "the operator's defaults. Merge: containers, initContainers, volumes, imagePullSecrets "
    "and env by name, volumeMounts by mountPath, tolerations and envFrom appended, maps key "
    "by key, anything else replaced. The namespace's Pod Security level judges the result "
    "(docs/gpu.md)."
)
"""The description of ``spec.podTemplate``, one text for both job kinds."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class _Open(KubeModel):
    """A core/v1 object typed only in the fields a rule reads; the rest kept as written."""

    model_config = ConfigDict(**{**KubeModel.model_config, "extra": "allow"})


class EnvVarOverride(_Open):
    """A core/v1 EnvVar (value, or valueFrom: secretKeyRef, configMapKeyRef, fieldRef...)."""

    name: Name
    """Variable name; the worker contract's names are reserved in the worker container."""


class VolumeMountOverride(_Open):
    """A core/v1 VolumeMount."""

    mount_path: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    """Where it is mounted; the operator's mount paths are reserved in the worker container."""


class ContainerOverride(_Open):
    """A core/v1 Container. Named like the worker container (``worker``) it patches it;
    any other name adds a container (or an init container)."""

    name: Name
    """Container name; ``worker`` patches the operator's worker container."""
    image: str | None = None
    """Image (not on the worker: spec.image sets it)."""
    command: list[str] | None = Field(default=None, max_length=256)
    """Command (not on the worker: spec.command sets it)."""
    args: list[str] | None = Field(default=None, max_length=256)
    """Arguments (not on the worker: spec.command sets it)."""
    env: list[EnvVarOverride] | None = Field(default=None, max_length=128)
    """Environment; merged by name into the worker's (secrets: valueFrom.secretKeyRef)."""
    volume_mounts: list[VolumeMountOverride] | None = Field(default=None, max_length=64)
    """Volume mounts; merged by mountPath."""
    termination_message_path: str | None = None
    """Not on the worker: the operator reads the worker's result from it."""
    termination_message_policy: str | None = None
    """Not on the worker: the operator reads the worker's result from it."""


class VolumeOverride(_Open):
    """A core/v1 Volume."""

    name: Name
    """Volume name; the operator's volume names are reserved."""


class PodSpecOverride(_Open):
    """A core/v1 PodSpec: serviceAccountName, volumes, imagePullSecrets, initContainers,
    containers, nodeSelector, tolerations, affinity, priorityClassName, securityContext..."""

    containers: list[ContainerOverride] | None = Field(default=None, max_length=16)
    """``worker`` patches the worker container; other names are added containers."""
    init_containers: list[ContainerOverride] | None = Field(default=None, max_length=16)
    """Init containers (``restartPolicy: Always`` makes one a native sidecar that does not
    hold the pod open once the worker exits)."""
    volumes: list[VolumeOverride] | None = Field(default=None, max_length=64)
    """Volumes, merged by name with the operator's (whose names are reserved)."""
    service_account_name: Name | None = None
    """A ServiceAccount of the job's own namespace (pods cannot name another namespace's)."""
    restart_policy: str | None = None
    """Owned by the operator (always Never)."""
    subdomain: str | None = None
    """Owned by the operator (the job's Service)."""
    hostname: str | None = None
    """Owned by the operator (the Indexed Job's pod names)."""
    scheduler_name: str | None = None
    """Owned by the operator: set spec.scheduling.schedulerName."""


class PodTemplateMetadata(PodMetadata):
    """Labels and annotations of the worker pods (not under ``torchyard.io/``)."""


def _has(path: str) -> str:
    """CEL: every object on `path` (``spec.containers``) is set, from ``self``."""
    parts = path.split(".")
    return " && ".join("has(self." + ".".join(parts[: i + 1]) + ")" for i in range(len(parts)))


def _owned_pod_field_rule(field: str, why: str) -> Rule:
    return Rule(
        cel=f"!({_has('spec.' + field)})",
        message=f"podTemplate.spec.{field} is owned by the operator: {why}",
        field_path=f".spec.{field}",
        check=lambda t: t.spec is None or getattr(t.spec, _snake(field)) is None,
    )


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _worker_cel(condition: str) -> str:
    """CEL: `condition` (over ``c``) holds for the worker container of the override."""
    return (
        f"!({_has('spec.containers')}) || "
        f"self.spec.containers.all(c, c.name != '{WORKER_CONTAINER}' || ({condition}))"
    )


def _worker(t: PodTemplateOverride) -> ContainerOverride | None:
    containers = (t.spec.containers if t.spec else None) or []
    return next((c for c in containers if c.name == WORKER_CONTAINER), None)


def _owned_worker_field_rule(field: str, why: str) -> Rule:
    return Rule(
        cel=_worker_cel(f"!has(c.{field})"),
        message=f"podTemplate.spec.containers[{WORKER_CONTAINER}].{field} is owned by the "
        f"operator: {why}",
        field_path=".spec.containers",
        check=lambda t: (w := _worker(t)) is None or getattr(w, _snake(field)) is None,
    )


def _env_is_free(name: str) -> bool:
    return name not in RESERVED_ENV_NAMES and not name.startswith(RESERVED_ENV_PREFIXES)


def _reserved_env_rule() -> Rule:
    names = ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
    prefixes = " && ".join(f"!e.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    return Rule(
        cel=_worker_cel(f"!has(c.env) || c.env.all(e, !(e.name in [{names}]) && {prefixes})"),
        message=f"podTemplate.spec.containers[{WORKER_CONTAINER}].env sets a name of the "
        "rendezvous/worker contract (PET_*, TORCHYARD_*, MASTER_ADDR, MASTER_PORT, WORLD_SIZE, "
        "RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, NODE_RANK), which the operator owns",
        field_path=".spec.containers",
        check=lambda t: (w := _worker(t)) is None or all(_env_is_free(e.name) for e in w.env or []),
    )


def _mount_rule() -> Rule:
    paths = ", ".join(f"'{p}'" for p in OPERATOR_MOUNT_PATHS)
    return Rule(
        cel=_worker_cel(
            f"!has(c.volumeMounts) || c.volumeMounts.all(m, !(m.mountPath in [{paths}]))"
        ),
        message=f"podTemplate.spec.containers[{WORKER_CONTAINER}].volumeMounts uses a mount path "
        f"the operator owns ({', '.join(OPERATOR_MOUNT_PATHS)}; size /dev/shm with "
        "spec.resources.sharedMemory)",
        field_path=".spec.containers",
        check=lambda t: (
            (w := _worker(t)) is None
            or all(m.mount_path not in OPERATOR_MOUNT_PATHS for m in w.volume_mounts or [])
        ),
    )


def _volume_name_is_free(name: str) -> bool:
    return name not in OPERATOR_VOLUME_NAMES and not name.startswith(OPERATOR_VOLUME_PREFIX)


def _volume_rule() -> Rule:
    names = ", ".join(f"'{n}'" for n in OPERATOR_VOLUME_NAMES)
    return Rule(
        cel=f"!({_has('spec.volumes')}) || self.spec.volumes.all(v, !(v.name in [{names}]) "
        f"&& !v.name.startsWith('{OPERATOR_VOLUME_PREFIX}'))",
        message="podTemplate.spec.volumes uses a volume name the operator owns ("
        f"{', '.join(OPERATOR_VOLUME_NAMES)}, {OPERATOR_VOLUME_PREFIX}<n>)",
        field_path=".spec.volumes",
        check=lambda t: (
            t.spec is None or all(_volume_name_is_free(v.name) for v in t.spec.volumes or [])
        ),
    )


def _metadata_rule(field: str) -> Rule:
    return Rule(
        cel=f"!({_has('metadata.' + field)}) || "
        f"self.metadata.{field}.all(k, !k.startsWith('{OPERATOR_LABEL_PREFIX}'))",
        message=f"podTemplate.metadata.{field} under {OPERATOR_LABEL_PREFIX} are the operator's",
        field_path=f".metadata.{field}",
        check=lambda t: (
            t.metadata is None
            or not any(k.startswith(OPERATOR_LABEL_PREFIX) for k in getattr(t.metadata, field))
        ),
    )


class PodTemplateOverride(KubeModel):
    """A core/v1 PodTemplateSpec merged into every worker pod (precedence: docs/gpu.md)."""

    metadata: PodTemplateMetadata | None = None
    """Labels and annotations added to the worker pods."""
    spec: PodSpecOverride | None = None
    """Pod spec fields merged into the worker pods; ``containers[name=worker]`` patches the
    worker container (env, envFrom, volumeMounts, resources, securityContext...)."""

    rules = (
        *(_owned_pod_field_rule(f, why) for f, why in OWNED_POD_FIELDS.items()),
        *(_owned_worker_field_rule(f, why) for f, why in OWNED_WORKER_FIELDS.items()),
        _reserved_env_rule(),
        _mount_rule(),
        _volume_rule(),
        _metadata_rule("labels"),
        _metadata_rule("annotations"),
    )

    def wire(self) -> dict[str, Any]:
        """The override as a PodTemplateSpec dict (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


__all__ = ["OWNED_POD_FIELDS", "OWNED_WORKER_FIELDS", "PodTemplateOverride"]
