"""The chart on day two, without a cluster: as a subchart of a parent that sets `global`, its
CRDs as templates (what `helm upgrade` upgrades), the users' aggregated roles and the generated
parameter table (NOTES.txt needs a cluster to render: test_cluster_day_two.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, REPO, by_kind, helm_template, one

GENERATED = {
    d["metadata"]["name"]: d
    for p in sorted((REPO / "crds").glob("*.yaml"))
    for d in [yaml.safe_load(p.read_text())]
}


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=False, timeout=120, **kw)


# ------------------------------------------------------------------------------ subchart


def _parent(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A parent chart with torchyard as its (vendored) dependency."""
    parent = tmp_path / "platform"
    shutil.copytree(CHART, parent / "charts" / "torchyard")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    chart = {
        "apiVersion": "v2",
        "name": "platform",
        "version": "1.0.0",
        "dependencies": [
            {"name": "torchyard", "version": version, "repository": "file://../torchyard"}
        ],
    }
    (parent / "Chart.yaml").write_text(yaml.safe_dump(chart))
    (parent / "values.yaml").write_text(yaml.safe_dump(values))
    return parent


PARENT_VALUES = {
    # what umbrella charts put there: shared registry, labels, a nested map
    "global": {"imageRegistry": "registry.example.com", "labels": {"team": "ml"}},
    "torchyard": {"operator": {"verbose": True}, "crds": {"keep": False}},
}


