"""What the worker pods carry for preemption and node loss — pure (docs/operator.md,
"Preemption and node loss").

* ``terminationGracePeriodSeconds`` = ``runPolicy.gracePeriodSeconds``, and the launcher's
  shutdown timeout (``$TORCHYARD_SHUTDOWN_TIMEOUT_SECONDS``) a margin below it, so SIGTERM
  gives every rank time to checkpoint its step before anything is SIGKILLed;
* NoExecute tolerations of ``node.kubernetes.io/not-ready`` and ``/unreachable`` for
  ``runPolicy.nodeLossTolerationSeconds``: the DefaultTolerationSeconds admission plugin would
  give 300 s, all the while the other ranks wait on the lost one; after it the taint manager
  evicts the pod (condition ``DisruptionTarget``) and the whole group restarts.
"""

from __future__ import annotations

from typing import Any

from torchyard.api.common import RunPolicy
from torchyard.api.contract import Env, shutdown_timeout_seconds

NODE_LOSS_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
"""The taints the node lifecycle controller puts (NoExecute) on a NotReady / unreachable node."""


def shutdown_env(policy: RunPolicy) -> dict[str, Any]:
    """The launcher's shutdown timeout for the pods' grace period (the env contract)."""
    return {
        "name": Env.SHUTDOWN_TIMEOUT_SECONDS,
        "value": str(shutdown_timeout_seconds(policy.grace_period_seconds)),
    }


def node_loss_tolerations(
    policy: RunPolicy, user_tolerations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Tolerations for the node-loss taints, but none for a key the user already tolerates."""
    taken = {t.get("key") for t in user_tolerations}
    return [
        {
            "key": key,
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": policy.node_loss_toleration_seconds,
        }
        for key in NODE_LOSS_TAINTS
        if key not in taken
    ]


def disruption_pod_fields(
    policy: RunPolicy, user_tolerations: list[dict[str, Any]]
) -> dict[str, Any]:
    """The pod spec fields above (tolerations: the user's first, then ours)."""
    return {
        "terminationGracePeriodSeconds": policy.grace_period_seconds,
        "tolerations": [*user_tolerations, *node_loss_tolerations(policy, user_tolerations)],
    }
