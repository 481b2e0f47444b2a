"""Serving a model version over HTTP with the KServe Open Inference Protocol v2 (REST).

``python -m torchyard_trainer.serve --model-dir <store>/<model>/v<N>`` loads a version written
by a TrainingJob or a CompressionJob — fp32, int8 (dynamic/static quantized), pruned or
structurally pruned, exactly as :mod:`torchyard_trainer.compress.stored` saved it — on CPU and
answers the v2 endpoints KServe's and Triton's clients call:

* ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata);
* ``GET /v2/models/<name>[/versions/<v>]`` (model metadata) and ``…/ready``;
* ``POST /v2/models/<name>[/versions/<v>]/infer`` (JSON tensors: name/shape/datatype/data).

Request metrics (latency histogram, requests, errors) are served for Prometheus on a metrics
port, as the training workers serve theirs (``TORCHYARD_METRICS_PORT``, 9400 by default).
The parts: :mod:`.protocol` (pure request/response logic), :mod:`.model` (loading a version),
:mod:`.metrics`, :mod:`.app` (the aiohttp application), ``__main__`` (the command line).
"""
