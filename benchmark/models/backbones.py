"""Video backbones in CtP's configuration: R3D-18, R(2+1)D-18 and a tiny R3D for CPU runs.

All three follow ``configs/ctp/r3d_18_ucf101/pretraining.py`` of microsoft/CtP:

- stem: (3, 7, 7) conv (R(2+1)D: (1, 7, 7) then (3, 1, 1)), stride (1, 2, 2), no max-pool;
- four stages of torchvision ``BasicBlock``s; stage strides (t, h, w) =
  (1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 1, 1), i.e. spatial stride 8 and temporal stride 8
  overall: (B, 3, 16, 112, 112) -> (B, C, 2, 14, 14);
- BatchNorm eps 1e-3 (CtP's ``nn.BatchNorm3d(..., eps=1e-3)``), Kaiming-normal
  (fan_out, relu) conv init, BN weight 1 / bias 0.

They are assembled from torchvision's video-ResNet building blocks (``BasicBlock``,
``BasicStem``, ``R2Plus1dStem``, ``Conv3DSimple``), so the state-dict keys are exactly
torchvision's ``r3d_18`` / ``r2plus1d_18`` keys (minus ``fc.*``). torchvision's models differ
only in the stride of ``layer4`` ((2, 2, 2) there, (2, 1, 1) here), which a 1x1x1 / 3x3x3
kernel does not see, so :func:`load_pretrained_backbone` loads their weights unchanged.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, R2Plus1dStem

from benchmark.registry import register_backbone

#: CtP builds every BatchNorm3d with eps=1e-3 (pyvrl/models/backbones/r3d.py).
CTP_BN_EPS = 1e-3
#: Per-stage strides (t, h, w) of CtP's R3D/R(2+1)D: down_sampling=[F, T, T, F],
#: down_sampling_temporal=[F, T, T, T].
CTP_STAGE_STRIDES: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 1, 1))
MIDPLANES_RULES = ("ctp", "torchvision")


class Conv2Plus1DStrided(nn.Sequential):
    """(1, 3, 3) spatial conv -> BN -> ReLU -> (3, 1, 1) temporal conv, with a (t, h, w) stride.

    Same layout (and state-dict keys) as ``torchvision...Conv2Plus1D``, which only takes one
    int stride for all axes; CtP's last stage needs (2, 1, 1).

    ``midplanes_rule="ctp"`` computes the hidden width from this conv's own in/out channels,
    as CtP (and the R(2+1)D paper, Tran et al. 2018) do. torchvision instead reuses the first
    conv's width for the block's second conv; ``"torchvision"`` keeps the width it is given,
    which makes torchvision ``r2plus1d_18`` weights loadable.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        midplanes: int,
        stride: int | Sequence[int] = 1,
        padding: int = 1,
        midplanes_rule: str = "ctp",
    ) -> None:
        st, sh, sw = _triple(stride)
        if midplanes_rule == "ctp":
            midplanes = (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)
        super().__init__(
            nn.Conv3d(in_planes, midplanes, (1, 3, 3), stride=(1, sh, sw), padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, (3, 1, 1), stride=(st, 1, 1), padding=(padding, 0, 0), bias=False),
        )


