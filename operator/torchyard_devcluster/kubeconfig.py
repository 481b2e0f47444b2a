"""Kubeconfig files of the dev cluster's users (admin, controller-manager, scheduler, kwok):
the CA and a client certificate embedded, one context."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from torchyard_devcluster import certs

CONTEXT = "torchyard-dev"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write(path: Path, server: str, ca: Path, cert: certs.CertPaths, user: str) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert.cert),
                    "client-key-data": b64(cert.key),
                },
            }
        ],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
