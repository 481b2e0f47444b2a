"""The chart on the real dev control plane (etcd, kube-apiserver with RBAC, controller-manager,
scheduler, KWOK): server-side dry-run of everything it renders, `helm install`, and the
operator's RBAC exercised with the chart's ServiceAccount token."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    ALL_OPTIONS,
    CHART,
    REPO,
    OperatorProcess,
    helm_template,
    token_kubeconfig,
)
from torchyard.api import load_manifests
from torchyard.api.constants import GROUP, TRAINING_JOB_PLURAL, VERSION
from torchyard.builders import build_children
from torchyard_devcluster.testing import Kube, poll

pytestmark = pytest.mark.cluster


def _helm(
    helm: str, cluster: Any, *args: str, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "--kubeconfig", str(cluster.kubeconfig), *args],
        text=True,
        capture_output=True,
        check=False,
        timeout=timeout,
    )


def _dry_run(
    cluster: Any, docs: list[dict[str, Any]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"rendered-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", str(path), check=False
    )


@pytest.fixture
def extra_namespace(kube: Kube) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"ty-extra-{uuid.uuid4().hex[:8]}"
        kube.core.create_namespace(
            {"metadata": {"name": name, "labels": {"torchyard.io/test": "1"}}}
        )
        made.append(name)
        return name

    yield make
    for name in made:
        kube.core.delete_namespace(name, propagation_policy="Background")


# ------------------------------------------------------------------------------ dry-run


@pytest.mark.usefixtures("monitoring_crds")
@pytest.mark.parametrize("case", ["default", "all-options"])
def test_rendered_manifests_pass_server_side_dry_run(
    helm: str,
    cluster: Any,
    namespace: str,
    extra_namespace: Callable[[], str],
    tmp_path: Path,
    case: str,
) -> None:
    """Everything the chart renders is accepted by the real apiserver's validation (OpenAPI,
    strict field validation, the Prometheus Operator's CRD schemas for its objects)."""
    sets = [f"fullnameOverride=dry-{uuid.uuid4().hex[:6]}"]
    values = []
    if case == "all-options":
        values = [ALL_OPTIONS]
        a, b = extra_namespace(), extra_namespace()
        sets += [
            f"operator.watchNamespaces={{{a},{b}}}",
            f"metrics.serviceMonitor.namespace={namespace}",
            f"metrics.podMonitor.namespace={namespace}",
            f"metrics.prometheusRule.namespace={namespace}",
            f"dashboards.namespace={namespace}",
        ]
    docs = helm_template(helm, values=values, sets=sets, ns=namespace)
    res = _dry_run(cluster, docs, tmp_path)
    assert res.returncode == 0, res.stderr
    accepted = [line for line in res.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(docs), res.stdout


@pytest.mark.usefixtures("monitoring_crds")
def test_dry_run_rejects_what_the_schemas_forbid(
    helm: str, cluster: Any, namespace: str, tmp_path: Path
) -> None:
    """The dry-run above can fail: an unknown PodMonitor field and a bad probe are refused."""
    docs = helm_template(
        helm, ns=namespace, sets=["metrics.podMonitor.enabled=true", "fullnameOverride=dry-bad"]
    )
    (pm,) = [d for d in docs if d["kind"] == "PodMonitor"]
    pm["spec"]["podMetricsEndpoints"][0]["honourLabels"] = True  # typo of honorLabels
    pm["metadata"]["namespace"] = namespace
    res = _dry_run(cluster, [pm], tmp_path)
    assert res.returncode != 0
    assert "honourLabels" in res.stderr
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = 70000
    res = _dry_run(cluster, [dep], tmp_path)
    assert res.returncode != 0
    assert "between 1 and 65535" in res.stderr


# ------------------------------------------------------------------------------ helm install


def test_helm_install_creates_operator_and_rbac(
    helm: str, cluster: Any, kube: Kube, namespace: str
) -> None:
    release = f"ty-{uuid.uuid4().hex[:6]}"
    res = _helm(
        helm,
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        # the session's CRDs (applied by the cluster fixture, shared with every other test)
        # are not this release's to own; tests/chart/test_cluster_day_two.py installs some
        "--set",
        "crds.install=false",
        "--wait",
        "--timeout",
        "180s",
    )
    assert res.returncode == 0, res.stderr
    assert "kubectl apply -f" in res.stdout  # NOTES.txt: copy-paste next steps
    assert f"rollout status deployment/{release}-torchyard" in res.stdout
    try:
        name = f"{release}-torchyard"
        dep = kube.apps.read_namespaced_deployment(name, namespace)
        # active/standby by leader election (values.yaml replicaCount, leaderElection)
        assert dep.spec.replicas == 2
        assert dep.spec.strategy.type == "RollingUpdate"
        assert dep.spec.template.spec.service_account_name == name
        # KWOK "runs" the pod: the Deployment is available (helm --wait saw it).
        assert dep.status.available_replicas == 2
        kube.core.read_namespaced_service_account(name, namespace)
        kube.core.read_namespaced_service(f"{name}-metrics", namespace)
        cms = kube.core.list_namespaced_config_map(namespace, label_selector="grafana_dashboard=1")
        assert len(cms.items) == len(list((CHART / "dashboards").glob("*.json")))
        for suffix in ("framework-cluster", "framework", "application"):
            role = kube.rbac.read_cluster_role(f"{name}-{suffix}")
            assert role.rules
            binding = kube.rbac.read_cluster_role_binding(f"{name}-{suffix}")
            assert binding.role_ref.name == f"{name}-{suffix}"
            assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
                ("ServiceAccount", name, namespace)
            ]
        # the users' roles, aggregated into the built-in ones (test_cluster_day_two.py uses them)
        for suffix in ("edit", "view"):
            labels = kube.rbac.read_cluster_role(f"{name}-{suffix}").metadata.labels
            assert labels[f"rbac.authorization.k8s.io/aggregate-to-{suffix}"] == "true"
    finally:
        res = _helm(helm, cluster, "uninstall", release, "--namespace", namespace, "--wait")
        assert res.returncode == 0, res.stderr
    from kubernetes import client

    with pytest.raises(client.ApiException) as exc:
        kube.rbac.read_cluster_role(f"{release}-torchyard-application")
    assert exc.value.status == 404


