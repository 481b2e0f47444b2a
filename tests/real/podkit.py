"""Small builders and waits for the real-node tests (pods of the busybox test image)."""

from __future__ import annotations

from typing import Any

from torchyard_devcluster.testing import Kube, poll

#: busybox's applets as /bin links first (the image holds only /bin/busybox).
INSTALL = "/bin/busybox --install -s /bin && "


def pod(
    name: str,
    image: str,
    script: str,
    *,
    labels: dict[str, str] | None = None,
    hostname: str | None = None,
    subdomain: str | None = None,
    port: int | None = None,
    gpus: int = 0,
) -> dict[str, Any]:
    """A busybox pod running ``script`` with ``sh -c``; with ``port``, a TCP readiness probe."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/busybox", "sh", "-c", INSTALL + script],
    }
    if port is not None:
        container["ports"] = [{"containerPort": port}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def http_server(name: str, image: str, *, labels: dict[str, str], reply: str, **kw: Any) -> Any:
    """busybox httpd on :8080 answering ``reply``."""
    script = f"mkdir -p /www && echo {reply} > /www/index.html && exec httpd -f -p 8080 -h /www"
    return pod(name, image, script, labels=labels, port=8080, **kw)


def http_client(name: str, image: str, host: str, port: int) -> dict[str, Any]:
    """Fetches ``http://host:port/`` until it answers (DNS and endpoints take a moment) and
    prints the body. Names are resolved with busybox's own ``nslookup`` (a DNS client of its
    own, asking the pod's nameserver): Debian's static busybox links glibc statically, and its
    ``getaddrinfo`` of a DNS name crashes (no NSS modules in a static binary); so does its
    ``wget -T`` (hence ``timeout 5 wget``)."""
    resolve = (
        f"ip={host}"
        if host.replace(".", "").isdigit()
        else f"ip=$(nslookup {host} | awk '/^Address: / {{print $2}}' | tail -n1)"
    )
    script = (
        f"for i in $(seq 60); do {resolve}; "
        f'[ -n "$ip" ] && timeout 5 wget -q -O - "http://$ip:{port}/" && exit 0; sleep 1; done; '
        f"echo 'no answer from {host}:{port}'; exit 1"
    )
    return pod(name, image, script)


def phase(kube: Kube, name: str, ns: str) -> str:
    return str(kube.core.read_namespaced_pod(name, ns).status.phase)


def wait_phase(kube: Kube, name: str, ns: str, phases: set[str], timeout: float = 180) -> Any:
    return poll(
        lambda: (
            kube.core.read_namespaced_pod(name, ns) if phase(kube, name, ns) in phases else None
        ),
        timeout=timeout,
        what=f"pod {ns}/{name} in {sorted(phases)}",
    )


def wait_ready(kube: Kube, name: str, ns: str, timeout: float = 180) -> Any:
    def ready() -> Any:
        p = kube.core.read_namespaced_pod(name, ns)
        conds = p.status.conditions or []
        return p if any(c.type == "Ready" and c.status == "True" for c in conds) else None

    return poll(ready, timeout=timeout, what=f"pod {ns}/{name} Ready")
