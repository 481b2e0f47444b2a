"""Training strategies: ddp, pipeline, distillation (one module each) on a shared loop."""
