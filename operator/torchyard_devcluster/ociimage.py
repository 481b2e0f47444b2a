"""Write a ``FROM scratch`` OCI image archive from local files, with no Docker.

The archive is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``) in a
tar, which ``ctr -n k8s.io images import`` reads. One uncompressed layer; every timestamp and
owner is fixed so the same files always give the same image digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class ImageFile:
    """One file of the image: its path inside the image, the bytes, and its mode."""

    path: str
    data: bytes
    mode: int = 0o755


def _tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, *, size: int = 0, mode: int = 0o755, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    return info


def layer_tar(files: Sequence[ImageFile]) -> bytes:
    """The image's single layer: parent folders first, then the files, in path order."""
    dirs: set[str] = set()
    for f in files:
        parts = f.path.strip("/").split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info(d, is_dir=True), None) for d in sorted(dirs)
    ]
    for f in sorted(files, key=lambda f: f.path):
        members.append((_info(f.path.strip("/"), size=len(f.data), mode=f.mode), f.data))
    return _tar_bytes(members)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def image_config(
    layer: bytes, *, entrypoint: Sequence[str], cmd: Sequence[str] = (), user: str = ""
) -> dict[str, Any]:
    config: dict[str, Any] = {"Entrypoint": list(entrypoint)}
    if cmd:
        config["Cmd"] = list(cmd)
    if user:
        config["User"] = user
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }


def image_blobs(
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = "",
) -> tuple[bytes, bytes, bytes]:
    """(layer, config, manifest) of a one-layer ``FROM scratch`` image."""
    layer = layer_tar(files)
    config = _json(image_config(layer, entrypoint=entrypoint, cmd=cmd, user=user))
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    return layer, config, manifest


def push(
    registry: str,
    repository: str,
    tag: str,
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = "",
) -> str:
    """Push the image to a plain-HTTP registry (``127.0.0.1:5000``) with the distribution API
    (monolithic blob uploads, then the manifest); returns the manifest digest."""
    import httpx

    layer, config, manifest = image_blobs(files, entrypoint=entrypoint, cmd=cmd, user=user)
    base = f"http://{registry}/v2/{repository}"
    with httpx.Client(timeout=60.0, trust_env=False) as c:
        for blob in (layer, config):
            start = c.post(f"{base}/blobs/uploads/")
            start.raise_for_status()
            location = httpx.URL(base).join(start.headers["Location"])
            done = c.put(
                location.copy_add_param("digest", _digest(blob)),
                content=blob,
                headers={"Content-Type": "application/octet-stream"},
            )
            done.raise_for_status()
        put = c.put(
            f"{base}/manifests/{tag}", content=manifest, headers={"Content-Type": MANIFEST_TYPE}
        )
        put.raise_for_status()
    return _digest(manifest)


def write_archive(
    out: Path,
    ref: str,
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = "",
) -> str:
    """Write the OCI archive of image ``ref`` (``repo:tag``) to ``out``; returns the manifest
    digest."""
    layer, config, manifest = image_blobs(files, entrypoint=entrypoint, cmd=cmd, user=user)
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = _json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    # containerd takes the full name from its own annotation; the OCI one
                    # carries the tag as the spec says.
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    )
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("blobs", is_dir=True), None),
        (_info("blobs/sha256", is_dir=True), None),
    ]
    for blob in (layer, config, manifest):
        name = "blobs/sha256/" + _digest(blob).split(":", 1)[1]
        members.append((_info(name, size=len(blob), mode=0o644), blob))
    layout = _json({"imageLayoutVersion": "1.0.0"})
    members.append((_info("oci-layout", size=len(layout), mode=0o644), layout))
    members.append((_info("index.json", size=len(index), mode=0o644), index))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(_tar_bytes(members))
    tmp.replace(out)
    return _digest(manifest)
