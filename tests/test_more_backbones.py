"""The newer backbones (r2plus1d, s3d, clip, wav2vec2, hubert) as registry entries.

Each model is built with random weights from its library's own constructor or config (offline).
Checked: input preparation against the libraries' own presets and processors and the model
cards' constants; the feature each entry caches against the library's full forward; strict
loading of files in the published layouts; refusal without weights; the cache, the heads
(`classify.train`) and the fusion (`classify.fuse`) with the new names; the audio stage's
waveform and its outputs written before waveforms were kept.
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from classify import fuse as fuse_cli
from classify import rows as table_rows
from classify import train as train_cli
from extract import audio, cli, frames, logmel, manifest, media, provenance, stage
from extract.layout import Work
from extract.manifest import Video
from features import backbones, cache, hf, inputs, modalities, videonets, weights
from features.checkpoints import CheckpointError
from features.extract import extract_features
from features.extract import main as features_main
from tests import videos as tv

NEW = ("r2plus1d", "s3d", "clip", "wav2vec2", "hubert")
DIMS = {"r2plus1d": 512, "s3d": 1024, "clip": 512, "wav2vec2": 768, "hubert": 768}
T, S = 4, 32           # tiny frames: every clip model resizes them to its own size anyway
SECONDS = 1.2          # 1.2 s of audio -> one 0.96 s window


def _quiet(fn, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn(argv)
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- input preparation


def test_clip_models_prepare_frames_as_their_torchvision_presets():
    from torchvision.models.video import R2Plus1D_18_Weights, S3D_Weights

    rng = np.random.default_rng(0)
    for weights_enum, geometry, prepare in ((R2Plus1D_18_Weights.KINETICS400_V1, inputs.R2PLUS1D_CLIPS,
                                             inputs.r2plus1d_clips),
                                            (S3D_Weights.KINETICS400_V1, inputs.S3D_CLIPS, inputs.s3d_clips)):
        preset = weights_enum.transforms()
        assert tuple(preset.mean) == inputs.KINETICS_MEAN and tuple(preset.std) == inputs.KINETICS_STD
        assert list(preset.crop_size) == [geometry.crop] * 2 and min(preset.resize_size) == geometry.short_side
        assert geometry.clip_len == 16 and geometry.clip_len >= weights_enum.meta.get("min_temporal_size", 1)
        # frames of the shape the preset's fixed resize was made for (4:3 for R(2+1)D, square for S3D)
        h, w = (240, 320) if preset.resize_size[1] != preset.resize_size[0] else (224, 224)
        x = rng.integers(0, 256, (16, h, w, 3), dtype=np.uint8)
        ours = prepare(x)
        theirs = preset(torch.from_numpy(x).permute(0, 3, 1, 2))   # [3, 16, crop, crop]
        assert ours.shape == (1, 3, 16, geometry.crop, geometry.crop)
        torch.testing.assert_close(ours[0], theirs, rtol=0, atol=1e-6)
    # square frames are not stretched: R(2+1)D's short side goes to 128 on both axes
    sq = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert inputs._short_side_size(64, 64, 128) == (128, 128) and inputs.r2plus1d_clips(sq).shape == (1, 3, 16, 112, 112)


def test_clips_do_not_overlap_and_the_last_repeats_the_last_frame():
    idx = inputs.clip_indices(20, 16)
    assert idx.shape == (2, 16) and idx[0].tolist() == list(range(16))
    assert idx[1].tolist() == [16, 17, 18, 19] + [19] * 12
    assert inputs.clip_indices(79, 16).shape == (5, 16) and inputs.clip_indices(1, 16).tolist() == [[0] * 16]
    x = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(20)])
    clips = inputs.kinetics_clips(x, inputs.ClipGeometry(8, 8, 16))
    means = clips[:, 0].mean(dim=(2, 3)) * inputs.KINETICS_STD[0] + inputs.KINETICS_MEAN[0]   # per frame, channel 0
    np.testing.assert_allclose((means * 255).numpy()[1], [160, 170, 180, 190] + [190] * 12, atol=1e-3)


def test_clip_frames_are_clip_image_processors_output():
    from transformers import CLIPImageProcessor
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    assert inputs.CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) and inputs.CLIP_STD == tuple(OPENAI_CLIP_STD)
    processor = CLIPImageProcessor()   # its defaults are openai/clip-vit-base-patch32's preprocessor_config.json
    assert processor.size == {"shortest_edge": 224} and processor.crop_size == {"height": 224, "width": 224}
    assert processor.resample == 3 and tuple(processor.image_mean) == inputs.CLIP_MEAN  # 3 = bicubic
    rng = np.random.default_rng(1)
    for shape, atol in (((2, 224, 224, 3), 1e-5), ((2, 112, 112, 3), 0.02), ((2, 96, 128, 3), 0.04)):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        theirs = processor(images=list(x), return_tensors="pt").pixel_values
        ours = inputs.clip_frames(x)
        assert ours.shape == (2, 3, 224, 224)
        # resized frames: both are PIL bicubic; the rest is float rounding of one 8-bit level at most
        torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)


def test_speech_windows_are_the_feature_extractors_input():
    from transformers import Wav2Vec2FeatureExtractor

    assert inputs.SPEECH_RATE == audio.WAVEFORM_RATE == logmel.SAMPLE_RATE == 16_000
    assert inputs.SPEECH_WINDOW == hf.WINDOW == int(0.96 * 16_000)
    rng = np.random.default_rng(2)
    wave = (0.1 * rng.normal(size=40_000) + 0.02).astype(np.float32)     # 2.5 s: two whole windows
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)  # wav2vec2-base's config
    theirs = extractor(wave[: 2 * hf.WINDOW], sampling_rate=16_000, return_tensors="pt").input_values[0]
    ours = inputs.wav2vec2_windows(wave)
    assert ours.shape == (2, hf.WINDOW)
    torch.testing.assert_close(ours.reshape(-1), theirs, rtol=0, atol=1e-5)
    raw = inputs.hubert_windows(wave)
    torch.testing.assert_close(raw.reshape(-1), torch.from_numpy(wave[: 2 * hf.WINDOW]))
    short = inputs.wav2vec2_windows(wave[:1000])   # shorter than a window: zero-padded to one
    assert short.shape == (1, hf.WINDOW) and float(short[0, 1000:].abs().max()) == 0.0
    assert abs(float(short[0, :1000].mean())) < 1e-5 and abs(float(short[0, :1000].std()) - 1) < 1e-2


# ----------------------------------------------------------------------------- what is cached


def _random(name: str):
    return backbones.load_backbone(name, weights="random", device="cpu", seed=0)


def test_video_features_are_the_classifiers_input():
    torch.manual_seed(0)
    bb = _random("r2plus1d")
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.inference_mode():
        feat = videonets.r2plus1d_features(bb.model, x)
        torch.testing.assert_close(bb.model.fc(feat), bb.model(x), rtol=1e-4, atol=1e-4)
    assert feat.shape == (1, videonets.R2PLUS1D_DIM) == (1, DIMS["r2plus1d"])
    bb = _random("s3d")
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.inference_mode():
        feat = videonets.s3d_features(bb.model, x)
        conv = bb.model.classifier[1]                      # 1x1x1 Conv3d 1024 -> 400
        logits = feat @ conv.weight.flatten(1).t() + conv.bias
        torch.testing.assert_close(logits, bb.model(x), rtol=1e-4, atol=1e-4)
    assert feat.shape == (1, 1024)
    # random weights come from the library constructor, seeded: the same seed gives the same model
    a, b = _random("s3d").model.state_dict(), _random("s3d").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _speech_frames(config) -> tuple[int, int]:
    """(stride, receptive field) in samples of a wav2vec2-style convolutional front end."""
    field = 1
    for k, s in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        field = (field - 1) * s + k
    return math.prod(config.conv_stride), field


def test_speech_features_average_the_last_layer_per_window():
    for name in ("wav2vec2", "hubert"):
        bb = _random(name)
        assert _speech_frames(bb.model.config) == (hf.FRAME_STRIDE, hf.FRAME_FIELD)
        assert bb.model.config.hidden_size == DIMS[name] and bb.model.config.num_hidden_layers == 12
        torch.manual_seed(1)
        x = torch.randn(2, 3, hf.WINDOW) * 0.1
        with torch.inference_mode():
            ours = hf.speech_window_features(bb.model, x)
            hidden = bb.model(x.reshape(2, -1)).last_hidden_state       # [2, 143, 768]
        assert ours.shape == (2, 3, DIMS[name]) and hidden.shape[1] == 3 * 48 - 1
        for w, (lo, hi) in enumerate(((0, 48), (48, 96), (96, 143))):   # frames whose centre is in window w
            torch.testing.assert_close(ours[:, w], hidden[:, lo:hi].mean(dim=1), rtol=1e-4, atol=1e-5)
        with torch.inference_mode():   # a video's features do not depend on the others in its batch
            torch.testing.assert_close(hf.speech_window_features(bb.model, x[1:]), ours[1:], rtol=1e-4, atol=1e-5)
    assert inputs.wav2vec2_windows is modalities.get("wav2vec2").prepare
    assert inputs.hubert_windows is modalities.get("hubert").prepare


def test_long_audio_runs_in_segments_of_16_windows():
    bb = _random("hubert")
    x = torch.randn(1, hf.SEGMENT_WINDOWS + 2, hf.WINDOW) * 0.1
    with torch.inference_mode():
        ours = hf.speech_window_features(bb.model, x)
        tail = hf.speech_window_features(bb.model, x[:, hf.SEGMENT_WINDOWS:])
    assert ours.shape == (1, hf.SEGMENT_WINDOWS + 2, 768)
    torch.testing.assert_close(ours[:, hf.SEGMENT_WINDOWS:], tail, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- strict loading


def _legacy_weight_norm(state: dict) -> dict:
    """Weight norm as older torch saved it (the published speech files): weight_g / weight_v."""
    return {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                "weight_v"): v
            for k, v in state.items()}


def test_speech_files_in_the_published_layouts_load_strictly(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    torch.manual_seed(3)
    pre = Wav2Vec2ForPreTraining(Wav2Vec2Config(**hf.WAV2VEC2_BASE)).eval()   # facebook/wav2vec2-base is saved so
    state = _legacy_weight_norm(pre.state_dict())
    assert any(k.startswith("quantizer.") for k in state) and any(k.endswith("weight_g") for k in state)
    torch.save(state, tmp_path / "wav2vec2-base.bin")
    model = hf.load_wav2vec2(tmp_path / "wav2vec2-base.bin")
    x = torch.randn(1, hf.WINDOW) * 0.1
    with torch.inference_mode():
        torch.testing.assert_close(model(x).last_hidden_state, pre.wav2vec2(x).last_hidden_state)
    assert weights.verify_file("wav2vec2-base.bin", tmp_path / "wav2vec2-base.bin").startswith("wav2vec 2.0 base")

    hubert = hf.build_hubert()
    torch.save(_legacy_weight_norm(hubert.state_dict()), tmp_path / "hubert-base-ls960.bin")   # saved as HubertModel
    assert "feature_projection.layer_norm.weight" in hubert.state_dict()                   # feat_proj_layer_norm
    hf.load_hubert(tmp_path / "hubert-base-ls960.bin")

    bad = dict(state)
    bad.pop("wav2vec2.encoder.layers.3.attention.k_proj.weight")
    bad["wav2vec2.encoder.extra.weight"] = torch.zeros(2)
    torch.save(bad, tmp_path / "bad.bin")
    with pytest.raises(CheckpointError, match="missing keys: encoder.layers.3.attention.k_proj.weight") as info:
        hf.load_wav2vec2(tmp_path / "bad.bin")
    assert "unexpected keys: encoder.extra.weight" in str(info.value)
    nan = dict(state)
    nan["wav2vec2.feature_projection.projection.weight"] = torch.full_like(nan["wav2vec2.feature_projection.projection.weight"], float("nan"))
    torch.save(nan, tmp_path / "nan.bin")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        hf.load_wav2vec2(tmp_path / "nan.bin")


def test_the_clip_file_gives_clip_models_image_features(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(4)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)  # a small text tower
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=hf.CLIP_VISION, projection_dim=512)).eval()
    state = dict(full.state_dict())
    state["vision_model.embeddings.position_ids"] = torch.arange(50).unsqueeze(0)    # older transformers saved these
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    torch.save(state, tmp_path / "clip.bin")
    tower = hf.load_clip_vision(tmp_path / "clip.bin")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = full.get_image_features(pixel_values=x)
        expected = getattr(expected, "pooler_output", expected)
        ours = hf.clip_image_features(tower, x)
    torch.testing.assert_close(ours, expected / expected.norm(dim=-1, keepdim=True), rtol=1e-4, atol=1e-5)
    assert ours.shape == (2, DIMS["clip"])
    state["vision_model.embeddings.position_ids"] = torch.arange(50).flip(0).unsqueeze(0)
    torch.save(state, tmp_path / "clip_bad.bin")
    with pytest.raises(CheckpointError, match="position_ids is not 0..49"):
        hf.load_clip_vision(tmp_path / "clip_bad.bin")


def test_torchvision_files_load_strictly_and_name_their_checksum(tmp_path):
    model = videonets.build_s3d()
    torch.save(model.state_dict(), tmp_path / "s3d-d76dad2f.pth")
    videonets.load_s3d(tmp_path / "s3d-d76dad2f.pth")
    with pytest.raises(CheckpointError, match="does not start with d76dad2f"):   # a file that is not the published one
        weights.verify_file("s3d-d76dad2f.pth", tmp_path / "s3d-d76dad2f.pth")
    from torchvision.models.video import R2Plus1D_18_Weights, S3D_Weights

    assert weights.URLS["r2plus1d_18-91a641e6.pth"] == R2Plus1D_18_Weights.KINETICS400_V1.url
    assert weights.URLS["s3d-d76dad2f.pth"] == S3D_Weights.KINETICS400_V1.url


def test_weights_outside_make_features_are_fetched_by_name():
    default = weights.resolve_names(None)
    assert "r2plus1d_18-91a641e6.pth" not in default and "rgb_imagenet.pt" in default
    assert weights.resolve_names(["r2plus1d", "s3d", "clip", "wav2vec2", "hubert"]) == [
        "r2plus1d_18-91a641e6.pth", "s3d-d76dad2f.pth", "clip-vit-base-patch32.bin", "wav2vec2-base.bin",
        "hubert-base-ls960.bin"]
    assert weights.resolve_names(None, everything=True) == list(weights.URLS)
    assert all(not modalities.get(n).default for n in NEW)
    assert all(n not in modalities.names(default_only=True) for n in NEW)


# ----------------------------------------------------------------------------- through the pipeline


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Seven small videos (classes a, b; one without audio), frames and audio stages, then every
    new entry with random weights."""
    root = tmp_path_factory.mktemp("more")
    splits = ("train", "val", "test")   # one video of each class in each split (each costs a clip of 16x112x112)
    rows = [Video(id=f"v{i}", path=str(tv.make_video(root / f"v{i}.mp4", seed=i, seconds=SECONDS)), label="ab"[i % 2],
                  split=splits[i // 2]) for i in range(6)]
    rows.append(Video(id="mute", path=str(tv.make_video(root / "mute.mp4", seed=9, seconds=SECONDS, audio=False)),
                      label="a", split="train"))
    m = manifest.write_manifest(root / "manifest.csv", rows)
    w = root / "work"
    stage.run_stage(frames.STAGE, rows, w, frames.FrameSettings(num_frames=T, size=S), jobs=1)
    stage.run_stage(audio.STAGE, rows, w, audio.AudioSettings(), jobs=1)
    summaries = {name: extract_features(name, rows, w, weights="random", device="cpu", loaders=0) for name in NEW}
    return m, w, rows, summaries


def test_every_new_entry_fills_its_cache(extracted):
    _, w, rows, summaries = extracted
    lengths = {"r2plus1d": 1, "s3d": 1, "clip": T, "wav2vec2": 1, "hubert": 1}  # ceil(4/16) clips; 4 frames; 1 window
    for name in NEW:
        f = cache.load(w, name)
        assert f.x.shape[2] == DIMS[name] and f.lengths.tolist() == [lengths[name]] * len(f.ids)
        assert np.isfinite(f.x).all() and float(np.abs(f.x).max()) > 0
        attrs = cache.attributes(w, name)
        assert attrs["weights"] == "random" and attrs["network"] == modalities.get(name).network.name
        if name in ("wav2vec2", "hubert"):
            assert summaries[name]["missing"] == 1 and cache.missing(w, name) == {"mute": "no audio stream"}
            assert attrs["kind"] == "waveform" and attrs["stage"] == "audio"
        else:
            assert summaries[name]["done"] == len(rows) and attrs["stage_settings"]["num_frames"] == T
    clip = cache.load(w, "clip")
    np.testing.assert_allclose(np.linalg.norm(clip.x[0, :T], axis=1), 1.0, atol=1e-5)
    bb = _random("wav2vec2")   # the cache holds what the backbone computes from the stored waveform
    expected = bb.embed([inputs.wav2vec2_windows(audio.load(w, "v3", kind="waveform"))])[0]
    f = cache.load(w, "wav2vec2")
    assert expected.shape == (1, 768)
    np.testing.assert_allclose(f.x[f.ids.index("v3"), :1], expected, rtol=1e-4, atol=1e-5)


def test_without_weights_each_entry_is_refused_and_random_is_loud(extracted, tmp_path):
    m, w, _, _ = extracted
    for name in NEW:
        code, _, err = _quiet(features_main, ["--modality", name, "--manifest", str(m), "--work", str(w),
                                              "--weights", str(tmp_path / "none"), "--loaders", "0"])
        file = modalities.get(name).network.file
        assert code == cli.EXIT_USAGE and file.name in err and file.url in err and "--weights random" in err
    code, out, err = _quiet(features_main, ["--modality", "clip", "--manifest", str(m), "--work", str(w),
                                            "--weights", "random", "--device", "cpu", "--loaders", "0"])
    assert code == 0 and "skipped 7" in out and "RANDOM BACKBONE WEIGHTS" in err.upper()
    code, out, _ = _quiet(features_main, ["--list"])
    for name in NEW:
        line = next(row for row in out.splitlines() if row.startswith(name + " "))
        assert modalities.get(name).network.file.url in line and "no (by name)" in line
    assert "W/audio/ (waveform)" in out


def test_heads_and_fusion_take_the_new_names(extracted):
    m, w, _, _ = extracted
    for name in NEW:
        code, out, err = _quiet(train_cli.main, ["--modality", name, "--head", "linear", "--work", str(w),
                                                 "--manifest", str(m)])
        assert code == 0, err
        assert (w / "runs" / f"{name}-linear-seed0" / "metrics.json").is_file()
    code, _, err = _quiet(fuse_cli.main, ["--modalities", ",".join(NEW), "--head", "linear", "--work", str(w),
                                          "--manifest", str(m)])
    assert code == 0, err
    metrics = json.loads((w / "runs" / f"fuse-{'+'.join(NEW)}-weighted-linear" / "metrics.json").read_text())
    assert set(metrics["per_modality"]) == set(NEW) and metrics["joint"]["n"] == 2   # the two test videos


def test_table_extra_rows_for_the_new_backbones(extracted, tmp_path):
    _, w, _, _ = extracted
    entries = modalities.all_modalities()
    auto = {r.name for r in table_rows.select_extra_rows(w, "auto", entries)}
    assert {"R(2+1)D", "S3D", "CLIP", "wav2vec 2.0", "HuBERT"} <= auto and "Text" not in auto
    assert not table_rows.select_extra_rows(tmp_path, "auto", entries)          # no caches, no rows
    rows = table_rows.select_extra_rows(tmp_path, "R(2+1)D,HuBERT", entries)   # named: shown even without a cache
    assert [r.cells for r in rows] == [{"RGB": ("r2plus1d",)}, {"Flow/Audio": ("hubert",)}]
    assert all(not r.published for r in rows)


# ----------------------------------------------------------------------------- the audio stage's waveform


def test_the_audio_stage_keeps_the_16khz_waveform_and_redoes_older_outputs(tmp_path):
    rows = [Video(id="tone", path=str(tv.make_video(tmp_path / "tone.mp4", seconds=2.0)), label="a", split="train")]
    w = tmp_path / "work"
    stage.run_stage(audio.STAGE, rows, w, audio.AudioSettings(), jobs=1)
    info = media.probe(rows[0].path)
    decoded = media.decode_audio(rows[0].path, info.audio_channels, info.audio_rate)
    x16k = logmel.resample(logmel.to_mono(decoded), info.audio_rate)
    wave = audio.load(w, "tone", kind="waveform")
    assert wave.dtype == np.float32 and wave.shape == x16k.shape
    assert float(np.abs(wave - x16k).max()) <= 0.5 / 32767 + 1e-7         # 16-bit rounding, nothing else
    np.testing.assert_allclose(audio.load(w, "tone"), audio.log_mel_examples(decoded, info.audio_rate), atol=1e-5)
    out = Work(w).output("audio", "tone", ".npz")
    assert out.stat().st_size < 0.5 * 2 * wave.size + 96 * 64 * 4 * 3    # FLAC: well under raw 16-bit
    # an output as the previous version wrote it (no waveform), with its provenance record
    with np.load(out) as z:
        old = {k: z[k] for k in ("examples", "has_audio", "padded")}
    np.savez(out, **old)
    record = json.loads(provenance.source_record_path(out).read_text())
    st = out.stat()
    record["output"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    provenance.source_record_path(out).write_text(json.dumps(record))
    with pytest.raises(audio.OutdatedOutput, match="run the audio stage again"):
        audio.load(w, "tone", kind="waveform")
    s = extract_features("wav2vec2", rows, w, weights="random", device="cpu", loaders=0)
    reason = cache.missing(w, "wav2vec2")["tone"]
    assert s["failed"] == 1 and "run the audio stage again" in reason and "\n" not in reason
    summary = stage.run_stage(audio.STAGE, rows, w, audio.AudioSettings(), jobs=1)
    assert summary.redone == {audio.NO_WAVEFORM: 1} and "redone 1 (no waveform)" in summary.line(w)
    np.testing.assert_array_equal(audio.load(w, "tone", kind="waveform"), wave)
    s = extract_features("wav2vec2", rows, w, weights="random", device="cpu", loaders=0)
    assert s["done"] == 1 and cache.load(w, "wav2vec2").ids == ["tone"]
    with pytest.raises(ValueError, match="kind must be one of"):
        audio.load(w, "tone", kind="mfcc")
