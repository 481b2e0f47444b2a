"""ModelVersion: one model version a job produced, as a Kubernetes object.

A version is written once by a worker (``<store>/<model>/v<N>/``: weights + model card); the
operator mirrors it into a ModelVersion named ``<model>-v<N>`` (deterministic, so a restarted
operator gets the one it made instead of making a second). What the version *is* (artifact,
origin, metrics) is immutable — CEL ``self == oldSelf`` — while what people do *with* it
(aliases, artifactPolicy, labels) changes. No owner: a version outlives the job that made it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints

from torchyard.api.base import KubeModel, Rule, dump
from torchyard.api.constants import DNS_1035_LABEL, GROUP

MODEL_VERSION_KIND: Final = "ModelVersion"
MODEL_VERSION_PLURAL: Final = "modelversions"
MODEL_LABEL: Final = f"{GROUP}/model"
"""Label on every ModelVersion: its model name (lists one model's versions by selector)."""
MODEL_VERSION_ANNOTATION: Final = f"{GROUP}/model-version"
"""Annotation on a job that produced a model: the name of its ModelVersion (the job points to
it; a version deleted later is not made again from the job)."""

# An alias is a DNS-1123 label (it appears in `<model>@<alias>` references and Event text).
ALIAS = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SOURCE_REF = r"^(TrainingJob|CompressionJob)/[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SHA256 = r"^[0-9a-f]{64}$"
# `<model>@<alias>` or `<model>/v<N>`: how jobs name a version to start from.
VERSION_REF = r"^[a-z]([-a-z0-9]*[a-z0-9])?(@[a-z0-9]([-a-z0-9]*[a-z0-9])?|/v[1-9][0-9]*)$"

ModelName = Annotated[str, StringConstraints(pattern=DNS_1035_LABEL, max_length=63)]
AliasName = Annotated[str, StringConstraints(pattern=ALIAS, max_length=63)]
VersionRefString = Annotated[str, StringConstraints(pattern=VERSION_REF, max_length=140)]


def version_name(model: str, version: int) -> str:
    """The ModelVersion object's name: ``<model>-v<N>`` (a DNS subdomain)."""
    return f"{model}-v{version}"


def parse_version_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``<model>@<alias>`` -> (model, alias, None); ``<model>/v<N>`` -> (model, None, N)."""
    m = re.fullmatch(r"([a-z][-a-z0-9]*)(?:@([a-z0-9][-a-z0-9]*)|/v(\d+))", ref)
    if m is None:
        raise ValueError(f"{ref!r}: expected <model>@<alias> or <model>/v<N>")
    return m.group(1), m.group(2), int(m.group(3)) if m.group(3) else None


class VersionMeta(KubeModel):
    """The parts of ``metadata`` torchyard reads; everything else is passed through."""

    model_config = ConfigDict(**{**KubeModel.model_config, "extra": "allow"})

    name: Annotated[str, StringConstraints(pattern=DNS_1035_LABEL, max_length=253)] | None = None
    """<model>-v<version>."""
    namespace: str | None = None
    """Namespace of the version (the producing job's)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels (torchyard.io/model is set by the operator)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""


class Artifact(KubeModel):
    """Where the version's files are and what they hash to."""

    uri: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    """Storage URI of the version directory (file://, pvc://, s3://...)."""
    sha256: Annotated[str, StringConstraints(pattern=SHA256)] | None = None
    """SHA-256 of the weights file; the operator re-verifies it where it can read the store."""
    formats: list[Annotated[str, StringConstraints(max_length=63)]] = Field(
        default=["safetensors"], max_length=16
    )
    """File formats of the weights (safetensors, and e.g. int8 / pruned / structured variants)."""
    bytes: int | None = Field(default=None, ge=0)
    """Size of the weights file."""
    parameters: int | None = Field(default=None, ge=0)
    """Parameter count."""


class Origin(KubeModel):
    """Where the version came from: the model card's lineage."""

    source: Annotated[str, StringConstraints(pattern=SOURCE_REF, max_length=300)]
    """The producing job as Kind/name, e.g. TrainingJob/digits-ddp."""
    parent: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The ModelVersion this one was compressed, distilled or fine-tuned from."""
    spec_hash: Annotated[str, StringConstraints(max_length=128)] | None = None
    """sha256 of the producing job's canonical spec (same hash = same recipe)."""
    data: dict[str, Any] = Field(default_factory=dict)
    """The data the job used (the card's data section)."""
    lineage: dict[str, Any] = Field(default_factory=dict)
    """The model card's lineage as written by the worker (job, steps, world size, source...)."""


class ModelVersionSpec(KubeModel):
    """A stored model version; artifact, origin and metrics never change."""

    model: ModelName
    """Model name (the producing job's output.modelName)."""
    version: int = Field(ge=1)
    """Version number within the model."""
    aliases: list[AliasName] = Field(
        default_factory=list, max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Aliases this version holds (production, candidate, ...): at most one version per model
    holds an alias; assigning it here moves it (the operator removes it from the others)."""
    artifact_policy: Literal["Keep", "Delete"] = "Keep"
    """What deleting this object does to the stored files: Keep them, or Delete them."""
    artifact: Artifact
    """The stored files."""
    origin: Origin
    """Lineage."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Evaluation metrics of the version (accuracy, loss...)."""

    rules = (
        Rule(
            # has(): metrics may be left out (no default is written for a map).
            cel="self.model == oldSelf.model && self.version == oldSelf.version "
            "&& has(self.metrics) == has(oldSelf.metrics) "
            "&& (!has(self.metrics) || self.metrics == oldSelf.metrics)",
            message="model, version and metrics of a ModelVersion cannot change "
            "(only aliases, artifactPolicy and labels can)",
        ),
    )


class VersionStatus(KubeModel):
    """Observed state of a ModelVersion (written by the operator)."""

    phase: Literal["Ready", "Missing", "Deleting"] | None = None
    """Ready: the artifact is there with its digest; Missing: it vanished or its digest
    changed; Deleting: the artifact policy is running before the object goes."""
    message: str | None = None
    """Human summary of the phase."""
    last_verified: str | None = None
    """When the operator last checked the artifact (RFC 3339)."""
    alias_since: dict[str, str] = Field(default_factory=dict)
    """When the operator saw each alias arrive on this version (the newest holder wins)."""


def _immutable(field: str) -> str:
    return f"self.spec.{field} == oldSelf.spec.{field}"


class ModelVersion(KubeModel):
    """A ModelVersion: one version of a model produced by a TrainingJob or CompressionJob, with
    its artifact, lineage, metrics and aliases."""

    api_version: Literal["torchyard.io/v1alpha1"] = Field(
        default="torchyard.io/v1alpha1", alias="apiVersion"
    )
    """torchyard.io/v1alpha1"""
    kind: Literal["ModelVersion"] = MODEL_VERSION_KIND
    """ModelVersion"""
    metadata: VersionMeta
    """Standard object metadata."""
    spec: ModelVersionSpec
    """The version."""
    status: VersionStatus | None = None
    """Observed state (written by the operator)."""

    rules = (
        Rule(
            # format(), not `+ string(...)`: the concatenation's estimated cost is over budget.
            cel="self.metadata.name == '%s-v%d'.format([self.spec.model, self.spec.version])",
            message="metadata.name must be <spec.model>-v<spec.version>",
            field_path=".metadata.name",
            check=lambda mv: (
                mv.metadata.name is None
                or mv.metadata.name == version_name(mv.spec.model, mv.spec.version)
            ),
        ),
        Rule(
            cel=f"{_immutable('artifact')} && {_immutable('origin')}",
            message="spec.artifact and spec.origin of a ModelVersion cannot change",
            field_path=".spec",
        ),
    )

    def to_dict(self) -> dict[str, Any]:
        return dump(self)


__all__ = [
    "MODEL_LABEL",
    "MODEL_VERSION_ANNOTATION",
    "MODEL_VERSION_KIND",
    "MODEL_VERSION_PLURAL",
    "Artifact",
    "ModelVersion",
    "ModelVersionSpec",
    "Origin",
    "VersionMeta",
    "VersionStatus",
    "parse_version_ref",
    "version_name",
]