# ------------------------------------------------------------------------------ RBAC


def _sa_client(cluster: Any, kube: Kube, sa: str, namespace: str) -> Any:
    """An API client authenticated with a fresh token of the chart's ServiceAccount."""
    from kubernetes import client

    tr = kube.core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    )
    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.state_dir / "pki" / "ca.crt")
    cfg.api_key = {"authorization": f"Bearer {tr.status.token}"}
    return client.ApiClient(cfg)


@contextmanager
def _operator_as(
    cluster: Any, kube: Kube, sa: str, namespace: str, work: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """`torchyard operator --namespace work`, authenticated only by a fresh token of the
    chart's ServiceAccount ``sa`` (installed in ``namespace``)."""
    tr = kube.core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    kc = token_kubeconfig(cluster, tr.status.token, tmp_path / "sa.kubeconfig", work)
    # a model store (without one jobs wait: StorageNotConfigured, docs/storage.md)
    args = ["--namespace", work, "--default-storage", "file:///var/lib/torchyard-test-store"]
    op = OperatorProcess(kc, tmp_path / "operator.log", args)
    try:
        op.wait_healthy()
        yield op
    finally:
        op.stop()


def _denied(call: Callable[[], Any]) -> None:
    from kubernetes import client

    with pytest.raises(client.ApiException) as exc:
        call()
    assert exc.value.status == 403, exc.value
    assert "forbidden" in exc.value.body.lower()


@pytest.fixture
def installed(helm: str, cluster: Any, namespace: str) -> Iterator[Callable[..., str]]:
    """Install the chart (default values plus sets) into the test namespace; uninstall after."""
    releases: list[str] = []

    def install(*sets: str) -> str:
        release = f"ty-{uuid.uuid4().hex[:6]}"
        argv = ["install", release, str(CHART), "--namespace", namespace]
        argv += ["--set", "crds.install=false"]  # the cluster fixture's CRDs are shared
        for s in sets:
            argv += ["--set", s]
        res = _helm(helm, cluster, *argv)
        assert res.returncode == 0, res.stderr
        releases.append(release)
        return f"{release}-torchyard"

    yield install
    for release in releases:
        _helm(helm, cluster, "uninstall", release, "--namespace", namespace)


def _training_job(namespace: str, name: str) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "digits-ddp.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    return dict(body)


def test_operator_service_account_can_run_a_job_lifecycle_and_nothing_more(
    installed: Callable[..., str],
    cluster: Any,
    kube: Kube,
    namespace: str,
    extra_namespace: Callable[[], str],
) -> None:
    from kubernetes import client, watch

    sa = installed()
    work = extra_namespace()
    api = _sa_client(cluster, kube, sa, namespace)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    custom, apiext = client.CustomObjectsApi(api), client.ApiextensionsV1Api(api)
    try:
        # A user creates the TrainingJob (admin credentials) ...
        tj = kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, work, TRAINING_JOB_PLURAL, _training_job(work, "rbac-job")
        )
        # ... and the operator's identity does everything the lifecycle needs:
        # discover and watch
        assert apiext.read_custom_resource_definition(f"{TRAINING_JOB_PLURAL}.{GROUP}")
        core.list_namespace(limit=1)
        listed = custom.list_cluster_custom_object(GROUP, VERSION, TRAINING_JOB_PLURAL)
        assert any(i["metadata"]["name"] == "rbac-job" for i in listed["items"])
        events = watch.Watch().stream(
            custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            TRAINING_JOB_PLURAL,
            timeout_seconds=2,
        )
        assert any(e["object"]["metadata"]["name"] == "rbac-job" for e in events)
        # finalizer / annotations
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            work,
            TRAINING_JOB_PLURAL,
            "rbac-job",
            {"metadata": {"finalizers": [f"{GROUP}/finalizer"]}},
        )
        # children, as the builders make them, owned by the job
        (job,) = load_manifests(REPO / "examples" / "digits-ddp.yaml")
        children = build_children(job, namespace=work)
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "name": "rbac-job",
            "uid": tj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for obj in children.all():
            obj["metadata"]["ownerReferences"] = [owner]
        core.create_namespaced_config_map(work, children.configmap)
        core.create_namespaced_service(work, children.service)
        batch.create_namespaced_job(work, children.job)
        name = children.job["metadata"]["name"]
        # the Job controller makes the pods; the operator reads and deletes them
        selector = f"batch.kubernetes.io/job-name={name}"
        pods = poll(
            lambda: core.list_namespaced_pod(work, label_selector=selector).items,
            timeout=120,
            what="worker pods",
        )
        core.delete_namespaced_pod(pods[0].metadata.name, work)
        batch.patch_namespaced_job(name, work, {"spec": {"suspend": True}})
        core.patch_namespaced_config_map(
            children.configmap["metadata"]["name"], work, {"metadata": {"labels": {"touched": "1"}}}
        )
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            work,
            TRAINING_JOB_PLURAL,
            "rbac-job",
            {"status": {"phase": "Suspended"}},
        )
        core.create_namespaced_event(
            work,
            {
                "metadata": {"generateName": "rbac-job."},
                "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "TrainingJob",
                    "name": "rbac-job",
                    "namespace": work,
                    "uid": tj["metadata"]["uid"],
                },
                "reason": "JobSuspended",
                "message": "rbac test",
                "type": "Normal",
            },
        )
        batch.delete_namespaced_job(name, work, propagation_policy="Background")
        core.delete_namespaced_service(children.service["metadata"]["name"], work)
        core.delete_namespaced_config_map(children.configmap["metadata"]["name"], work)
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            work,
            TRAINING_JOB_PLURAL,
            "rbac-job",
            {"metadata": {"finalizers": None}},
        )
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, work, TRAINING_JOB_PLURAL, "rbac-job"
        )

        # ... and is DENIED everything else (403 from the real RBAC authorizer):
        _denied(lambda: core.list_namespaced_secret(work))
        _denied(lambda: core.list_secret_for_all_namespaces())
        _denied(lambda: core.read_namespaced_secret("anything", namespace))
        _denied(lambda: core.create_namespaced_secret(work, {"metadata": {"name": "x"}}))
        _denied(
            lambda: core.create_namespaced_pod(
                work,
                {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
            )
        )
        _denied(
            lambda: core.patch_namespaced_pod(
                pods[-1].metadata.name, work, {"metadata": {"labels": {"x": "1"}}}
            )
        )
        _denied(
            lambda: client.AppsV1Api(api).create_namespaced_deployment(
                work,
                {
                    "metadata": {"name": "x"},
                    "spec": {
                        "selector": {"matchLabels": {"a": "b"}},
                        "template": {
                            "metadata": {"labels": {"a": "b"}},
                            "spec": {"containers": [{"name": "c", "image": "x"}]},
                        },
                    },
                },
            )
        )
        _denied(lambda: core.delete_namespace(work))
        _denied(lambda: core.patch_node("anything", {"metadata": {"labels": {"x": "1"}}}))
        _denied(lambda: core.create_namespaced_service_account_token(sa, namespace, {"spec": {}}))
        _denied(
            lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, work, TRAINING_JOB_PLURAL, _training_job(work, "by-operator")
            )
        )
        _denied(
            lambda: apiext.patch_custom_resource_definition(
                f"{TRAINING_JOB_PLURAL}.{GROUP}", {"metadata": {"labels": {"x": "1"}}}
            )
        )
        _denied(
            lambda: client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
                {
                    "metadata": {"name": "x"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
                }
            )
        )
        # PodGroups only when enabled
        _denied(
            lambda: custom.list_namespaced_custom_object(
                "scheduling.volcano.sh", "v1beta1", work, "podgroups"
            )
        )
    finally:
        api.close()


