"""The Helm chart without a cluster: lint, render, schema, RBAC shape, monitoring objects,
dashboards, alert rules (promtool) and the images' Dockerfiles (hadolint)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import ALL_OPTIONS, CHART, REPO, by_kind, helm_template, one
from torchyard.api import TrainingJob, load_manifests
from torchyard.api.contract import Env, Label
from torchyard.builders import METRICS_PORT_NAME_PREFIX, build_children

VALUES_CASES = {"default": [], "all-options": [ALL_OPTIONS]}
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
PROGRESS_OFF = ("progress.enabled=false",)


def _lint(helm: str, *values: Path) -> subprocess.CompletedProcess[str]:
    argv = [helm, "lint", "--strict", str(CHART)]
    for v in values:
        argv += ["--values", str(v)]
    return subprocess.run(argv, text=True, capture_output=True, check=False, timeout=120)


# ------------------------------------------------------------------------------ lint, render


@pytest.mark.parametrize("case", VALUES_CASES)
def test_helm_lint_strict(helm: str, case: str) -> None:
    res = _lint(helm, *VALUES_CASES[case])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in res.stdout


def test_default_render(helm: str) -> None:
    docs = helm_template(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "Deployment"]
        + ["Service"] * 2  # metrics, live progress
        + ["Secret"]  # the progress endpoint's generated certificate
        + ["CustomResourceDefinition"] * 3  # TrainingJob, CompressionJob, ModelVersion
        + ["ClusterRole"] * 6  # the operator's 3, progress' TokenReviews, users' edit and view
        + ["ClusterRoleBinding"] * 4
        + ["ConfigMap"] * len(DASHBOARDS)
        + ["Role", "RoleBinding", "PodDisruptionBudget"]  # leader election, 2 replicas
    )
    # The Prometheus Operator objects are opt-in (their CRDs may not exist).
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & set(kinds)
    for d in docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "ty"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert d["metadata"]["namespace"] == "torchyard-system"


def test_all_options_render(helm: str) -> None:
    docs = helm_template(helm, values=[ALL_OPTIONS])
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        obj = one(docs, kind)
        assert obj["metadata"]["namespace"] == "monitoring"
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["labels"]["tier"] == "control"
    c = pod["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/torchyard/operator@sha256:" + "0" * 64
    assert c["imagePullPolicy"] == "Always"
    assert "--default-image=registry.example.com/torchyard/trainer:0.1.0" in c["args"]
    assert "--default-storage=pvc://models/store" in c["args"]
    assert "--verbose" in c["args"]
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "ty-operator" == pod["spec"]["serviceAccountName"]
    svc = one(docs, "Service", "-metrics")
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    for cm in by_kind(docs, "ConfigMap"):
        assert cm["metadata"]["annotations"] == {"grafana_folder": "torchyard"}
        assert cm["metadata"]["namespace"] == "monitoring"


def test_values_schema_rejects_typos_and_bad_types(helm: str) -> None:
    for bad in (
        "operator.typo=1",
        "image.pullPolicy=Sometimes",
        "metrics.port=70000",
        "operator.watchNamespaces[0]=Not_A_Namespace",
    ):
        res = subprocess.run(
            [helm, "template", "ty", str(CHART), "--set", bad],
            text=True,
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert res.returncode != 0, f"--set {bad} was accepted"
        assert "schema" in res.stderr, res.stderr


def _leaf_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml, checked against the schema on the way down."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        prop = schema.get("properties", {}).get(key)
        assert prop is not None, f"{path}: in values.yaml but not in values.schema.json"
        assert prop.get("description", "").strip(), f"{path}: no description in the schema"
        paths.append(path)
        if isinstance(value, dict) and "properties" in prop:
            paths += _leaf_paths(value, prop, f"{path}.")
    return paths


def test_every_value_is_documented() -> None:
    """Every key of values.yaml has a `# --` comment and a typed, described schema entry."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    paths = _leaf_paths(values, schema)
    text = (CHART / "values.yaml").read_text().splitlines()
    for path in paths:
        key = path.rsplit(".", 1)[-1]
        lines = [i for i, line in enumerate(text) if re.match(rf"^\s*{re.escape(key)}:", line)]
        assert lines, path
        # the key's own comment, or (for sections) a comment block right above it
        assert any(
            text[i - 1].lstrip().startswith("#") or text[i].strip().endswith(":") for i in lines
        ), f"{path}: undocumented in values.yaml"


