"""The published top-1 test accuracies that `classify.table --dataset` shows beside ours.

Quoted from the DMVER dataset README (its results table), which compares the three baseline
methods on IEMOCAP, Music-video and DMVER. Percent, by dataset, row and column; a cell the
published table leaves as "-" is absent. The published numbers are shown only beside a table
whose class names are the dataset's (`class_mismatch`): other classes are another task.
"""
from __future__ import annotations

SOURCE = "the DMVER dataset README (its results table)"
DATASETS = ("dmver", "iemocap", "music-video", "other")
DATASET_NAMES = {"dmver": "DMVER", "iemocap": "IEMOCAP", "music-video": "Music-video", "other": "this dataset"}

# The class names of each dataset as this toolkit's manifest builders write them (compared
# without case): DMVER's list labels -1/0/1, IEMOCAP's four used labels, the Music-video folders.
CLASSES = {"dmver": ("negative", "neutral", "positive"), "iemocap": ("neu", "hap", "sad", "ang"),
           "music-video": ("exciting", "fear", "neutral", "relaxation", "sad", "tension")}

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


def class_mismatch(dataset: str, class_names) -> str | None:
    """None when `class_names` are the named dataset's (or the dataset is `other`); else the
    one-line reason its published numbers are not shown."""
    expected = CLASSES.get(dataset)
    if expected is None:
        return None
    ours = sorted(str(c).lower() for c in class_names)
    if ours == sorted(expected):
        return None
    return (f"the manifest's classes ({', '.join(map(str, class_names))}) are not {DATASET_NAMES[dataset]}'s "
            f"({', '.join(expected)}): its published numbers are not shown")


def display_name(dataset: str, class_names, manifest=None) -> str:
    """The dataset's name for titles: the published name when the classes match, else the
    manifest's folder name (or "this dataset")."""
    from pathlib import Path

    if dataset != "other" and class_mismatch(dataset, class_names) is None:
        return DATASET_NAMES[dataset]
    folder = Path(manifest).resolve().parent.name if manifest else ""
    return folder or DATASET_NAMES["other"]
