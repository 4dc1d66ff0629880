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
    per_label_precision: dict[str, float] = field(default_factory=dict)
    per_label_recall: dict[str, float] = field(default_factory=dict)

    @property
    def never_predicted(self) -> list[str]:
        """Labels the classifier never answered (on examples where some were gold): a classifier that never
        says one of its labels is not useful, whatever its accuracy."""
        cols = np.asarray(self.confusion).sum(0)
        return [lab for lab, c in zip(self.labels, cols) if c == 0]

    def to_dict(self) -> dict:
        r4 = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
        return {
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "n": self.n,
            "confusion": self.confusion,
            "per_label_f1": r4(self.per_label_f1),
            "per_label_precision": r4(self.per_label_precision),
            "per_label_recall": r4(self.per_label_recall),
            "never_predicted": self.never_predicted,
        }

    def format(self, title: str = "") -> str:
        w = max(9, *(len(lab) for lab in self.labels))
        lines = [f"{title}accuracy {self.accuracy:.1%}  macro-F1 {self.macro_f1:.3f}  (n={self.n})"]
        lines.append("  " + " " * w + "".join(f"{h:>10}" for h in ("gold", "predicted", "precision", "recall", "F1")))
        conf = np.asarray(self.confusion)
        for k, lab in enumerate(self.labels):
            p, r, f = self.per_label_precision.get(lab, 0.0), self.per_label_recall.get(lab, 0.0), self.per_label_f1.get(lab, 0.0)
            lines.append("  " + f"{lab[:w]:<{w}}" + f"{conf[k].sum():>10}{conf[:, k].sum():>10}{p:>10.3f}{r:>10.3f}{f:>10.3f}")
        lines.append("  confusion (rows gold, columns predicted):")
        lines.append("  " + " " * w + "".join(f"{lab[:w]:>{w + 1}}" for lab in self.labels))
        for lab, row in zip(self.labels, self.confusion):
            lines.append("  " + f"{lab[:w]:<{w}}" + "".join(f"{c:>{w + 1}}" for c in row))
        if self.never_predicted:
            lines.append(
                f"  WARNING: never predicted: {', '.join(self.never_predicted)} (calibration or class balancing may help; see `edgeprompt train --help`)"
            )
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
    f1s, precs, recs = {}, {}, {}
    for k, lab in enumerate(labels):
        tp = conf[k, k]
        prec = tp / conf[:, k].sum() if conf[:, k].sum() else 0.0
        rec = tp / conf[k, :].sum() if conf[k, :].sum() else 0.0
        precs[lab], recs[lab] = float(prec), float(rec)
        f1s[lab] = float(2 * prec * rec / (prec + rec)) if prec + rec else 0.0
    n = int(len(gold))
    return ClassificationReport(
        labels=list(labels),
        accuracy=float((gold == pred).mean()) if n else 0.0,
        macro_f1=float(np.mean(list(f1s.values()))) if f1s else 0.0,
        confusion=conf.tolist(),
        n=n,
        per_label_f1=f1s,
        per_label_precision=precs,
        per_label_recall=recs,
    )
