"""VCOP, Speed, Rot3D and video MoCo (microsoft/CtP ports): samplers, transforms and losses
against hand-computed examples, the method hooks, and the loader decoding exactly the
frames a method's ``sample_frames`` plans (real numbered video files)."""

from __future__ import annotations

import math

import pytest
import torch
from test_loaders import frame_numbers, unnormalize

from baselines.moco import MoCo, info_nce
from baselines.pyvrl_heads import classification_loss, global_pool
from baselines.rot3d import Rot3D, rotate_clip
from baselines.speednet import Speed, speed_clip_indices
from baselines.vcop import VCOP, vcop_tuple_indices
from benchmark.data.loaders import TrainClipDataset
from benchmark.methods import SSLMethod
from benchmark.registry import build_backbone

from _decoding_helpers import encode_numbered_video


def tiny():
    torch.manual_seed(0)
    return build_backbone("tiny_r3d", width=4)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- VCOP ---------------------------------------------------------------------------------
def test_vcop_tuple_long_video_hand_computed():
    # 100 frames, 3 clips of 16, interval 8: avg = (100-48)//2 = 26 >= 8 -> interval 8 (draw 1,
    # U{8,8}); start U{0, 100-48-16 = 36} (draw 2); clips start s, s+24, s+48
    g = gen(5)
    clips = vcop_tuple_indices(100, 16, 3, 8, 8, g)
    ref = gen(5)
    assert int(torch.randint(8, 9, (1,), generator=ref)) == 8
    s = int(torch.randint(0, 37, (1,), generator=ref))
    assert clips == [list(range(s, s + 16)), list(range(s + 24, s + 40)), list(range(s + 48, s + 64))]


def test_vcop_tuple_interval_capped_by_average_and_short_videos():
    # 60 frames, interval in [4, 8]: avg = (60-48)//2 = 6 -> interval U{4..6}
    for seed in range(20):
        c = vcop_tuple_indices(60, 16, 3, 4, 8, gen(seed))
        gap = c[1][0] - c[0][-1] - 1
        assert 4 <= gap <= 6 and c[2][0] - c[1][-1] - 1 == gap and c[2][-1] <= 59
    # 40 frames: avg < 0 -> TSN offsets int(tick/2 + tick*i), tick = 25/3: 4, 12, 20 (no draw)
    g = gen(1)
    before = g.get_state()
    assert vcop_tuple_indices(40, 16, 3, 8, 8, g) == [list(range(4, 20)), list(range(12, 28)), list(range(20, 36))]
    assert torch.equal(g.get_state(), before)
    # 10 frames (shorter than a clip): offsets 0, indices clipped to 9
    assert vcop_tuple_indices(10, 16, 3, 8, 8, gen()) == [[min(k, 9) for k in range(16)]] * 3


def test_vcop_transform_permutes_clips_and_keeps_dtype():
    m = VCOP(tiny(), num_frames=2)
    assert m.permutations.tolist() == [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
    view = torch.arange(6, dtype=torch.uint8).view(1, 6, 1, 1)  # clips [0,1], [2,3], [4,5]
    out = m.sample_transform([view], gen(3))
    order = int(torch.randint(0, 6, (1,), generator=gen(3)))
    assert int(out["order"]) == order and out["video"].dtype == torch.uint8
    assert out["video"].shape == (3, 1, 2, 1, 1)
    perm = m.permutations[order].tolist()
    assert [out["video"][k].flatten().tolist() for k in range(3)] == [[2 * p, 2 * p + 1] for p in perm]


def test_vcop_head_is_pairwise_concatenation_and_loss_is_cross_entropy():
    m = VCOP(tiny(), num_frames=8, hidden_channels=5).eval()
    video = torch.randn(2, 3, 3, 8, 32, 32)
    with torch.no_grad():
        logits = m.order_logits(video)
        feats = global_pool(m.backbone(video.flatten(0, 1))).view(2, 3, -1)
        pairs = [torch.cat([feats[:, i], feats[:, j]], dim=1) for i, j in ((0, 1), (0, 2), (1, 2))]
        ref = m.fc2(torch.cat([torch.relu(m.fc1(p)) for p in pairs], dim=1))
    assert logits.shape == (2, 6) and torch.allclose(logits, ref, atol=1e-6)
    # cross-entropy on a hand example: logits [0, ln 3] with label 1 -> -ln(3/4)
    loss, logs = classification_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]), "order")
    assert float(loss) == pytest.approx(-math.log(0.75)) and logs == {"order_acc": 1.0}


