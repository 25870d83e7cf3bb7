"""Tests for covidlib.distributed: two CPU processes (gloo) train one network with DDP and the
Trainer; both end with the same weights, equal to one process training on the whole batches."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset
from torch.utils.data.distributed import DistributedSampler

from covidlib.distributed import EpochLoader, cleanup, distributed_loader, init_from_env, is_main_process, wrap_model
from covidlib.errors import InvalidInputError
from covidlib.train import TrainConfig, Trainer

WORLD = 2
PER_RANK_BATCH = 2
SEED = 5


def tiny_network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def toy_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 1, 8, 8, generator=generator)
    masks = (images[:, 0] > 0.3).long()
    return TensorDataset(images, masks)


def config() -> TrainConfig:
    # One epoch, so the weights after fit() are the last step's (no best-epoch choice); CE is a
    # mean over pixels, so averaging two equal half-batch gradients gives the whole-batch one.
    return TrainConfig(epochs=1, loss="ce", amp="off", progress=False, device="cpu", seed=SEED, lr=1e-2)


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = init_from_env(backend="gloo")  # CPU processes even where CUDA is present
    model = wrap_model(tiny_network(seed=100 + rank), device)  # different inits: DDP broadcasts rank 0's
    loader = distributed_loader(toy_data(), PER_RANK_BATCH, shuffle=True, seed=SEED)
    trainer = Trainer(model, config(), out_dir=out_dir if is_main_process() else None)
    trainer.fit(loader, [toy_data()[:4]])
    torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup()


def free_port() -> int:
    """A port that was free a moment ago; another process may take it before rank 0 binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_ranks(out_dir: str, attempts: int = 3) -> None:
    """Run ``_rank_main`` on WORLD processes, on a fresh port again when rank 0 finds its port
    taken (free_port closes its socket before the store binds it: a race with other programs).
    Rank 0 fails at the rendezvous, before it writes anything, and mp.spawn then stops rank 1."""
    for attempt in range(attempts):
        try:
            mp.spawn(_rank_main, args=(free_port(), out_dir), nprocs=WORLD, join=True)
            return
        except mp.ProcessRaisedException as error:
            if "address already in use" not in str(error).lower() or attempt == attempts - 1:
                raise


@pytest.mark.slow  # two spawned interpreters importing torch: ~10-25 s on the shared 2-core CPU
def test_two_gloo_processes_match_whole_batch_training(tmp_path) -> None:
    spawn_ranks(str(tmp_path))
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "last.pt").exists()  # rank 0 wrote the checkpoint

    # Reference: one process, rank 0's initial weights, each step on the union of both ranks' batches.
    data = toy_data()
    shares = []
    for rank in range(WORLD):
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=SEED, drop_last=True)
        sampler.set_epoch(0)
        shares.append(list(sampler))
    steps = len(shares[0]) // PER_RANK_BATCH
    batches = []
    for step in range(steps):
        indices = [i for share in shares for i in share[step * PER_RANK_BATCH:(step + 1) * PER_RANK_BATCH]]
        batches.append(data[indices])
    reference = tiny_network(seed=100)
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    Trainer(reference, config()).fit(batches, [data[:4]])
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-6)
        assert not torch.equal(value, initial[key]), key


def test_epoch_loader_reshuffles_each_pass() -> None:
    data = toy_data()
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=1)
    loader = EpochLoader(torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler))
    first = [x for x, _ in loader][0]
    second = [x for x, _ in loader][0]
    assert loader.epoch == 2 and not torch.equal(first, second)


def test_epoch_loader_set_epoch_picks_the_next_passs_shuffle() -> None:
    """After set_epoch(3) (what the Trainer does on resume) a fresh loader yields epoch 3's order."""
    data = toy_data()

    def loader() -> EpochLoader:
        return EpochLoader(torch.utils.data.DataLoader(
            data, batch_size=16, sampler=DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=1)))

    counting = loader()
    passes = [next(iter(counting))[0] for _ in range(4)]
    resumed = loader()
    resumed.set_epoch(3)
    assert torch.equal(next(iter(resumed))[0], passes[3]) and resumed.epoch == 4
    assert not torch.equal(passes[3], passes[0])
    with pytest.raises(InvalidInputError, match="epoch"):
        resumed.set_epoch(-1)


def test_init_from_env_names_missing_variables(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InvalidInputError, match="torchrun"):
        init_from_env()
    with pytest.raises(InvalidInputError, match="init_from_env"):
        wrap_model(tiny_network(0), torch.device("cpu"))
