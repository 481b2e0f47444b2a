"""KWOK configuration: the full set of node and pod stages, KWOK's defaults plus ours.

Passing any Stage to KWOK drops all of its built-in defaults, so this module ships the
complete set: ``node-initialize`` and ``node-heartbeat-with-lease`` (KWOK's defaults, leases
on), ``pod-ready``, ``pod-complete``, ``pod-delete`` (KWOK's defaults, with two guards added to
``pod-complete``) and ``torchyard-pod-exit`` (ours).

Pod behaviour (the annotation contract, see :mod:`torchyard_devcluster.nodes`):

- a pod bound to a fake node goes Pending -> Running (Ready) at once (``pod-ready``);
- a Job-owned pod then goes Succeeded (exit code 0) after ``delay`` (``pod-complete``), as
  KWOK's own default does; pods with no Job owner stay Running, as KWOK's default does;
- ``kwok.torchyard.io/hold: "true"`` keeps a Running pod Running until the annotation is
  removed or changed (neither stage below matches while it is set);
- ``kwok.torchyard.io/exit-code: "N"`` (any pod, Job-owned or not) terminates every container
  with exit code N after the delay: phase Succeeded when N == 0, else Failed, and
  ``state.terminated.exitCode`` = N so a Job's ``podFailurePolicy.onExitCodes`` sees it;
  ``kwok.torchyard.io/reason`` overrides ``state.terminated.reason`` (e.g. ``OOMKilled``);
- ``kwok.torchyard.io/delay`` (a Go duration such as ``"250ms"`` or ``"30s"``) overrides how
  long a pod stays Running before it completes or exits;
- a pod with a deletionTimestamp is deleted (``pod-delete``): the "kubelet" confirms deletion.

The annotations may sit on the pod template (e.g. TrainingJob ``spec.podMetadata``) or be
patched onto a live pod; KWOK re-evaluates the stages on every pod update.
"""

from __future__ import annotations

from typing import Any

import yaml

ANNOTATION_PREFIX = "kwok.torchyard.io/"
HOLD_ANNOTATION = ANNOTATION_PREFIX + "hold"
EXIT_CODE_ANNOTATION = ANNOTATION_PREFIX + "exit-code"
REASON_ANNOTATION = ANNOTATION_PREFIX + "reason"
DELAY_ANNOTATION = ANNOTATION_PREFIX + "delay"

#: Annotation selecting the nodes KWOK manages (KWOK's own convention).
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_VALUE = "fake"

_NOT_DELETING = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_RUNNING = {"key": ".status.phase", "operator": "In", "values": ["Running"]}
_NOT_HELD = {
    "key": f'.metadata.annotations["{HOLD_ANNOTATION}"]',
    "operator": "NotIn",
    "values": ["true", "True", "TRUE", "1", "yes"],
}

_NODE_CONDITIONS = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""

_NODE_INITIALIZE = (
    _NODE_CONDITIONS
    + """
{{ $hasInternalIP := false }}
{{ $hasHostname := false }}
{{ range .status.addresses }}
  {{ if eq .type "InternalIP" }}{{ $hasInternalIP = true }}{{ end }}
  {{ if eq .type "Hostname" }}{{ $hasHostname = true }}{{ end }}
{{ end }}
{{ if or (not $hasInternalIP) (not $hasHostname) }}
addresses:
{{ end }}
{{ if not $hasInternalIP }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ end }}
{{ if not $hasHostname }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
{{ end }}
{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
{{ $nodeInfo := .status.nodeInfo }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: {{ or $nodeInfo.architecture "amd64" }}
  bootID: {{ or $nodeInfo.bootID `""` }}
  containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
  kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
  kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
  kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
  machineID: {{ or $nodeInfo.machineID `""` }}
  operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
  osImage: {{ or $nodeInfo.osImage `""` }}
  systemUUID: {{ or $nodeInfo.systemUUID `""` }}
phase: Running
"""
)

_NODE_HEARTBEAT = (
    _NODE_CONDITIONS
    + """
addresses:
{{ with .status.addresses }}
{{ YAML . 1 }}
{{ else }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
{{ with NodeName }}
- address: {{ . | Quote }}
  type: Hostname
{{ end }}
{{ end }}
{{ with NodePort }}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ . }}
{{ end }}
"""
)

