"""The real node's pure builders: OCI archive, configs, the cleanup planners (no root needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from torchyard_devcluster import ociimage, realclean, realconfig, realstart
from torchyard_devcluster.realconfig import RealNode


def _node(tmp_path: Path, index: int = 1) -> RealNode:
    return RealNode(index, tmp_path / f"node-{index}", tmp_path / "run", 10250, 10248)


def test_oci_archive_is_a_valid_layout_with_matching_digests(tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    files = [ociimage.ImageFile("bin/tool", b"\x7fELF fake")]
    digest = ociimage.write_archive(
        out, "example.local/tool:2", files, entrypoint=["/bin/tool"], user="65535:65535"
    )
    with tarfile.open(out) as tar:
        blobs = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    for name, data in blobs.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(blobs["index.json"])
    entry = index["manifests"][0]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == "example.local/tool:2"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "2"
    manifest = json.loads(blobs["blobs/sha256/" + digest.split(":")[1]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["config"] == {"Entrypoint": ["/bin/tool"], "User": "65535:65535"}
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    # Same files, same image: the digest does not depend on the time of packing.
    assert (
        ociimage.write_archive(
            tmp_path / "again.tar",
            "example.local/tool:2",
            files,
            entrypoint=["/bin/tool"],
            user="65535:65535",
        )
        == digest
    )


def test_layer_holds_parent_folders_then_files() -> None:
    layer = ociimage.layer_tar([ociimage.ImageFile("a/b/c", b"x", 0o644)])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = [(m.name, m.isdir(), m.mode) for m in tar.getmembers()]
    assert members == [("a", True, 0o755), ("a/b", True, 0o755), ("a/b/c", False, 0o644)]


def test_node_addresses_follow_the_index(tmp_path: Path) -> None:
    node = _node(tmp_path, 3)
    assert node.name == "torchyard-real-3"
    assert node.pod_cidr == "10.244.3.0/24"
    assert node.gateway == "10.244.3.1"
    assert node.bridge == "tyd3"
    conflist = realconfig.cni_conflist(node)
    bridge = conflist["plugins"][0]
    assert bridge["bridge"] == "tyd3"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap", "firewall"]


def test_kubelet_config_carries_the_machine_quirks(tmp_path: Path) -> None:
    node = _node(tmp_path)
    doc = realconfig.kubelet_config(
        node,
        ca_file=tmp_path / "ca.crt",
        cluster_dns="10.244.0.1",
        resolv_conf=Path("/etc/resolv.conf"),
        taint=True,
    )
    assert doc["failCgroupV1"] is False
    assert doc["cgroupDriver"] == "cgroupfs"
    assert doc["cgroupRoot"] == "/torchyard-torchyard-real-1"
    assert doc["authentication"]["anonymous"] == {"enabled": False}
    assert doc["registerWithTaints"] == [realconfig.REAL_NODE_TAINT]
    assert doc["clusterDNS"] == ["10.244.0.1"]
    toml = realconfig.containerd_config(node, cni_bin_dir="/usr/lib/cni", pause_image="p:1")
    assert "restrict_oom_score_adj = true" in toml
    assert "SystemdCgroup = false" in toml
    assert f'address = "{node.socket}"' in toml
    yaml.safe_load(yaml.safe_dump(doc))  # serialisable as the kubelet reads it


def test_iptables_plan_removes_jumps_to_owned_chains_only() -> None:
    rules = "\n".join(
        [
            "-P FORWARD DROP",
            "-N CNI-FORWARD",
            "-N DOCKER-USER",
            "-N KUBE-SERVICES",
            '-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD',
            "-A FORWARD -j DOCKER-USER",
            "-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES",
            "-A CNI-FORWARD -s 10.244.0.2/32 -j ACCEPT",
            "-A DOCKER-USER -j RETURN",
        ]
    )
    deletions, owned = realclean.plan_iptables_cleanup(rules)
    assert owned == ["CNI-FORWARD", "KUBE-SERVICES"]
    assert deletions == [
        [
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "CNI firewall plugin rules",
            "-j",
            "CNI-FORWARD",
        ],
        ["-D", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "KUBE-SERVICES"],
    ]


def test_mounts_under_a_prefix_deepest_first() -> None:
    info = "\n".join(
        [
            "1 0 8:1 / / rw - ext4 /dev/vda rw",
            "2 1 0:5 / /s/real/node-0/k rw - tmpfs tmpfs rw",
            "3 2 0:6 / /s/real/node-0/k/pods/x\\040y rw - tmpfs tmpfs rw",
            "4 1 0:7 / /s/realness rw - tmpfs tmpfs rw",
        ]
    )
    assert realclean.mounts_under(Path("/s/real"), info) == [
        "/s/real/node-0/k/pods/x y",
        "/s/real/node-0/k",
    ]


def test_the_image_store_outlives_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dev-cluster down`` keeps the node's containerd root (its images) in the cache and the
    next ``up`` starts containerd on it, so a 5 GB image is pulled once, not per cluster."""
    monkeypatch.setenv("TORCHYARD_CACHE", str(tmp_path / "cache"))
    node = _node(tmp_path)
    root = node.containerd_root
    blob = Path("io.containerd.content.v1.content/blobs/sha256/ab")
    (root / blob).parent.mkdir(parents=True)
    (root / blob).write_bytes(b"layer")
    assert not realstart.restore_image_store(node)  # nothing kept yet

    realstart.keep_image_store(node)
    store = realstart.image_store(node)
    assert store.is_relative_to(tmp_path / "cache")
    assert not root.exists()
    assert (store / blob).read_bytes() == b"layer"

    assert realstart.restore_image_store(node)
    assert (root / blob).read_bytes() == b"layer"
    assert not store.exists()

    # A newer root replaces the kept one; a root already in place is never overwritten.
    (root / blob).write_bytes(b"newer")
    realstart.keep_image_store(node)
    root.mkdir(parents=True)
    assert not realstart.restore_image_store(node)
    assert (store / blob).read_bytes() == b"newer"
