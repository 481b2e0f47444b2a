"""``python -m torchyard_trainer.serve``: serve one model version (see the package docstring).

Exit status 2 (the worker contract's CONFIG) when the version cannot be loaded — not a model
version, damaged weights, a data spec this pod cannot read — with the reason on stderr and in
the termination message, so ``kubectl describe pod`` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from torchyard.api.contract import (
    DEFAULT_METRICS_PORT,
    DEFAULT_PVC_ROOT,
    TERMINATION_MESSAGE_PATH,
    Env,
    ExitCode,
    local_path,
)

DEFAULT_PORT = 8080
"""KServe's and Triton's conventional HTTP port for the v2 REST protocol."""

log = logging.getLogger("torchyard_trainer.serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torchyard_trainer.serve",
                                description="Serve a model version (KServe Open Inference "
                                            "Protocol v2, REST).")
    p.add_argument("--model-dir", required=True,
                   help="the version: a directory <store>/<model>/v<N>, or its file:// or "
                        "pvc://<claim>/… URI")
    p.add_argument("--name", help="the model name clients use (default: the model's)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--metrics-port", type=int,
                   default=int(os.environ.get(Env.METRICS_PORT, DEFAULT_METRICS_PORT)),
                   help=f"port of /metrics (default ${Env.METRICS_PORT} or "
                        f"{DEFAULT_METRICS_PORT}); 0: on --port")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: OMP_NUM_THREADS, else every core)")
    p.add_argument("--max-batch", type=int, default=1024,
                   help="largest batch one request may carry")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the weights against the card's sha256")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    from torchyard_trainer.env import ConfigError
    from torchyard_trainer.serve.app import Options, Server, build_app, metrics_app, start_site

    pvc_root = Path(os.environ.get(Env.PVC_ROOT, DEFAULT_PVC_ROOT))
    options = Options(model_dir=local_path(args.model_dir, pvc_root), pvc_root=pvc_root,
                      name=args.name, max_batch=args.max_batch, verify=not args.no_verify)
    server = Server(options)
    runners = [await start_site(build_app(server, with_metrics=not args.metrics_port),
                                args.host, args.port)]
    if args.metrics_port:
        runners.append(await start_site(metrics_app(server), args.host, args.metrics_port))
    log.info("serving on %s:%d (metrics on %d); loading %s", args.host, args.port,
             args.metrics_port or args.port, options.model_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = ExitCode.OK
    try:
        await loop.run_in_executor(server.executor, server.load)
        log.info("ready: %s version %s", server.name, server.version)
        await stop.wait()
    except ConfigError as exc:
        _say(f"cannot serve {options.model_dir}: {exc}")
        code = ExitCode.CONFIG
    finally:
        for runner in runners:
            await runner.cleanup()
        server.executor.shutdown(wait=False, cancel_futures=True)
    return code


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    with contextlib.suppress(OSError):  # not in a pod
        Path(TERMINATION_MESSAGE_PATH).write_text(message)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get(Env.LOG_LEVEL, "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
