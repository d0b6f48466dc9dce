"""Validation of a composed configuration before any expensive work (data, Flower, Ray).

One rule per key: :data:`RUN_RULES` (``fedvid run``) and :data:`EVAL_RULES` (the ``eval``
block, also checked by ``fedvid evaluate``). :func:`config_problems` applies them and the
cross-key rules and returns *every* problem at once, each naming the key, the value and
what is allowed. Keys no rule names (method/aggregator ``params``, new groups) pass: the
component that reads them checks them. Adding a key is one line in a rule table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmark.data.clips import EVAL_SAMPLINGS
from benchmark.data.transforms import NORMALIZATIONS
from benchmark.models.backbones import BACKBONE_LAYOUTS

#: ``client.last_batch``: what a client's local epoch does with its ragged last batch
#: (:func:`benchmark.federation.training.client_last_batch`)
LAST_BATCH_RULES = ("drop", "keep", "pad", "ssd")

#: A check returns None when the value is fine, else what is allowed ("an integer >= 1").
Check = Callable[[Any], "str | None"]
ABSENT = object()


class ConfigError(ValueError):
    """The configuration has invalid values; the message lists every one."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"invalid configuration ({n} problem{'s' if n > 1 else ''}):\n  " + "\n  ".join(self.problems))


# ------------------------------------------------------------------ checks


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    want = "an integer" + (
        f" in {lo}..{hi}" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
    )
    return lambda v: None if _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi) else want


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    if lo is not None and hi is not None:
        want = f"a number in {'(' if lo_open else '['}{lo}, {hi}]"
    elif lo is not None:
        want = f"a number {'>' if lo_open else '>='} {lo}"
    else:
        want = "a finite number"

    def check(v: Any) -> str | None:
        if not _is_number(v):
            return want
        if lo is not None and (v <= lo if lo_open else v < lo):
            return want
        return want if hi is not None and v > hi else None

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def one_of(*names: str) -> Check:
    return lambda v: None if v in names else "one of " + ", ".join(names)


def optional(check: Check) -> Check:
    def inner(v: Any) -> str | None:
        why = None if v is None else check(v)
        return None if why is None else f"null or {why}"

    return inner


def list_of(check: Check, *, non_empty: bool = True) -> Check:
    def inner(v: Any) -> str | None:
        if not isinstance(v, (list, tuple)) or (non_empty and not v) or any(check(x) for x in v):
            return ("a non-empty " if non_empty else "a ") + f"list, each item {check(ABSENT)}"
        return None

    return inner


def one_or_list_of(check: Check) -> Check:
    """A value, or a non-empty list to draw one from per clip (CtP's stride and short side)."""
    as_list = list_of(check)

    def inner(v: Any) -> str | None:
        if isinstance(v, (list, tuple)):
            return None if as_list(v) is None else f"{check(ABSENT)}, or {as_list(v)}"
        return check(v)

    return inner


def _names(names) -> Check:
    return one_of(*sorted(names))


def device(v: Any) -> str | None:
    ok = v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "auto, cpu, cuda or cuda:N"


def clients_per_round(v: Any) -> str | None:
    # the upper bound of a count is checked against num_clients by a cross-key rule
    if _is_int(v) and v >= 1 or isinstance(v, float) and 0.0 < v <= 1.0:
        return None
    return "an integer count >= 1 or a fraction in (0, 1]"


@dataclass(frozen=True)
class Rule:
    key: str
    check: Check
    required: bool = True


# ------------------------------------------------------------------ rule tables

