"""The export's parity gate: probes through the torch fp32 reference and through the runtime on the
files just written (torch: it runs in the export, never on a device).

An fp32/f32 export whose logits differ from torch by more than ``PARITY_FP32_MAX_ABS`` fails (the export
is wrong, not merely quantized); a quantized one records its figures. Tasks shipped as GGUF virtual tokens
are also run through their token ids, as stock llama.cpp runs them (``TASK#virtual_tokens``).
"""

from __future__ import annotations

import numpy as np

from edgeprompt.core.bank import BankTask
from edgeprompt.core.constants import PARITY_FP32_MAX_ABS, TaskKind
from edgeprompt.core.errors import EdgePromptError
from edgeprompt.core.parity import PLAIN, Probe, check_fp32, compare

VIRTUAL_PARITY_SUFFIX = "#virtual_tokens"

#: Texts for the plain-model probes and for tasks whose data cannot be rebuilt.
GENERIC_PROBES = (
    "The weather today is",
    "I can't believe the game last night, what a finish!",
    "Write a short note to thank a colleague for their help.",
    "My phone battery died again at 3pm #annoying",
    "The capital of France is",
    "Honestly the new update is fine, nothing special.",
    "Breakfast: two eggs, toast and 1 coffee.",
    "We won 2-1 in the last minute!!!",
)


def make_probes(tasks: list[BankTask], n: int) -> list[Probe]:
    """``n`` probes per task from its test split (the data record in its manifest), and ``n`` plain."""
    from edgeprompt.core.data import dataset_for_task

    out: list[Probe] = []
    for t in tasks:
        try:
            ex = dataset_for_task(t).test[:n]
            out += [Probe(t.name, e.text, e.label if t.spec.kind == TaskKind.CLASSIFICATION else None) for e in ex]
        except EdgePromptError:
            out += [Probe(t.name, s) for s in GENERIC_PROBES[:n]]
    out += [Probe(PLAIN, s) for s in (GENERIC_PROBES * (n // len(GENERIC_PROBES) + 1))[:n]]
    return out


def reference_logits(lm, tasks: dict[str, BankTask], probes: list[Probe]) -> np.ndarray:
    """torch fp32 next-token logits ``[N, V]`` for each probe (the same inputs the runtime builds)."""
    import torch

    from edgeprompt.train.forward import logits_at, text_hidden
    from edgeprompt.train.workflows import task_kv

    kvs = {}
    rows = []
    with torch.no_grad():
        for p in probes:
            if p.task == PLAIN:
                kv, ids = None, lm.encode(p.text)
            else:
                if p.task not in kvs:
                    kvs[p.task] = task_kv(lm, tasks[p.task])
                kv, ids = kvs[p.task], tasks[p.task].spec.encode_input(lm.encode, p.text)
            x = torch.tensor([ids])
            h = text_hidden(lm, kv, x, torch.ones_like(x))[0, -1]  # the LM head on the last position only
            rows.append(logits_at(lm, h).float().numpy())
    return np.stack(rows)


def run_gate(rt, ref: np.ndarray, probes: list[Probe], full: bool, what: str, virtual_tokens: dict[str, list[int]]) -> dict:
    """Candidate logits through the runtime ``rt``; compare with the reference ``ref [N, V]``; raise on an
    fp32 failure (``full``: fp32 weights and embedding table). Returns the parity record per task (the manifest's
    ``parity``)."""
    cand = np.stack([rt.logits(p.task or None, p.text) for p in probes])
    results = compare(ref, cand, probes, rt.label_ids(), max_abs=PARITY_FP32_MAX_ABS if full else None)
    if full:
        check_fp32(results, what)
    parity = {t: r.to_dict() for t, r in results.items()}
    V = ref.shape[1]
    for name, ids in virtual_tokens.items():
        rows = [i for i, p in enumerate(probes) if p.task == name]
        vt_probes = [probes[i] for i in rows]
        got = []
        for p in vt_probes:
            with rt.backend.sequence(None) as seq:
                got.append(seq.feed_ids(list(ids) + rt.input_ids(name, p.text))[:V])
        r = compare(ref[rows], np.stack(got), vt_probes, rt.label_ids())[name]
        parity[f"{name}{VIRTUAL_PARITY_SUFFIX}"] = r.to_dict()
    return parity
