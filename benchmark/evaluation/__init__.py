"""Evaluation of a pretrained backbone, identical for every method.

``evaluate_backbone(backbone, spec, run_dir)`` runs retrieval, linear probe, fine-tuning,
perturbation robustness and representation metrics on the downstream sets of an
:class:`EvaluationSpec` (built by the command from ``eval``) and returns the ``evaluations`` block of a result record. See
docs/evaluation.md for the protocol, every config key and the returned structure.
"""

from benchmark.evaluation.pipeline import (
    EVALUATION_FORMAT,
    evaluate_backbone,
    evaluate_backbone_report,
    random_init_copy,
)
from benchmark.evaluation.spec import DownstreamDatasetSpec, EvaluationSpec

__all__ = [
    "EVALUATION_FORMAT",
    "DownstreamDatasetSpec",
    "EvaluationSpec",
    "evaluate_backbone",
    "evaluate_backbone_report",
    "random_init_copy",
]