# --- Speed ----------------------------------------------------------------------------------
def test_speed_indices_hand_computed():
    strides = [-4, -2, -1, 0, 1, 2, 4]
    for seed in range(30):
        inds, idx = speed_clip_indices(100, 16, strides, gen(seed))
        ref = gen(seed)
        assert int(torch.randint(0, 7, (1,), generator=ref)) == idx
        s, pos = strides[idx], abs(strides[idx])
        start = int(torch.randint(0, 100 - (pos * 15 + 1) + 1, (1,), generator=ref))
        forward = [start + i * pos for i in range(16)]
        assert inds == (forward[::-1] if s < 0 else forward)
    # short video, stride 4 (span 61 >= 20): start 0, clamped to the last frame, no start draw
    g = gen(0)
    while True:
        state = g.get_state()
        if int(torch.randint(0, 2, (1,), generator=g)) == 1:
            break
    g.set_state(state)
    assert speed_clip_indices(20, 16, [-4, 4], g) == ([0, 4, 8, 12, 16] + [19] * 11, 1)


# --- Rot3D ----------------------------------------------------------------------------------
def test_rotation_is_counter_clockwise_and_dtype_preserving():
    frame = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).view(1, 1, 2, 2)
    assert rotate_clip(frame, 1).view(2, 2).tolist() == [[2, 4], [1, 3]]  # 90 deg CCW
    assert rotate_clip(frame, 2).view(2, 2).tolist() == [[4, 3], [2, 1]]
    assert rotate_clip(frame, 3).view(2, 2).tolist() == [[3, 1], [4, 2]]
    assert rotate_clip(frame, 1).dtype == torch.uint8
    m = Rot3D(tiny(), num_frames=4)
    out = m.sample_transform([frame.float()], gen(7))
    flag = int(torch.randint(0, 4, (1,), generator=gen(7)))
    assert int(out["rotation"]) == flag and torch.equal(out["video"], rotate_clip(frame.float(), flag))


# --- MoCo -----------------------------------------------------------------------------------
def test_info_nce_momentum_and_queue_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # columns (0, 1) and (-1, 0)
    # logits [1, 0, -1] / T=1
    expected = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    assert float(info_nce(q, q, queue, 1.0)) == pytest.approx(expected)
    assert float(info_nce(q, q, queue, 0.5)) == pytest.approx(-math.log(math.e**2 / (math.e**2 + 1 + math.exp(-2))))

    m = MoCo(tiny(), num_frames=4, queue_size=4, out_channels=2, momentum=0.9)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.fill_(1.0)
        for p in m.key_backbone.parameters():
            p.fill_(0.0)
    m.momentum_update()
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in m.key_backbone.parameters())
    m.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    m.enqueue(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert int(m.queue_ptr) == 0 and m.queue.T.tolist() == [[1, 0], [0, 1], [2, 0], [0, 2]]
    # a ragged last batch (client.last_batch keeps it under some protocols) wraps around the
    # queue's end: the queue holds the newest 4 keys, oldest overwritten first
    m.enqueue(torch.tensor([[3.0, 0.0]]))
    m.enqueue(torch.tensor([[4.0, 0.0], [5.0, 0.0]]))
    m.enqueue(torch.tensor([[6.0, 0.0], [7.0, 0.0]]))
    assert int(m.queue_ptr) == 1 and m.queue.T.tolist() == [[7, 0], [4, 0], [5, 0], [6, 0]]
    # the first batch fixes the batch size, which must divide the queue (the official assert)
    with pytest.raises(ValueError, match="queue_size=4 is not a multiple of the batch size 3"):
        MoCo(tiny(), num_frames=4, queue_size=4, out_channels=2, momentum=0.9).enqueue(torch.zeros(3, 2))


def test_moco_key_encoder_and_queue_stay_local_and_round_start():
    m = MoCo(tiny(), num_frames=4, queue_size=8)
    sent = m.exchanged_state()
    assert sent and not [k for k in sent if k.startswith(("key_", "queue"))]
    assert {k.split(".")[0] for k in m.local_state()} == {"key_backbone", "key_fc", "queue", "queue_ptr"}
    glob = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in sent.items()}
    m.start_round(glob, None, 1)  # first round: key encoder = received query encoder
    for (kq, q), (_kk, k) in zip(m.backbone.state_dict().items(), m.key_backbone.state_dict().items()):
        assert torch.equal(q, k), kq
    local = {k: torch.full_like(v, 3) if v.is_floating_point() else v for k, v in m.local_state().items()}
    m.start_round(glob, local, 2)  # later rounds: key encoder and queue from the client's state
    assert torch.equal(m.queue, torch.full_like(m.queue, 3))
    assert all(torch.equal(p, torch.full_like(p, 3)) for p in m.key_backbone.parameters())
    assert torch.equal(m.backbone.stem[0].weight, glob["backbone.stem.0.weight"])
    assert set(m.overridden_hooks()) == {"sample_frames", "after_step", "start_round"}