def _triple(stride: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(stride, int):
        return (stride, stride, stride)
    st, sh, sw = stride
    return (int(st), int(sh), int(sw))


class CtPResNet3D(nn.Module):
    """ResNet-style video backbone with CtP's strides; returns the last stage's feature map.

    Args:
        stem: module mapping (B, 3, T, H, W) -> (B, stem_channels, T, H/2, W/2).
        stem_channels: channels the stem outputs.
        stage_channels: output channels of the four stages.
        blocks_per_stage: number of ``BasicBlock``s per stage.
        conv_builder: torchvision-style ``conv_builder(in, out, mid, stride)``.

    ``forward``: (B, 3, T, H, W) -> (B, out_channels, ceil(T/8), ceil(H/8), ceil(W/8)).
    """

    spatial_stride = 8
    temporal_stride = 8

    def __init__(
        self,
        stem: nn.Module,
        stem_channels: int,
        stage_channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        conv_builder,
    ) -> None:
        super().__init__()
        if len(stage_channels) != 4 or len(blocks_per_stage) != 4:
            raise ValueError(
                f"expected 4 stage_channels and 4 blocks_per_stage, got {list(stage_channels)} and {list(blocks_per_stage)}"
            )
        self.stem = stem
        in_planes = stem_channels
        for i, (planes, blocks, stride) in enumerate(zip(stage_channels, blocks_per_stage, CTP_STAGE_STRIDES), 1):
            layer = []
            for b in range(blocks):
                block_stride = stride if b == 0 else (1, 1, 1)
                downsample = None
                if block_stride != (1, 1, 1) or in_planes != planes:
                    downsample = nn.Sequential(
                        nn.Conv3d(in_planes, planes, kernel_size=1, stride=block_stride, bias=False),
                        nn.BatchNorm3d(planes),
                    )
                layer.append(BasicBlock(in_planes, planes, conv_builder, block_stride, downsample))
                in_planes = planes
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.out_channels = int(stage_channels[-1])
        self._init_weights()

    def _init_weights(self) -> None:
        # CtP: mmcv kaiming_init (normal, fan_out, relu) for convs, constant 1/0 for BN.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                m.eps = CTP_BN_EPS
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, C, T', H', W') with T' = ceil(T/8), H' = ceil(H/8)."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects (B, 3, T, H, W) input, got shape {tuple(x.shape)}")
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


#: Backbone layouts for evaluation: ``pretraining`` keeps CtP's pretraining strides
#: (``down_sampling=[F, T, T, F]``: 112^2 -> 14x14); ``downstream`` is CtP's recognizer
#: configuration (configs/recognizers/_base_/model_r3d18.py: ``down_sampling=[F, T, T, T]``),
#: the last stage with spatial stride 2: 112^2 -> 7x7.
BACKBONE_LAYOUTS = ("pretraining", "downstream")


def with_layout(backbone: nn.Module, layout: str) -> nn.Module:
    """``backbone`` itself when it is in ``layout``, else a deep copy rebuilt in it (CtP's
    downstream layout, or back to the pretraining one for a backbone a method pretrained
    in the downstream layout, as VCOP/Speed/Rot3D/MoCo do).

    Strides carry no weights, so the copy has exactly the same state dict; only the first
    block of ``layer4`` changes its spatial stride from 1 to 2 (its first conv and its
    1x1x1 shortcut), as CtP's ``down_sampling=[False, True, True, True]`` does:
    (B, 3, 16, 112, 112) -> (B, C, 2, 7, 7).
    """
    if layout not in BACKBONE_LAYOUTS:
        raise ValueError(f"eval.backbone_layout={layout!r}: expected one of {BACKBONE_LAYOUTS}")
    want = 16 if layout == "downstream" else 8
    # a backbone already in the layout is returned as is; one in the other layout (a method
    # that pretrains in the downstream layout, e.g. VCOP) is rebuilt, so evaluation always
    # sees the protocol's layout
    if getattr(backbone, "spatial_stride", 8) == want and (
        layout == "pretraining" or isinstance(backbone, CtPResNet3D)
    ):
        return backbone
    if not isinstance(backbone, CtPResNet3D):
        raise ValueError(
            f"eval.backbone_layout=downstream needs a CtP-layout backbone (r3d18, r2plus1d18, tiny_r3d), "
            f"got {type(backbone).__name__}; use eval.backbone_layout=pretraining"
        )
    import copy

    model = copy.deepcopy(backbone)
    block = model.layer4[0]
    for conv in (block.conv1[0], block.downsample[0]):
        spatial = conv[0] if isinstance(conv, Conv2Plus1DStrided) else conv  # (2+1)D: the (1, 3, 3) conv
        spatial.stride = (spatial.stride[0], want // 8, want // 8)
    model.spatial_stride = want
    return model


def feature_frames(num_frames: int) -> int:
    """Temporal size T' of the feature map for a T-frame clip (stride-2 convs, pad 1: ceil)."""
    t = num_frames
    for st, _, _ in CTP_STAGE_STRIDES:
        t = (t + st - 1) // st
    return t


@register_backbone("r3d18")
class R3D18(CtPResNet3D):
    """R3D-18 as in CtP: 64-128-256-512 channels, 2 blocks per stage, 33.2M parameters."""

    def __init__(self) -> None:
        super().__init__(BasicStem(), 64, (64, 128, 256, 512), (2, 2, 2, 2), Conv3DSimple)


@register_backbone("r2plus1d18")
class R2Plus1D18(CtPResNet3D):
    """R(2+1)D-18 as in CtP (``midplanes_rule="ctp"``) or with torchvision's hidden widths."""

    def __init__(self, midplanes_rule: str = "ctp") -> None:
        if midplanes_rule not in MIDPLANES_RULES:
            raise ValueError(f"backbone.params.midplanes_rule={midplanes_rule!r}: expected one of {MIDPLANES_RULES}")

        def conv_builder(in_planes, out_planes, midplanes, stride=1, padding=1):
            return Conv2Plus1DStrided(in_planes, out_planes, midplanes, stride, padding, midplanes_rule)

        super().__init__(R2Plus1dStem(), 64, (64, 128, 256, 512), (2, 2, 2, 2), conv_builder)
        self.midplanes_rule = midplanes_rule


@register_backbone("tiny_r3d")
class TinyR3D(CtPResNet3D):
    """R3D with ``width * (1, 2, 4, 8)`` channels and one block per stage, for CPU runs."""

    def __init__(self, width: int = 16) -> None:
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"backbone.params.width={width!r}: expected a positive integer (e.g. 16)")
        stem = nn.Sequential(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        super().__init__(stem, width, tuple(width * m for m in (1, 2, 4, 8)), (1, 1, 1, 1), Conv3DSimple)


# microsoft/CtP (pyvrl/models/backbones/r3d.py) names -> torchvision names used here.
_CTP_KEY_RULES = (
    (r"^stem\.conv\.", "stem.0."),
    (r"^stem\.bn\.", "stem.1."),
    (r"^stem\.conv_s\.", "stem.0."),
    (r"^stem\.bn_s\.", "stem.1."),
    (r"^stem\.conv_t\.", "stem.3."),
    (r"^stem\.bn_t\.", "stem.4."),
    (r"\.(conv[12])\.conv\.", r".\1.0."),
    (r"\.(conv[12])\.conv_s\.", r".\1.0.0."),
    (r"\.(conv[12])\.bn_s\.", r".\1.0.1."),
    (r"\.(conv[12])\.conv_t\.", r".\1.0.3."),
    (r"\.bn([12])\.", r".conv\1.1."),
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample_bn\.", ".downsample.1."),
)


def ctp_keys_to_torchvision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a microsoft/CtP (or FedVSSL, which uses CtP's code) R3D / R(2+1)D state dict.

    Keeps only ``backbone.*`` entries when present (a whole CtP model: backbone + head),
    strips ``module.`` / ``backbone.`` prefixes and maps CtP's module names, e.g.
    ``layer2.0.conv1.conv_s.weight`` -> ``layer2.0.conv1.0.0.weight``,
    ``layer2.0.bn1.running_mean`` -> ``layer2.0.conv1.1.running_mean``,
    ``layer2.0.downsample_bn.weight`` -> ``layer2.0.downsample.1.weight``.
    """
    items = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
    if any(k.startswith("backbone.") for k in items):
        items = {k[len("backbone.") :]: v for k, v in items.items() if k.startswith("backbone.")}
    out = {}
    for key, value in items.items():
        for pattern, repl in _CTP_KEY_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _looks_like_ctp(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(re.search(r"(^|\.)(stem\.conv|stem\.conv_s|bn1|downsample_bn|conv1\.conv)(\.|_)", k) for k in state_dict)


def load_pretrained_backbone(model: CtPResNet3D, state_dict: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Load a torchvision-style ``r3d_18`` / ``r2plus1d_18`` state dict, or a microsoft/CtP /
    FedVSSL one (renamed with :func:`ctp_keys_to_torchvision`), into ``model``.

    torchvision key names are identical; classifier keys (``fc.*``) are dropped and returned. A key
    missing from ``state_dict`` or a tensor of another shape raises ``ValueError`` naming it
    (torchvision's ``r2plus1d_18`` only fits ``R2Plus1D18(midplanes_rule="torchvision")``).
    ``strict=False`` skips missing keys instead (unknown keys are always an error).

    Returns the dropped (ignored) keys.
    """
    if _looks_like_ctp(state_dict):
        state_dict = ctp_keys_to_torchvision(state_dict)
    own = model.state_dict()
    ignored = sorted(k for k in state_dict if k.startswith("fc."))
    incoming = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    unknown = sorted(set(incoming) - set(own))
    if unknown:
        raise ValueError(f"state dict has keys the {type(model).__name__} backbone does not have: {unknown[:5]}")
    missing = sorted(set(own) - set(incoming))
    if missing and strict:
        raise ValueError(
            f"state dict lacks {len(missing)} backbone keys, e.g. {missing[:5]}; pass strict=False to keep them"
        )
    bad = [
        f"{k}: got {tuple(v.shape)}, expected {tuple(own[k].shape)}"
        for k, v in incoming.items()
        if v.shape != own[k].shape
    ]
    if bad:
        hint = ""
        if isinstance(model, R2Plus1D18) and model.midplanes_rule == "ctp":
            hint = " (torchvision r2plus1d_18 weights need backbone.params.midplanes_rule=torchvision)"
        raise ValueError(f"shape mismatch for {len(bad)} tensors{hint}: {bad[:3]}")
    model.load_state_dict({**own, **incoming})
    return ignored
