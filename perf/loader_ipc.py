"""What a 1-worker training loader costs per clip beyond the worker's decoding: old vs new
shipping of a batch's small entries, side by side in one run (issue 16 target 2).

A dataset whose items are ready-made uint8 clips (16 x 112 x 112, channels-last, written
into the batch's ring buffer as ``TrainClipDataset`` does) with ``label`` and ``index``, so
that the loader's time per clip is its inter-process cost only: the batch's collation, its
pickling and transfer, the consumer's unpickling. Variants, alternating pass by pass:
  "new": small entries by value in the pickled batch (``collate_batch`` in a worker);
  "old": ``default_collate`` for them (a new shared-memory file per entry and batch, its
         descriptor passed over a socket, mapped and unmapped by the consumer);
  "video only": no label/index at all (the floor: the ring buffer's descriptor per batch).

    .venv/bin/python perf/loader_ipc.py [--items 800] [--repeats 5]   (about 20 s)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import Dataset

import benchmark.data.loaders as loaders


class ReadyClips(Dataset):
    normalize_in_worker = False

    def __init__(self, items: int, entries: bool):
        self.items, self.entries = items, entries
        self.clip = torch.zeros(16, 112, 112, 3, dtype=torch.uint8).permute(3, 0, 1, 2)  # (C, T, H, W) channels-last

    def __len__(self) -> int:
        return self.items

    def __getitems__(self, keys):
        video = loaders._new_batch_tensor(
            self.clip.shape, loaders.dense_strides_like(self.clip), torch.uint8, len(keys)
        )
        samples = []
        for k, (_, index) in enumerate(keys):
            sample = {"video": video[k].copy_(self.clip)}
            if self.entries:
                sample["label"] = torch.tensor(index % 7)
                sample["index"] = torch.tensor(index)
            samples.append(sample)
        return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    by_value = loaders._BY_VALUE_MAX_BYTES
    variants = {"new": (True, by_value), "old": (True, -1), "video only": (False, by_value)}
    ms = {name: [] for name in variants}
    for repetition in range(args.repeats + 1):
        for name, (entries, limit) in variants.items():
            loaders._BY_VALUE_MAX_BYTES = limit  # the worker forks with it
            with loaders.make_train_loader(ReadyClips(args.items, entries), 8, num_workers=1, seed=0) as loader:
                next(iter(loader))  # the worker is up
                start = time.perf_counter()
                for batch in loader:
                    if entries:  # the worker really shipped them the variant's way (fork inherits the limit)
                        assert batch["label"].is_shared() == (limit < 0), name
                    del batch
                if repetition:
                    ms[name].append((time.perf_counter() - start) / args.items * 1000)
    loaders._BY_VALUE_MAX_BYTES = by_value
    print(f"loader time per clip beyond decoding (1 worker, batch 8; median of {args.repeats} passes):")
    for name, values in ms.items():
        print(f"  {name:>10}: {statistics.median(values):.3f} ms  ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
