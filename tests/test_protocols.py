"""Protocols: every card row equals the composed config; the behaviour a value cannot show.

Cards are docs/protocols/<name>.md; configs are conf/protocol/<name>.yaml, composed as the
experiments that claim the protocol compose them.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from benchmark import CONF_DIR, PROJECT_ROOT
from benchmark.data.clips import ctp_train_clip_indices, ctp_uniform_clip_indices, vcop_clip_indices
from benchmark.data.transforms import CtPColorAugment, SimCLRVideoAugment
from benchmark.models.backbones import R3D18, TinyR3D, with_layout
from benchmark.protocols import MODIFIED_VARIANT, protocol_id, protocol_settings
from benchmark.protocols import same_value as same

CARDS = PROJECT_ROOT / "docs" / "protocols"
PROTOCOLS = ("cpu", "ctp", "fedvssl", "ssd", "ssd_image")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import benchmark.config  # noqa: F401  (registers ${project_root:})

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


# ---------------------------------------------------------------- cards vs configs


def parse_card(path: Path) -> dict:
    """{"name", "version", "rows": [(setting, key, value, scope)]} of one card.

    Header line ``Protocol: `name`, version N``. Settings tables have the columns
    setting | official | source | config key | ours | status; rows before any
    ``### Experiment: `overrides``` heading are the protocol's (scope None), rows under
    such a heading hold for that composition (scope = its overrides).
    """
    text = path.read_text()
    head = re.search(r"^Protocol: `([a-z0-9_]+)`, version (\d+)", text, re.M)
    assert head, f"{path}: no 'Protocol: `name`, version N' line"
    rows, scope = [], None
    for line in text.splitlines():
        exp = re.match(r"^### Experiment: `([^`]+)`", line)
        if exp:
            scope = exp.group(1)
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 6 or cells[0] in ("setting", "") or set(cells[0]) <= set("-: "):
            continue
        setting, _official, source, key, ours, status = cells
        assert source, f"{path}: row {setting!r} has no source"
        assert re.match(r"same( \(.*\))?$|deviation: \S", status), f"{path}: row {setting!r}: status {status!r}"
        rows.append((setting, key.strip("`"), ours.strip("`"), scope))
    base = re.search(r"^Includes: the protocol rows of `([a-z0-9_]+)`", text, re.M)
    if base:  # the base card's protocol rows, except the keys this card sets itself
        own = {(key, scope) for _, key, _, scope in rows}
        rows += [
            r
            for r in parse_card(path.parent / f"{base.group(1)}.md")["rows"]
            if r[3] is None and (r[1], None) not in own
        ]
    return {"name": head.group(1), "version": int(head.group(2)), "rows": rows}


def config_value(cfg, key: str):
    """A dotted config key, or ``code:module.ATTR`` for a constant the code fixes."""
    if key.startswith("code:"):
        module, _, attr = key[len("code:") :].rpartition(".")
        return getattr(importlib.import_module(module), attr)
    missing = object()
    value = OmegaConf.select(cfg, key, default=missing)
    assert value is not missing, f"config key {key!r} does not exist"
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("name", PROTOCOLS)
def test_card_rows_equal_the_composed_config(name):
    card = parse_card(CARDS / f"{name}.md")
    assert card["name"] == name and len(card["rows"]) >= 10
    scopes = [None] + sorted({s for *_, s in card["rows"] if s})
    for scope in scopes:
        overrides = [f"protocol={name}"] if scope is None else scope.split()
        cfg = compose(overrides)
        assert (cfg.protocol.name, cfg.protocol.version) == (name, card["version"]), overrides
        for setting, key, ours, row_scope in card["rows"]:
            if row_scope not in (None, scope):
                continue
            actual = config_value(cfg, key)
            assert same(yaml.safe_load(ours), actual), (
                f"{name} card, {setting!r}: the card says {key} = {ours}, {overrides} composes {actual!r}"
            )


def test_every_protocol_has_a_card_and_every_card_a_protocol():
    assert sorted(p.stem for p in (CONF_DIR / "protocol").glob("*.yaml")) == sorted(PROTOCOLS)
    assert sorted(p.stem for p in CARDS.glob("*.md") if p.stem != "README") == sorted(PROTOCOLS)


def test_embedded_default_is_the_cpu_protocol():
    assert compose([]).protocol.name == "cpu"


# ---------------------------------------------------------------- which protocol a run may claim

CLAIMS = [  # (overrides, the protocol the record names): every composition the cards and README list
    ([], ("cpu", None)),
    (["seed=0"], ("cpu", None)),
    (["protocol=ctp", "method=ctp", "backbone=r3d18"], ("ctp", None)),
    (["protocol=fedvssl"], ("fedvssl", None)),
    (["protocol=ssd"], ("ssd", None)),
    (["experiment=fvssl_k400_noniid"], ("fedvssl", None)),
    (["experiment=fvssl_k400_noniid", "aggregator=ldawa"], ("fedvssl", None)),
    (["experiment=fvssl_ucf101_crosssilo"], ("ctp", None)),
    (["experiment=ssd_crosssilo"], ("ssd", None)),
    (["experiment=ssd_crosssilo", "method=align_uniform"], ("ssd", None)),
    (["experiment=ssd_crossdevice"], ("ssd", None)),
    (["experiment=ssd_k400_noniid"], ("ssd", None)),
    (["experiment=compare", "hydra.mode=RUN", "compare_row=ssd"], ("cpu", "compare")),
]


@pytest.mark.parametrize("overrides,claim", CLAIMS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_plain_protocols_and_their_experiments_keep_their_protocol(overrides, claim):
    pid = protocol_id(compose(overrides))
    assert (pid["name"], pid["variant"]) == claim and "overridden" not in pid


@pytest.mark.parametrize("overrides", [c[0] for c in CLAIMS], ids=lambda v: " ".join(v) or "default")
def test_every_listed_composition_builds_its_aggregator(overrides):
    # `experiment=fvssl_k400_noniid aggregator=ldawa` once carried FVSSL's alpha/beta into
    # L-DAWA's constructor and failed only when the server started
    from benchmark.config_check import _aggregator_param_problems
    from benchmark.registry import build_aggregator

    aggregator = OmegaConf.to_container(compose(overrides).aggregator, resolve=True)
    assert _aggregator_param_problems({"aggregator": aggregator}) == []
    assert build_aggregator(aggregator["name"], **aggregator.get("params", {})) is not None


def test_aggregator_params_are_checked_before_the_run():
    from benchmark.config_check import _aggregator_param_problems

    stray = {"aggregator": {"name": "ldawa", "params": {"warmup_rounds": 3, "alpha": 0.9, "beta": 1}}}
    assert _aggregator_param_problems(stray) == [
        "aggregator.params: alpha, beta not taken by aggregator=ldawa (it takes warmup_rounds); "
        "remove them, or choose the aggregator they belong to"
    ]
    (bad,) = _aggregator_param_problems({"aggregator": {"name": "fvssl", "params": {"alpha": 2, "beta": 1}}})
    assert bad.startswith("aggregator=fvssl: aggregator.params.alpha=2")


def test_smoke_variant_keeps_its_name_despite_its_size_overrides():
    from benchmark.commands.reproduce import TABLES

    table = TABLES["fedvssl-k400-noniid"]
    pid = protocol_id(compose([*table.rows[0].overrides, *table.smoke_overrides]))
    assert pid == {"name": "fedvssl", "version": 3, "variant": "smoke"}


def test_protocol_owns_the_keys_its_files_set():
    ctp, fedvssl, ssd = (protocol_settings(n) for n in ("ctp", "fedvssl", "ssd"))
    assert ctp["eval.pooling"] == "vcop" and ctp["client.optimizer.momentum"] == 0.9
    assert fedvssl["client.optimizer.momentum"] == 0.0 and fedvssl.keys() == ctp.keys()  # defaults: [ctp, _self_]
    assert ssd["client.optimizer.lr"] == 0.025 and ssd["clip.normalization"] == "none"
    assert protocol_settings("cpu")["eval.retrieval.clip"] == {}  # an empty mapping is one setting
    assert not any(k.startswith("protocol.") for k in ctp)


def test_overriding_a_protocol_key_changes_the_recorded_protocol_and_the_track():
    from leaderboard.build import build_leaderboard, protocol_label
    from leaderboard.record import record_protocol

    plain = protocol_id(compose(["protocol=fedvssl"]))
    avg = protocol_id(compose(["protocol=fedvssl", "eval.pooling=avg"]))
    lr = protocol_id(compose(["experiment=fvssl_k400_noniid", "client.optimizer.lr=0.1", "clip.stride=2"]))
    assert avg == {"name": "fedvssl", "version": 3, "variant": MODIFIED_VARIANT, "overridden": {"eval.pooling": "avg"}}
    assert lr["variant"] == MODIFIED_VARIANT and lr["overridden"] == {"client.optimizer.lr": 0.1, "clip.stride": 2}
    assert (
        record_protocol(
            {
                "protocol": {"name": "fedvssl", "version": 3, "variant": None},
                **{
                    k: v
                    for k, v in OmegaConf.to_container(compose(["protocol=fedvssl", "eval.pooling=avg"])).items()
                    if k in ("clip", "client", "eval", "federation")
                },
            }
        )
        == avg
    )
    # a variant the config names itself is kept: the run says what it is
    named = protocol_id(compose(["protocol=fedvssl", "eval.pooling=avg", "protocol.variant=avgpool"]))
    assert named == {"name": "fedvssl", "version": 3, "variant": "avgpool"}

    def record(rid: str, proto: dict) -> dict:
        return {
            "record_id": rid,
            "status": "reproduced",
            "protocol": proto,
            "track": {
                "dataset": "kinetics400",
                "split_manifest_id": "m",
                "num_clients": 100,
                "clients_per_round": 5,
                "rounds": 540,
                "local_epochs": 1,
                "backbone": "r3d18",
                "input_size": [16, 112, 112],
            },
            "method": {"name": "ctp", "pretext": "ctp", "aggregator": "fvssl", "params": {}, "exchange": "backbone"},
            "evaluations": {"retrieval": {"ucf101": {"split": "1", "topk": {"1": 0.3}, "protocol": proto}}},
        }

    recs = [record("plain", plain), record("avg", avg), record("lr", lr)]
    labels = [protocol_label(r) for r in recs]
    assert labels == [
        "fedvssl/v3",
        "fedvssl/v3+modified[eval.pooling=avg]",
        "fedvssl/v3+modified[client.optimizer.lr=0.1,clip.stride=2]",
    ]
    board = build_leaderboard(recs)
    assert sorted((t["protocol"], [e["record_ids"] for e in t["entries"]]) for t in board["tracks"]) == sorted(
        (label, [[r["record_id"]]]) for label, r in zip(labels, recs)
    )


# ---------------------------------------------------------------- behaviour


def test_downstream_layout_gives_512x2x7x7_maps_with_the_same_weights():
    torch.manual_seed(0)
    model = R3D18().eval()
    down = with_layout(model, "downstream")
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        assert tuple(model(x).shape) == (1, 512, 2, 14, 14)  # pretraining: down_sampling=[F, T, T, F]
        assert tuple(down(x).shape) == (1, 512, 2, 7, 7)  # recognizer: down_sampling=[F, T, T, T]
    assert model.state_dict().keys() == down.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), down.state_dict().values()))
    assert with_layout(model, "pretraining") is model
    with pytest.raises(ValueError, match="eval.backbone_layout='sideways'"):
        with_layout(model, "sideways")


def test_downstream_layout_is_stride_2_subsampling_of_the_pretraining_map():
    # layer4's first conv and shortcut only change their spatial stride: a 3x3 conv with
    # stride 2 and padding 1 samples the stride-1 result at even positions; the rest of the
    # block then runs on the smaller map, so compare the first conv's output directly.
    torch.manual_seed(0)
    model = TinyR3D(width=4).eval()
    down = with_layout(model, "downstream")
    h = torch.randn(1, 16, 4, 8, 8)
    with torch.no_grad():
        full = model.layer4[0].conv1[0](h)
        strided = down.layer4[0].conv1[0](h)
    assert torch.allclose(strided, full[..., ::2, ::2], atol=1e-6)


def _frames_identical(clip: torch.Tensor) -> bool:
    return all(torch.allclose(clip[:, t], clip[:, 0], atol=1e-6) for t in range(clip.shape[1]))


def test_simclr_views_share_crop_and_colour_across_frames_and_differ_between_views():
    from baselines.align_uniform import AlignUniform

    method = AlignUniform(TinyR3D(width=4), hidden_dim=8)  # view_augment: SSD's official values
    frame = torch.rand(3, 1, 24, 24)
    clip = frame.expand(3, 6, 24, 24).contiguous()  # every frame the same image
    differences = []
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        views = method.sample_transform([clip.clone(), clip.clone()], g)["video"]
        assert views.shape == (2, 3, 6, 24, 24) and 0.0 <= views.min() and views.max() <= 1.0
        # one draw per clip: identical frames stay identical (crop, jitter, grayscale shared)
        assert _frames_identical(views[0]) and _frames_identical(views[1])
        differences.append(float((views[0] - views[1]).abs().mean()))
    assert min(differences) > 1e-3  # the two views of one clip are drawn independently
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(method.sample_transform([clip], g1)["video"], method.sample_transform([clip], g2)["video"])


def test_simclr_colour_jitter_changes_colour_statistics():
    aug = SimCLRVideoAugment(crop_scale=(1.0, 1.0), jitter_prob=1.0, gray_prob=0.0)
    clip = torch.rand(3, 2, 16, 16)
    means = {
        tuple(aug(clip, torch.Generator().manual_seed(s)).mean(dim=(1, 2, 3)).round(decimals=3).tolist())
        for s in range(4)
    }
    assert len(means) == 4  # a different colour per draw, not just another crop


def test_ctp_colour_augment_hand_example():
    # prob 1, contrast and hue/saturation deltas 0: only the brightness shift acts
    aug = CtPColorAugment(prob=1.0, brightness_delta=0.1, contrast_delta=0.0, hue_delta=0.0, saturation_delta=0.0)
    clip = torch.full((3, 4, 2, 2), 0.5)
    g = torch.Generator().manual_seed(0)
    out = aug(clip, g)
    ref = torch.Generator().manual_seed(0)
    torch.rand((), generator=ref)  # the brightness flag
    shift = -0.1 + 0.2 * float(torch.rand((), generator=ref))
    assert torch.allclose(out, torch.full_like(clip, 0.5 + shift), atol=1e-6)
    off = CtPColorAugment(prob=0.0, brightness_delta=0.5, contrast_delta=0.5, hue_delta=0.1, saturation_delta=0.5)
    assert torch.equal(off(clip, torch.Generator().manual_seed(0)), clip)


def test_ctp_pretraining_clip_sampler_hand_examples():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = ctp_train_clip_indices(200, 16, [1, 2, 3, 4, 5], True, g)
        steps = [b - a for a, b in zip(idx, idx[1:])]
        assert len(idx) == 16 and all(0 <= i < 200 for i in idx)
        assert all(0 <= s <= 9 for s in steps)  # stride <= 5 plus a jitter difference of at most 4
    # without jitter each clip keeps one stride, drawn from the list: all five appear
    seen = set()
    for _ in range(100):
        idx = ctp_train_clip_indices(100, 4, [1, 2, 3, 4, 5], False, g)
        assert len({b - a for a, b in zip(idx, idx[1:])}) == 1
        seen.add(idx[1] - idx[0])
    assert seen == {1, 2, 3, 4, 5}
    # a video shorter than the span starts at 0 and clamps to its last frame (CtP's rule)
    assert ctp_train_clip_indices(5, 4, [3], False, g) == [0, 3, 4, 4]


def test_eval_clip_samplers_hand_examples():
    # VCOP retrieve_clips.py: centres linspace(8, 92, 10), start int(centre - 8), 16 consecutive frames
    starts = [c[0] for c in vcop_clip_indices(100, 10, 16, 1)]
    assert starts == [0, 9, 18, 28, 37, 46, 56, 65, 74, 84]
    assert vcop_clip_indices(100, 10, 16, 1)[3] == list(range(28, 44))
    # CtP UniformFrameSampler: tick = (100 - 32 + 1) / 10 = 6.9, offsets int(3.45 + 6.9 i), stride 2
    offsets = [c[0] for c in ctp_uniform_clip_indices(100, 10, 16, 2)]
    assert offsets == [3, 10, 17, 24, 31, 37, 44, 51, 58, 65]
    assert ctp_uniform_clip_indices(100, 10, 16, 2)[0] == list(range(3, 35, 2))
    assert ctp_uniform_clip_indices(20, 2, 16, 2)[0] == [min(2 * k, 19) for k in range(16)]  # short: offset 0, clamped


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory):
    from benchmark.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("protocol-data")
    ensure_synthetic(root, size="tiny", seed=0, progress=False)
    return [(str(v), 0) for v in sorted((root / "synthetic" / "kinetics" / "train").rglob("*.mp4"))[:8]]


def test_ctp_pretraining_clips_draw_stride_and_short_side_per_item(tiny_videos):
    from benchmark.data.loaders import TrainClipDataset

    ds = TrainClipDataset(
        tiny_videos,
        frames=4,
        stride=[1, 2, 3, 4, 5],
        temporal_jitter=True,
        short_side=[40, 48],
        crop_size=32,
        normalization="imagenet",
        seed=0,
    )
    first = [ds.normalize_video(ds[i]["video"]) for i in range(4)]
    assert all(v.shape == (3, 4, 32, 32) for v in first)
    assert all(
        torch.equal(a, ds.normalize_video(ds[i]["video"])) for i, a in enumerate(first)
    )  # reproducible per (seed, epoch, item)
    # ImageNet statistics: a [0, 1] pixel maps into [-0.485/0.229, 0.515/0.229] on the red channel
    assert first[0][0].min() >= -0.485 / 0.229 - 1e-5 and first[0][0].max() <= 0.515 / 0.229 + 1e-5
    with pytest.raises(ValueError, match="crop_size=32 is larger than short_side=24"):
        TrainClipDataset(tiny_videos, frames=4, stride=[1, 2], short_side=[24, 40], crop_size=32)


def test_fedavg_weights_follow_dataset_sizes_with_local_steps(tiny_videos):
    """Two clients with 2 and 6 videos, one local step of 2 videos each: both process 2
    samples, but FedAvg weighs them 2/8 and 6/8 (Flower / FedVSSL: len(train_dataset))."""
    from benchmark.federation.base import ClientUpdate
    from benchmark.federation.training import initial_global_state, run_local_training
    from benchmark.registry import build_aggregator
    from benchmark.specs import LocalTrainingSpec

    videos = tiny_videos
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "backbone": {"name": "tiny_r3d", "params": {"width": 4}},
            "method": {"name": "align_uniform", "exchange": "full", "params": {"hidden_dim": 16}},
            "federation": {"num_clients": 2, "local_epochs": 1, "local_steps": 1, "rounds": 1},
            "client": {
                "batch_size": 2,
                "num_workers": 0,
                "num_threads": 1,
                "device": "cpu",
                "grad_clip_norm": None,
                "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0},
            },
            "clip": {"frames": 4, "stride": 1, "size": 32, "short_side": 40, "backend": "decord"},
        }
    )
    spec = LocalTrainingSpec.from_config(cfg)
    state = initial_global_state(spec.model, spec.seed)
    small = run_local_training(spec, 0, 1, state, None, videos[:2], lr=0.01)
    large = run_local_training(spec, 1, 1, state, None, videos[2:], lr=0.01)
    assert (small.metrics["samples_processed"], large.metrics["samples_processed"]) == (2, 2)
    assert (small.num_examples, large.num_examples) == (2, 6)
    updates = [
        ClientUpdate(arrays=r.exchanged, num_examples=r.num_examples, client_id=i) for i, r in enumerate((small, large))
    ]
    merged = build_aggregator("fedavg").aggregate(updates, state, 1)
    key = next(
        k for k, v in state.items() if v.is_floating_point() and not torch.equal(small.exchanged[k], large.exchanged[k])
    )
    expected = 0.25 * small.exchanged[key] + 0.75 * large.exchanged[key]
    assert torch.allclose(merged[key], expected, atol=1e-6)


def test_finetune_video_consensus_averages_logits_as_ctp():
    from benchmark.evaluation.metrics import clip_and_video_metrics

    # two clips of one video: averaged softmax picks class 1 (0.37, 0.44, 0.19); CtP's
    # softmax of the averaged logits (0, -0.5, 0.5) picks class 2
    scores = torch.tensor([[[-3.0, 1.0, -1.0], [3.0, -2.0, 2.0]]])
    assert clip_and_video_metrics(scores, torch.tensor([2]), 3, consensus="logits")["video_top1"] == 1.0
    assert clip_and_video_metrics(scores, torch.tensor([2]), 3)["video_top1"] == 0.0


def test_evaluate_config_has_the_run_configs_clip_defaults():
    """`fedvid evaluate` and `fedvid run` compose the same clip and eval.clip blocks by default."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmark import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = compose("config")
        evaluate = compose("evaluate", overrides=["checkpoint=x.pt"])
    for key in ("clip", "eval.clip"):
        assert OmegaConf.to_container(OmegaConf.select(evaluate, key)) == OmegaConf.to_container(
            OmegaConf.select(run, key)
        ), key


