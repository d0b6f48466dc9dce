"""FVSSL aggregation against hand-computed numbers, and the Flower-port concatenation bug."""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark import CONF_DIR
from benchmark.federation.base import ClientUpdate
from benchmark.registry import build_aggregator

# Three clients, one 2-element float tensor and one integer counter each.
#   w_1 = [ 1,  2], n_1 = 1, L_1 = 0        e^{-L}: 1
#   w_2 = [ 3, -1], n_2 = 3, L_2 = ln 2              1/2
#   w_3 = [-2,  4], n_3 = 4, L_3 = ln 4              1/4
# FedAvg weights n_k/N = 1/8, 3/8, 4/8;  softmax(-L) = 1/(7/4), (1/2)/(7/4), (1/4)/(7/4) = 4/7, 2/7, 1/7
W = [[1.0, 2.0], [3.0, -1.0], [-2.0, 4.0]]
N_EX = [1, 3, 4]
LOSSES = [0.0, math.log(2.0), math.log(4.0)]
STEPS = [10, 20, 30]  # e.g. BatchNorm num_batches_tracked (int64, 0-dim)

W_AVG = [(1 * 1 + 3 * 3 + 4 * -2) / 8, (1 * 2 + 3 * -1 + 4 * 4) / 8]  # [0.25, 1.875]
W_LOSS = [(4 * 1 + 2 * 3 + 1 * -2) / 7, (4 * 2 + 2 * -1 + 1 * 4) / 7]  # [8/7, 10/7]
STEPS_AVG = (1 * 10 + 3 * 20 + 4 * 30) / 8  # 23.75
STEPS_LOSS = (4 * 10 + 2 * 20 + 1 * 30) / 7  # 15.714...
PREVIOUS = {"w": torch.tensor([10.0, -10.0]), "steps": torch.tensor(7)}


def updates() -> list[ClientUpdate]:
    return [
        ClientUpdate(
            arrays={"w": torch.tensor(w), "steps": torch.tensor(s)},
            num_examples=n,
            metrics={"loss": loss},
            client_id=cid,
        )
        for cid, (w, n, loss, s) in enumerate(zip(W, N_EX, LOSSES, STEPS))
    ]


def expected(alpha: float, beta: int, server_round: int) -> tuple[list[float], int]:
    w = [alpha * W_LOSS[i] + (1 - alpha) * W_AVG[i] for i in range(2)]
    steps = alpha * STEPS_LOSS + (1 - alpha) * STEPS_AVG
    if beta == 1 and server_round >= 2:
        w = [0.5 * w[0] + 0.5 * 10.0, 0.5 * w[1] + 0.5 * -10.0]
        steps = 0.5 * round(steps) + 0.5 * 7
    return w, round(steps)


@pytest.mark.parametrize("server_round", [1, 2])
@pytest.mark.parametrize("beta", [0, 1])
@pytest.mark.parametrize("alpha", [0.0, 0.9, 1.0])
def test_fvssl_grid_matches_hand_computation(alpha, beta, server_round):
    agg = build_aggregator("fvssl", alpha=alpha, beta=beta)
    out = agg.aggregate(updates(), PREVIOUS, server_round)
    exp_w, exp_steps = expected(alpha, beta, server_round)
    assert out["w"].dtype == torch.float32
    torch.testing.assert_close(out["w"], torch.tensor(exp_w), rtol=0, atol=1e-6)
    assert out["steps"].dtype == torch.int64 and int(out["steps"]) == exp_steps


def test_fvssl_spot_values():
    """Three grid points written out in full."""
    # alpha = 0: FedAvg
    out = build_aggregator("fvssl", alpha=0.0, beta=0).aggregate(updates(), None, 1)
    torch.testing.assert_close(out["w"], torch.tensor([0.25, 1.875]))
    # alpha = 1, beta = 0: loss only = [8/7, 10/7]
    out = build_aggregator("fvssl", alpha=1.0, beta=0).aggregate(updates(), None, 5)
    torch.testing.assert_close(out["w"], torch.tensor([8 / 7, 10 / 7]))
    # alpha = 0.9, beta = 1, round 2: ½(0.9·[8/7, 10/7] + 0.1·[0.25, 1.875]) + ½[10, −10]
    out = build_aggregator("fvssl", alpha=0.9, beta=1).aggregate(updates(), PREVIOUS, 2)
    torch.testing.assert_close(
        out["w"], torch.tensor([0.5 * (0.9 * 8 / 7 + 0.025) + 5.0, 0.5 * (0.9 * 10 / 7 + 0.1875) - 5.0])
    )


def test_round_one_is_never_smoothed_even_with_a_previous_model():
    a = build_aggregator("fvssl", alpha=0.9, beta=1).aggregate(updates(), PREVIOUS, 1)
    b = build_aggregator("fvssl", alpha=0.9, beta=0).aggregate(updates(), PREVIOUS, 1)
    torch.testing.assert_close(a["w"], b["w"])


def test_equal_losses_weight_clients_equally_whatever_their_sizes():
    ups = updates()
    for u in ups:
        u.metrics["loss"] = 1.7
    out = build_aggregator("fvssl", alpha=1.0, beta=0).aggregate(ups, None, 1)
    torch.testing.assert_close(out["w"], torch.tensor([(1 + 3 - 2) / 3, (2 - 1 + 4) / 3]))


def test_loss_weights_are_stable_for_large_losses():
    ups = updates()
    for u, loss in zip(ups, [1000.0, 1000.0 + math.log(2.0), 1000.0 + math.log(4.0)]):
        u.metrics["loss"] = loss
    out = build_aggregator("fvssl", alpha=1.0, beta=0).aggregate(ups, None, 1)
    torch.testing.assert_close(out["w"], torch.tensor(W_LOSS))


