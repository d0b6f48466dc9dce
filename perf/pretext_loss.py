"""Pretext loss of a method over a few hundred CPU steps on the embedded default.

    .venv/bin/python perf/pretext_loss.py RUN_DIR speed rot3d vcop moco

RUN_DIR: a finished or running `fedvid run` directory of the embedded default (its
config.json and split_manifest.json). For each method: client 0's videos, the run's clips,
optimiser and batch, 4 chunks of 25 steps carried over as the centralized engine does
(`run_local_training` with the previous chunk's exchanged and local tensors); prints the
mean loss per chunk and the chance level of the pretext (MoCo: ln(1 + queue), queue 256).
"""

import json
import math
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_protocols import compose  # noqa: E402

from benchmark.federation import training as T  # noqa: E402

CHANCE = {"vcop": math.log(6), "speed": math.log(7), "rot3d": math.log(4), "moco": math.log(257)}


def main(run_dir: Path, names: list[str]) -> None:
    base = json.loads((run_dir / "config.json").read_text())
    for name in names:
        ov = [f"method={name}"] + (["method.params.queue_size=256"] if name == "moco" else [])
        method = OmegaConf.to_container(compose(ov).method, resolve=False)
        cfg = OmegaConf.create({**base, "method": method})
        cfg.federation.local_steps = 25
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        videos = T.client_videos(str(run_dir / "split_manifest.json"), str(cfg.dataset.root), 0)
        state, local, losses = T.initial_global_state(cfg), None, []
        t0 = time.time()
        for r in range(1, 5):
            res = T.run_local_training(cfg, 0, r, state, local, videos, T.round_learning_rate(cfg, r))
            state, local = res.exchanged, res.local
            losses.append(round(res.metrics["loss"], 3))
        print(json.dumps({"method": name, "chunk_losses": losses, "chance": round(CHANCE.get(name, float("nan")), 3),
                          "videos": len(videos), "s": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
