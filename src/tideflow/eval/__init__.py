"""Evaluation of stream detectors against labelled data (NAB's scoring)."""

from .nab import (
    PROFILES,
    REWARD_LOW_FN,
    REWARD_LOW_FP,
    STANDARD,
    CorpusScore,
    FileScore,
    PointPrecisionRecall,
    Profile,
    find_windows,
    load_windows,
    point_precision_recall,
    score_corpus,
    score_file,
    sweep_threshold,
)

__all__ = [
    "PROFILES",
    "REWARD_LOW_FN",
    "REWARD_LOW_FP",
    "STANDARD",
    "CorpusScore",
    "FileScore",
    "PointPrecisionRecall",
    "Profile",
    "find_windows",
    "load_windows",
    "point_precision_recall",
    "score_corpus",
    "score_file",
    "sweep_threshold",
]
