"""A Kubernetes pod template (and its training container) as TrainingJob fields.

Kubeflow puts everything about a worker in a core/v1 PodTemplateSpec; a TrainingJob has
first-class fields for what the operator must know (image, command, env, resources,
scheduling, pod labels) and a pod template override for the rest. :class:`PodParts` holds both:
``spec`` (TrainingJob spec fields) and ``override`` (what is left, in PodTemplateSpec shape,
with the training container renamed to the operator's ``worker``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torchyard.api.contract import RESERVED_ENV_NAMES, RESERVED_ENV_PREFIXES
from torchyard.convert.notes import ConvertError, Notes

WORKER_CONTAINER = "worker"
"""The name of the training container in the pods the operator builds."""
GPU_RESOURCE = "nvidia.com/gpu"
SHM_PATH = "/dev/shm"
# Pod spec fields that become spec.scheduling fields.
_SCHEDULING = {
    "nodeSelector": "nodeSelector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "priorityClassName": "priorityClassName",
    "schedulerName": "schedulerName",
}
# Fields the operator owns on every pod: a Kubeflow value for them is not carried over.
_OWNED_POD_FIELDS = {
    "restartPolicy": "the operator restarts the whole group (spec.runPolicy), pods never "
    "restart in place",
    "subdomain": "the operator sets it (the job's headless Service)",
    "hostname": "the operator's Indexed Job names the pods <job>-<index>",
}


@dataclass
class PodParts:
    """TrainingJob spec fields read from a pod template, and the rest for the override."""

    spec: dict[str, Any] = field(default_factory=dict)
    override_spec: dict[str, Any] = field(default_factory=dict)
    override_metadata: dict[str, Any] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=dict)
    """Fields of the training container left for the override (besides its name)."""
    sources: list[str] = field(default_factory=list)
    """The source path of every field in the override."""
    command: list[str] = field(default_factory=list)
    """The container's command (empty: the image's ENTRYPOINT)."""
    args: list[str] = field(default_factory=list)
    """The container's args."""
    shm_mount: dict[str, Any] | None = None
    """The container's mount at /dev/shm, until its volume is found."""

    def leave(self, path: str) -> None:
        self.sources.append(path)

    def override(self) -> dict[str, Any]:
        """The pod template override in core/v1 PodTemplateSpec shape ({} when nothing)."""
        spec = dict(self.override_spec)
        if self.container:
            spec["containers"] = [
                {"name": WORKER_CONTAINER, **self.container},
                *spec.get("containers", []),
            ]
        out: dict[str, Any] = {}
        if self.override_metadata:
            out["metadata"] = self.override_metadata
        if spec:
            out["spec"] = spec
        return out


def pick_container(
    containers: list[dict[str, Any]], name: str, path: str
) -> tuple[int, dict[str, Any]]:
    """The training container: the one Kubeflow requires by name, else the only/first one."""
    if not containers:
        raise ConvertError(f"{path}.containers: no container")
    for i, c in enumerate(containers):
        if c.get("name") == name:
            return i, c
    return 0, containers[0]


def read_pod_template(
    template: dict[str, Any], container_name: str, path: str, notes: Notes
) -> PodParts:
    """All of a replica's pod template: metadata, pod spec and the training container."""
    parts = PodParts()
    _read_metadata(template.get("metadata") or {}, f"{path}.metadata", parts, notes)
    spec = template.get("spec") or {}
    containers = list(spec.get("containers") or [])
    index, container = pick_container(containers, container_name, f"{path}.spec")
    cpath = f"{path}.spec.containers[{index}]"
    read_container(container, cpath, parts, notes)
    sidecars = [c for i, c in enumerate(containers) if i != index]
    if sidecars:
        parts.override_spec["containers"] = sidecars
        parts.leave(f"{path}.spec.containers (sidecars: {', '.join(_names(sidecars))})")
    rest = {k: v for k, v in spec.items() if k != "containers"}
    read_pod_spec(rest, f"{path}.spec", parts, notes)
    if parts.shm_mount is not None:
        notes.dropped(
            f"{cpath}.volumeMounts ({SHM_PATH})",
            "not a memory-backed emptyDir: the operator mounts /dev/shm itself (size it with "
            "spec.resources.sharedMemory)",
        )
    return parts


def _names(containers: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("name", "?")) for c in containers]


def _read_metadata(meta: dict[str, Any], path: str, parts: PodParts, notes: Notes) -> None:
    pod_meta = {k: dict(meta[k]) for k in ("labels", "annotations") if meta.get(k)}
    if pod_meta:
        parts.spec["podMetadata"] = pod_meta
    for key in sorted(set(meta) - {"labels", "annotations"}):
        notes.dropped(f"{path}.{key}", "the operator names and owns the worker pods")


def read_pod_spec(spec: dict[str, Any], path: str, parts: PodParts, notes: Notes) -> None:
    """Pod spec fields other than containers: scheduling, /dev/shm, operator-owned, the rest."""
    scheduling: dict[str, Any] = {}
    for key, value in spec.items():
        if key in _SCHEDULING:
            scheduling[_SCHEDULING[key]] = value
        elif key in _OWNED_POD_FIELDS:
            notes.dropped(f"{path}.{key}", _OWNED_POD_FIELDS[key])
        elif key == "volumes":
            _read_volumes(list(value or []), f"{path}.volumes", parts, notes)
        else:
            parts.override_spec[key] = value
            parts.leave(f"{path}.{key}")
    if scheduling:
        parts.spec.setdefault("scheduling", {}).update(scheduling)


