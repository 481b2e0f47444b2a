"""Who is posting progress: a TokenReview of the pod's projected token, then the pod itself.

The bearer token is reviewed by the API server with our audience (a pod's ordinary API token,
or a token for another audience, is not authenticated); a bound service-account token names
its pod in ``user.extra`` (pod name and uid). The pod is read and must be the one the token
was bound to (uid), a worker of the job in the URL (the ``torchyard.io/job-name``/``job-kind``
labels the operator's Job template gives it, owned by that job's batch Job) and rank 0 (the
Indexed Job's completion index 0). Verdicts are cached a short while so a job posting every
second costs one TokenReview and one pod read per minute, not one per post.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from torchyard.api.contract import Annotation, Label
from torchyard.builders import worker_job_name
from torchyard.controller.kube import RAW, Key, Kube

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"
VERDICT_SECONDS = 60.0
MAX_CACHED = 10_000


class Unauthenticated(Exception):
    """401: no token, or one the API server does not authenticate for our audience."""


class Forbidden(Exception):
    """403: an authenticated pod that may not update this job."""


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    name: str
    uid: str


def identity_of(review_status: dict[str, Any], audience: str) -> PodIdentity:
    """The pod a reviewed token is bound to (raises :class:`Unauthenticated`)."""
    if not review_status.get("authenticated"):
        raise Unauthenticated(str(review_status.get("error") or "token not authenticated"))
    if audience not in (review_status.get("audiences") or []):
        raise Unauthenticated(f"token is not for audience {audience}")
    user = review_status.get("user") or {}
    username = str(user.get("username") or "")
    extra = user.get("extra") or {}
    names, uids = extra.get(POD_NAME) or [], extra.get(POD_UID) or []
    if not username.startswith(SA_PREFIX) or not names or not uids:
        raise Unauthenticated("not a service-account token bound to a pod")
    namespace = username[len(SA_PREFIX) :].split(":", 1)[0]
    return PodIdentity(namespace, str(names[0]), str(uids[0]))


def check_pod(pod: dict[str, Any], who: PodIdentity, key: Key) -> None:
    """Raise :class:`Forbidden` unless ``pod`` is the token's pod and rank 0 of job ``key``."""
    kind, namespace, name = key
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
    if meta.get("uid") != who.uid:
        raise Forbidden("the token's pod no longer exists")
    if (
        who.namespace != namespace
        or labels.get(Label.JOB_NAME) != name
        or labels.get(Label.JOB_KIND) != kind.lower()
        or not owners
        or owners[0].get("kind") != "Job"
        or owners[0].get("name") != worker_job_name(kind, name)
    ):
        raise Forbidden(f"pod {who.namespace}/{who.name} is not a worker of {kind} {name}")
    if str((meta.get("annotations") or {}).get(Annotation.COMPLETION_INDEX)) != "0":
        raise Forbidden("only rank 0 reports progress")


class Authenticator:
    """TokenReview + pod check with a short verdict cache (called from worker threads)."""

    def __init__(self, kube: Kube, audience: str) -> None:
        self.kube = kube
        self.audience = audience
        self.auth: Any = client.AuthenticationV1Api(kube.api)
        self._identities: dict[str, tuple[PodIdentity, float]] = {}
        self._allowed: dict[tuple[str, Key], float] = {}

    def cached(self, token: str, key: Key) -> bool:
        """True when a fresh verdict already allows ``token`` on ``key`` (no API call: safe on
        the event loop; the common case of a job posting every second)."""
        now = time.monotonic()
        hit = self._identities.get(hashlib.sha256(token.encode()).hexdigest())
        return hit is not None and hit[1] >= now and self._allowed.get((hit[0].uid, key), 0) >= now

    def authorize(self, token: str, key: Key) -> PodIdentity:
        """The pod behind ``token`` if it may update job ``key``; raises otherwise."""
        if not token:
            raise Unauthenticated("no bearer token")
        now = time.monotonic()
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._identities.get(digest)
        if cached is None or cached[1] < now:
            who = identity_of(self._review(token), self.audience)
            self._remember(self._identities, digest, (who, now + VERDICT_SECONDS))
        else:
            who = cached[0]
        if self._allowed.get((who.uid, key), 0.0) < now:
            check_pod(self._read_pod(who), who, key)
            self._remember(self._allowed, (who.uid, key), now + VERDICT_SECONDS)
        return who

    @staticmethod
    def _remember(cache: dict[Any, Any], k: Any, v: Any) -> None:
        if len(cache) >= MAX_CACHED:
            cache.clear()
        cache[k] = v

    def _review(self, token: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        resp = self.kube.call("create", "tokenreviews", self.auth.create_token_review, body, **RAW)
        status: dict[str, Any] = json.loads(resp.data).get("status") or {}
        return status

    def _read_pod(self, who: PodIdentity) -> dict[str, Any]:
        try:
            resp = self.kube.call(
                "get", "pods", self.kube.core.read_namespaced_pod, who.name, who.namespace, **RAW
            )
        except client.ApiException as exc:
            if exc.status == 404:
                raise Forbidden("the token's pod no longer exists") from exc
            raise
        pod: dict[str, Any] = json.loads(resp.data)
        return pod


__all__ = ["Authenticator", "Forbidden", "PodIdentity", "Unauthenticated", "check_pod"]
