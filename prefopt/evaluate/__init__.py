"""Evaluation, layered on the core: metrics, ROUGE, paired statistics, the LLM judge, and
``prefopt compare`` (base → SFT → DPO with a report). The core never imports this package."""
from .metrics import accuracy, classification_report, confusion, macro_f1, triage_safety
from .rouge import rouge
from .stats import bootstrap_ci, mcnemar_exact, paired_bootstrap, wilcoxon_signed_rank

__all__ = ["accuracy", "bootstrap_ci", "classification_report", "confusion", "macro_f1", "mcnemar_exact",
           "paired_bootstrap", "rouge", "triage_safety", "wilcoxon_signed_rank"]
