"""The worker pod's own log archive: the launcher tees its stdout/stderr (and so every rank's,
which torchrun's children inherit) into ``<output store>/.logs/<ns>/<job>/attempt-<n>/
rank-<r>.log`` as it runs (layout: :mod:`torchyard.api.logarchive`).

Written by the pod itself rather than copied by the operator before it deletes the pod: the
operator cannot mount a job's volume, and a log written as it happens survives what a copy
made at deletion time cannot (a lost node, an evicted pod, a TTL). Bounded: the head and the
newest tail of a long log are kept. Archiving never fails or slows training beyond a file
write: any error turns the archive off (one warning), the console output goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchyard.api import logarchive as layout
from torchyard.api.contract import DEFAULT_PVC_ROOT, Env, StorageURIError

PIPE_CHUNK = 64 * 1024
JOIN_SECONDS = 5.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class BoundedLog:
    """One pod's log of one attempt, at most ``max_bytes`` on disk: the first half of the
    bound as the head, then tail pieces of a quarter each, of which the newest two are kept."""

    root: Path
    attempt: int
    rank: int
    max_bytes: int
    record: dict[str, Any] = field(default_factory=dict)
    total: int = 0
    head: int = 0
    piece: int = -1
    piece_size: int = 0
    _file: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    broken: bool = False
    exit_code: int | None = None
    """How the launcher ended (set by it; recorded on close)."""
    reason: str | None = "launcher interrupted"

    @property
    def head_limit(self) -> int:
        return self.max_bytes // 2

    @property
    def piece_limit(self) -> int:
        return max(1, self.max_bytes // 4)

    def open(self) -> None:
        path = layout.rank_log(self.root, self.attempt, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Appends: a container the kubelet restarts within the same attempt keeps the earlier
        # run's lines above its own (what `kubectl logs --previous` would have shown).
        self._file = path.open("ab")
        self.head = self._file.tell()
        header = f"===== torchyard: attempt {self.attempt} rank {self.rank} started {_now()}\n"
        self.record = {
            "attempt": self.attempt,
            "rank": self.rank,
            "pod": os.environ.get("HOSTNAME", ""),
            "start": _now(),
        }
        self._write_record()
        self.write(header.encode())

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.broken or self._file is None:
                return
            try:
                self._write(data)
            except OSError as exc:
                self._give_up(exc)

    def _write(self, data: bytes) -> None:
        self.total += len(data)
        room = max(0, self.head_limit - self.head)
        if room and self.piece < 0:
            self._file.write(data[:room])
            self._file.flush()
            self.head += min(room, len(data))
            data = data[room:]
        while data:
            if self.piece < 0 or self.piece_size >= self.piece_limit:
                self._next_piece()
            take = data[: self.piece_limit - self.piece_size]
            self._file.write(take)
            self._file.flush()
            self.piece_size += len(take)
            data = data[len(take) :]

    def _next_piece(self) -> None:
        if self.piece >= 0:
            self._file.close()
        self.piece += 1
        self.piece_size = 0
        self._file = layout.rank_tail(self.root, self.attempt, self.rank, self.piece).open("wb")
        with contextlib.suppress(FileNotFoundError):
            layout.rank_tail(self.root, self.attempt, self.rank, self.piece - 2).unlink()

    def _give_up(self, exc: OSError) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self._file.close()
        if sys.__stderr__ is not None:
            sys.__stderr__.write(f"torchyard: log archive off ({exc})\n")

    def _write_record(self) -> None:
        path = layout.rank_record(self.root, self.attempt, self.rank)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, sort_keys=True))
        tmp.replace(path)

    def ended(self, exit_code: int, reason: str | None = None) -> None:
        self.exit_code, self.reason = exit_code, reason

    def close(self) -> None:
        """Join the head and the kept tail into ``rank-<r>.log`` and record how it ended."""
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.close()
                self._file = None
                kept = self._join_pieces()
                self.record.update(end=_now(), exitCode=self.exit_code, bytes=self.total)
                self.record.update(dropped=max(0, self.total - kept))
                if self.reason:
                    self.record["reason"] = self.reason
                if not self.broken:
                    self._write_record()
            except OSError as exc:
                self._give_up(exc)

    def _join_pieces(self) -> int:
        """Bytes kept; the pieces are appended to the head (with the drop marker) and removed."""
        if self.piece < 0:
            return self.total
        pieces = [
            layout.rank_tail(self.root, self.attempt, self.rank, k)
            for k in (self.piece - 1, self.piece)
            if k >= 0
        ]
        tail = b"".join(p.read_bytes() for p in pieces if p.exists())
        kept = self.head + len(tail)
        with layout.rank_log(self.root, self.attempt, self.rank).open("ab") as log:
            if self.total > kept:
                log.write(layout.dropped_marker(self.total - kept))
            log.write(tail)
        for p in pieces:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return kept


class Tee:
    """fd 1 and 2 of this process (inherited by every child) go through pipes whose pump
    threads copy each chunk to the original stream first, then to the archive."""

    def __init__(self, sink: BoundedLog) -> None:
        self.sink = sink
        self.saved: list[int] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            read, write = os.pipe()
            original = os.dup(fd)
            self.saved.append(original)
            os.dup2(write, fd)
            os.close(write)
            t = threading.Thread(target=self._pump, args=(read, original), daemon=True)
            t.start()
            self.threads.append(t)

    def _pump(self, read: int, original: int) -> None:
        # stdout and stderr share one archive file: a pump hands it whole lines only, or a
        # line read in two pieces would have the other stream's lines spliced into it. The
        # console gets every chunk at once; a line without an end goes to the archive when
        # the pipe closes or once it is a chunk long.
        partial = b""
        while chunk := os.read(read, PIPE_CHUNK):
            with contextlib.suppress(OSError):  # a closed console must not stop the archive
                view = memoryview(chunk)
                while view:
                    view = view[os.write(original, view) :]
            partial += chunk
            end = max(partial.rfind(b"\n"), partial.rfind(b"\r")) + 1
            if end == 0 and len(partial) >= PIPE_CHUNK:
                end = len(partial)
            if end:
                self.sink.write(partial[:end])
                partial = partial[end:]
        if partial:
            self.sink.write(partial)
        os.close(read)

    def stop(self) -> None:
        """Give fd 1/2 back; the pumps end once every child holding the pipes has exited."""
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, original in zip((1, 2), self.saved, strict=True):
            os.dup2(original, fd)  # drops this process's end of the pipe
        for t in self.threads:
            t.join(JOIN_SECONDS)
        for original in self.saved:
            os.close(original)


def _spec(environ: Mapping[str, str]) -> dict[str, Any]:
    import yaml

    path = environ.get(Env.SPEC)
    if not path or not Path(path).is_file():
        return {}
    doc = yaml.safe_load(Path(path).read_text())
    return doc.get("spec") or {} if isinstance(doc, dict) else {}


def archive_for(environ: Mapping[str, str]) -> BoundedLog | None:
    """The archive of this pod and attempt, or None: no job name or spec (a bare launcher run),
    an object-store output, or ``spec.logs.maxBytesPerRank: 0``."""
    job, spec = environ.get(Env.JOB_NAME), _spec(environ)
    bound = (spec.get("logs") or {}).get("maxBytesPerRank", layout.DEFAULT_MAX_BYTES_PER_RANK)
    if not job or not spec or not bound:
        return None
    storage = (spec.get("output") or {}).get("storage")
    try:
        root = layout.archive_dir(
            storage,
            environ.get(Env.NAMESPACE) or "default",
            job,
            Path(environ.get(Env.PVC_ROOT) or DEFAULT_PVC_ROOT),
        )
    except StorageURIError:
        return None
    if root is None:
        return None
    attempt = int(environ.get(Env.RESTART_COUNT) or 0)
    return BoundedLog(root, attempt, int(environ.get(Env.NODE_RANK) or 0), int(bound))


@contextlib.contextmanager
def archived_output(environ: Mapping[str, str]) -> Iterator[BoundedLog | None]:
    """Tee this process's output (and its children's) into the archive while the block runs;
    the caller says how it ended (:meth:`BoundedLog.ended`), recorded once the pipes drain."""
    sink = archive_for(environ)
    if sink is None:
        yield None
        return
    try:
        sink.open()
    except OSError as exc:
        sink._give_up(exc)
        yield None
        return
    tee = Tee(sink)
    tee.start()
    try:
        yield sink
    finally:
        tee.stop()
        sink.close()


__all__ = ["BoundedLog", "Tee", "archive_for", "archived_output"]
