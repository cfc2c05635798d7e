"""Measuring InstantID: identity similarity, face detection rate, prompt alignment and diversity.

    from instantid.evaluation import collect_samples, create_recogniser, evaluate, write_report
    samples = collect_samples([Path("out")], refs=[Path("me.jpg")])
    evaluation = evaluate(samples, create_recogniser())
    write_report(evaluation, Path("report"))

Protocols (prompt sets with fixed seeds, e.g. PuLID's) ship as data: :func:`load_protocol`;
:func:`run_protocol` generates a protocol's images resumably.
"""

from __future__ import annotations

from instantid.evaluation.benchmark import identities_from_refs, run_protocol
from instantid.evaluation.clip_score import ClipScorer, load_clip_scorer
from instantid.evaluation.identity import create_recogniser, largest_face_embedding
from instantid.evaluation.inputs import Skipped, collect_samples, find_samples
from instantid.evaluation.metrics import Evaluation, ImageScore, Sample, evaluate
from instantid.evaluation.protocol import Protocol, ProtocolPrompt, load_protocol
from instantid.evaluation.report import write_report

__all__ = [
    "ClipScorer",
    "Evaluation",
    "ImageScore",
    "Protocol",
    "ProtocolPrompt",
    "Sample",
    "Skipped",
    "collect_samples",
    "create_recogniser",
    "evaluate",
    "find_samples",
    "identities_from_refs",
    "largest_face_embedding",
    "load_clip_scorer",
    "load_protocol",
    "run_protocol",
    "write_report",
]
