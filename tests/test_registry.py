"""A modality is one registry entry: a toy one, declared here and nowhere else, goes through the
feature stage, `classify.train` and `classify.fuse`; the derived tables follow the registry."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from classify import fuse as fuse_cli
from classify import train as train_cli
from extract.manifest import Video, write_manifest
from features import cache, modalities, weights
from features.extract import extract_features
from features.extract import main as features_main
from features.modalities import Missing, Modality, Network

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b", "c")
N = 90


class NpySource(modalities.Source):
    """Input = `W/toy/<id>.npy`, written by the test; a video whose file holds no rows has none."""
    name = "toy-input"

    def __init__(self, folder: str):
        self.folder = folder

    def describe(self) -> str:
        return f"`W/{self.folder}/<id>.npy`"

    def load(self, work, video, options):
        x = np.load(Path(work) / self.folder / f"{video.id}.npy")
        return Missing("empty toy input") if len(x) == 0 else x

    def settings(self, work, options) -> dict:
        return {"source": self.folder}


class Pool(nn.Module):
    """[n, 4] -> [n, 8]: a linear map with a ReLU."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)

    def forward(self, x):
        return torch.relu(self.proj(x))


def _toy(name: str) -> Modality:
    net = Network("Pool", 8, "rows", lambda model, x: model(x), "[n, 4]",
                  lambda x: isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == 4, build=Pool)
    return Modality(name=name, summary=f"toy {name}", source=NpySource(name),
                    prepare=lambda a: torch.from_numpy(np.asarray(a, np.float32)), network=net, cached="`[n, 8]`",
                    batch={"cpu": 16, "cuda": 16}, videos_per_call={"cpu": 4, "cuda": 4},
                    example=lambda videos, frames, size, seed: [torch.randn(frames, 4) for _ in range(videos)],
                    label=f"Toy {name}", column="RGB", default=False)


