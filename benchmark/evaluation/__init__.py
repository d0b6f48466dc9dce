"""Evaluation of a pretrained backbone, identical for every method.

``evaluate_backbone(backbone, cfg, run_dir)`` runs retrieval, linear probe, fine-tuning,
perturbation robustness and representation metrics on the downstream sets of
``cfg.eval`` and returns the ``evaluations`` block of a result record. See
docs/evaluation.md for the protocol, every config key and the returned structure.
"""

from benchmark.evaluation.pipeline import (
    EVALUATION_FORMAT,
    evaluate_backbone,
    evaluate_backbone_report,
    random_init_copy,
)

__all__ = ["EVALUATION_FORMAT", "evaluate_backbone", "evaluate_backbone_report", "random_init_copy"]
