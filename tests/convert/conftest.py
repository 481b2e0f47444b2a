"""The dev cluster's fixtures for test_convert_cluster.py (the same ones tests/cluster uses)."""

from tests.cluster.conftest import (  # noqa: F401
    cluster,
    crd_dir,
    kube,
    pytest_collection_finish,
)
