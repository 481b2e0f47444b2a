"""torchyard: a Kubernetes operator that trains, compresses and versions PyTorch models.

This package is the operator side and never imports torch; the worker runtime lives in
``torchyard_trainer`` (trainer_image/)."""
