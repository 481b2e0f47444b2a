"""The chart's live-progress parts (progress.enabled): the Service the workers post to, the
generated TLS Secret, the operator's TORCHYARD_PROGRESS_* environment and mounted
certificate, and the one permission the endpoint adds (create TokenReviews)."""

from __future__ import annotations

import base64

from tests.chart.conftest import by_kind, helm_template, one

ON = ("progress.enabled=true",)
OFF = ("progress.enabled=false",)


def test_on_by_default(helm: str) -> None:
    docs = helm_template(helm)
    assert one(docs, "Service", "-progress")
    assert one(docs, "Secret", "-progress-tls")


def test_switched_off_adds_nothing(helm: str) -> None:
    docs = helm_template(helm, sets=OFF)
    assert not [d for d in docs if d["metadata"]["name"].endswith(("-progress", "-progress-tls"))]


def test_the_endpoint_gets_a_service_a_certificate_and_the_operator_its_settings(
    helm: str,
) -> None:
    docs = helm_template(helm, sets=ON)
    svc = one(docs, "Service", "-progress")
    assert svc["spec"]["ports"] == [
        {"name": "progress", "port": 8443, "targetPort": "progress", "protocol": "TCP"}
    ]
    secret = one(docs, "Secret", "-progress-tls")
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert base64.b64decode(secret["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    host = f"{svc['metadata']['name']}.torchyard-system.svc"
    assert env["TORCHYARD_PROGRESS_ADVERTISE_URL"] == f"https://{host}:8443"
    assert env["TORCHYARD_PROGRESS_WRITE_SECONDS"] == "5"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "progress-tls")
    assert env["TORCHYARD_PROGRESS_TLS_CA"].startswith(mount["mountPath"])
    vol = next(v for v in pod["volumes"] if v["name"] == "progress-tls")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert {"name": "progress", "containerPort": 8443, "protocol": "TCP"} in c["ports"]


def test_rbac_grows_by_token_reviews_only(helm: str) -> None:
    off = helm_template(helm, sets=OFF)
    on = helm_template(helm, sets=ON)
    rules = lambda docs: [  # noqa: E731
        (tuple(r.get("apiGroups", [])), tuple(r["resources"]), tuple(r["verbs"]))
        for kind in ("ClusterRole", "Role")
        for d in by_kind(docs, kind)
        for r in d.get("rules") or []
    ]
    added = [r for r in rules(on) if r not in rules(off)]
    assert added == [(("authentication.k8s.io",), ("tokenreviews",), ("create",))]


def test_your_own_secret_is_used_and_none_is_generated(helm: str) -> None:
    docs = helm_template(helm, sets=(*ON, "progress.tlsSecretName=my-cert"))
    assert not by_kind(docs, "Secret")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "progress-tls")
    assert vol["secret"]["secretName"] == "my-cert"