# --- hooks and the loader ----------------------------------------------------------------
def test_default_hooks_are_the_old_behaviour():
    class Plain(SSLMethod):
        def training_loss(self, batch):
            return self.backbone(batch["video"]).mean(), {}

    m = Plain(tiny())
    assert m.overridden_hooks() == []
    assert m.sample_frames(100, gen()) is None
    (group,) = m.parameter_groups()
    assert [id(p) for p in group["params"]] == [id(p) for p in m.parameters()]
    glob = {k: torch.zeros_like(v) for k, v in m.exchanged_state().items()}
    m.start_round(glob, None, 1)
    assert all(torch.equal(v, glob[k]) for k, v in m.exchanged_state().items())


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretexts")
    return [(encode_numbered_video(root / "v.avi", 40), 0)]


def test_loader_decodes_the_planned_frames(numbered):
    speed = Speed(tiny(), num_frames=4, clip_strides=[-2, 3])
    ds = TrainClipDataset(
        numbered,
        frames=4,
        stride=1,
        short_side=40,
        crop_size=32,
        seed=1,
        frame_sampler=speed.sample_frames,
        sample_transform=speed.sample_transform,
    )
    for i in range(6):
        ds.set_epoch(i)
        sample = ds[0]
        planned, targets = speed.sample_frames(40, ds.generator_for(0))
        assert int(sample["speed"]) == int(targets["speed"])
        assert frame_numbers(unnormalize(sample["video"])) == planned[0]
    vcop = VCOP(tiny(), num_frames=4, min_interval=2, max_interval=2)
    ds = TrainClipDataset(
        numbered,
        frames=4,
        stride=1,
        short_side=40,
        crop_size=32,
        seed=1,
        flip_prob=0.0,
        frame_sampler=vcop.sample_frames,
        sample_transform=vcop.sample_transform,
    )
    sample = ds[0]
    (tuple_,), _ = vcop.sample_frames(40, ds.generator_for(0))
    clips = [tuple_[4 * k : 4 * k + 4] for k in range(3)]
    perm = vcop.permutations[int(sample["order"])].tolist()
    assert sample["video"].shape == (3, 3, 4, 32, 32)
    assert [frame_numbers(unnormalize(sample["video"][k])) for k in range(3)] == [clips[p] for p in perm]


def test_loader_rejects_bad_plans(numbered):
    def outside(n, g):
        return [[0, n]], {}

    ds = TrainClipDataset(numbered, frames=4, stride=1, short_side=40, crop_size=32, frame_sampler=outside)
    with pytest.raises(ValueError, match="returned frame 40 .* has frames 0..39"):
        ds[0]

    def clash(n, g):
        return [[0, 1]], {"label": torch.tensor(1)}

    ds = TrainClipDataset(numbered, frames=4, stride=1, short_side=40, crop_size=32, frame_sampler=clash)
    with pytest.raises(KeyError, match="clashes"):
        ds[0]


@pytest.mark.parametrize("name", ["vcop", "speed", "rot3d"])
def test_classification_pretexts_fit_a_fixed_batch(name):
    """The loss falls well below chance level when the model fits 4 fixed samples (the head and
    backbone get gradients; targets are what the loss reads)."""
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        if name == "vcop":
            m = VCOP(tiny(), num_frames=4, hidden_channels=32, dropout_ratio=0.0)
            batch = {"video": torch.randn(4, 3, 3, 4, 32, 32), "order": torch.tensor([0, 5, 2, 3])}
            chance = math.log(6)
        elif name == "speed":
            m = Speed(tiny(), num_frames=4, dropout_ratio=0.0, init_std=0.01)
            batch = {"video": torch.randn(4, 3, 4, 32, 32), "speed": torch.tensor([0, 6, 2, 3])}
            chance = math.log(7)
        else:
            m = Rot3D(tiny(), num_frames=4, dropout_ratio=0.0, init_std=0.01)
            batch = {"video": torch.randn(4, 3, 4, 32, 32), "rotation": torch.tensor([0, 1, 2, 3])}
            chance = math.log(4)
        opt = torch.optim.Adam([g for grp in m.parameter_groups() for g in grp["params"]], lr=3e-3)
        m.train()
        first, _ = m.training_loss(batch)
        assert float(first.detach()) == pytest.approx(chance, abs=0.3)
        for _ in range(60):
            loss, _ = m.training_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert float(loss.detach()) < 0.25 * chance


def test_pretexts_pretrain_in_the_downstream_layout_and_evaluation_gets_the_protocols():
    from benchmark.models.backbones import with_layout

    m = Speed(tiny(), num_frames=8).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    assert m.backbone(x).shape[-2:] == (2, 2)  # down_sampling=[F, T, T, T]: stride 16
    back = with_layout(m.backbone, "pretraining").eval()  # what evaluation under the cpu protocol sees
    assert back is not m.backbone and back(x).shape[-2:] == (4, 4)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.backbone.state_dict().values()))
    assert with_layout(m.backbone, "downstream") is m.backbone
    plain = tiny().eval()
    assert with_layout(plain, "pretraining") is plain and with_layout(plain, "downstream")(x).shape[-2:] == (2, 2)
