"""``python -m torchyard_devcluster up|down|env|nodes|status``."""

from torchyard_devcluster.cli import app

if __name__ == "__main__":
    app(prog_name="python -m torchyard_devcluster")
