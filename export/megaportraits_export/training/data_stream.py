"""An endless, resumable stream of training batches over a map-style dataset.

The position in the stream (epoch, batches consumed in that epoch) is part of every
checkpoint. A resumed run rebuilds the epoch's shuffled order from (seed, epoch) exactly as
``DistributedSampler`` does and skips what was already consumed, so it sees the same batches
in the same order as an uninterrupted run. The DataLoader gets a private generator so that
creating an iterator mid-epoch does not draw from torch's global generator (which would shift
every random number after a resume).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start part-way through an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def collate_items(items: list) -> dict:
    """Stack tensors, keep everything else as a list (the dataset's items are dicts)."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], dict):
            batch[key] = collate_items(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class DataStream:
    """Batches forever; ``state_dict`` / ``load_state_dict`` capture the position."""

    def __init__(self, dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int = 0):
        if len(dataset) < batch_size * world_size:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of "
                             f"{batch_size} for each of {world_size} process(es); "
                             "lower batch_size or use more data")
        self.sampler = ResumableDistributedSampler(dataset, world_size, rank, seed)
        self.batch_size = batch_size
        loader_generator = torch.Generator()
        loader_generator.manual_seed(seed)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 drop_last=True, num_workers=num_workers,
                                 collate_fn=collate_items, generator=loader_generator,
                                 persistent_workers=False)
        self.epoch = 0
        self.consumed = 0   # batches of this epoch already handed out
        self._iterator = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def next(self) -> dict:
        if self._iterator is None:
            self.sampler.set_position(self.epoch, self.consumed * self.batch_size)
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self.consumed = 0
            self._iterator = None
            return self.next()
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._iterator = None
