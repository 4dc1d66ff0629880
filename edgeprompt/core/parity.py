"""The parity gate: does an exported model give the torch reference's answers? (torch-free)

``edgeprompt export`` runs a fixed probe set through the torch fp32 reference and through the
exported model (with each task's prompt) and records the result in the bundle's manifest; the
runtimes rerun the same check on the device against the reference logits stored in the bundle.

A probe is ``(task, text, label)``; ``task == ""`` is the plain model (no prompt, raw text). Each
side gives the logits ``[V]`` of the next token after the templated input. Label predictions use
the first token of each verbalizer (exact when verbalizers are single tokens, as for tweets).

>>> import numpy as np
>>> ref = np.array([[0.0, 1.0, 2.0]]); cand = ref + 1e-4
>>> r = compare(ref, cand, [Probe("t", "x", "b")], {"t": (["a", "b"], [1, 2])})
>>> r["t"].top1_agreement, r["t"].accuracy_reference
(1.0, 0.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeprompt.core.constants import PARITY_FP32_MAX_ABS, ParityKeys
from edgeprompt.core.errors import EdgePromptError

PLAIN = ""  # the task name of probes run on the plain model


@dataclass(frozen=True)
class Probe:
    task: str
    text: str
    label: str | None = None


@dataclass
class ParityResult:
    """One task's parity figures (``ParityKeys`` names)."""

    probes: int
    max_abs_logit_diff: float
    top1_agreement: float  # argmax over the whole vocabulary, same on both sides
    label_agreement: float | None  # predicted label, same on both sides
    accuracy_reference: float | None
    accuracy_export: float | None
    passed: bool | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ParityResult":
        K = ParityKeys
        return cls(
            probes=int(d[K.PROBES]),
            max_abs_logit_diff=float(d[K.MAX_ABS_LOGIT_DIFF]),
            top1_agreement=float(d[K.TOP1_AGREEMENT]),
            label_agreement=d.get(K.LABEL_AGREEMENT),
            accuracy_reference=d.get(K.ACCURACY_REFERENCE),
            accuracy_export=d.get(K.ACCURACY_EXPORT),
            passed=d.get(K.PASSED),
        )


#: Per task: (label names, first token id of each label's verbalizer[, its Calibration or None]), for label
#: predictions: decided over those logits, calibrated as every runtime decides (TaskSpec.decide).
LabelIds = dict[str, tuple]


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    probes: Sequence[Probe],
    label_ids: LabelIds | None = None,
    max_abs: float | None = None,
) -> dict[str, ParityResult]:
    """Compare logits ``[N, V]`` of two implementations on the same ``N`` probes, per task.

    ``max_abs``: when given, a task passes only if its max-abs logit difference is within it.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.shape[0] != len(probes):
        raise EdgePromptError(f"parity: reference logits {reference.shape} and candidate {candidate.shape} must both be [{len(probes)}, vocab].")
    label_ids = label_ids or {}
    out: dict[str, ParityResult] = {}
    for task in dict.fromkeys(p.task for p in probes):
        rows = [i for i, p in enumerate(probes) if p.task == task]
        r, c = reference[rows], candidate[rows]
        diff = float(np.abs(r - c).max()) if r.size else 0.0
        top1 = float(np.mean(r.argmax(-1) == c.argmax(-1)))
        lab_agree = acc_r = acc_c = None
        if task in label_ids:
            names, ids, *rest = label_ids[task]
            cal = rest[0] if rest else None
            decide = (lambda x: x) if cal is None else cal.apply
            pr, pc = decide(r[:, list(ids)]).argmax(-1), decide(c[:, list(ids)]).argmax(-1)
            lab_agree = float(np.mean(pr == pc))
            gold = [probes[i].label for i in rows]
            if all(g in names for g in gold):
                g = np.array([list(names).index(x) for x in gold])
                acc_r, acc_c = float(np.mean(pr == g)), float(np.mean(pc == g))
        passed = None if max_abs is None else bool(diff <= max_abs)
        out[task] = ParityResult(len(rows), diff, top1, lab_agree, acc_r, acc_c, passed)
    return out


def check_fp32(results: dict[str, ParityResult], what: str, max_abs: float = PARITY_FP32_MAX_ABS) -> None:
    """Raise if any task's logits differ from the reference by more than ``max_abs``."""
    bad = {t: r.max_abs_logit_diff for t, r in results.items() if r.max_abs_logit_diff > max_abs}
    if bad:
        detail = ", ".join(f"{t or '(plain model)'}: {d:.2e}" for t, d in bad.items())
        raise EdgePromptError(
            f"{what}: full-precision logits differ from the torch reference by more than {max_abs:g} ({detail}); "
            "the export is wrong, not merely quantized. Nothing was written."
        )


def probes_json(probes: Sequence[Probe]) -> list[dict]:
    return [asdict(p) for p in probes]


def load_probes(path: Path) -> list[Probe]:
    from edgeprompt.core import schema
    from edgeprompt.core.errors import BundleError

    return [Probe(**d) for d in schema.read(path, list[schema.Probe], "probe set", BundleError, "re-export the bundle")]


#: ``edgeprompt verify``: a task fails on the device when its top-1 agreement with the torch reference is
#: more than this below what the export recorded (quantized kernels differ by CPU; 5 points is one or two
#: probes of a default probe set flipping, the noise seen between AVX2, AVX-512 and ARM kernels).
VERIFY_TOP1_DROP = 0.05


@dataclass
class Verdict:
    result: ParityResult
    recorded: ParityResult | None
    ok: bool


def judge(results: dict[str, ParityResult], recorded: dict[str, ParityResult], drop: float = VERIFY_TOP1_DROP) -> dict[str, Verdict]:
    """The device's parity results against the export's: fails an fp32 bound, or top-1 lost more than ``drop``."""
    out = {}
    for task, r in results.items():
        rec = recorded.get(task)
        bad = r.passed is False or r.top1_agreement < (rec.top1_agreement if rec else 0.0) - drop
        out[task] = Verdict(r, rec, not bad)
    return out
