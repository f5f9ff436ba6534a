"""One optimizer step of the posterior trainer on a fixed global batch, under torchrun or alone
(a helper of test_distributed.py): the weights after the step are written to argv[1]."""

import sys

import torch
from torch import nn

import pgnas
from pgnas.search.distributed import init_from_env
from pgnas.search.train import PosteriorTrainer


class _Data:
    def steps_per_epoch(self, batch_size: int) -> int:
        return 1


def main(out: str) -> None:
    dist = init_from_env("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))  # no BN: per-rank statistics
    post = pgnas.instrument(model, init_p=1e-6)  # masks ~ 1: the ranks' independent draws do not matter
    cfg = pgnas.SearchConfig(batch_size=8, epochs=1, lr=0.1, lambda_p=1.0)
    t = PosteriorTrainer(model, post, _Data(), cfg, device=torch.device("cpu"), augment=None, lambda_w=5e3,
                         n_data=100.0, dist=dist)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    local = 8 // dist.world_size
    shard = slice(dist.rank * local, (dist.rank + 1) * local)
    torch.manual_seed(2 + dist.rank)
    t.train_step(x[shard], y[shard])
    if dist.rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    if dist.world_size > 1:  # leave together: a rank exiting while the other still talks fails the job
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