def test_crds_match_generated() -> None:
    """charts/torchyard/files/crds (what templates/crds.yaml renders) is the copy `make crds`
    makes of the generated crds/ (drift test)."""
    generated = {p.name: p.read_text() for p in sorted((REPO / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_text() for p in sorted((CHART / "files" / "crds").glob("*.yaml"))}
    assert generated, "crds/ is empty"
    assert chart == generated, "charts/torchyard/files/crds is stale: run `make crds`"
    # Helm would install a crds/ folder on its own, and never upgrade it.
    assert not (CHART / "crds").exists()


# ------------------------------------------------------------------------------ Deployment


def test_deployment_active_standby_restricted(helm: str) -> None:
    docs = helm_template(helm)
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    # Two replicas, one acting: the Lease (leader election) makes overlapping pods safe.
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "--leader-elect" in args
    assert f"--lease-name={dep['metadata']['name']}" in args
    (lease_rule,) = [r for r in one(docs, "Role")["rules"] if "update" in r["verbs"]]
    assert lease_rule["resourceNames"] == [dep["metadata"]["name"]]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == spec["selector"]
    assert pdb["spec"]["minAvailable"] == 1
    # Only the acting replica serves live progress: it labels its own pod (patch, here only).
    (progress,) = [
        d for d in by_kind(docs, "Service") if d["metadata"]["name"].endswith("-progress")
    ]
    assert progress["spec"]["selector"]["torchyard.io/operator-role"] == "leader"
    assert _allows(one(docs, "Role")["rules"], "", "pods", "patch")
    pod = spec["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert psc["runAsUser"] != 0
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]
    # The probe targets the port the operator is told to serve /healthz on.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert f"--health-port={ports['health']}" in c["args"]
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    assert c["command"] == ["torchyard"]
    assert c["args"][:2] == ["operator", "--all-namespaces"]


def test_one_replica_without_leader_election(helm: str) -> None:
    off = ["leaderElection.enabled=false"]
    docs = helm_template(helm, sets=[*off, "replicaCount=1"])
    spec = one(docs, "Deployment")["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    assert "--leader-elect" not in spec["template"]["spec"]["containers"][0]["args"]
    assert not by_kind(docs, "PodDisruptionBudget")
    with pytest.raises(AssertionError, match=r"needs leaderElection\.enabled"):
        helm_template(helm, sets=off)  # 2 replicas that would both act: refused


def test_operator_cli_accepts_the_rendered_args(helm: str) -> None:
    """The chart's args are options `torchyard operator` really has (checked with --help)."""
    (c,) = one(helm_template(helm, values=[ALL_OPTIONS]), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    res = subprocess.run(
        [str(REPO / ".venv" / "bin" / "torchyard"), "operator", "--help"],
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    for arg in c["args"][1:]:
        flag = arg.split("=", 1)[0]
        assert flag in res.stdout, f"torchyard operator has no option {flag}"


def test_disabling_probe_and_metrics(helm: str) -> None:
    docs = helm_template(
        helm,
        sets=["operator.livenessProbe.enabled=false", "metrics.enabled=false", *PROGRESS_OFF],
    )
    assert not by_kind(docs, "Service")
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "livenessProbe" not in c
    assert "ports" in c
    assert c["ports"] in (None, [])
    assert "--health-port=0" in c["args"]
    assert "--metrics-port=0" in c["args"]


# ------------------------------------------------------------------------------ RBAC


def _rules(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The operator's ClusterRoles by suffix (the users' edit/view roles left out)."""
    out = {}
    for d in by_kind(docs, "ClusterRole"):
        name = d["metadata"]["name"]
        suffix = next(
            (s for s in ("framework-cluster", "framework", "application") if name.endswith(s)),
            None,
        )
        if suffix is not None:
            out[suffix] = d["rules"]
    return out


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


@pytest.mark.parametrize("case", VALUES_CASES)
def test_rbac_least_privilege(helm: str, case: str) -> None:
    docs = helm_template(helm, values=VALUES_CASES[case])
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert "nonResourceURLs" not in rule


def test_rbac_split_framework_and_application(helm: str) -> None:
    rules = _rules(helm_template(helm))
    assert set(rules) == {"framework-cluster", "framework", "application"}
    fw, app, cl = rules["framework"], rules["application"], rules["framework-cluster"]
    for verb in ("get", "list", "watch"):
        assert _allows(cl, "apiextensions.k8s.io", "customresourcedefinitions", verb)
    for plural in ("trainingjobs", "compressionjobs"):
        for verb in ("list", "watch", "patch"):
            assert _allows(fw, "torchyard.io", plural, verb)
        assert _allows(fw, "torchyard.io", f"{plural}/status", "patch")
        assert not _allows(fw, "torchyard.io", plural, "create")  # users create jobs
        assert _allows(fw, "torchyard.io", plural, "delete")  # ttlSecondsAfterFinished
        assert not _allows(fw, "torchyard.io", plural, "update")
    assert _allows(fw, "", "events", "create")
    # Nothing of the application's rules is in the framework's and vice versa.
    assert not any(r["apiGroups"] in (["batch"],) for r in fw)
    assert not any("torchyard.io" in r["apiGroups"] for r in app)
    # Worker pods are created by the Job controller, never by the operator.
    assert not _allows(app, "", "pods", "create")
    assert _allows(app, "", "pods", "delete")
    # Claims are only read (does the claim a job mounts exist? docs/storage.md), never made.
    assert _allows(app, "", "persistentvolumeclaims", "get")
    assert not _allows(app, "", "persistentvolumeclaims", "create")


def test_application_rules_cover_every_object_the_builders_make(helm: str) -> None:
    """Cross-check with the real builders: the operator may create what it builds."""
    app = _rules(helm_template(helm))["application"]
    apps_all = _rules(helm_template(helm, values=[ALL_OPTIONS]))["application"]
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for job in load_manifests(path):
            children = build_children(job, namespace="ns", restart_count=0)
            objs = [children.service, children.configmap, children.job]
            if getattr(children, "podgroup", None):
                objs.append(children.podgroup)
            for obj in objs:
                if obj is None:
                    continue
                group = obj["apiVersion"].rpartition("/")[0]
                plural = obj["kind"].lower() + "s"
                rules = app if obj["kind"] != "PodGroup" else apps_all
                for verb in ("create", "get", "list", "watch", "patch", "delete"):
                    assert _allows(rules, group, plural, verb), f"{path.name}: {verb} {plural}"


@pytest.mark.parametrize("case", VALUES_CASES)
def test_kueue_workloads_get_list_patch(helm: str, case: str) -> None:
    """runPolicy.suspend of a Kueue-managed Job patches its Workload's spec.active."""
    app = _rules(helm_template(helm, values=VALUES_CASES[case]))["application"]
    for verb in ("get", "list", "patch"):
        assert _allows(app, "kueue.x-k8s.io", "workloads", verb)
    for verb in ("create", "delete", "update"):  # Kueue makes and removes them
        assert not _allows(app, "kueue.x-k8s.io", "workloads", verb)


def test_podgroup_rules_only_when_enabled(helm: str) -> None:
    off = _rules(helm_template(helm))["application"]
    on = _rules(helm_template(helm, values=[ALL_OPTIONS]))["application"]
    for group in ("scheduling.volcano.sh", "scheduling.x-k8s.io"):
        assert not _allows(off, group, "podgroups", "create")
        assert _allows(on, group, "podgroups", "create")


def test_watch_namespaces_binds_only_there(helm: str) -> None:
    docs = helm_template(helm, sets=["operator.watchNamespaces={team-a,team-b}"])
    crbs = {d["roleRef"]["name"] for d in by_kind(docs, "ClusterRoleBinding")}
    # TokenReviews are cluster-scoped: the progress endpoint's binding is a cluster one
    assert crbs == {"ty-torchyard-framework-cluster", "ty-torchyard-progress"}
    rbs = {(d["metadata"]["namespace"], d["roleRef"]["name"]) for d in by_kind(docs, "RoleBinding")}
    assert rbs == {
        (ns, f"ty-torchyard-{r}")
        for ns in ("team-a", "team-b")
        for r in ("framework", "application")
    } | {("torchyard-system", "ty-torchyard-leader-election")}  # the Lease, in its own namespace
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--all-namespaces" not in c["args"]
    assert "--namespace=team-a" in c["args"]
    assert "--namespace=team-b" in c["args"]


def test_long_release_names_fit_63_characters(helm: str) -> None:
    docs = helm_template(helm, release="a" * 53, values=[ALL_OPTIONS], sets=["fullnameOverride="])
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
    names = [d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")]
    assert len(set(names)) == 6, names


# ------------------------------------------------------------------------------ monitoring


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabeling (keep, drop, replace) of one discovered target; None: dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        assert action in ("keep", "drop", "replace"), rule
        sources = rule.get("sourceLabels", [])
        value = rule.get("separator", ";").join(labels.get(n, "") for n in sources)
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if (action == "keep" and m is None) or (action == "drop" and m is not None):
            return None
        if action == "replace" and m is not None:
            labels[rule["targetLabel"]] = m.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return labels


@pytest.mark.parametrize("procs", [1, 4])
def test_podmonitor_scrapes_every_process_of_the_pods_the_builders_make(
    helm: str, procs: int
) -> None:
    docs = helm_template(helm, values=[ALL_OPTIONS])
    pm = one(docs, "PodMonitor")
    (job,) = load_manifests(REPO / "examples" / "digits-ddp.yaml")
    assert isinstance(job, TrainingJob)
    job.spec.procs_per_worker = procs
    pod = build_children(job, namespace="team-a", restart_count=0).job["spec"]["template"]
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector == {Label.ROLE: "worker"}
    assert selector.items() <= pod["metadata"]["labels"].items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    # Prometheus' pod discovery: one target per declared container port, kept or dropped by the
    # endpoint's relabelings (no `port:` filter, which would keep one port name only)
    assert "port" not in endpoint
    assert "portNumber" not in endpoint
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    base = int(env[Env.METRICS_PORT])
    scraped = {}
    for port in container["ports"]:
        target = _relabel(
            endpoint["relabelings"],
            {
                "__meta_kubernetes_pod_container_port_name": port["name"],
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
            },
        )
        if target is not None:
            scraped[port["containerPort"]] = target
    # local rank r serves TORCHYARD_METRICS_PORT + r: all of them are scraped, nothing else
    assert sorted(scraped) == [base + r for r in range(procs)]
    assert {t["endpoint"] for t in scraped.values()} == {
        f"{METRICS_PORT_NAME_PREFIX}{r}" for r in range(procs)
    }
    # the values' own relabelings still apply, after the port filter
    assert all(t["cluster"] == "dev" for t in scraped.values())
    # Prometheus' `job` stays the scrape job and `namespace` the pod's (docs/metrics.md,
    # "Labels"): no honorLabels; the workers' own namespace (same value) arrives as
    # exported_namespace and is dropped before the values' metricRelabelings
    assert endpoint["honorLabels"] is False
    drop = {"action": "labeldrop", "regex": "exported_namespace"}
    assert endpoint["metricRelabelings"][0] == drop
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    for label in pm["spec"]["podTargetLabels"]:
        assert label in pod["metadata"]["labels"]
    default_pm = one(helm_template(helm, sets=["metrics.podMonitor.enabled=true"]), "PodMonitor")
    assert default_pm["spec"]["namespaceSelector"] == {"any": True}
    (default_endpoint,) = default_pm["spec"]["podMetricsEndpoints"]
    assert default_endpoint["relabelings"] == endpoint["relabelings"][:2]
    assert default_endpoint["metricRelabelings"] == endpoint["metricRelabelings"][:1]


def test_servicemonitor_selects_the_metrics_service(helm: str) -> None:
    docs = helm_template(helm, values=[ALL_OPTIONS])
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service", "-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["torchyard-system"]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    # the alerts and the operator dashboard select up{job="torchyard"}
    assert ep["relabelings"][0] == {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "torchyard",
    }
    # the operator's per-job series keep the JOB's namespace, not the operator's (docs/metrics.md)
    assert ep["honorLabels"] is True
    dep = one(docs, "Deployment")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_prometheusrule_is_the_alerts_file(helm: str) -> None:
    rule = one(helm_template(helm, values=[ALL_OPTIONS]), "PrometheusRule")
    plain = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    extra = {"team": "ml-platform"}
    expected = [
        {**g, "rules": [{**r, "labels": {**extra, **r.get("labels", {})}} for r in g["rules"]]}
        for g in plain["groups"]
    ]
    assert rule["spec"]["groups"] == expected


def test_dashboard_configmaps(helm: str) -> None:
    docs = helm_template(helm, sets=["dashboards.label=my_dash", "dashboards.labelValue=yes"])
    cms = by_kind(docs, "ConfigMap")
    assert len(cms) == len(DASHBOARDS) >= 3
    for cm in cms:
        assert cm["metadata"]["labels"]["my_dash"] == "yes"
        ((key, text),) = cm["data"].items()
        src = CHART / "dashboards" / key.removeprefix("torchyard-")
        assert json.loads(text) == json.loads(src.read_text())
    default = by_kind(helm_template(helm), "ConfigMap")
    assert all(cm["metadata"]["labels"]["grafana_dashboard"] == "1" for cm in default)
    assert not by_kind(helm_template(helm, sets=["dashboards.enabled=false"]), "ConfigMap")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_is_importable(path: Path) -> None:
    """Grafana needs: a uid, a title, a datasource variable every panel uses, queries."""
    board = json.loads(path.read_text())
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    assert board["title"].startswith("torchyard / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip()
            assert t["datasource"]["uid"] == "${datasource}"
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_dashboard_uids_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_alert_rules_check(promtool: str) -> None:
    res = subprocess.run(
        [promtool, "check", "rules", str(CHART / "files" / "alerts.yaml")],
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    names = {
        r["alert"]
        for g in yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    assert names == {
        "TorchyardJobFailed",
        "TorchyardRestartsLooping",
        "TorchyardThroughputCollapse",
        "TorchyardJobStalled",
        "TorchyardOperatorDown",
    }


def test_alert_rules_fire_on_synthetic_series(promtool: str) -> None:
    """promtool's rule unit tests: every alert fires on a bad series, not on a healthy one."""
    tests = CHART / "files" / "alerts_test.yaml"
    res = subprocess.run(
        [promtool, "test", "rules", tests.name],
        text=True,
        capture_output=True,
        check=False,
        timeout=120,
        cwd=tests.parent,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    tested = {
        a["alertname"]
        for t in yaml.safe_load(tests.read_text())["tests"]
        for a in t.get("alert_rule_test", [])
        if a.get("exp_alerts")
    }
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert tested == {r["alert"] for g in rules["groups"] for r in g["rules"]}


# ------------------------------------------------------------------------------ images


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_dockerfile_hadolint_clean(dockerfile: str) -> None:
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    res = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(REPO / dockerfile)],
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_dockerfile_contract(dockerfile: str) -> None:
    """Non-root, copies only paths that exist and the .dockerignore lets through."""
    text = (REPO / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for item in src.split():
            assert (REPO / item).exists(), item
            assert any(item.rstrip("/") == a or item.startswith(a + "/") for a in allowed), item
    if dockerfile == "Dockerfile":
        runs = " ".join(re.findall(r"^RUN\s+(.*)$", text, re.M))
        assert "[trainer]" not in runs
        assert "torch==" not in runs
        assert re.search(r'^ENTRYPOINT \["torchyard"\]', text, re.M)
    else:
        assert re.search(r'^ENTRYPOINT \["torchrun"\]', text, re.M)
        assert re.search(r"^USER 1000", text, re.M)
        assert "torchyard_trainer" in text
