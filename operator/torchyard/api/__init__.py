"""The torchyard API (group torchyard.io, version v1alpha1): TrainingJob and CompressionJob.

These pydantic models are the single source of truth: the CRDs in ``crds/`` are generated from
them (``torchyard.crd``), and ``torchyard validate`` / ``torchyard run`` validate with them.
"""

from torchyard.api.base import KubeModel, Rule, dump
from torchyard.api.compression import CompressionJob, CompressionJobSpec, CompressionJobStatus
from torchyard.api.constants import API_VERSION, GROUP, VERSION
from torchyard.api.manifest import (
    AnyJob,
    FileCheck,
    ManifestError,
    check_manifests,
    format_validation_error,
    load_manifest,
    load_manifests,
    parse_job,
)
from torchyard.api.training import TrainingJob, TrainingJobSpec, TrainingJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AnyJob",
    "CompressionJob",
    "CompressionJobSpec",
    "CompressionJobStatus",
    "FileCheck",
    "KubeModel",
    "ManifestError",
    "Rule",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "check_manifests",
    "dump",
    "format_validation_error",
    "load_manifest",
    "load_manifests",
    "parse_job",
]