def _read_volumes(volumes: list[dict[str, Any]], path: str, parts: PodParts, notes: Notes) -> None:
    """A memory-backed emptyDir mounted at /dev/shm is resources.sharedMemory; the rest stays."""
    shm = parts.shm_mount.get("name") if parts.shm_mount else None
    rest = []
    for volume in volumes:
        empty = volume.get("emptyDir") or {}
        if volume.get("name") == shm and empty.get("medium") == "Memory":
            size = empty.get("sizeLimit")
            if size is not None:
                parts.spec.setdefault("resources", {})["sharedMemory"] = _quantity(size)
            parts.shm_mount = None
            notes.moved(
                f"{path}[name={shm}]",
                "a memory-backed emptyDir at /dev/shm is spec.resources.sharedMemory"
                + ("" if size is not None else " (no sizeLimit given: the operator's default)"),
            )
        else:
            rest.append(volume)
    if rest:
        parts.override_spec["volumes"] = rest
        parts.leave(f"{path} ({', '.join(str(v.get('name')) for v in rest)})")


def read_container(c: dict[str, Any], path: str, parts: PodParts, notes: Notes) -> None:
    """The training container: image, command, env, resources; the rest to the override."""
    parts.command = [str(x) for x in c.get("command") or []]
    parts.args = [str(x) for x in c.get("args") or []]
    for key, value in c.items():
        if key in ("name", "command", "args"):
            continue
        if key == "image":
            parts.spec["image"] = value
        elif key == "imagePullPolicy":
            parts.spec["imagePullPolicy"] = value
        elif key == "env":
            read_env(list(value or []), f"{path}.env", parts, notes)
        elif key == "resources":
            read_resources(value or {}, f"{path}.resources", parts, notes)
        elif key == "volumeMounts":
            _read_mounts(list(value or []), f"{path}.volumeMounts", parts)
        elif key == "ports":
            notes.dropped(
                f"{path}.ports",
                "workers meet on PET_MASTER_PORT (29500); the operator declares its own ports",
            )
        else:
            parts.container[key] = value
            parts.leave(f"{path}.{key}")


def _read_mounts(mounts: list[dict[str, Any]], path: str, parts: PodParts) -> None:
    rest = []
    for mount in mounts:
        if mount.get("mountPath") == SHM_PATH:
            parts.shm_mount = mount
        else:
            rest.append(mount)
    if rest:
        parts.container["volumeMounts"] = rest
        parts.leave(f"{path} ({', '.join(str(m.get('mountPath')) for m in rest)})")


def is_reserved(name: str) -> bool:
    return name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES)


def read_env(env: list[dict[str, Any]], path: str, parts: PodParts, notes: Notes) -> None:
    """Plain values to spec.env; valueFrom (Secrets, fields) to the override; reserved out."""
    plain, sourced = [], []
    for i, var in enumerate(env):
        name = str(var.get("name", ""))
        if is_reserved(name):
            notes.dropped(
                f"{path}[{i}] ({name})",
                "a name of the worker contract: the operator sets it for every pod",
            )
        elif "valueFrom" in var:
            sourced.append(var)
            parts.leave(f"{path}[{i}] ({name}: valueFrom)")
        else:
            plain.append({"name": name, "value": str(var.get("value", ""))})
    if plain:
        parts.spec.setdefault("env", []).extend(plain)
    if sourced:
        parts.container.setdefault("env", []).extend(sourced)


def _quantity(value: Any) -> Any:
    """A quantity as the API takes it: an integer or a string (YAML may say 0.5 or 4)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _gpus(requests: dict[str, Any], limits: dict[str, Any], path: str, notes: Notes) -> int:
    values = {int(str(v)) for v in (requests.get(GPU_RESOURCE), limits.get(GPU_RESOURCE)) if v}
    if len(values) > 1:
        notes.changed(f"{path} ({GPU_RESOURCE})", "requests and limits differ: the larger is used")
    return max(values, default=0)


def read_resources(res: dict[str, Any], path: str, parts: PodParts, notes: Notes) -> None:
    """requests/limits: GPUs, cpu and memory to spec.resources; other resources to the
    override (MIG profiles, AMD GPUs, RDMA devices: the operator passes them on)."""
    requests, limits = dict(res.get("requests") or {}), dict(res.get("limits") or {})
    out: dict[str, Any] = {}
    gpus = _gpus(requests, limits, path, notes)
    if gpus:
        out["gpu"] = gpus
    if "cpu" in requests or "cpu" in limits:
        out["cpu"] = _quantity(requests.get("cpu", limits.get("cpu")))
        if "cpu" in limits:
            notes.changed(
                f"{path}.limits.cpu",
                "torchyard requests cpu and sets no cpu limit (no CFS throttling of the "
                "ranks)" + ("; the limit became the request" if "cpu" not in requests else ""),
            )
    if "memory" in requests or "memory" in limits:
        out["memory"] = _quantity(limits.get("memory", requests.get("memory")))
        if "memory" in requests and "memory" in limits and requests["memory"] != limits["memory"]:
            notes.changed(
                f"{path}.requests.memory",
                "torchyard requests what it limits: the limit is used for both",
            )
    extra = {
        kind: {k: v for k, v in values.items() if k not in ("cpu", "memory", GPU_RESOURCE)}
        for kind, values in (("requests", requests), ("limits", limits))
    }
    extra = {k: v for k, v in extra.items() if v}
    if extra:
        parts.container["resources"] = extra
        names = sorted({name for values in extra.values() for name in values})
        parts.leave(f"{path} ({', '.join(names)})")
    other = set(res) - {"requests", "limits"}
    for key in sorted(other):
        parts.container.setdefault("resources", {})[key] = res[key]
        parts.leave(f"{path}.{key}")
    if out:
        parts.spec.setdefault("resources", {}).update(out)