def test_lint_strict_as_a_subchart_of_a_parent_that_sets_global(helm: str, tmp_path: Path) -> None:
    parent = _parent(tmp_path, PARENT_VALUES)
    res = _run([helm, "lint", "--strict", str(parent)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in res.stdout
    res = _run([helm, "template", "platform", str(parent), "--namespace", "platform"])
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--verbose" in c["args"]  # the parent's values for the subchart arrive
    crds = by_kind(docs, "CustomResourceDefinition")
    assert {d["metadata"]["name"] for d in crds} == set(GENERATED)
    assert all("annotations" not in d["metadata"] for d in crds)  # crds.keep=false arrived


def test_the_subchart_schema_stays_strict_beside_global(helm: str, tmp_path: Path) -> None:
    values = {**PARENT_VALUES, "torchyard": {"operator": {"verbos": True}}}
    res = _run([helm, "lint", "--strict", str(_parent(tmp_path, values))])
    assert res.returncode != 0
    assert "verbos" in res.stdout + res.stderr


# ------------------------------------------------------------------------------ CRDs


def test_crd_templates_render_the_generated_crds(helm: str) -> None:
    """templates/crds.yaml renders files/crds (== crds/, test_chart.py) without changing a
    thing of the spec (its fromYaml/toYaml round trip included), labelled as the release's,
    kept on uninstall."""
    docs = helm_template(helm)
    rendered = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert set(rendered) == set(GENERATED)
    for name, crd in rendered.items():
        want = GENERATED[name]
        assert crd["apiVersion"] == want["apiVersion"]
        assert crd["spec"] == want["spec"], name
        labels = crd["metadata"]["labels"]
        assert want["metadata"]["labels"].items() <= labels.items()
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == "ty"
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert "namespace" not in crd["metadata"]


def test_crd_toggles(helm: str) -> None:
    loose = by_kind(helm_template(helm, sets=["crds.keep=false"]), "CustomResourceDefinition")
    assert len(loose) == len(GENERATED)
    assert all("annotations" not in d["metadata"] for d in loose)
    assert not by_kind(helm_template(helm, sets=["crds.install=false"]), "CustomResourceDefinition")


# ------------------------------------------------------------------------------ user roles


def _verbs(role: dict[str, Any], resource: str) -> set[str]:
    return {
        v
        for r in role["rules"]
        if "torchyard.io" in r["apiGroups"] and resource in r["resources"]
        for v in r["verbs"]
    }


def _served() -> list[str]:
    """Every resource and subresource the CRDs serve, e.g. trainingjobs/status."""
    out = []
    for crd in GENERATED.values():
        plural = crd["spec"]["names"]["plural"]
        (version,) = crd["spec"]["versions"]
        out += [plural] + [f"{plural}/{sub}" for sub in version.get("subresources", {})]
    return out


def test_user_roles_aggregate_into_edit_admin_and_view(helm: str) -> None:
    docs = helm_template(helm)
    edit, view = one(docs, "ClusterRole", "-edit"), one(docs, "ClusterRole", "-view")
    assert edit["metadata"]["name"] == "ty-torchyard-edit"
    assert view["metadata"]["name"] == "ty-torchyard-view"
    agg = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in edit["metadata"]["labels"] if k.startswith(agg)} == {
        f"{agg}edit",
        f"{agg}admin",
    }
    assert {k for k in view["metadata"]["labels"] if k.startswith(agg)} == {f"{agg}view"}
    assert all(v == "true" for k, v in edit["metadata"]["labels"].items() if k.startswith(agg))
    read = {"get", "list", "watch"}
    for resource in _served():
        # view reads everything the CRDs serve, edit gets it too (a scale has no list/watch)
        assert _verbs(view, resource) == read, resource
        assert "get" in _verbs(edit, resource), resource
    for plural in ("trainingjobs", "compressionjobs"):
        assert read <= _verbs(edit, plural)
        assert {"create", "update", "patch", "delete", "deletecollection"} <= _verbs(edit, plural)
        # status is the operator's to write, as a Deployment's is the controller's
        assert _verbs(edit, f"{plural}/status") == read
    assert {"update", "patch"} <= _verbs(edit, "trainingjobs/scale")
    for role in (edit, view):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["torchyard.io"], rule
            assert "*" not in rule["verbs"] + rule["resources"]


def test_user_roles_toggle(helm: str) -> None:
    docs = helm_template(helm, sets=["rbac.aggregateClusterRoles=false"])
    names = [d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")]
    assert not [n for n in names if n.endswith(("-edit", "-view"))], names
    # independent of the operator's own RBAC
    docs = helm_template(helm, sets=["rbac.create=false"])
    names = [d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")]
    assert sorted(names) == ["ty-torchyard-edit", "ty-torchyard-view"]


# ------------------------------------------------------------------------------ README table


def _readme_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, str(REPO / "hack" / "chart-readme.py"), *args])


def test_parameter_table_is_generated_from_values_comments() -> None:
    res = _readme_tool("--check")
    assert res.returncode == 0, res.stderr  # stale: run `make docs`
    readme = (CHART / "README.md").read_text()
    for key, default in (
        ("global", "{}"),
        ("crds.install", "true"),
        ("crds.keep", "true"),
        ("rbac.aggregateClusterRoles", "true"),
        ("metrics.service.port", "8080"),
    ):
        assert f"| `{key}` | " in readme, key
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{key}` | ")]
        assert f"| `{default}` |" in row, row


def test_parameter_table_check_fails_on_a_changed_comment(tmp_path: Path) -> None:
    chart = tmp_path / "torchyard"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    old = "# -- Debug logging (`--verbose`)."
    assert old in values.read_text()
    values.write_text(values.read_text().replace(old, "# -- Chatty logs | for debugging."))
    res = _readme_tool("--check", "--chart", str(chart))
    assert res.returncode == 1
    assert "stale" in res.stderr
    assert _readme_tool("--chart", str(chart)).returncode == 0
    assert _readme_tool("--check", "--chart", str(chart)).returncode == 0
    readme = (chart / "README.md").read_text()
    assert "| `operator.verbose` | boolean | `false` | Chatty logs \\| for debugging. |" in readme


@pytest.mark.parametrize("key", ["image", "operator", "metrics.serviceMonitor"])
def test_sections_without_a_doc_comment_get_no_row(key: str) -> None:
    readme = (CHART / "README.md").read_text()
    assert f"| `{key}` | " not in readme
