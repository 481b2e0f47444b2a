"""A plain torch DDP training script — nothing torchyard-specific but the reporting helper.

It runs unchanged under torchrun anywhere (``torchrun --nproc-per-node=2 train.py``): the
process group comes from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, …), which a
torchyard worker pod gets as a Kubeflow PyTorchJob's would. Under torchyard the
:class:`~torchyard_trainer.report.Reporter` calls fill the job's status, progress, Prometheus
metrics and model version; anywhere else they do nothing.

Task: scikit-learn's handwritten digits (shipped with the package: no download), a small MLP.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from torchyard_trainer.report import Reporter


def datasets(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """The digits, scaled to [0, 1], split 80/20 the same way on every rank."""
    x, y = load_digits(return_X_y=True)
    features = torch.tensor(x, dtype=torch.float32) / 16.0
    labels = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(order))
    train, val = order[:cut], order[cut:]
    return TensorDataset(features[train], labels[train]), TensorDataset(features[val], labels[val])


@torch.no_grad()
def evaluate(model: nn.Module, val: TensorDataset) -> tuple[float, float]:
    """(validation loss, accuracy); every rank evaluates the whole (small) validation set."""
    model.eval()
    x, y = val.tensors
    logits = model(x)
    model.train()
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=0.003)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")  # torchrun's env:// rendezvous
    torch.manual_seed(0)
    train, val = datasets(seed=0)
    sampler = DistributedSampler(train, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    model = DistributedDataParallel(
        nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    reporter = Reporter(total_steps=args.epochs * len(loader), epochs=args.epochs)

    step, accuracy = 0, 0.0
    with reporter:  # an exception writes a failure record (rank 0) and is re-raised
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                reporter.step(step=step, epoch=epoch, loss=loss.item(), lr=args.lr)
            val_loss, accuracy = evaluate(model, val)
            reporter.evaluate({"accuracy": accuracy, "valLoss": val_loss})
            if dist.get_rank() == 0:
                print(f"epoch {epoch + 1}/{args.epochs} val loss {val_loss:.4f} acc {accuracy:.2%}")
        reporter.save_model(model)  # rank 0: the next model version of spec.output.modelName
        reporter.finish(metrics={"accuracy": accuracy})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