def test_ctp_finetune_clip_repeats_a_short_videos_last_frame():
    from benchmark.data.clips import CtPRandomClip, train_clip_indices

    sampler = CtPRandomClip(16, 2)
    g = torch.Generator().manual_seed(0)
    # CtP RandomFrameSampler: 25 frames < span 31 -> start 0, indices clamped to frame 24
    assert sampler(25, g) == ([[0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 24, 24, 24]], {})
    assert sampler(31, g) == ([list(range(0, 31, 2))], {})  # total_len >= num_frames: start 0
    # the loop rule it replaces for fine-tuning (and keeps for everything else)
    assert train_clip_indices(25, 16, 2, g)[-4:] == [24, 1, 3, 5]
    for _ in range(20):
        (clip,), _ = sampler(100, g)
        assert [b - a for a, b in zip(clip, clip[1:])] == [2] * 15 and 0 <= clip[0] <= 69


def test_padded_epoch_repeats_the_first_videos_of_its_order_with_their_own_draws(tiny_videos):
    from benchmark.data.loaders import EpochBatchSampler, TrainClipDataset

    # CtP group_sampler.py: indice += indice[:extra]; 7 videos, batches of 3 -> 9 items
    (a, b, c) = list(EpochBatchSampler(7, 3, seed=4, epochs=[2], last_batch="pad"))
    order = [index for _, index in a + b] + [c[0][1]]
    assert sorted(order) == list(range(7))
    assert c[1:] == [(2, order[0], 1), (2, order[1], 1)]
    assert [len(x) for x in EpochBatchSampler(7, 3, seed=4, epochs=[2], last_batch="keep")] == [3, 3, 1]
    assert [len(x) for x in EpochBatchSampler(7, 3, seed=4, epochs=[2], last_batch="drop")] == [3, 3]
    # an epoch shorter than one batch cycles its order (CtP would fail its assert)
    ((*first, p1, p2, p3),) = list(EpochBatchSampler(2, 5, seed=1, epochs=[0], last_batch="pad"))
    assert [p1, p2, p3] == [(0, first[0][1], 1), (0, first[1][1], 1), (0, first[0][1], 2)]
    with pytest.raises(ValueError, match="last_batch='ragged': expected one of keep, drop, pad"):
        EpochBatchSampler(7, 3, seed=4, epochs=[2], last_batch="ragged")
    # the copy is the same video with new draws (CtP's sampler visits it again with new
    # random numbers), not a duplicate of the first visit's clip
    ds = TrainClipDataset(tiny_videos, frames=4, stride=2, short_side=40, crop_size=32, seed=3)
    original, copy = ds[(2, 5)], ds[(2, 5, 1)]
    assert int(original["index"]) == int(copy["index"]) == 5
    assert not torch.equal(original["video"], copy["video"])
    assert torch.equal(copy["video"], ds[(2, 5, 1)]["video"])  # reproducible
    ds.set_epoch(2)  # key (2, 5) is epoch 2's item 5
    assert torch.equal(original["video"], ds[5]["video"])


