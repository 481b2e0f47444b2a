"""Takeover time of the active/standby operator (``--leader-elect``, default lease settings
15 s / 10 s / 2 s), side by side with its baseline, in one run on the dev cluster:

- ``2 replicas, SIGKILL``: the leader crashes; the standby takes the Lease once it has been
  silent for a lease duration (up to 15 s + retry period);
- ``2 replicas, SIGTERM``: a clean shutdown (rollout, drain) releases the Lease; the standby
  takes it on its next retry (≤ 2 s);
- ``1 replica, restarted at once``: the baseline without a standby — the process is started
  again immediately (kubelet would add its restart back-off and the pod start on top).

Per round: the time from the signal until (a) the new leader holds the Lease (its
``torchyard_operator_leader`` gauge is 1, polled every 50 ms) and (b) a TrainingJob created
right after the signal has its batch Job (the operator acts again). p50 over N rounds.

    .venv/bin/python bench/ha_takeover.py --rounds 3

Writes bench/results/ha_takeover.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "bench")]

from tests.cluster.opkit import OperatorProcess, create, example, held  # noqa: E402

import torchyard_devcluster as devcluster  # noqa: E402
from torchyard_devcluster.testing import Kube, poll  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
NAME = "ha_takeover"
ELECT = ["--leader-elect"]  # the defaults: what the chart ships


def _metrics(op: OperatorProcess) -> str:
    try:
        url = f"http://127.0.0.1:{op.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _up(op: OperatorProcess) -> bool:
    # With election: the leader gauge is registered just after /metrics is served.
    want = "torchyard_operator_leader{" if op.extra_args else "torchyard_api_requests"
    return op.alive() and want in _metrics(op)


def _leads(op: OperatorProcess) -> bool:
    """Holds the Lease (or, without leader election, simply runs)."""
    text = _metrics(op)
    if not op.extra_args:
        return "torchyard_api_requests" in text
    return any(
        line.startswith("torchyard_operator_leader{") and line.endswith(" 1.0")
        for line in text.splitlines()
    )


def _job_made(kube: Kube, ns: str, name: str) -> Callable[[], bool]:
    return lambda: bool(
        kube.batch.list_namespaced_job(ns, label_selector=f"torchyard.io/job-name={name}").items
    )


def _round(kube: Kube, ns: str, ops: list[OperatorProcess], sig: int, i: int) -> dict[str, float]:
    """Signal the acting operator; seconds until a successor leads and until it acts."""
    for op in ops:
        if not op.alive():  # a leader that could not renew in time exits; its pod restarts
            op.start()
        poll(lambda op=op: _up(op), timeout=300, what=f"{op.name} up")
    acting = poll(lambda: next((op for op in ops if _leads(op)), None), timeout=300)
    others = [op for op in ops if op is not acting]
    name = f"ha-bench-{i}"
    t0 = time.monotonic()
    if not others:  # the baseline: restart the one operator at once
        acting.kill(sig)
        acting.start()
        others = [acting]
    else:  # not waiting for the exit: after SIGTERM the Lease is released before it
        assert acting.proc is not None
        acting.proc.send_signal(sig)
    create(kube, ns, {**held(example("digits-ddp.yaml")), "metadata": {"name": name}})
    poll(lambda: any(_leads(op) for op in others), timeout=300, interval=0.05, what="a leader")
    leads = time.monotonic() - t0
    poll(_job_made(kube, ns, name), timeout=300, interval=0.05, what=f"batch Job of {name}")
    acts = time.monotonic() - t0
    if acting not in others:
        acting.kill(signal.SIGKILL)  # reaped (if still exiting)
        acting.start()  # back as the standby for the next round
    return {"lease_s": round(leads, 2), "acting_s": round(acts, 2)}


def _case(kube: Kube, label: str, replicas: int, sig: int, rounds: int) -> dict[str, Any]:
    ns = f"ha-bench-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": ns}})
    logs = Path(tempfile.mkdtemp(prefix="ha-bench-"))
    args = ELECT if replicas > 1 else []  # the baseline: one replica, no election
    ops = [OperatorProcess(kube, ns, logs, args, name=f"op-{k}") for k in range(replicas)]
    for op in ops:
        op.start()
    try:
        samples = [_round(kube, ns, ops, sig, i) for i in range(rounds)]
    finally:
        for op in ops:
            op.kill(signal.SIGTERM)
        kube.core.delete_namespace(ns)
    row = {"case": label, "rounds": rounds}
    for key in ("lease_s", "acting_s"):
        vals = [s[key] for s in samples]
        row[f"{key}_p50"] = round(statistics.median(vals), 2)
        row[f"{key}_max"] = max(vals)
    print(json.dumps(row), flush=True)
    return row


def _render(data: dict[str, Any]) -> None:
    from report import render_one

    section = "\n".join(render_one(NAME, data)).rstrip() + "\n"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    head = f"## {data['title']}"
    if head in text:  # replace our own section, leave everyone else's
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section + ("" if nxt < 0 else text[nxt:])
    else:
        text = text.rstrip() + "\n\n" + section
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cluster = devcluster.up(nodes=2)
    kube = Kube.connect(cluster)
    load0 = os.getloadavg()[0]
    rows = [
        _case(kube, "2 replicas, leader SIGKILLed", 2, signal.SIGKILL, args.rounds),
        _case(kube, "2 replicas, leader SIGTERMed (releases the Lease)", 2, signal.SIGTERM, 2),
        _case(kube, "1 replica restarted at once (baseline)", 1, signal.SIGKILL, args.rounds),
    ]
    kube.close()
    base = rows[-1]["acting_s_p50"]
    for r in rows:
        r["acting_vs_baseline"] = round(r["acting_s_p50"] / base, 2)
    data = {
        "title": "Operator HA: takeover time (Lease 15 s / renew 10 s / retry 2 s)",
        "description": "From the signal to the active operator until the successor holds the "
        "Lease (lease_s) and until a TrainingJob created right after the signal has its batch "
        "Job (acting_s); p50 and max over the rounds. Baseline: one replica restarted at once "
        "(no kubelet back-off). `bench/ha_takeover.py`.",
        "machine": f"{platform.node()}: {os.cpu_count()} cores, load average "
        f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end (shared machine)",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(data, indent=2) + "\n")
    _render(data)


if __name__ == "__main__":
    main()
