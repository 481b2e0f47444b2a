"""What a conversion did not carry over as it was: each note names the source field, what
happened to it and why, so a Kubeflow user can review the result before applying it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["dropped", "changed", "moved"]


class ConvertError(ValueError):
    """A manifest that cannot be converted at all (wrong kind, no command, ...): one line."""


@dataclass(frozen=True)
class Note:
    """One field of the Kubeflow manifest that did not map one to one."""

    path: str
    """The source field, e.g. ``spec.elasticPolicy.minReplicas``."""
    action: Action
    """dropped (no equivalent), changed (value or meaning differs), moved (same value, other
    place)."""
    why: str
    """The reason, in the user's terms."""

    def line(self) -> str:
        return f"{self.action}: {self.path}: {self.why}"


@dataclass
class Notes:
    """The notes of one document, in the order the fields were read."""

    items: list[Note] = field(default_factory=list)

    def dropped(self, path: str, why: str) -> None:
        self.items.append(Note(path, "dropped", why))

    def changed(self, path: str, why: str) -> None:
        self.items.append(Note(path, "changed", why))

    def moved(self, path: str, why: str) -> None:
        self.items.append(Note(path, "moved", why))
