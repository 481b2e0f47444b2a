"""Parity of our Python rules and the CRD: every manifest of the invalid corpus is rejected by
the real API server (server-side dry run, strict field validation) naming the same field path
as `torchyard validate`; every example is accepted, and so is every manifest of the valid
corpus (tests/valid: the edge cases both must accept, e.g. `workers: 2.0`), by kubectl and by
`torchyard validate` alike."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.cluster.opkit import EXAMPLES, PLURAL
from tests.conftest import INVALID, VALID

from torchyard.api import ManifestError, load_manifests
from torchyard.api.constants import GROUP, VERSION
from torchyard_devcluster.testing import Kube

pytestmark = pytest.mark.cluster

INVALID_FILES = sorted(INVALID.glob("*.yaml"))


def _expected(path: Path) -> str:
    match = re.search(r"^# expect: (\S+)", path.read_text(), re.MULTILINE)
    assert match, path
    return match.group(1)


def _server_paths(exc: client.ApiException) -> list[str]:
    """The field paths the API server names (422 causes, or strict-decoding unknown fields)."""
    body: dict[str, Any] = json.loads(exc.body)
    paths = [
        str(c.get("field") or "").lstrip(".")
        for c in (body.get("details") or {}).get("causes") or []
    ]
    paths += re.findall(r'unknown field "([^"]+)"', str(body.get("message", "")))
    return [p for p in paths if p]


def _dry_run(kube: Kube, namespace: str, doc: dict[str, Any]) -> None:
    kube.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL.get(str(doc.get("kind")), "trainingjobs"),
        doc,
        dry_run="All",
        field_validation="Strict",
    )


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.name)
def test_api_server_rejects_like_torchyard_validate(
    kube: Kube, cluster_namespace: str, path: Path
) -> None:
    expected = _expected(path)
    with pytest.raises(ManifestError) as ours:
        load_manifests(path)
    assert any(line.startswith(f"{expected}: ") for line in ours.value.errors)

    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    with pytest.raises(client.ApiException) as theirs:
        _dry_run(kube, cluster_namespace, doc)
    assert theirs.value.status in (400, 422), theirs.value.body
    server = _server_paths(theirs.value)
    assert expected in server, f"API server named {server}, torchyard validate {expected}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_api_server_accepts_every_example(kube: Kube, cluster_namespace: str, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            _dry_run(kube, cluster_namespace, doc)


@pytest.mark.parametrize("path", sorted(VALID.glob("*.yaml")), ids=lambda p: p.name)
def test_kubectl_and_torchyard_validate_accept_the_valid_corpus_alike(
    kube: Kube, cluster_namespace: str, path: Path
) -> None:
    """Through kubectl itself, not the Python client: what kubectl does to the YAML is part of
    the verdict (it sends `2.0` as `2`; of a key given twice it keeps the last value)."""
    (ours,) = load_manifests(path)
    res = kube.cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-o", "json",
        "-n", cluster_namespace, "-f", str(path), check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    theirs = json.loads(res.stdout)
    assert theirs["spec"]["workers"] == ours.spec.workers
    assert theirs["spec"]["epochs"] == ours.spec.epochs


@pytest.fixture(scope="module")
def cluster_namespace(kube: Kube) -> Any:
    """One namespace for the whole corpus (dry runs create nothing)."""
    import uuid

    name = f"validation-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": name}})
    yield name
    kube.core.delete_namespace(name)
