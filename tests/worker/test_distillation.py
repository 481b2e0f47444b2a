"""Distillation in the 100-labels / unlabeled-transfer setting on scikit-learn digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.helpers import job, run_worker

pytestmark = pytest.mark.worker

LABELS = 100
STUDENT = {"builtin": "mlp", "args": {"hidden": [32]}}
RECIPE = {
    "optimizer": {"name": "adamw", "lr": 0.003},
    "epochs": 40,
    "batchSize": 64,
    "seed": 0,
}


def test_distilled_student_beats_plain_student(tmp_path: Path) -> None:
    store = f"file://{tmp_path}/models"
    out = {"output": {"storage": store}}
    teacher = run_worker(
        job(
            "teacher",
            model={"builtin": "mlp", "args": {"hidden": [128, 64]}},
            data={"builtin": "digits"},
            lrSchedule={"kind": "cosine"},
            **{**RECIPE, "epochs": 20},
            **out,
        ),
        tmp_path / "teacher",
    )
    labeled = {"builtin": "digits", "labeledSamples": LABELS}
    # the same student recipe without a teacher: sees only the 100 labeled samples
    plain = run_worker(
        job("plain", model=STUDENT, data=labeled, **RECIPE, **out), tmp_path / "plain"
    )
    # a stronger baseline: the plain student given as many optimizer steps as the distilled one
    distilled = run_worker(
        job(
            "distilled",
            strategy="distillation",
            model=STUDENT,
            data=labeled,
            distillation={
                "teacher": {"trainingJobRef": "teacher"},
                "temperature": 4.0,
                "alpha": 0.9,
                "transferSet": "unlabeled",
            },
            **RECIPE,
            **out,
        ),
        tmp_path / "distilled",
        nproc=2,
    )
    steps = distilled["step"]
    converged = run_worker(
        job(
            "plain-converged",
            model=STUDENT,
            data=labeled,
            **{**RECIPE, "batchSize": 20, "epochs": steps // (LABELS // 20)},
            **out,
        ),
        tmp_path / "plain-converged",
    )
    acc = {
        "teacher (all labels)": teacher["metrics"]["accuracy"],
        "plain student, same recipe": plain["metrics"]["accuracy"],
        f"plain student, {converged['step']} steps": converged["metrics"]["accuracy"],
        "distilled student (2 ranks)": distilled["metrics"]["accuracy"],
    }
    for k, v in acc.items():
        print(f"{k:>32}: {v:.2%}")
    assert distilled["model"]["uri"].endswith("/distilled/v1")
    assert plain["step"] < steps  # the recipe gives the plain student far fewer batches
    d = distilled["metrics"]["accuracy"]
    assert d - plain["metrics"]["accuracy"] >= 0.10
    # and it beats a plain student trained to convergence on the same labels
    assert d - converged["metrics"]["accuracy"] >= 0.03