@pytest.fixture
def toys(tmp_path):
    names = ("toy_a", "toy_b")
    for n in names:
        modalities.register(_toy(n))
    work = tmp_path / "work"
    rng = np.random.default_rng(0)
    pattern = ("train", "train", "train", "val", "test")
    videos = []
    for i in range(N):
        label = CLASSES[i % 3]
        videos.append(Video(id=f"v{i:03d}", path=f"videos/v{i:03d}.mp4", label=label, split=pattern[(i // 3) % 5]))
        for k, name in enumerate(names):
            (work / name).mkdir(parents=True, exist_ok=True)
            # toy_a separates class a from the rest, toy_b class b: only together do they tell all three
            signal = 3.0 * float(label == ("a", "b")[k])
            rows = 0 if (name == "toy_b" and i == 7) else int(rng.integers(2, 6))
            x = rng.normal(size=(rows, 4)).astype(np.float32)
            x[:, 0] += signal
            np.save(work / name / f"v{i:03d}.npy", x)
    manifest = write_manifest(tmp_path / "manifest.csv", videos)
    yield work, manifest, videos
    for n in names:
        modalities.unregister(n)


def _quiet(fn, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn(argv)
    return code, out.getvalue(), err.getvalue()


def test_a_toy_modality_runs_through_features_train_and_fuse(toys):
    work, manifest, videos = toys
    for name in ("toy_a", "toy_b"):
        s = extract_features(name, videos, work, weights="random", device="cpu", loaders=0)
        assert s["done"] + s["missing"] == N and s["failed"] == 0
    feats = cache.load(work, "toy_b")
    assert feats.x.shape[2] == 8 and "v007" not in feats.ids
    assert cache.missing(work, "toy_b") == {"v007": "empty toy input"}
    assert cache.attributes(work, "toy_a")["source"] == "toy_a"

    code, out, _ = _quiet(train_cli.main, ["--modality", "toy_a", "--head", "linear", "--work", str(work),
                                           "--manifest", str(manifest)])
    assert code == 0 and "toy_a linear seed 0" in out
    code, out, err = _quiet(fuse_cli.main, ["--modalities", "toy_a,toy_b", "--head", "linear", "--work", str(work),
                                            "--manifest", str(manifest)])
    assert code == 0, err
    metrics = json.loads((work / "runs" / "fuse-toy_a+toy_b-weighted-linear" / "metrics.json").read_text())
    single = max(m["accuracy"] for m in metrics["per_modality"].values())
    assert metrics["joint"]["accuracy"] > single  # each toy tells one class apart; fused they tell all three


def test_registration_reaches_the_command_line_and_the_derived_tables(toys):
    work, manifest, _ = toys
    assert "toy_a" in modalities.names() and "toy_a" not in modalities.names(default_only=True)
    code, out, _ = _quiet(features_main, ["--list"])
    assert code == 0 and "toy_a" in out and "none (random only)" in out
    assert "| `toy_b` |" in modalities.markdown_table()
    code, out, _ = _quiet(features_main, ["--modality", "toy_a", "--manifest", str(manifest), "--work", str(work),
                                          "--weights", "random", "--device", "cpu", "--loaders", "0"])
    assert code == 0 and "features toy_a: done" in out
    with pytest.raises(ValueError, match="already registered"):
        modalities.register(_toy("toy_a"))


def test_a_modality_is_declared_by_keyword_only_and_checked():
    with pytest.raises(TypeError):
        Modality("toy_c", "toy", NpySource("toy_c"))  # positional arguments: refused, the fields are keyword-only
    toy = _toy("toy_c")
    for bad, match in ((dataclasses.replace(toy, name="../x"), "modality name"),
                       (dataclasses.replace(toy, batch={"cpu": 1}), "batch needs a value"),
                       (dataclasses.replace(toy, label=""), "label and column")):
        with pytest.raises(ValueError, match=match):
            modalities.register(bad)
        assert "toy_c" not in modalities.names() and "../x" not in modalities.names()


def test_the_builtin_entries_and_their_place_in_the_results_table():
    places = {m.name: (m.label, m.column, m.in_all, m.default) for m in modalities.all_modalities()}
    assert places == {
        "rgb": ("I3D RGB", "RGB", True, True), "flow": ("I3D flow", "Flow/Audio", True, True),
        "audio": ("VGGish", "Flow/Audio", True, True), "rgb2d": ("ResNet-18", "RGB", False, True),
        "text": ("Text", "Text", True, True), "face": ("Face", "RGB", True, False),
        "egemaps": ("eGeMAPS", "Flow/Audio", True, True), "r2plus1d": ("R(2+1)D", "RGB", False, False),
        "s3d": ("S3D", "RGB", False, False), "clip": ("CLIP", "RGB", False, False),
        "wav2vec2": ("wav2vec 2.0", "Flow/Audio", False, False), "hubert": ("HuBERT", "Flow/Audio", False, False),
        "face_affectnet": ("AffectNet face", "RGB", False, False)}


@pytest.mark.parametrize("name", [m.name for m in modalities.all_modalities()])
def test_every_example_input_is_what_its_network_accepts(name):
    m = modalities.get(name)
    first = m.example(2, 8, 32, 0)
    assert len(first) == 2 and all(m.network.accepts(x) for x in first)
    again = m.example(2, 8, 32, 0)  # seeded
    assert all((a == b).all() if isinstance(a, torch.Tensor) else a == b for a, b in zip(first, again))


def test_every_checkpoint_comes_from_the_registry():
    declared = [f.name for m in modalities.all_modalities() for f in m.network.files()]
    declared += [f.name for f in modalities.stage_files()]           # the faces stage's detector (and face files)
    assert list(weights.URLS) == list(dict.fromkeys(declared))
    assert modalities.get("text").network.files() == ()  # its weights ship in a package: nothing to fetch
    with pytest.raises(ValueError, match="unknown weight file"):
        weights.verify_file("not-registered.pt", "/nonexistent")


def test_docs_table_is_the_registry():
    page = (ROOT / "docs" / "modalities.md").read_text(encoding="utf-8")
    assert modalities.markdown_table() in page, "regenerate with: python -m features.modalities --markdown"