@pytest.mark.parametrize("sampling, batch_sizes", [("ctp", [3, 3, 3]), ("uniform", [3, 3, 2])])
def test_finetune_follows_ctps_epoch_padding_only_in_its_pipeline(tiny_videos, monkeypatch, sampling, batch_sizes):
    import benchmark.data.loaders as loaders
    from benchmark.evaluation.features import ClipSettings
    from benchmark.evaluation.finetune import finetune
    from benchmark.evaluation.pipeline import Downstream
    from benchmark.evaluation.spec import FinetuneSpec

    seen, made = [], loaders.make_train_loader

    def recording(dataset, **kwargs):
        loader = made(dataset, **kwargs)
        seen.append((kwargs["last_batch"], dataset.frame_sampler, [len(b) for b in loader.batch_sampler]))
        return loader

    monkeypatch.setattr(loaders, "make_train_loader", recording)
    videos = [(path, k % 2) for k, (path, _) in enumerate(tiny_videos)]  # 8 videos, two classes
    ds = Downstream("tiny", "tiny", "1", ["a", "b"], videos, videos[:2], {})
    spec = FinetuneSpec(
        enabled=True, epochs=1, batch_size=3, num_workers=0, lr=0.01, momentum=0.9, weight_decay=0.0,
        milestones=(), gamma=0.1, dropout=0.0, seed=0, grad_clip_norm=None, train_short_sides=None,
        flip_prob=0.5, color=None, head_init_std=0.001,
    )  # fmt: skip
    clip = ClipSettings(num_clips=1, frames=4, stride=2, short_side=40, crop_size=32, sampling=sampling)
    result = finetune(TinyR3D(4), ds, spec, clip, torch.device("cpu"), test_batch_size=2, test_num_workers=0)
    ((last_batch, frame_sampler, sizes),) = seen
    assert sizes == batch_sizes  # 8 videos: CtP pads the epoch to 9 (3 x 3), ours keeps 3 + 3 + 2
    assert last_batch == ("pad" if sampling == "ctp" else "keep")
    assert (frame_sampler is not None) == (sampling == "ctp")
    assert len(result["train_loss"]) == 1 and result["train_loss"][0] > 0