def test_watch_namespaces_limits_the_operator_to_them(
    installed: Callable[..., str],
    cluster: Any,
    kube: Kube,
    namespace: str,
    extra_namespace: Callable[[], str],
) -> None:
    from kubernetes import client

    watched, other = extra_namespace(), extra_namespace()
    sa = installed(f"operator.watchNamespaces={{{watched}}}")
    api = _sa_client(cluster, kube, sa, namespace)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        cm = {"metadata": {"name": "spec"}, "data": {"a": "b"}}
        core.create_namespaced_config_map(watched, cm)
        custom.list_namespaced_custom_object(GROUP, VERSION, watched, TRAINING_JOB_PLURAL)
        _denied(lambda: core.create_namespaced_config_map(other, cm))
        _denied(
            lambda: custom.list_namespaced_custom_object(GROUP, VERSION, other, TRAINING_JOB_PLURAL)
        )
        _denied(lambda: custom.list_cluster_custom_object(GROUP, VERSION, TRAINING_JOB_PLURAL))
        _denied(lambda: core.list_namespaced_secret(watched))
        # what Kopf needs cluster-wide stays cluster-wide
        client.ApiextensionsV1Api(api).list_custom_resource_definition(limit=1)
    finally:
        api.close()


def test_operator_runs_a_training_job_with_the_charts_service_account(
    installed: Callable[..., str],
    cluster: Any,
    kube: Kube,
    namespace: str,
    extra_namespace: Callable[[], str],
    tmp_path: Path,
) -> None:
    """The real operator, authenticated only by the chart's ServiceAccount token (namespaced
    install), takes a TrainingJob from creation to Succeeded on the real control plane."""
    work = extra_namespace()
    sa = installed(f"operator.watchNamespaces={{{work}}}")
    with _operator_as(cluster, kube, sa, namespace, work, tmp_path) as op:
        body = _training_job(work, "sa-lifecycle")
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, work, TRAINING_JOB_PLURAL, body)

        def phase() -> str | None:
            obj = kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, work, TRAINING_JOB_PLURAL, "sa-lifecycle"
            )
            p = (obj.get("status") or {}).get("phase")
            return p if p in ("Succeeded", "Failed") else None

        final = poll(phase, timeout=240, interval=1.0, what="TrainingJob to finish")
        log = op.log.read_text()
        assert final == "Succeeded", log[-4000:]
        assert kube.batch.read_namespaced_job("sa-lifecycle", work).status.succeeded == 2
        assert " 403" not in log, log[-4000:]
        assert "Forbidden" not in log, log[-4000:]


