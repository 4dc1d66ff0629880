"""Classification metrics (torch-free): accuracy, macro-F1, per-label precision/recall, confusion."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClassificationReport:
    labels: list[str]
    accuracy: float
    macro_f1: float
    confusion: list[list[int]]  # rows: gold, columns: predicted
    n: int
    per_label_f1: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "n": self.n,
            "confusion": self.confusion,
            "per_label_f1": {k: round(v, 4) for k, v in self.per_label_f1.items()},
        }

    def format(self, title: str = "") -> str:
        w = max(8, *(len(lab) for lab in self.labels))
        lines = [f"{title}accuracy {self.accuracy:.1%}  macro-F1 {self.macro_f1:.3f}  (n={self.n})"]
        lines.append("  confusion (rows gold, columns predicted):")
        lines.append("  " + " " * w + "".join(f"{lab[:w]:>{w + 1}}" for lab in self.labels))
        for lab, row in zip(self.labels, self.confusion):
            lines.append("  " + f"{lab[:w]:<{w}}" + "".join(f"{c:>{w + 1}}" for c in row))
        return "\n".join(lines)


def report_dict(report) -> dict | None:
    """A :class:`ClassificationReport` or a generation report (already a dict) as a JSON-able dict."""
    if report is None:
        return None
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def classification_report(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> ClassificationReport:
    K = len(labels)
    conf = np.zeros((K, K), dtype=np.int64)
    np.add.at(conf, (gold, pred), 1)
    f1s = {}
    for k, lab in enumerate(labels):
        tp = conf[k, k]
        prec = tp / conf[:, k].sum() if conf[:, k].sum() else 0.0
        rec = tp / conf[k, :].sum() if conf[k, :].sum() else 0.0
        f1s[lab] = float(2 * prec * rec / (prec + rec)) if prec + rec else 0.0
    n = int(len(gold))
    return ClassificationReport(
        labels=list(labels),
        accuracy=float((gold == pred).mean()) if n else 0.0,
        macro_f1=float(np.mean(list(f1s.values()))) if f1s else 0.0,
        confusion=conf.tolist(),
        n=n,
        per_label_f1=f1s,
    )