RUN_RULES: tuple[Rule, ...] = (
    Rule("seed", integer()),
    Rule("resume", boolean),
    Rule("evaluate", boolean),
    Rule("allow_missing_videos", boolean),
    Rule("synthetic_size", one_of("tiny", "default")),
    Rule("split_manifest", optional(text)),
    Rule("dataset.id", text),
    Rule("dataset.root", text),
    Rule("partition.name", text),
    Rule("partition.num_clients", integer(1)),
    Rule("method.name", text),
    Rule("aggregator.name", text),
    Rule("backbone.name", text),
    Rule("engine.name", one_of("simulation", "deployment", "centralized")),
    Rule("federation.num_clients", integer(1)),
    Rule("checkpoint.keep_last", integer(1), required=False),
    Rule("client.precision", one_of("fp32", "bf16", "fp16"), required=False),
    Rule("client.last_batch", one_of(*LAST_BATCH_RULES), required=False),
    Rule("client.loss_log_interval", optional(integer(1)), required=False),
    Rule("federation.client_weight", one_of("examples", "batches"), required=False),
    Rule("checkpoint.keep_every", integer(0), required=False),
    Rule("federation.clients_per_round", clients_per_round),
    Rule("federation.rounds", integer(0)),  # >= 1 unless engine=centralized (cross-key rule)
    Rule("federation.min_clients", integer(1)),
    Rule("federation.local_epochs", integer(1)),
    Rule("federation.local_steps", optional(integer(1))),
    Rule("federation.round_timeout_s", number(0, lo_open=True)),
    Rule("federation.guard.update_norm_factor", optional(number(1, lo_open=True)), required=False),
    Rule("federation.guard.max_weight_norm_ratio", optional(number(1, lo_open=True)), required=False),
    Rule("federation.guard.max_loss", optional(number(0, lo_open=True)), required=False),
    Rule("client.batch_size", integer(1)),
    Rule("client.num_workers", integer(0)),
    Rule("client.device", device),
    Rule("client.num_threads", integer(1)),
    Rule("client.optimizer.name", one_of("sgd", "adam", "adamw")),
    Rule("client.optimizer.lr", number(0, lo_open=True)),
    Rule("client.optimizer.momentum", number(0, 1), required=False),
    Rule("client.optimizer.weight_decay", number(0), required=False),
    Rule("client.optimizer.schedule", one_of("constant", "cosine")),
    Rule("client.grad_clip_norm", optional(number(0, lo_open=True)), required=False),
    Rule("clip.frames", integer(1)),
    Rule("clip.stride", one_or_list_of(integer(1))),
    Rule("clip.size", integer(1)),
    Rule("clip.short_side", one_or_list_of(integer(1))),
    Rule("clip.temporal_jitter", boolean, required=False),
    Rule("clip.normalization", _names(NORMALIZATIONS), required=False),
    Rule("clip.backend", one_of("decord", "pyav", "auto")),
    Rule("fault.client_failure_prob", number(0, 1), required=False),
)

EVAL_RULES: tuple[Rule, ...] = (
    Rule("eval.datasets", list_of(text)),
    Rule("eval.device", device),
    Rule("eval.num_threads", optional(integer(1)), required=False),
    Rule("eval.batch_size", integer(1)),
    Rule("eval.num_workers", integer(0)),
    Rule("eval.pooling", one_of("avg", "vcop")),
    Rule("eval.backbone_layout", _names(BACKBONE_LAYOUTS), required=False),
    Rule("eval.clip.num_clips", integer(1)),
    Rule("eval.clip.frames", optional(integer(1))),
    Rule("eval.clip.stride", optional(integer(1))),
    Rule("eval.clip.short_side", optional(integer(1))),
    Rule("eval.clip.crop_size", optional(integer(1))),
    Rule("eval.clip.backend", optional(one_of("decord", "pyav", "auto")), required=False),
    Rule("eval.clip.sampling", _names(EVAL_SAMPLINGS), required=False),
    Rule("eval.clip.normalization", optional(_names(NORMALIZATIONS)), required=False),
    Rule("eval.clip_cache_max_mib", number(0), required=False),
    Rule("eval.retrieval.ks", list_of(integer(1))),
    Rule("eval.linear_probe.enabled", boolean),
    Rule("eval.linear_probe.weight_decays", list_of(number(0))),
    Rule("eval.linear_probe.val_fraction", number(0, 1, lo_open=True)),
    Rule("eval.linear_probe.seed", integer()),
    Rule("eval.linear_probe.max_iter", integer(1)),
    Rule("eval.finetune.enabled", boolean),
    Rule("eval.finetune.epochs", integer(1)),
    Rule("eval.finetune.batch_size", integer(1)),
    Rule("eval.finetune.num_workers", integer(0)),
    Rule("eval.finetune.lr", number(0, lo_open=True)),
    Rule("eval.finetune.momentum", number(0, 1)),
    Rule("eval.finetune.weight_decay", number(0)),
    Rule("eval.finetune.milestones", list_of(integer(1), non_empty=False)),
    Rule("eval.finetune.gamma", number(0, 1, lo_open=True)),
    Rule("eval.finetune.dropout", number(0, 1)),
    Rule("eval.finetune.seed", integer()),
    Rule("eval.robustness.enabled", boolean),
    Rule("eval.robustness.direction", one_of("gaussian", "filter_normalized")),
    Rule("eval.robustness.ks", list_of(number(0))),
    Rule("eval.robustness.seeds", list_of(integer())),
    Rule("eval.random_init_baseline", boolean),
    Rule("eval.random_init_seed", integer()),
    Rule("eval.plots", boolean),
)


