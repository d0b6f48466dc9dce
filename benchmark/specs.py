"""Typed, frozen inputs of the layers below the commands, built once from the run config.

A command composes the Hydra config, validates it (:func:`benchmark.config_check.check_run_config`)
and turns it into these specs with :meth:`RunSpec.from_config`; every function below takes
only the spec it needs (``run_local_training(LocalTrainingSpec, ...)``, the strategy's
``FederationSpec``, ``build_model(ModelSpec, seed)``). The specs are plain values: an
engine that trains differently (the centralized one) derives its own with
``dataclasses.replace`` instead of rewriting a config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.config_check import check_run_config
from benchmark.federation.guard import GuardSpec
from benchmark.rundir import Retention


def _plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, scalars)."""
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _int_or_tuple(value: Any) -> int | tuple[int, ...]:
    """A clip setting that is one int or a list to draw from per clip (CtP's strides / scales)."""
    value = _plain(value)
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return int(value)


def _image_dataset(dataset: Any) -> Mapping[str, Any] | None:
    """The dataset config of an image-track run (``dataset.modality: image``), else None."""
    dataset = _plain(dataset) or {}
    return dict(dataset) if str(dataset.get("modality") or "video") == "image" else None


@dataclass(frozen=True)
class ModelSpec:
    """Backbone + SSL method (``backbone.*``, ``method.*``)."""

    backbone: str
    method: str
    backbone_params: Mapping[str, Any] = field(default_factory=dict)
    method_params: Mapping[str, Any] = field(default_factory=dict)
    exchange: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping) -> ModelSpec:
        return cls(
            backbone=str(cfg["backbone"]["name"]),
            method=str(cfg["method"]["name"]),
            backbone_params=dict(_plain(cfg["backbone"].get("params")) or {}),
            method_params=dict(_plain(cfg["method"].get("params")) or {}),
            exchange=cfg["method"].get("exchange"),
        )


@dataclass(frozen=True)
class TrainClipSpec:
    """How training clips are sampled and decoded (``clip.*``).

    stride / short_side: one value, or a tuple to draw from per clip.
    """

    frames: int
    stride: int | tuple[int, ...]
    short_side: int | tuple[int, ...]
    size: int
    backend: str = "decord"
    temporal_jitter: bool = False
    normalization: str = "kinetics"

    @classmethod
    def from_config(cls, clip: Mapping) -> TrainClipSpec:
        return cls(
            frames=int(clip["frames"]),
            stride=_int_or_tuple(clip["stride"]),
            short_side=_int_or_tuple(clip["short_side"]),
            size=int(clip["size"]),
            backend=str(clip.get("backend", "decord")),
            temporal_jitter=bool(clip.get("temporal_jitter", False)),
            normalization=str(clip.get("normalization") or "kinetics"),
        )


