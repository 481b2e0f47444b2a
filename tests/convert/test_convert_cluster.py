"""Parity with the API server: every converted public manifest (tests/convert/kubeflow) is
accepted by the real kube-apiserver with the generated CRD (server-side dry run, strict field
validation), as `torchyard validate` accepts it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.convert.test_convert import ENTRYPOINTS, FIXTURES
from torchyard.api.constants import GROUP, VERSION
from torchyard.convert import convert_text
from torchyard_devcluster.testing import Kube

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_api_server_accepts_every_converted_manifest(kube: Kube, path: Path) -> None:
    entrypoint = ENTRYPOINTS.get(path.name)
    for conversion in convert_text(path.read_text(), entrypoint.split() if entrypoint else None):
        doc = conversion.manifest
        doc["metadata"].pop("namespace", None)  # the dry run goes to "default"
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", "trainingjobs", doc, dry_run="All", field_validation="Strict"
        )


def test_the_dry_run_does_judge_the_manifest(kube: Kube) -> None:
    """The same call rejects a converted manifest made invalid (so the test above can fail)."""
    from kubernetes import client

    (conversion,) = convert_text(FIXTURES[0].read_text())
    doc = conversion.manifest
    doc["metadata"].pop("namespace", None)
    doc["spec"]["workers"] = 0
    with pytest.raises(client.ApiException) as exc:
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", "trainingjobs", doc, dry_run="All", field_validation="Strict"
        )
    assert exc.value.status == 422
    assert "spec.workers" in str(exc.value.body)