def select(cfg: Mapping, key: str) -> Any:
    """The value at a dotted key of a plain nested mapping, or ``ABSENT``."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ABSENT
        node = node[part]
    return node


def rule_problems(cfg: Mapping, rules: Sequence[Rule]) -> list[str]:
    problems = []
    for rule in rules:
        value = select(cfg, rule.key)
        if value is ABSENT:
            if rule.required:
                problems.append(f"{rule.key}: missing; expected {rule.check(ABSENT)}")
            continue
        why = rule.check(value)
        if why is not None:
            problems.append(f"{rule.key}={value!r}: expected {why}")
    return problems


def _cross_key_problems(cfg: Mapping) -> list[str]:
    """Rules between keys (only when each key alone is valid)."""
    out = []
    fed = cfg.get("federation") or {}
    n, per_round = fed.get("num_clients"), fed.get("clients_per_round")
    if _is_int(n) and n >= 1 and _is_int(per_round) and per_round > n:
        out.append(f"federation.clients_per_round={per_round}: expected 1..{n} (federation.num_clients={n})")
    rounds = fed.get("rounds")
    engine = (cfg.get("engine") or {}).get("name")
    if _is_int(rounds) and rounds < 1 and engine != "centralized":
        out.append(f"federation.rounds={rounds}: expected an integer >= 1 (0 rounds only with engine=centralized)")
    min_clients = fed.get("min_clients")
    if _is_int(n) and n >= 1 and clients_per_round(per_round) is None and not (_is_int(per_round) and per_round > n):
        from benchmark.federation.training import clients_per_round as sampled_per_round

        sampled = sampled_per_round(per_round, n)
        if _is_int(min_clients) and min_clients > sampled:
            out.append(
                f"federation.min_clients={min_clients}: expected 1..{sampled} (the clients sampled per round); "
                "every round would fail"
            )
    return out


def _registry_problems(cfg: Mapping) -> list[str]:
    from benchmark.registry import AGGREGATORS, BACKBONES, METHODS

    out = []
    for key, registry in (("method.name", METHODS), ("aggregator.name", AGGREGATORS), ("backbone.name", BACKBONES)):
        name = select(cfg, key)
        if isinstance(name, str) and name not in registry:
            out.append(
                f"{key}={name!r}: not registered; expected one of {', '.join(registry.names())} "
                "(or register it, docs/adding-a-method.md)"
            )
    return out + _aggregator_param_problems(cfg) + _partition_problems(cfg)


def _aggregator_param_problems(cfg: Mapping) -> list[str]:
    """``aggregator.params`` are the registered aggregator's constructor arguments, and it
    accepts their values: the server builds it only after Flower has started."""
    import inspect

    from benchmark.registry import AGGREGATORS

    name, params = select(cfg, "aggregator.name"), select(cfg, "aggregator.params")
    if not isinstance(name, str) or name not in AGGREGATORS:
        return []
    params = dict(params) if isinstance(params, Mapping) else {}
    cls = AGGREGATORS.get(name)
    signature = inspect.signature(cls).parameters.values()
    accepted = [p.name for p in signature if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature)  # an external aggregator's **kwargs
    unknown = [] if takes_any else sorted(set(params) - set(accepted))
    if unknown:
        return [
            f"aggregator.params: {', '.join(unknown)} not taken by aggregator={name} (it takes "
            f"{', '.join(accepted) or 'no parameters'}); remove them, or choose the aggregator they belong to"
        ]
    try:
        cls(**params)
    except (TypeError, ValueError) as e:
        return [f"aggregator={name}: {e}"]
    return []


def _partition_problems(cfg: Mapping) -> list[str]:
    """``partition.name`` registered and its declared parameters valid (``Partitioner.params``)."""
    from benchmark.registry import PARTITIONERS
    from benchmark.splits.partition import PartitionError

    partition = cfg.get("partition")
    name = partition.get("name") if isinstance(partition, Mapping) else None
    if not isinstance(name, str):
        return []
    if name not in PARTITIONERS:
        return [f"partition.name={name!r}: not registered; expected one of {', '.join(PARTITIONERS.names())}"]
    try:
        PARTITIONERS.get(name)().check_params(partition)
    except PartitionError as e:
        return [str(e)]
    return []


def _eval_dataset_problems(cfg: Mapping) -> list[str]:
    from benchmark import CONF_DIR

    names = select(cfg, "eval.datasets")
    if not isinstance(names, list):
        return []
    known = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    problems = [
        f"eval.datasets: {n!r} is not a dataset config; expected names from conf/dataset/ ({', '.join(known)})"
        for n in names
        if isinstance(n, str) and n not in known
    ]
    overrides = select(cfg, "eval.dataset_overrides")
    if isinstance(overrides, Mapping):
        problems += [
            f"eval.dataset_overrides.{n}: {n!r} is not in eval.datasets {names}; override a dataset that is evaluated"
            for n in overrides
            if n not in names
        ]
    return problems


def _connection_problems(cfg: Mapping) -> list[str]:
    """Plaintext to a non-loopback SuperLink without engine.trusted_network, or a missing CA file."""
    from benchmark.federation.engine import FederationError, check_connection_security
    from benchmark.specs import EngineSpec

    engine = cfg.get("engine")
    if not isinstance(engine, Mapping):
        return []
    try:
        check_connection_security(EngineSpec.from_config(engine))
    except FederationError as e:
        return [str(e)]
    return []


#: The image track's evaluation (``eval.image``, benchmark/evaluation/image_eval.py); the video
#: rules above do not apply to an image dataset (``dataset.modality: image``).
IMAGE_EVAL_RULES: tuple[Rule, ...] = (
    Rule("eval.image.linear.epochs", integer(1)),
    Rule("eval.image.linear.batch_size", integer(1)),
    Rule("eval.image.linear.lr", number(0, None, lo_open=True)),
    Rule("eval.image.linear.seed", integer(0)),
    Rule("eval.image.semi.ratios", list_of(number(0, 1, lo_open=True))),
    Rule("eval.image.semi.epochs", integer(1)),
    Rule("eval.image.semi.batch_size", integer(2)),
    Rule("eval.image.semi.encoder_lr", number(0)),
    Rule("eval.image.semi.head_lr", number(0)),
    Rule("eval.image.semi.momentum", number(0, 1)),
    Rule("eval.image.semi.test_every", integer(1)),
    Rule("eval.image.semi.seed", integer(0)),
)


def _is_image(cfg: Mapping) -> bool:
    dataset = cfg.get("dataset")
    return isinstance(dataset, Mapping) and dataset.get("modality") == "image"


def run_config_problems(cfg: Mapping) -> list[str]:
    """Every problem of a resolved ``fedvid run`` config (a plain dict); [] when valid."""
    problems = (
        rule_problems(cfg, RUN_RULES) + _cross_key_problems(cfg) + _registry_problems(cfg) + _connection_problems(cfg)
    )
    if cfg.get("evaluate", True):
        problems += eval_config_problems(cfg)
    return problems


def eval_config_problems(cfg: Mapping) -> list[str]:
    """Every problem of the ``eval`` block (shared by ``fedvid run`` and ``fedvid evaluate``)."""
    if _is_image(cfg):
        return rule_problems(cfg, IMAGE_EVAL_RULES)
    return rule_problems(cfg, EVAL_RULES) + _eval_dataset_problems(cfg)


def check_run_config(cfg: Mapping) -> None:
    if problems := run_config_problems(cfg):
        raise ConfigError(problems)


def check_eval_config(cfg: Mapping) -> None:
    if problems := eval_config_problems(cfg):
        raise ConfigError(problems)
