"""Backbones in CtP's configuration: shapes/strides, registry + configs, torchvision weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from benchmark import CONF_DIR
from benchmark.models.backbones import (
    R3D18,
    R2Plus1D18,
    TinyR3D,
    ctp_keys_to_torchvision,
    feature_frames,
    load_pretrained_backbone,
)
from benchmark.registry import BACKBONES, build_backbone


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Single-sample convolutions are slower with threads on a loaded 2-core machine.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def r3d18():
    return R3D18()


@pytest.fixture(scope="module")
def r2plus1d18():
    return R2Plus1D18()


def test_tiny_r3d_shapes_and_strides():
    model = TinyR3D(width=4).eval()
    assert model.out_channels == 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 112, 112)).shape == (2, 32, 2, 14, 14)
        # ceil division at every stride-2 stage: 9 -> 5 -> 3 -> 2 frames, 40 -> 20 -> 10 -> 5 px.
        assert model(torch.randn(1, 3, 9, 48, 40)).shape == (1, 32, 2, 6, 5)
    assert feature_frames(16) == 2 and feature_frames(9) == 2 and feature_frames(8) == 1
    strides = [getattr(model, f"layer{i}")[0].conv1[0].stride for i in range(1, 5)]
    assert strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 1, 1)]
    assert model.stem[0].stride == (1, 2, 2) and model.stem[0].kernel_size == (3, 7, 7)
    assert not any(isinstance(m, torch.nn.MaxPool3d) for m in model.modules())
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_r3d18_full_clip_shape(r3d18):
    model = r3d18.eval()
    assert model.out_channels == 512
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 112, 112)).shape == (1, 512, 2, 14, 14)


def test_r2plus1d18_shape_and_ctp_hidden_widths(r2plus1d18):
    model = r2plus1d18.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 512, 1, 4, 4)
    # CtP/paper rule: mid = floor(27 in out / (9 in + 3 out)) per conv.
    # layer2.0.conv1: 64->128: 221184 / 960 -> 230; layer2.0.conv2: 128->128: 442368 / 1536 = 288.
    assert model.layer2[0].conv1[0][0].out_channels == 230
    assert model.layer2[0].conv2[0][0].out_channels == 288
    assert model.layer4[0].conv1[0][0].stride == (1, 1, 1)  # spatial conv: no spatial stride
    assert model.layer4[0].conv1[0][3].stride == (2, 1, 1)  # temporal conv: temporal stride 2
    assert R2Plus1D18(midplanes_rule="torchvision").layer2[0].conv2[0][0].out_channels == 230


def test_registry_and_configs_build_each_backbone():
    assert {"r3d18", "r2plus1d18", "tiny_r3d"} <= set(BACKBONES.names())
    expected = {"r3d18": R3D18, "r2plus1d18": R2Plus1D18, "tiny_r3d": TinyR3D}
    for name, cls in expected.items():
        cfg = OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")
        assert cfg.name == name
        model = build_backbone(cfg.name, **OmegaConf.to_container(cfg.params))
        assert type(model) is cls
    with pytest.raises(ValueError, match="width"):
        build_backbone("tiny_r3d", width=0)
    with pytest.raises(ValueError, match="midplanes_rule"):
        build_backbone("r2plus1d18", midplanes_rule="nope")


def test_torchvision_r3d18_weights_load_and_match_up_to_layer3(r3d18):
    tv = torchvision.models.video.r3d_18(weights=None)
    ours = r3d18
    ignored = load_pretrained_backbone(ours, tv.state_dict())
    assert ignored == ["fc.bias", "fc.weight"]
    tv_state = tv.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, tv_state[key]), key
    # Same parameter count as torchvision minus its 400-way classifier.
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters()) - (512 * 400 + 400)
    # Only layer4's stride differs: with equal BN eps the first three stages compute the same.
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.eps = 1e-3
    tv.eval(), ours.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        a = ours.layer3(ours.layer2(ours.layer1(ours.stem(x))))
        b = tv.layer3(tv.layer2(tv.layer1(tv.stem(x))))
        assert torch.allclose(a, b, atol=1e-5)
        assert ours(x).shape[-2:] == (4, 4) and tv.layer4(b).shape[-2:] == (2, 2)


def test_torchvision_r2plus1d18_weights_need_torchvision_widths(r2plus1d18):
    tv_state = torchvision.models.video.r2plus1d_18(weights=None).state_dict()
    model = R2Plus1D18(midplanes_rule="torchvision")
    load_pretrained_backbone(model, tv_state)
    assert torch.equal(model.state_dict()["layer3.1.conv2.0.3.weight"], tv_state["layer3.1.conv2.0.3.weight"])
    with pytest.raises(ValueError, match="midplanes_rule=torchvision"):
        load_pretrained_backbone(r2plus1d18, tv_state)
    with pytest.raises(ValueError, match="does not have"):
        load_pretrained_backbone(TinyR3D(width=4), {"nonsense.weight": torch.zeros(1)})


def test_ctp_checkpoint_keys_are_renamed_and_loaded():
    ours = TinyR3D(width=4)
    renamed = ctp_keys_to_torchvision(
        {
            "backbone.stem.conv.weight": torch.zeros(1),
            "backbone.stem.bn.running_mean": torch.zeros(1),
            "backbone.layer2.0.conv1.conv_s.weight": torch.zeros(1),
            "backbone.layer2.0.conv2.bn_s.bias": torch.zeros(1),
            "backbone.layer2.0.conv2.conv_t.weight": torch.zeros(1),
            "backbone.layer2.0.bn1.weight": torch.zeros(1),
            "backbone.layer2.0.downsample.conv.weight": torch.zeros(1),
            "backbone.layer2.0.downsample_bn.num_batches_tracked": torch.zeros(1),
            "head.fc1.weight": torch.zeros(1),
        }
    )
    assert sorted(renamed) == sorted(
        [
            "stem.0.weight",
            "stem.1.running_mean",
            "layer2.0.conv1.0.0.weight",
            "layer2.0.conv2.0.1.bias",
            "layer2.0.conv2.0.3.weight",
            "layer2.0.conv1.1.weight",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.num_batches_tracked",
        ]
    )

    # A whole CtP R3D model (backbone + head) in CtP's naming, as microsoft/CtP and FedVSSL save it.
    def to_ctp(key: str) -> str:
        key = key.replace("stem.0.", "stem.conv.").replace("stem.1.", "stem.bn.")
        for i in (1, 2):
            key = key.replace(f".conv{i}.0.", f".conv{i}.conv.").replace(f".conv{i}.1.", f".bn{i}.")
        return "backbone." + key.replace(".downsample.0.", ".downsample.conv.").replace(
            ".downsample.1.", ".downsample_bn."
        )

    source = TinyR3D(width=4)
    checkpoint = {to_ctp(k): v for k, v in source.state_dict().items()}
    assert "backbone.layer1.0.bn2.running_var" in checkpoint and "backbone.layer2.0.downsample_bn.weight" in checkpoint
    checkpoint["head.fc1.weight"] = torch.zeros(3)
    load_pretrained_backbone(ours, checkpoint)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in ours.state_dict().items())
