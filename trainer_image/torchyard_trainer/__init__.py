"""torchyard's worker runtime: what runs inside every worker pod (and under `torchyard run`).

Launched as ``torchrun -m torchyard_trainer`` (or ``python -m torchyard_trainer.launch``, which
keeps the workers' exit codes); reads the job manifest from ``TORCHYARD_SPEC``.
"""

__version__ = "0.1.0"
