"""The chart's day two on the real dev control plane: a tenant holding only the built-in `edit`
role works with TrainingJobs thanks to the aggregated roles, `helm upgrade` upgrades a CRD,
NOTES.txt names the right ports, and the short names shadow none the API server serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, REPO
from tests.unit.test_short_names import BUILTIN
from torchyard.api.constants import GROUP, TRAINING_JOB_PLURAL, VERSION
from torchyard.api.contract import DEFAULT_METRICS_PORT
from torchyard.builders import METRICS_PORT_NAME_PREFIX
from torchyard.crd import SHORT_NAMES
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster


def _helm(helm: str, cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "--kubeconfig", str(cluster.kubeconfig), *args],
        text=True,
        capture_output=True,
        check=False,
        timeout=300,
    )


def _training_job(namespace: str, name: str, api_version: str = f"{GROUP}/{VERSION}") -> Any:
    body = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
    body["apiVersion"] = api_version
    body["metadata"] = {"name": name, "namespace": namespace}
    return body


# ------------------------------------------------------------------------------ user roles


def _user(cluster: Any, kube: Kube, namespace: str, name: str, cluster_role: str) -> Any:
    """A ServiceAccount bound (RoleBinding, this namespace only) to a built-in ClusterRole, as
    a tenant would be; an API client that authenticates with its token and nothing else."""
    from kubernetes import client

    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    kube.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    token = kube.core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.state_dir / "pki" / "ca.crt")
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


def _can(api: Any, namespace: str, verb: str, subresource: str = "") -> bool:
    """SelfSubjectAccessReview: may this client `verb` trainingjobs(/subresource) here?"""
    from kubernetes import client

    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "spec": {
                "resourceAttributes": {
                    "group": GROUP,
                    "resource": TRAINING_JOB_PLURAL,
                    "subresource": subresource,
                    "verb": verb,
                    "namespace": namespace,
                }
            }
        }
    )
    return bool(review.status.allowed)


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    name = f"ty-other-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"torchyard.io/test": "1"}}})
    yield name
    kube.core.delete_namespace(name, propagation_policy="Background")


class _Jobs:
    """TrainingJob calls of one user in one namespace; each answers its HTTP status (200 for
    any success, the ApiException's otherwise)."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.api, self.ns = client.CustomObjectsApi(api), namespace

    def _call(self, method: str, *args: Any) -> int:
        from kubernetes import client

        try:
            getattr(self.api, method)(GROUP, VERSION, self.ns, TRAINING_JOB_PLURAL, *args)
        except client.ApiException as e:
            return int(e.status)
        return 200

    def create(self, name: str) -> int:
        return self._call("create_namespaced_custom_object", _training_job(self.ns, name))

    def list(self) -> int:
        return self._call("list_namespaced_custom_object")

    def get(self, name: str) -> int:
        return self._call("get_namespaced_custom_object", name)

    def patch(self, name: str, body: dict[str, Any]) -> int:
        return self._call("patch_namespaced_custom_object", name, body)

    def scale(self, name: str, workers: int) -> int:
        body = {"spec": {"replicas": workers}}
        return self._call("patch_namespaced_custom_object_scale", name, body)

    def get_status(self, name: str) -> int:
        return self._call("get_namespaced_custom_object_status", name)

    def patch_status(self, name: str, body: dict[str, Any]) -> int:
        return self._call("patch_namespaced_custom_object_status", name, body)

    def delete(self, name: str) -> int:
        return self._call("delete_namespaced_custom_object", name)


def test_a_tenant_with_the_builtin_edit_role_runs_training_jobs_and_no_more(
    helm: str, cluster: Any, kube: Kube, namespace: str, other_namespace: str
) -> None:
    release = f"ty-{uuid.uuid4().hex[:6]}"
    # the cluster fixture's CRDs are shared with every test: not this release's to own
    res = _helm(helm, cluster, "install", release, str(CHART), "-n", namespace,
                "--set", "crds.install=false")  # fmt: skip
    assert res.returncode == 0, res.stderr
    editor = _user(cluster, kube, namespace, "alice", "edit")
    viewer = _user(cluster, kube, namespace, "bob", "view")
    try:
        # the controller-manager's clusterrole-aggregation controller copies the chart's rules
        # into `edit` and `view` (asynchronously)
        poll(lambda: _can(editor, namespace, "create"), timeout=60, what="aggregation into edit")
        poll(lambda: _can(viewer, namespace, "list"), timeout=60, what="aggregation into view")
        assert any(GROUP in r.api_groups for r in kube.rbac.read_cluster_role("edit").rules)

        alice, bob = _Jobs(editor, namespace), _Jobs(viewer, namespace)
        assert alice.create("by-alice") == 200
        assert alice.list() == 200
        assert alice.patch("by-alice", {"metadata": {"labels": {"owner": "alice"}}}) == 200
        assert alice.scale("by-alice", 1) == 200  # kubectl scale tj/by-alice --replicas=1
        # status is the operator's: a tenant reads it, never writes it
        assert alice.get_status("by-alice") == 200
        assert alice.patch_status("by-alice", {"status": {"phase": "Succeeded"}}) == 403
        # the RoleBinding is this namespace's: nothing elsewhere
        elsewhere = _Jobs(editor, other_namespace)
        assert elsewhere.create("elsewhere") == 403
        assert elsewhere.list() == 403

        # `view` reads, and only reads
        assert bob.list() == 200
        assert bob.get("by-alice") == 200
        assert bob.get_status("by-alice") == 200
        assert bob.create("by-bob") == 403
        assert bob.patch("by-alice", {"metadata": {"labels": {"owner": "bob"}}}) == 403
        assert bob.delete("by-alice") == 403

        assert alice.delete("by-alice") == 200
    finally:
        editor.close()
        viewer.close()
        res = _helm(helm, cluster, "uninstall", release, "-n", namespace)
        assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------ helm upgrade


def _chart_with_own_group(tmp_path: Path, group: str) -> Path:
    """A copy of the chart whose CRDs serve `group` instead of torchyard.io: this test owns
    and changes them while other tests keep using the session's torchyard.io CRDs. No short
    names or categories: `kubectl get tj` and `kubectl get all` stay unambiguous meanwhile."""
    chart = tmp_path / "torchyard"
    shutil.copytree(CHART, chart)
    for path in (chart / "files" / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        crd["spec"]["group"] = group
        crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
        crd["spec"]["names"].pop("shortNames", None)
        crd["spec"]["names"].pop("categories", None)
        path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def _add_spec_field(chart: Path, field: str) -> None:
    """What a new chart version brings: a new optional field in TrainingJob's spec."""
    (path,) = (chart / "files" / "crds").glob("*_trainingjobs.yaml")
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"][field] = {"type": "string", "description": "added by the upgrade"}
    crd["metadata"]["labels"]["torchyard.io/chart-test"] = "upgraded"
    path.write_text(yaml.safe_dump(crd, sort_keys=False))


def test_helm_upgrade_upgrades_the_crds(
    helm: str, cluster: Any, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """Before: a field the CRD does not know is pruned by the API server. `helm upgrade` to a
    chart whose CRD has it: the server's CRD changes and the field is kept. `helm uninstall`
    leaves the CRD (crds.keep)."""
    group = f"u{uuid.uuid4().hex[:8]}.torchyard.io"
    crd_name = f"{TRAINING_JOB_PLURAL}.{group}"
    chart = _chart_with_own_group(tmp_path, group)
    release = f"ty-{uuid.uuid4().hex[:6]}"
    # only what this test looks at: the CRDs (and the operator Deployment, always rendered)
    sets = [
        "rbac.create=false",
        "rbac.aggregateClusterRoles=false",
        "metrics.enabled=false",
        "dashboards.enabled=false",
        "serviceAccount.create=false",
    ]
    argv = [release, str(chart), "-n", namespace, "--wait", "--timeout", "120s"]
    for s in sets:
        argv += ["--set", s]

    def job_with_field(name: str) -> dict[str, Any]:
        body = _training_job(namespace, name, f"{group}/{VERSION}")
        body["spec"]["upgradedField"] = "hello"
        created = kube.custom.create_namespaced_custom_object(
            group, VERSION, namespace, TRAINING_JOB_PLURAL, body
        )
        return dict(created["spec"])

    try:
        res = _helm(helm, cluster, "install", *argv)
        assert res.returncode == 0, res.stderr
        crd = kube.apiext.read_custom_resource_definition(crd_name)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
        assert crd.metadata.annotations["meta.helm.sh/release-name"] == release
        poll(lambda: _established(kube, crd_name), timeout=60, what="CRD established")
        assert "upgradedField" not in job_with_field("before")  # pruned: unknown to the CRD

        _add_spec_field(chart, "upgradedField")
        res = _helm(helm, cluster, "upgrade", *argv)
        assert res.returncode == 0, res.stderr
        crd = kube.apiext.read_custom_resource_definition(crd_name)
        assert crd.metadata.labels["torchyard.io/chart-test"] == "upgraded"
        spec = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
        assert "upgradedField" in spec.properties
        poll(lambda: _established(kube, crd_name), timeout=60, what="CRD established")
        assert job_with_field("after")["upgradedField"] == "hello"

        res = _helm(helm, cluster, "uninstall", release, "-n", namespace, "--wait")
        assert res.returncode == 0, res.stderr
        assert "kept due to the resource policy" in res.stdout + res.stderr
        assert kube.apiext.read_custom_resource_definition(crd_name)  # still there
    finally:
        _helm(helm, cluster, "uninstall", release, "-n", namespace)
        for d in yaml.safe_load_all(
            "\n---\n".join(p.read_text() for p in (chart / "files" / "crds").glob("*.yaml"))
        ):
            cluster.kubectl(
                "delete",
                "crd",
                d["metadata"]["name"],
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )


def _established(kube: Kube, name: str) -> bool:
    conditions = kube.apiext.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


# ------------------------------------------------------------------------------ NOTES.txt


def _notes(helm: str, cluster: Any, *sets: str) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run: Helm only asks the API
    server its version; nothing is created)."""
    argv = ["install", "ty", str(CHART), "--dry-run=client", "-n", "torchyard-system"]
    # even a dry run refuses to take over the cluster fixture's (unowned) CRDs
    for s in ("crds.install=false", *sets):
        argv += ["--set", s]
    res = _helm(helm, cluster, *argv)
    assert res.returncode == 0, res.stderr
    return res.stdout.split("NOTES:", 1)[1]


def test_notes_name_the_ports_that_serve_metrics(helm: str, cluster: Any) -> None:
    notes = _notes(helm, cluster, "metrics.service.port=9090")
    # the operator: port-forward to the Service's port, which the Service maps to the pod's
    assert "port-forward svc/ty-torchyard-metrics 9090:9090" in notes
    assert "curl -s localhost:9090/metrics" in notes
    # the workers: the ports the builders declare (local rank r: metrics-<r>, base + r)
    assert f'"{METRICS_PORT_NAME_PREFIX}<r>" ({DEFAULT_METRICS_PORT} + r' in notes
    assert f"{METRICS_PORT_NAME_PREFIX}0, {METRICS_PORT_NAME_PREFIX}1" in notes
    assert "kubectl describe tj digits-ddp" in notes
    assert "ty-torchyard-edit and ty-torchyard-view" in notes


# ------------------------------------------------------------------------------ short names


def _served_resources(cluster: Any) -> list[tuple[str, dict[str, Any]]]:
    """(group, APIResource) of everything the API server serves (discovery, preferred
    versions), subresources left out."""

    def raw(path: str) -> Any:
        return json.loads(cluster.kubectl("get", "--raw", path).stdout)

    out = [("", r) for r in raw("/api/v1")["resources"]]
    for g in raw("/apis")["groups"]:
        gv = g["preferredVersion"]["groupVersion"]
        out += [(g["name"], r) for r in raw(f"/apis/{gv}")["resources"]]
    return [(g, r) for g, r in out if "/" not in r["name"]]


def test_short_names_shadow_nothing_the_api_server_serves(cluster: Any, kube: Kube) -> None:
    """BUILTIN (tests/unit) is every short name this Kubernetes serves; ours are none of the
    names (short, plural, singular) of anything else served here."""
    crd_groups = {c.spec.group for c in kube.apiext.list_custom_resource_definition().items}
    served = _served_resources(cluster)
    builtin = {s for g, r in served if g not in crd_groups for s in r.get("shortNames", [])}
    assert "cj" in builtin  # CronJob's, served by every Kubernetes
    assert builtin <= BUILTIN, f"short names missing from BUILTIN: {sorted(builtin - BUILTIN)}"
    others = {
        n
        for g, r in served
        if g != GROUP
        for n in [r["name"], r.get("singularName", ""), *r.get("shortNames", [])]
    }
    ours = {s for names in SHORT_NAMES.values() for s in names}
    assert not ours & others, sorted(ours & others)