#: card keys that choose which evaluations and metrics run, not how a number is computed:
#: changing one leaves every other number as it is, so the run keeps its protocol
SELECTION_KEYS = {"eval.finetune.enabled", "eval.linear_probe.enabled", "eval.retrieval.ks"}


@pytest.mark.parametrize("name", PROTOCOLS)
def test_protocol_owns_every_key_its_card_lists(name):
    # a card row whose key the protocol does not own could be overridden without the record
    # saying "modified": the row would describe a run that did not happen
    owned = protocol_settings(name)
    card = parse_card(CARDS / f"{name}.md")
    keys = {key for _, key, _, scope in card["rows"] if scope is None and not key.startswith("code:")}
    unowned = {k for k in keys - SELECTION_KEYS if not any(o == k or o.startswith(k + ".") for o in owned)}
    assert not unowned, f"{name}: card rows with keys conf/protocol/{name}.yaml does not set: {sorted(unowned)}"


def test_changing_the_epoch_end_is_a_modified_run():
    for protocol, other in (("cpu", "pad"), ("fedvssl", "drop"), ("ssd", "pad")):
        pid = protocol_id(compose([f"protocol={protocol}", f"client.last_batch={other}"]))
        assert pid["variant"] == MODIFIED_VARIANT and pid["overridden"] == {"client.last_batch": other}