def test_errors_name_the_problem():
    ups = updates()
    del ups[1].metrics["loss"]
    with pytest.raises(ValueError, match=r"client 1 .*metrics\['loss'\]"):
        build_aggregator("fvssl", alpha=0.9, beta=0).aggregate(ups, None, 1)
    # FedAvg point does not need losses
    build_aggregator("fvssl", alpha=0.0, beta=0).aggregate(ups, None, 1)
    with pytest.raises(ValueError, match="round 2 needs the previous global"):
        build_aggregator("fvssl", alpha=0.9, beta=1).aggregate(updates(), None, 2)
    with pytest.raises(ValueError, match="alpha=1.5"):
        build_aggregator("fvssl", alpha=1.5, beta=0)
    with pytest.raises(ValueError, match="beta=2"):
        build_aggregator("fvssl", alpha=0.5, beta=2)


def test_flower_port_sends_point_nine_fedavg_and_drops_the_loss_term():
    """adap/flower baselines/fedvssl/fedvssl/strategy.py, reproduced in a few lines.

    The strategy builds `[v * mix_coeff for v in weights_avg] + [(1 - mix_coeff) * v for v
    in weights_loss]` (list concatenation, 2× as many arrays), and the client's
    `set_parameters` zips the model's state-dict keys with the received arrays, so each
    key gets the first half: mix_coeff × FedAvg. Client metrics['loss'] is exp(−L).
    """

    def flower_aggregate(results):  # flower's `aggregate`: Σ w·n / Σ n
        total = sum(n for _, n in results)
        return [reduce(np.add, layer) / total for layer in zip(*[[a * n for a in w] for w, n in results])]

    keys = ["backbone.w"]
    client_arrays = [[np.array(w)] for w in W]
    weights_avg = flower_aggregate([(a, n) for a, n in zip(client_arrays, N_EX)])
    weights_loss = flower_aggregate([(a, math.exp(-loss)) for a, loss in zip(client_arrays, LOSSES)])
    mix_coeff = 0.9  # baselines/fedvssl/fedvssl/conf/base.yaml
    sent = [v * mix_coeff for v in weights_avg] + [(1 - mix_coeff) * v for v in weights_loss]
    received = dict(zip(keys, sent))  # client.set_parameters

    np.testing.assert_allclose(received["backbone.w"], 0.9 * np.array(W_AVG))
    # Our rule at the same mixture (0.9 on FedAvg, 0.1 on the loss term, i.e. alpha = 0.1) ...
    ours_01 = build_aggregator("fvssl", alpha=0.1, beta=0).aggregate(updates(), None, 1)["w"].double().numpy()
    np.testing.assert_allclose(ours_01, 0.1 * np.array(W_LOSS) + 0.9 * np.array(W_AVG))
    # ... and at the original code's alpha = 0.9 (0.9 on the loss term) both differ from it.
    ours_09 = build_aggregator("fvssl", alpha=0.9, beta=0).aggregate(updates(), None, 1)["w"].double().numpy()
    assert np.abs(ours_01 - received["backbone.w"]).min() > 0.05
    assert np.abs(ours_09 - received["backbone.w"]).min() > 0.05


def test_config_builds_the_paper_default():
    cfg = OmegaConf.load(CONF_DIR / "aggregator" / "fvssl.yaml")
    agg = build_aggregator(cfg.name, **cfg.params)
    assert (agg.alpha, agg.beta) == (0.9, 1)
    cfg = OmegaConf.load(CONF_DIR / "aggregator" / "ldawa.yaml")
    assert type(build_aggregator(cfg.name, **cfg.params)).__name__ == "LDAWA"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import benchmark.config  # noqa: F401  (registers ${project_root:})

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


@pytest.mark.parametrize("alpha,beta", [(0, 0), (0.9, 1), (1, 0)])
def test_k400_noniid_experiment_is_the_papers_setup(alpha, beta):
    from benchmark.splits.format import load_manifest

    cfg = compose(
        ["experiment=fvssl_k400_noniid", f"aggregator.params.alpha={alpha}", f"aggregator.params.beta={beta}"]
    )
    assert (cfg.dataset.id, cfg.backbone.name, cfg.method.name, cfg.method.exchange) == (
        "kinetics400",
        "r3d18",
        "ctp",
        "backbone",
    )
    assert (
        cfg.federation.num_clients,
        cfg.federation.clients_per_round,
        cfg.federation.rounds,
        cfg.federation.local_epochs,
    ) == (100, 5, 540, 1)
    assert (
        cfg.client.batch_size,
        cfg.client.optimizer.name,
        cfg.client.optimizer.lr,
        cfg.client.optimizer.momentum,
    ) == (4, "sgd", 0.01, 0.0)
    agg = build_aggregator(cfg.aggregator.name, **cfg.aggregator.params)
    assert (agg.alpha, agg.beta) == (alpha, beta)
    if alpha == 0:  # the published split, once
        manifest = load_manifest(cfg.split_manifest)
        assert (manifest.manifest_id, manifest.num_clients) == ("kinetics400-official-fedvssl-noniid-c100", 100)


def test_ucf101_crosssilo_experiment():
    from benchmark.splits.format import load_manifest

    cfg = compose(["experiment=fvssl_ucf101_crosssilo"])
    assert (cfg.dataset.id, cfg.federation.num_clients, cfg.federation.clients_per_round, cfg.federation.rounds) == (
        "ucf101",
        5,
        5,
        20,
    )
    assert (cfg.aggregator.name, cfg.aggregator.params.alpha, cfg.aggregator.params.beta) == ("fvssl", 0.9, 1)
    assert load_manifest(cfg.split_manifest).num_clients == 5
