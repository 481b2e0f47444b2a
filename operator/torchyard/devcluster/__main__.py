"""``python -m torchyard.devcluster up|down|env|nodes|status``."""

from torchyard.devcluster.cli import app

if __name__ == "__main__":
    app(prog_name="python -m torchyard.devcluster")
