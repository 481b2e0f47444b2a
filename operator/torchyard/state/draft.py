"""The decision being written: :class:`StatusDraft` — pure.

A draft starts from a deep copy of the job's status and collects, for one decision, the
status edits (phase, conditions), the Events and the actions; :meth:`StatusDraft.done`
stamps ``observedGeneration`` (and a TrainingJob's scale ``selector``) and hands back the
:class:`Decision`. :meth:`StatusDraft.fail` and :meth:`StatusDraft.succeed` are the two ways
into a final phase, and both stop what still runs.
"""

from __future__ import annotations

import json
from datetime import datetime

from torchyard.api.constants import ConditionType, Phase, Reason
from torchyard.api.contract import Label
from torchyard.api.logarchive import log_status
from torchyard.api.training import TrainingJob
from torchyard.state.conditions import clear_condition, condition_true, set_condition
from torchyard.state.decision import Action, ActionKind, Decision, Event
from torchyard.state.kueue import suspend_action
from torchyard.state.observed import JobInfo, JobView, Status, rfc3339
from torchyard.state.storage import resolved_output_storage


def worker_selector(kind: str, name: str) -> str:
    """Label selector of a job's worker pods (all attempts)."""
    return f"{Label.JOB_NAME}={name},{Label.JOB_KIND}={kind.lower()}"


def worker_counts(job: JobInfo | None) -> dict[str, int]:
    """``status.workers`` from the batch Job of the current attempt (zeros without one)."""
    if job is None:
        return {"active": 0, "ready": 0, "succeeded": 0, "failed": 0}
    return {
        "active": job.active,
        "ready": job.ready,
        "succeeded": job.succeeded,
        "failed": job.failed,
    }


class StatusDraft:
    """One decision in the making: status edits, events, actions."""

    def __init__(self, view: JobView, now: datetime, default_storage: str | None = None) -> None:
        self.view = view
        self.now = now
        self.default_storage = default_storage
        """The operator's model store for jobs that set no output (``--default-storage``)."""
        self.gen = view.generation
        self.old_phase = view.status.get("phase")
        self.status: Status = json.loads(json.dumps(view.status))  # deep copy
        self.status.setdefault("restarts", 0)
        self.decision = Decision(status=self.status)

    @property
    def restarts(self) -> int:
        """The attempt the job should be on (``status.restarts``)."""
        return int(self.status.get("restarts") or 0)

    def cond(
        self, ctype: str, value: bool, reason: str, message: str, since: datetime | None = None
    ) -> bool:
        """Set one condition; ``since``: when it became so, where that was before now."""
        at = since or self.now
        return set_condition(self.status, ctype, value, reason, message, at, self.gen)

    def clear(self, ctype: str, reason: str, message: str) -> None:
        clear_condition(self.status, ctype, reason, message, self.now, self.gen)

    def phase(self, phase: str, message: str) -> None:
        self.status["phase"] = phase
        self.status["message"] = message

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.decision.events.append(Event("Warning" if warning else "Normal", reason, message))

    def before(self, action: Action) -> None:
        self.decision.before_status.append(action)

    def after(self, action: Action) -> None:
        self.decision.after_status.append(action)

    def fail(self, reason: str, message: str, job: JobInfo | None) -> Decision:
        """Move to Failed (sticky), stopping whatever still runs."""
        self.phase(Phase.FAILED, message)
        self.cond(ConditionType.FAILED, True, reason, message)
        self.clear(ConditionType.RUNNING, reason, "the job failed")
        self.clear(ConditionType.RESTARTING, reason, "the job failed")
        self.status.setdefault("completionTime", rfc3339(self.now))
        self.end_stall(reason)
        self.event(reason, message, warning=True)
        self._stop_workers(job)
        return self.done()

    def succeed(self, message: str, job: JobInfo | None) -> Decision:
        self.phase(Phase.SUCCEEDED, message)
        self.cond(ConditionType.SUCCEEDED, True, Reason.COMPLETED, message)
        self.cond(ConditionType.RUNNING, False, Reason.COMPLETED, "all workers finished")
        self.clear(ConditionType.RESTARTING, Reason.COMPLETED, "all workers finished")
        self.status.setdefault("completionTime", rfc3339(self.now))
        self.end_stall(Reason.COMPLETED)
        self.event(Reason.COMPLETED, message)
        self._stop_workers(job)
        return self.done()

    def end_stall(self, reason: str) -> None:
        """A finished job is not stalled: a ``Stalled=True`` left from its last attempt turns
        False with the finishing ``reason`` (no Event: the finish has its own). A False or
        absent condition is left as it is."""
        if condition_true(self.status, ConditionType.STALLED):
            phase = self.status.get("phase")
            self.cond(ConditionType.STALLED, False, reason, f"the job finished ({phase})")

    def _stop_workers(self, job: JobInfo | None) -> None:
        policy = (
            self.view.parsed.spec.run_policy.clean_pod_policy
            if self.view.parsed is not None
            else "Running"
        )
        if job is not None and not job.finished and not job.deleting and not job.suspended:
            # Deadline or a lost race: workers still run; suspending the Job removes its
            # active pods and keeps the Job (and the finished pods) for inspection.
            self.before(suspend_action(self.view, job))
        if job is not None and job.owned and policy in ("Running", "All"):
            # Only the pods of this job's own Job (by its uid), never another's.
            self.before(Action(ActionKind.CLEAN_PODS, job_uid=job.uid, pod_policy=policy))

    def done(self) -> Decision:
        self.status["observedGeneration"] = self.gen
        if self.view.kind == "TrainingJob":
            self.status["selector"] = worker_selector(self.view.kind, self.view.name)
            self._record_log_archive()
        return self.decision

    def _record_log_archive(self) -> None:
        """``status.logs``: where the workers archive their logs, as they resolve it (the
        job's output store, else the operator's default), so readers need not re-derive it
        and a running job's earlier attempts are found. Kept as it was when the spec does
        not parse or names no archive (a later decision cannot lose a recorded location)."""
        if not isinstance(self.view.parsed, TrainingJob):
            return
        spec = self.view.parsed.spec
        if spec.logs.max_bytes_per_rank == 0:
            return
        storage = resolved_output_storage(spec.output.storage, self.default_storage)
        logs = log_status(storage, self.view.namespace, self.view.name, self.restarts)
        if logs is not None:
            self.status["logs"] = logs

    def need_pods(self) -> Decision:
        """Ask to decide again with the worker pods listed (``Decision.needs_pods``)."""
        self.decision.needs_pods = True
        return self.done()

    def need_source(self) -> Decision:
        """Ask to decide again with the source TrainingJob read (``Decision.needs_source``)."""
        self.decision.needs_source = True
        return self.done()
