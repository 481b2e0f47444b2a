"""The worker pod's live-progress parts (builders/progress.py) and the identity/pod checks of
the endpoint (controller/progress_auth.py): pure, no cluster. The real TokenReview and the
refusals with real tokens: tests/cluster/test_operator_progress.py."""

from __future__ import annotations

from typing import Any

import pytest

from torchyard.api import TrainingJob
from torchyard.api.contract import PROGRESS_TOKEN_AUDIENCE, PROGRESS_TOKEN_DIR, Annotation, Env
from torchyard.builders import build_children
from torchyard.builders.progress import ProgressEndpoint
from torchyard.controller.progress_auth import (
    Forbidden,
    PodIdentity,
    Unauthenticated,
    check_pod,
    identity_of,
)

KEY = ("TrainingJob", "team-a", "pt")
ENDPOINT = ProgressEndpoint("https://op.torchyard.svc:8443", "-----BEGIN CERTIFICATE-----")


def _job() -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "apiVersion": "torchyard.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "pt", "namespace": "team-a"},
            "spec": {"workers": 2, "model": {"builtin": "mlp"}, "data": {"builtin": "digits"}},
        }
    )


def _pod_spec(endpoint: ProgressEndpoint | None) -> dict[str, Any]:
    children = build_children(_job(), namespace="team-a", progress=endpoint)
    spec: dict[str, Any] = children.job["spec"]["template"]["spec"]
    return spec


def test_the_worker_gets_a_projected_token_for_our_audience_and_the_job_url() -> None:
    spec = _pod_spec(ENDPOINT)
    (vol,) = [v for v in spec["volumes"] if "projected" in v]
    token = vol["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == PROGRESS_TOKEN_AUDIENCE
    assert token["expirationSeconds"] <= 3600
    worker = spec["containers"][0]
    assert {"name": vol["name"], "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True} in worker[
        "volumeMounts"
    ]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env[Env.PROGRESS_URL] == (
        "https://op.torchyard.svc:8443/v1/progress/team-a/trainingjobs/pt"
    )
    assert env[Env.PROGRESS_CA] == ENDPOINT.ca_pem
    assert env[Env.PROGRESS_TOKEN_FILE].startswith(PROGRESS_TOKEN_DIR)


def test_without_an_endpoint_the_pod_gets_nothing() -> None:
    spec = _pod_spec(None)
    assert not [v for v in spec["volumes"] if "projected" in v]
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert Env.PROGRESS_URL not in env


def _review(**user: Any) -> dict[str, Any]:
    return {
        "authenticated": True,
        "audiences": [PROGRESS_TOKEN_AUDIENCE],
        "user": {
            "username": "system:serviceaccount:team-a:default",
            "extra": {
                "authentication.kubernetes.io/pod-name": ["pt-worker-0-abc"],
                "authentication.kubernetes.io/pod-uid": ["uid-1"],
            },
            **user,
        },
    }


def test_identity_comes_from_the_bound_pod_of_the_review() -> None:
    assert identity_of(_review(), PROGRESS_TOKEN_AUDIENCE) == PodIdentity(
        "team-a", "pt-worker-0-abc", "uid-1"
    )


@pytest.mark.parametrize(
    "review",
    [
        {"authenticated": False, "error": "invalid bearer token"},
        {**_review(), "audiences": ["https://kubernetes.default.svc"]},
        _review(username="alice"),
        _review(extra={}),
    ],
)
def test_unauthenticated_reviews_are_refused(review: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated):
        identity_of(review, PROGRESS_TOKEN_AUDIENCE)


def _pod(name: str = "pt", index: str = "0", uid: str = "uid-1") -> dict[str, Any]:
    return {
        "metadata": {
            "uid": uid,
            "labels": {"torchyard.io/job-name": name, "torchyard.io/job-kind": "trainingjob"},
            "annotations": {Annotation.COMPLETION_INDEX: index},
            "ownerReferences": [{"kind": "Job", "name": f"{name}-worker", "controller": True}],
        }
    }


def test_rank_0_of_the_job_may_update_it() -> None:
    pod = _pod()
    pod["metadata"]["ownerReferences"][0]["name"] = _worker_job_name()
    check_pod(pod, PodIdentity("team-a", "p", "uid-1"), KEY)


def _worker_job_name() -> str:
    from torchyard.builders import worker_job_name

    return worker_job_name("TrainingJob", "pt")


@pytest.mark.parametrize(
    ("pod", "who"),
    [
        (_pod(name="other"), PodIdentity("team-a", "p", "uid-1")),  # another job's pod
        (_pod(), PodIdentity("team-b", "p", "uid-1")),  # another namespace
        (_pod(index="1"), PodIdentity("team-a", "p", "uid-1")),  # not rank 0
        (_pod(uid="uid-2"), PodIdentity("team-a", "p", "uid-1")),  # a new pod of that name
    ],
)
def test_other_pods_are_forbidden(pod: dict[str, Any], who: PodIdentity) -> None:
    if pod["metadata"]["labels"]["torchyard.io/job-name"] == "pt":
        pod["metadata"]["ownerReferences"][0]["name"] = _worker_job_name()
    with pytest.raises(Forbidden):
        check_pod(pod, who, KEY)