_POD_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  {{ if eq .restartPolicy "Always" }}
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
  {{ else }}
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
  {{ end }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
""".replace("\\\n", "")

# Shared by pod-complete (code "0") and torchyard-pod-exit (code from the annotation).
_POD_TERMINATED = (
    """\
{{ $now := Now }}
{{ $annotations := or .metadata.annotations dict }}
{{ $code := atoi ( toString ( or ( index $annotations "%(exit)s" ) "0" ) ) }}
{{ $reason := index $annotations "%(reason)s" }}
{{ if not $reason }}{{ if eq $code 0 }}{{ $reason = "Completed" }}\
{{ else }}{{ $reason = "Error" }}{{ end }}{{ end }}
{{ $started := or .status.startTime $now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  reason: {{ if eq $code 0 }}PodCompleted{{ else }}PodFailed{{ end }}
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  reason: {{ if eq $code 0 }}PodCompleted{{ else }}PodFailed{{ end }}
  status: "False"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {{ $code }}
      finishedAt: {{ $now | Quote }}
      reason: {{ $reason | Quote }}
      startedAt: {{ $started | Quote }}
{{ end }}
phase: {{ if eq $code 0 }}Succeeded{{ else }}Failed{{ end }}
""".replace("\\\n", "")
    % {"exit": EXIT_CODE_ANNOTATION, "reason": REASON_ANNOTATION}
)


def _stage(
    name: str,
    kind: str,
    match: list[dict[str, Any]],
    nxt: dict[str, Any],
    *,
    delay: dict[str, Any] | None = None,
    immediate_next: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": match},
    }
    if delay is not None:
        spec["delay"] = delay
    spec["next"] = nxt
    if immediate_next:
        spec["immediateNextStage"] = True
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


def stages(*, pod_run_ms: int = 1000, pod_jitter_ms: int = 0) -> list[dict[str, Any]]:
    """Every Stage KWOK needs: node-initialize, node-heartbeat-with-lease, pod-ready,
    pod-complete, pod-delete (KWOK's defaults) and torchyard-pod-exit."""
    run_delay: dict[str, Any] = {
        "durationMilliseconds": pod_run_ms,
        "durationFrom": {"expressionFrom": f'.metadata.annotations["{DELAY_ANNOTATION}"]'},
    }
    if pod_jitter_ms > 0:
        run_delay["jitterDurationMilliseconds"] = pod_run_ms + pod_jitter_ms
    ready_not_true = {
        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
        "operator": "NotIn",
        "values": ["True"],
    }
    ready_true = {
        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
        "operator": "In",
        "values": ["True"],
    }
    return [
        _stage("node-initialize", "Node", [ready_not_true], {"statusTemplate": _NODE_INITIALIZE}),
        _stage(
            "node-heartbeat-with-lease",
            "Node",
            [{"key": ".status.phase", "operator": "In", "values": ["Running"]}, ready_true],
            {"statusTemplate": _NODE_HEARTBEAT},
            delay={"durationMilliseconds": 600000, "jitterDurationMilliseconds": 610000},
            immediate_next=True,
        ),
        _stage(
            "pod-ready",
            "Pod",
            [
                _NOT_DELETING,
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                ready_not_true,
            ],
            {"statusTemplate": _POD_READY},
        ),
        _stage(
            "pod-complete",
            "Pod",
            [
                _NOT_DELETING,
                _RUNNING,
                ready_true,
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
                _NOT_HELD,
                {
                    "key": f'.metadata.annotations["{EXIT_CODE_ANNOTATION}"]',
                    "operator": "DoesNotExist",
                },
            ],
            {"statusTemplate": _POD_TERMINATED},
            delay=run_delay,
        ),
        _stage(
            "torchyard-pod-exit",
            "Pod",
            [
                _NOT_DELETING,
                _RUNNING,
                _NOT_HELD,
                {"key": f'.metadata.annotations["{EXIT_CODE_ANNOTATION}"]', "operator": "Exists"},
            ],
            {"statusTemplate": _POD_TERMINATED},
            delay=run_delay,
        ),
        _stage(
            "pod-delete",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"delete": True},
        ),
    ]


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the Go templates) as readable ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def kwok_config(
    *,
    server_address: str,
    pod_run_ms: int = 1000,
    pod_jitter_ms: int = 0,
    cidr: str = "10.64.0.1/12",
    node_ip: str = "10.63.255.1",
) -> str:
    """The YAML given to ``kwok --config``: a KwokConfiguration and every Stage."""
    conf: dict[str, Any] = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "cidr": cidr,
            "nodeIP": node_ip,
            "serverAddress": server_address,
            "manageNodesWithAnnotationSelector": f"{FAKE_NODE_ANNOTATION}={FAKE_NODE_VALUE}",
            "nodeLeaseDurationSeconds": 40,
            # Scale: 100+ nodes, ~1000 pods.
            "podPlayStageParallelism": 16,
            "nodePlayStageParallelism": 8,
            "nodeLeaseParallelism": 8,
            "podsOnNodeSyncParallelism": 4,
        },
    }
    docs = [conf, *stages(pod_run_ms=pod_run_ms, pod_jitter_ms=pod_jitter_ms)]
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, width=1000)
