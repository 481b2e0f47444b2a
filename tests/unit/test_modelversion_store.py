"""Which version folders the operator may judge: a pvc:// version is checked only where its
claim is mounted at ``$TORCHYARD_PVC_ROOT/<claim>``. The chart's operator mounts no claim, and
before this rule it took every pvc:// version for gone (``Missing``), so `torchyard deploy`
refused to serve it (tests/real/test_serving_real.py found it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import kopf
import pytest

from torchyard.api.contract import Env
from torchyard.controller.modelversions import check_artifact, delete_artifact, version_dir
from torchyard.state.modelversion import artifact_phase

URI = "pvc://models/store/digits-mlp/v1"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(Env.PVC_ROOT, str(tmp_path))
    return tmp_path


def _spec(sha256: str | None = None) -> dict[str, object]:
    return {"artifact": {"uri": URI, "sha256": sha256}}


def test_a_claim_not_mounted_here_is_not_verified_nor_missing(root: Path) -> None:
    assert version_dir(URI) is None
    assert check_artifact(_spec(), {}) is None  # -> Ready, "not verified"
    with pytest.raises(kopf.PermanentError, match="cannot reach this store"):
        delete_artifact(URI)  # artifactPolicy Delete: refused, never "deleted" without a look


def test_a_mounted_claim_is_verified(root: Path) -> None:
    (root / "models").mkdir()
    assert version_dir(URI) == root / "models" / "store" / "digits-mlp" / "v1"
    assert check_artifact(_spec(), {}) == artifact_phase(False, None, None)  # Missing
    folder = root / "models" / "store" / "digits-mlp" / "v1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert check_artifact(_spec(digest), {}) == artifact_phase(True, digest, digest)  # Ready
    wrong = "0" * 64
    assert check_artifact(_spec(wrong), {}) == artifact_phase(True, digest, wrong)  # Missing
    assert artifact_phase(True, digest, wrong)[0] == "Missing"


def test_file_uris_are_read_as_they_are(root: Path, tmp_path: Path) -> None:
    assert version_dir(f"file://{tmp_path}/m/v1") == tmp_path / "m" / "v1"
    assert version_dir("s3://bucket/m/v1") is None