@dataclass(frozen=True)
class OptimizerSpec:
    """``client.optimizer.*``; the schedule runs over ``rounds`` rounds (``federation.rounds``)."""

    name: str
    lr: float
    rounds: int
    schedule: str = "constant"
    momentum: float = 0.0
    weight_decay: float = 0.0

    @classmethod
    def from_config(cls, opt: Mapping, rounds: int) -> OptimizerSpec:
        return cls(
            name=str(opt["name"]).lower(),
            lr=float(opt["lr"]),
            rounds=int(rounds),
            schedule=str(opt.get("schedule", "constant")),
            momentum=float(opt.get("momentum", 0.0)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
        )


@dataclass(frozen=True)
class LocalTrainingSpec:
    """Everything one client's round of local training needs (:func:`run_local_training`).

    local_steps: steps per round (None: ``local_epochs`` epochs). num_clients: the size of
    the client context a method sees (``SSLMethod.set_client_context``).
    failure_prob: ``fault.client_failure_prob`` (seeded injected failures).
    precision: ``client.precision`` (fp32 | bf16 | fp16). last_batch: ``client.last_batch``
    (drop | keep | pad | ssd: :func:`benchmark.federation.training.client_last_batch`).
    loss_log_interval: ``client.loss_log_interval``: None, the client reports the mean loss of
    its steps; N, the loss of mmcv's text log every N steps, which FedVSSL's client reads back
    (:func:`benchmark.federation.training.logged_loss`). client_weight:
    ``federation.client_weight`` (examples | batches: what ``num_examples`` reports). image_dataset: the dataset config
    when the run is on the image track (``dataset.modality: image``), else None.
    """

    seed: int
    model: ModelSpec
    clip: TrainClipSpec
    optimizer: OptimizerSpec
    batch_size: int
    num_workers: int
    num_clients: int
    local_epochs: int
    local_steps: int | None = None
    num_threads: int = 1
    device: str = "auto"
    grad_clip_norm: float | None = None
    failure_prob: float = 0.0
    precision: str = "fp32"
    last_batch: str = "drop"
    loss_log_interval: int | None = None
    client_weight: str = "examples"
    image_dataset: Mapping[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: Mapping) -> LocalTrainingSpec:
        client, fed = cfg["client"], cfg["federation"]
        local_steps = fed.get("local_steps")
        clip_norm = client.get("grad_clip_norm")
        return cls(
            seed=int(cfg["seed"]),
            model=ModelSpec.from_config(cfg),
            clip=TrainClipSpec.from_config(cfg["clip"]),
            optimizer=OptimizerSpec.from_config(client["optimizer"], int(fed["rounds"])),
            batch_size=int(client["batch_size"]),
            num_workers=int(client["num_workers"]),
            num_clients=int(fed["num_clients"]),
            local_epochs=int(fed["local_epochs"]),
            local_steps=int(local_steps) if local_steps else None,
            num_threads=max(1, int(client.get("num_threads", 1) or 1)),
            device=str(client.get("device", "auto")),
            grad_clip_norm=float(clip_norm) if clip_norm else None,
            failure_prob=float((cfg.get("fault") or {}).get("client_failure_prob", 0.0) or 0.0),
            precision=str(client.get("precision", "fp32") or "fp32"),
            last_batch=str(client.get("last_batch", "drop") or "drop"),  # checked by check_run_config
            loss_log_interval=int(client["loss_log_interval"]) if client.get("loss_log_interval") else None,
            client_weight=str(fed.get("client_weight", "examples") or "examples"),
            image_dataset=_image_dataset(cfg.get("dataset")),
        )


@dataclass(frozen=True)
class FederationSpec:
    """The server's side of a run: who trains when and how updates are combined.

    clients_per_round: an int count or a float fraction of ``num_clients``.
    """

    seed: int
    rounds: int
    num_clients: int
    clients_per_round: int | float
    min_clients: int
    aggregator: str
    optimizer: OptimizerSpec
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    guard: GuardSpec = field(default_factory=GuardSpec)
    round_timeout_s: float = 3600.0

    @classmethod
    def from_config(cls, cfg: Mapping) -> FederationSpec:
        fed = cfg["federation"]
        return cls(
            seed=int(cfg["seed"]),
            rounds=int(fed["rounds"]),
            num_clients=int(fed["num_clients"]),
            clients_per_round=fed["clients_per_round"],
            min_clients=int(fed["min_clients"]),
            aggregator=str(cfg["aggregator"]["name"]),
            optimizer=OptimizerSpec.from_config(cfg["client"]["optimizer"], int(fed["rounds"])),
            aggregator_params=dict(_plain(cfg["aggregator"].get("params")) or {}),
            guard=GuardSpec.from_config(_plain(fed.get("guard"))),
            round_timeout_s=float(fed.get("round_timeout_s", 3600)),
        )


@dataclass(frozen=True)
class EngineSpec:
    """How the apps are started (``engine.*``): Flower simulation, deployment, or centralized.

    superlink: an existing SuperLink's address (deployment; None: start one locally).
    client_num_cpus / client_num_gpus: Ray resources of one virtual client (simulation).
    """

    name: str
    echo_log: bool = True
    superlink: str | None = None
    insecure: bool = False
    trusted_network: bool = False
    root_certificates: str | None = None
    superlink_port: int | None = None
    startup_timeout_s: float = 60.0
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    client_num_cpus: int = 1
    client_num_gpus: float = 0.0

    @classmethod
    def from_config(cls, engine: Mapping) -> EngineSpec:
        resources = engine.get("client_resources") or {}
        return cls(
            name=str(engine["name"]),
            echo_log=bool(engine.get("echo_log", True)),
            superlink=str(engine["superlink"]) if engine.get("superlink") else None,
            insecure=bool(engine.get("insecure", False)),
            trusted_network=bool(engine.get("trusted_network", False)),
            root_certificates=str(engine["root_certificates"]) if engine.get("root_certificates") else None,
            superlink_port=int(engine["superlink_port"]) if engine.get("superlink_port") else None,
            startup_timeout_s=float(engine.get("startup_timeout_s", 60)),
            ray_address=str(engine["ray_address"]) if engine.get("ray_address") else None,
            ray_num_cpus=int(engine["ray_num_cpus"]) if engine.get("ray_num_cpus") else None,
            client_num_cpus=int(resources.get("num_cpus", 1)),
            client_num_gpus=float(resources.get("num_gpus", 0.0)),
        )


@dataclass(frozen=True)
class RunSpec:
    """The specs of one run, built once from its resolved config."""

    training: LocalTrainingSpec
    federation: FederationSpec
    engine: EngineSpec
    retention: Retention = field(default_factory=Retention)

    @property
    def model(self) -> ModelSpec:
        return self.training.model

    @classmethod
    def from_config(cls, cfg: Mapping, *, check: bool = True) -> RunSpec:
        """Validate the resolved run config (every problem at once, before any work) and build the specs.

        check=False: the config was checked already (a process the runner started reads it back).
        """
        plain = _plain(cfg)
        if check:
            check_run_config(plain)
        return cls(
            training=LocalTrainingSpec.from_config(plain),
            federation=FederationSpec.from_config(plain),
            engine=EngineSpec.from_config(plain["engine"]),
            retention=Retention.from_config(plain),
        )
