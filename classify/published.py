"""The published top-1 test accuracies that `classify.table --dataset` shows beside ours.

Quoted from the DMVER dataset README (its results table), which compares the three baseline
methods on IEMOCAP, Music-video and DMVER. Percent, by dataset, row and column; a cell the
published table leaves as "-" is absent.
"""
from __future__ import annotations

SOURCE = "the DMVER dataset README (its results table)"
DATASETS = ("dmver", "iemocap", "music-video", "other")
DATASET_NAMES = {"dmver": "DMVER", "iemocap": "IEMOCAP", "music-video": "Music-video", "other": "this dataset"}

ACCURACY = {
    "iemocap": {"ConvNet+LSTM": {"RGB": 50.77}, "I3D": {"RGB": 78.46, "Flow/Audio": 56.15, "Joint": 77.50},
                "Audio+I3D": {"RGB": 78.46, "Flow/Audio": 55.96, "Joint": 72.69}},
    "music-video": {"ConvNet+LSTM": {"RGB": 27.92}, "I3D": {"RGB": 57.61, "Flow/Audio": 48.98, "Joint": 55.58},
                    "Audio+I3D": {"RGB": 57.61, "Flow/Audio": 44.42, "Joint": 58.38}},
    "dmver": {"ConvNet+LSTM": {"RGB": 37.91}, "I3D": {"RGB": 54.02, "Flow/Audio": 59.03, "Joint": 61.67},
              "Audio+I3D": {"RGB": 54.02, "Flow/Audio": 46.42, "Joint": 62.41}},
}


def accuracy(dataset: str) -> dict[str, dict[str, float]] | None:
    """{row: {column: percent}} of a named dataset; None for `other` (nothing to compare with)."""
    return ACCURACY.get(dataset)
