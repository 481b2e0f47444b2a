"""Compression runtime of CompressionJobs: prune, distill and quantize under an accuracy gate.

``run_job(env, job)`` is what ``python -m torchyard_trainer`` calls for a CompressionJob
manifest; ``run(job, env)`` does the work and returns the result dict (see runner.py).
"""

from torchyard_trainer.compress.runner import run, run_job

__all__ = ["run", "run_job"]
