"""CPU study: SSD vs its base objective (align-uniform) on the CIFAR-format stand-in.

The paper's claim (Fang et al., ICCV 2025): under non-IID splits SSD's global model has
better *global* uniformity (lower, i.e. more negative, uniformity loss of the normalised
features) and a higher effective rank than FedAlignUniform, and a better linear probe.

This runs the federation in one process with the benchmark's own pieces — the composed
``experiment=ssd_cifar10_crosssilo`` config (protocol ``ssd_image``), ``run_local_training``
(the code every Flower ClientApp runs), the ``fedavg`` aggregator, the experiment's Dirichlet
alpha = 0.1 draw (``dirichlet_fedbox``, split_dataset.py's; the same split for every seed) —
without Flower/Ray start-up, so a few rounds fit a CPU budget.
Then it measures, on the stand-in's test images, the pooled encoder features of the
final global model: uniformity (t = 2, on l2-normalised features), effective rank, and
the linear probe of ``linear_eval.py`` (shortened).

    .venv/bin/python perf/study_ssd_image.py --rounds 4 --seeds 0 1 --out perf/study_ssd_image.json

Sizes are the CLI's (defaults: 10 classes x 100 images, 10 clients, width-16 ResNet-18,
1 local epoch of batch 32, lr 0.2 x 32 / 256); they are far below the paper's budget.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def run(method: str, seed: int, args, data_root: str) -> dict:
    from test_protocols import compose  # noqa: F401  (tests/ on sys.path: the shared Hydra composer)

    from benchmark.data.annotations import load_annotations
    from benchmark.data.images import ensure_standin, load_image_set
    from benchmark.evaluation.image_eval import extract_features, linear_eval
    from benchmark.evaluation.representation import effective_rank, uniformity
    from benchmark.federation.base import ClientUpdate
    from benchmark.federation.training import build_model, initial_global_state, run_local_training
    from benchmark.registry import build_aggregator
    from benchmark.specs import LocalTrainingSpec
    from benchmark.splits.make import make_manifest

    cfg = compose(
        [
            "experiment=ssd_cifar10_crosssilo",
            f"method={method}",
            "dataset=synthetic_cifar10",
            "split_manifest=null",
            f"data_root={data_root}",
            f"dataset.standin.per_class_train={args.per_class}",
            "dataset.standin.per_class_test=20",
            f"partition.num_clients={args.clients}",
            f"backbone.params.width={args.width}",
            f"client.batch_size={args.batch}",
            f"client.optimizer.lr={0.2 * args.batch / 256}",
            "client.num_workers=0",
            "federation.local_epochs=1",
            f"federation.rounds={args.rounds}",
            f"seed={seed}",
        ]
    )
    spec = LocalTrainingSpec.from_config(cfg)
    ensure_standin(cfg.dataset)
    manifest = make_manifest(load_annotations(cfg.dataset), cfg.partition, seed)
    clients = [[(v["video"], v["label"]) for v in c["videos"]] for c in manifest["clients"]]
    state = initial_global_state(spec.model, spec.seed)
    agg = build_aggregator("fedavg")
    losses = []
    for rnd in range(1, args.rounds + 1):
        updates = []
        for cid, items in enumerate(clients):
            res = run_local_training(spec, cid, rnd, state, None, items, spec.optimizer.lr)
            updates.append(ClientUpdate(res.exchanged, res.num_examples, res.metrics, cid))
        state = agg.aggregate(updates, state, rnd)
        losses.append(sum(u.metrics["loss"] * u.num_examples for u in updates) / sum(u.num_examples for u in updates))
    model = build_model(spec.model, 0)
    model.load_partial_state(state)
    train, test = load_image_set(cfg.dataset, True), load_image_set(cfg.dataset, False)
    ztr = extract_features(model.backbone, train.images)
    zte = extract_features(model.backbone, test.images)
    normed = torch.nn.functional.normalize(zte, dim=1)
    probe = linear_eval(
        ztr,
        torch.as_tensor(train.labels),
        zte,
        torch.as_tensor(test.labels),
        len(train.classes),
        epochs=args.probe_epochs,
        batch_size=512,
        lr=3e-3,
        seed=1,
    )
    return {
        "method": method,
        "seed": seed,
        "round_losses": [round(x, 4) for x in losses],
        "uniformity": uniformity(normed),
        "effective_rank": effective_rank(zte),
        "linear_top1": probe["top1"],
    }


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for method in ("align_uniform", "ssd"):
                t0 = time.perf_counter()
                row = run(method, seed, args, root)
                row["wall_s"] = round(time.perf_counter() - t0, 1)
                print(row, flush=True)
                rows.append(row)
    if args.out:
        from benchmark.io import atomic_write_json

        atomic_write_json(args.out, {"args": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows})


if __name__ == "__main__":
    main()
