"""Worker-side storage URIs: file://, pvc:// (a mounted claim) and s3:// / gs:// via fsspec."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from torchyard.api.contract import is_remote, local_path
from torchyard_trainer.env import ConfigError

# The URI rules are the contract's (a bad URI raises its StorageURIError, a spec error: exit 2);
# re-exported so the trainer's storage helpers come from one place.
__all__ = ["atomic_write_text", "fetch", "fsync_tree", "is_remote", "local_path", "upload_dir"]


def _fs(uri: str):  # type: ignore[no-untyped-def]
    try:
        import fsspec  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise ConfigError(
            f"{uri}: s3:// and gs:// need fsspec (pip install fsspec s3fs gcsfs)"
        ) from exc
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def fetch(uri: str, pvc_root: Path, cache_dir: Path) -> Path:
    """A local path holding ``uri``'s content (remote URIs are downloaded into ``cache_dir``)."""
    if not is_remote(uri):
        path = local_path(uri, pvc_root)
        if not path.exists():
            raise ConfigError(f"{uri}: {path} does not exist")
        return path
    fs, path = _fs(uri)
    target = cache_dir / path.strip("/").replace("/", "_")
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir))
        fs.get(path, str(tmp / "x"), recursive=fs.isdir(path))
        os.replace(tmp / "x", target)
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(target)


def upload_dir(local: Path, uri: str) -> None:
    """Copy a finished local directory to a remote URI (no-op target for local URIs)."""
    fs, path = _fs(uri)
    fs.put(str(local), path, recursive=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path``."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(root))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see either the old or the complete new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
