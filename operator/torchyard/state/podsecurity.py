"""Pod Security admission and the worker Job: a refusal to fail on, not a retry loop.

The API server's PodSecurity admission judges every pod against the level its namespace
enforces (``pod-security.kubernetes.io/enforce``). The worker pods are created by the Job
controller, so a refused pod is only an Event on the batch Job, retried forever. But
PodSecurity also checks a workload's pod template when the Job is created and answers with a
``Warning: would violate PodSecurity "<level>:<version>": <what>`` header; when that level is
the one the namespace enforces, no worker pod can ever start. :func:`pod_security_refusal`
turns that answer into a permanent :class:`Refusal` (reason ``PodSecurityRejected``) whose
message names the policy and the offending fields, in the API server's own words.

A warning for a level the namespace only warns or audits about is not a refusal (the pods
start). Pure: the response's warnings and the namespace's labels in, a Refusal or None out.
"""

from __future__ import annotations

import re
from typing import Final

from torchyard.api.constants import Reason
from torchyard.state.ownership import Refusal

ENFORCE_LABEL: Final = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION_LABEL: Final = "pod-security.kubernetes.io/enforce-version"
# 299 - "would violate PodSecurity \"restricted:latest\": privileged (container \"worker\" ...)"
_VIOLATION = re.compile(
    r'would violate PodSecurity \\?"(?P<level>[a-z]+):(?P<version>[^"\\]+)\\?": (?P<what>.*)'
)


def violations(warnings: list[str]) -> dict[str, str]:
    """``{"<level>:<version>": what violates it}`` of every PodSecurity warning."""
    found: dict[str, str] = {}
    for warning in warnings:
        match = _VIOLATION.search(warning)
        if match:
            what = match.group("what").replace('\\"', '"').removesuffix('"')
            found[f"{match.group('level')}:{match.group('version')}"] = what
    return found


def enforced_policy(labels: dict[str, str]) -> str | None:
    """``"<level>:<version>"`` a namespace enforces, from its labels; None when unlabelled."""
    level = labels.get(ENFORCE_LABEL)
    if not level or level == "privileged":
        return None
    return f"{level}:{labels.get(ENFORCE_VERSION_LABEL) or 'latest'}"


def pod_security_refusal(
    warnings: list[str], namespace: str, labels: dict[str, str]
) -> Refusal | None:
    """The refusal the namespace's enforced Pod Security level makes of the worker pods, or
    None when no warning is about that level."""
    policy = enforced_policy(labels)
    what = violations(warnings).get(policy or "")
    if policy is None or what is None:
        return None
    return Refusal(
        Reason.POD_SECURITY_REJECTED,
        f'namespace {namespace} enforces Pod Security "{policy}" ({ENFORCE_LABEL}) and the '
        f"API server refuses the worker pods: {what}. Change the fields it names "
        "(spec.podTemplate, spec.image's user) or run the job where that level allows them",
        temporary=False,
    )


__all__ = [
    "ENFORCE_LABEL",
    "ENFORCE_VERSION_LABEL",
    "enforced_policy",
    "pod_security_refusal",
    "violations",
]
