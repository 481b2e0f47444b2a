"""The worker's progress poster (torchyard_trainer/progress_post.py): folding events into a
snapshot, and that a dead endpoint never blocks or fails the caller."""

from __future__ import annotations

import socket
from pathlib import Path

from torchyard.api.contract import Env
from torchyard_trainer.progress_post import ProgressPoster, fold


def test_fold_keeps_the_newest_values_and_the_metrics() -> None:
    snap = fold({}, {"event": "start", "totalSteps": 100, "startStep": 0, "time": 1.0})
    snap = fold(snap, {"event": "step", "step": 5, "epoch": 0, "loss": 2.0, "lr": 0.1})
    snap = fold(snap, {"event": "eval", "step": 5, "accuracy": 0.5, "valLoss": 1.5})
    snap = fold(snap, {"event": "checkpoint", "step": 5, "uri": "x"})
    assert snap["totalSteps"] == 100
    assert (snap["step"], snap["loss"], snap["accuracy"]) == (5, 2.0, 0.5)
    assert snap["metrics"] == {"lr": 0.1, "valLoss": 1.5}


def test_only_rank_0_with_a_url_posts() -> None:
    assert ProgressPoster.from_env({}) is None
    assert ProgressPoster.from_env({Env.PROGRESS_URL: "https://x", Env.RANK: "1"}) is None


def test_an_unreachable_endpoint_never_blocks_the_training_loop(tmp_path: Path) -> None:
    # A listening socket that never answers: the post hangs until its timeout, in the thread.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    token = tmp_path / "token"
    token.write_text("t")
    env = {
        Env.PROGRESS_URL: f"https://127.0.0.1:{srv.getsockname()[1]}/v1/progress/a/trainingjobs/b",
        Env.PROGRESS_TOKEN_FILE: str(token),
    }
    poster = ProgressPoster.from_env(env)
    assert poster is not None
    poster.offer({"event": "step", "step": 0})
    srv.settimeout(30)
    conn, _ = srv.accept()  # the first post is now in flight and will get no answer
    for i in range(1, 10_000):
        poster.offer({"event": "step", "step": i})
    # Every offer returned while the post still hangs: offer() never waits on the network.
    assert poster._thread.is_alive()
    assert poster.posted == 0
    assert poster._snapshot["step"] == 9_999
    poster.close(timeout=0.1)
    conn.close()
    srv.close()
