"""The knowledge-distillation loss (Hinton et al.), shared by the distillation TrainingJob and
the CompressionJob's distill step:

    loss = alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, y)

Samples whose label is withheld (label < 0, :data:`UNLABELED`) contribute the soft term only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNLABELED = -1
"""The label of a sample of the unlabeled transfer set."""


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha·T²·KL(teacher_T ‖ student_T) over all samples + (1 − alpha)·CE over the labeled
    ones (target ≥ 0). Token models (logits of more than 2 dims): every position is a sample.
    Without ``target`` or with ``alpha ≥ 1`` only the soft term is computed."""
    if student.dim() > 2:
        student = student.reshape(-1, student.shape[-1])
        teacher = teacher.reshape(-1, teacher.shape[-1])
        target = None if target is None else target.reshape(-1)
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student.float() / t, dim=-1),
        F.log_softmax(teacher.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    if target is None or alpha >= 1.0:
        return alpha * t * t * soft
    labeled = target >= 0
    if bool(labeled.any()):
        hard = F.cross_entropy(student.float()[labeled], target[labeled])
    else:
        hard = student.sum() * 0.0
    return alpha * t * t * soft + (1.0 - alpha) * hard