def test_a_missing_permission_holds_the_job_and_names_the_chart_value(
    helm: str,
    installed: Callable[..., str],
    cluster: Any,
    kube: Kube,
    namespace: str,
    extra_namespace: Callable[[], str],
    tmp_path: Path,
) -> None:
    """RBAC 403 is not the job's fault: with the chart's defaults (no PodGroup permission) a
    `gang: volcano` job waits Pending with CreateForbidden quoting the API server and naming
    the chart value; once granted (helm upgrade) the next retry gets past RBAC — to the next
    thing missing here, Volcano's PodGroup API itself (GangSchedulerMissing)."""
    work = extra_namespace()
    sa = installed(f"operator.watchNamespaces={{{work}}}")
    release = sa.removesuffix("-torchyard")
    with _operator_as(cluster, kube, sa, namespace, work, tmp_path):
        body = _training_job(work, "sa-gang")
        body["spec"]["scheduling"] = {"gang": "volcano"}
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, work, TRAINING_JOB_PLURAL, body)

        def created(reason: str) -> dict[str, Any] | None:
            obj = kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, work, TRAINING_JOB_PLURAL, "sa-gang"
            )
            for c in (obj.get("status") or {}).get("conditions") or []:
                if c["type"] == "Created" and c["reason"] == reason:
                    return {**obj, "created": c}
            return None

        held = poll(lambda: created("CreateForbidden"), timeout=120, what="CreateForbidden")
        assert held["status"]["phase"] == "Pending"
        message = held["created"]["message"]
        assert held["created"]["status"] == "False"
        assert 'cannot create resource "podgroups" in API group "scheduling.volcano.sh"' in message
        assert "rbac.podGroups.volcano=true" in message
        assert kube.batch.list_namespaced_job(work).items == []

        res = _helm(
            helm,
            cluster,
            "upgrade",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "rbac.podGroups.volcano=true",
        )
        assert res.returncode == 0, res.stderr
        missing = poll(
            lambda: created("GangSchedulerMissing"), timeout=120, what="GangSchedulerMissing"
        )
        assert "spec.scheduling.gang is volcano" in missing["created"]["message"]
        assert missing["status"]["phase"] == "Pending"


def _operator_pod(docs: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    tmpl = dep["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "operator-psa",
            "namespace": namespace,
            "labels": tmpl["metadata"]["labels"],
        },
        "spec": {**tmpl["spec"], "serviceAccountName": "default"},
    }


def test_operator_pod_meets_the_restricted_pod_security_standard(
    helm: str, cluster: Any, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """Pod Security Admission (enforce=restricted) on the real apiserver admits the operator's
    pod as the chart renders it, and refuses it once a default is loosened."""
    kube.core.patch_namespace(
        namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )
    pod = _operator_pod(helm_template(helm, ns=namespace), namespace)
    res = _dry_run(cluster, [pod], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr, res.stderr
    loose = _operator_pod(
        helm_template(helm, ns=namespace, sets=["securityContext.allowPrivilegeEscalation=true"]),
        namespace,
    )
    res = _dry_run(cluster, [loose], tmp_path)
    assert res.returncode != 0
    assert "violates PodSecurity" in res.stderr
    assert "allowPrivilegeEscalation" in res.stderr
