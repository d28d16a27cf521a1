"""A small synthetic micro-video dataset with the shape of DMVER, for demos and tests.

    python -m extract.sample --out data/sample [--videos 60] [--seed 0]

writes `OUT/<label>/<id>.mp4` (portrait 360x640, 30 fps, 3 to 6 s, H.264 yuv420p + AAC
44.1 kHz stereo), a caption `OUT/<label>/<id>.txt` beside most of them, the manifest
`OUT/manifest.csv` (3 balanced classes negative / neutral / positive, ids like `neg_0003`,
seeded per-class 60/20/20 split, captions in the `text` column) and `OUT/sample.json`, which
records the arguments and every video's generating parameters (its hidden cues included).

Every video shows its class through three channels, each of them noisy:

* appearance: palette (hue from blue through green to orange), brightness and saturation;
* motion: speed of the moving shapes (slow / medium / fast) and their direction (down /
  sideways / up), under a random camera shake and a random number of shapes;
* sound: a pulsing chord, minor / open fifth / major, low / middle / high root, slow / medium /
  fast tempo, under random background noise;
* and the caption: one or two clauses whose meaning fits the cue's class, in varied words
  (`CLAUSES`), with openers, tags and emoji around them; about 15 % of the videos have none.

About 40 % of the videos also show a real face (a photograph, slowly moving and zooming:
`extract.sample_faces`), whatever their class, so that the face stage and the `face` modality
run on faces a detector finds.

For each video and each channel the cue follows the true class with probability `P_AGREE`
(0.85) and otherwise contradicts it (it is drawn from one of the other two classes); within a cue
class the continuous parameters are drawn around the class's centre with overlapping spreads.
No single channel is therefore perfect, the channels' errors are independent, and combining
them helps. One video (`neu_0001`) has no audio stream, as some real uploads do.

A video's parameters depend on (seed, class, index) only, so `--videos 15` draws the first
videos of `--videos 60`. Re-running with the same arguments over a complete output renders
nothing and leaves the manifest as it is; files are written to a temporary name and renamed.
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from extract import cli, durable
from extract.sample_faces import face_plan, paste_face
from extract.manifest import Video, assign_splits, write_manifest
from extract.media import ffmpeg_exe

VERSION = 2                      # bump when the rendering changes: every video is rendered again
CLASSES = ("negative", "neutral", "positive")
PREFIX = {"negative": "neg", "neutral": "neu", "positive": "pos"}
WIDTH, HEIGHT, FPS = 360, 640, 30
AUDIO_RATE = 44100
P_AGREE = 0.85                   # probability that a channel's cue follows the true class
SPREAD = 0.4                     # spread of the latent cue around its class centre (centres 1 apart)
P_CAPTION = 0.85
NO_AUDIO_IDS = ("neu_0001",)
MIN_PER_CLASS = 5                # what a 60/20/20 split needs
PAD = 6                          # canvas margin that the camera shake moves within
STAMP = "sample.json"

# Captions carry the class by meaning, in varied words: a clause of the cue's class, sometimes
# with a second one, plus optional tags and emoji. No word is the class's only marker, and a
# sentence encoder (not a keyword count) is what reads them best.
CLAUSES = {
    "negative": ["worst day in a long time", "I can't stop crying", "nobody showed up for my birthday",
                 "feeling so alone tonight", "my dog got sick and the vet bill is huge", "I failed the exam again",
                 "everything keeps going wrong", "missing you more than words can say",
                 "got dumped over text", "the rain ruined our whole trip", "honestly exhausted and done with it",
                 "lost my job today"],
    "neutral": ["the bus leaves at nine", "trying a new route to work", "a quick look at my desk setup",
                "what I ate for lunch", "just another Tuesday", "sorting the laundry", "part two of the kitchen tour",
                "waiting for the train", "testing the new camera settings", "a walk around the block",
                "reorganising the bookshelf", "the weather report for this week"],
    "positive": ["best day ever with my friends", "I got the job!!", "we won the final", "so grateful for this life",
                 "surprise party went perfectly", "my little sister made me laugh so hard", "finally on holiday",
                 "this made my whole week", "dancing in the sunshine", "he said yes", "can't stop smiling today",
                 "the puppy is home at last"],
}
OPENERS = ["", "", "honestly, ", "ok so ", "today: ", "pov: ", "update: "]
TAGS = ["#fyp", "#foryou", "#tiktok", "#daily", "#life", "#vlog", "@bestie", "part 2"]
EMOJI = {"negative": ["\U0001F622", "\U0001F494", "\U0001F62D"], "neutral": ["\U0001F4F7", "\U0001F642"],
         "positive": ["\U0001F60D", "\U0001F389", "\U0001F973"]}
MODES = {"minor": (0, 3, 7, 12), "fifth": (0, 7, 12), "major": (0, 4, 7, 12)}
MODE_OF_CUE = ("minor", "fifth", "major")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything one video is rendered from (all values plain, so it round-trips through JSON)."""
    id: str
    label: str
    index: int
    seconds: float
    frames: int
    seed: tuple
    # the class each channel's cue was drawn from (== CLASSES.index(label) when it agrees)
    visual_cue: int
    motion_cue: int
    audio_cue: int
    text_cue: int
    # appearance
    hue: float                   # degrees
    saturation: float
    brightness: float
    # motion
    speed: float                 # px per frame
    direction: float             # degrees, image coordinates: 90 = down, -90 = up
    shapes: int
    shake: float                 # px (standard deviation of the per-frame jitter)
    # sound
    has_audio: bool
    mode: str
    root_hz: float
    tempo_bpm: float
    noise: float
    # caption
    text: str | None
    # a real face over the scene (extract.sample_faces), or None
    face: tuple | None = None

    def fingerprint(self) -> str:
        blob = json.dumps([VERSION, dataclasses.asdict(self)], sort_keys=True, ensure_ascii=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the plan


def _cue(rng: np.random.Generator, cls: int) -> int:
    if rng.random() < P_AGREE:
        return cls
    return int(rng.choice([c for c in range(len(CLASSES)) if c != cls]))


def _caption(rng: np.random.Generator, cue: str) -> str:
    """One or two clauses of the cue's class, an opener, maybe tags and an emoji."""
    clauses = [str(c) for c in rng.choice(CLAUSES[cue], size=1 + int(rng.random() < 0.3), replace=False)]
    text = str(rng.choice(OPENERS)) + " and ".join(clauses)
    if rng.random() < 0.6:
        text += " " + " ".join(str(t) for t in rng.choice(TAGS, size=int(rng.integers(1, 3)), replace=False))
    if rng.random() < 0.4:
        text += " " + str(rng.choice(EMOJI[cue]))
    return text


def plan_video(label: str, index: int, seed: int = 0, min_seconds: float = 3.0, max_seconds: float = 6.0) -> Plan:
    """The parameters of video `index` of class `label`; they depend on (seed, class, index) only."""
    cls = CLASSES.index(label)
    rng = np.random.default_rng([int(seed), cls, int(index)])
    seconds = float(rng.uniform(min_seconds, max_seconds))
    frames = max(1, int(round(seconds * FPS)))
    visual_cue, motion_cue, audio_cue, text_cue = (_cue(rng, cls) for _ in range(4))

    v = (visual_cue - 1) + rng.normal(0.0, SPREAD)
    hue = float((220.0 - 90.0 * (v + 1.0) + rng.normal(0.0, 12.0)) % 360.0)
    brightness = float(np.clip(0.5 + 0.22 * v, 0.12, 0.95))
    saturation = float(np.clip(0.55 + 0.1 * v + rng.normal(0.0, 0.08), 0.15, 0.95))

    m = (motion_cue - 1) + rng.normal(0.0, SPREAD)
    speed = float(2.0 * np.exp(1.0 * m))
    heading = (90.0, 0.0 if rng.random() < 0.5 else 180.0, -90.0)[motion_cue]
    direction = float(heading + rng.normal(0.0, 30.0))
    shapes = int(rng.integers(4, 7))
    shake = float(rng.uniform(0.0, 0.5) if rng.random() < 0.9 else rng.uniform(1.0, 2.0))   # a few shaky videos

    a = (audio_cue - 1) + rng.normal(0.0, SPREAD)
    root_hz = float(196.0 * 2.0 ** (0.6 * a))
    tempo_bpm = float(100.0 * 1.45 ** a)
    mode = MODE_OF_CUE[audio_cue] if rng.random() < 0.8 else str(rng.choice(MODE_OF_CUE))
    noise = float(rng.uniform(0.01, 0.12))

    text = _caption(rng, CLASSES[text_cue]) if rng.random() < P_CAPTION else None
    vid = f"{PREFIX[label]}_{index:04d}"
    return Plan(id=vid, label=label, index=int(index), seconds=round(frames / FPS, 4), frames=frames,
                seed=(int(seed), cls, int(index)), visual_cue=visual_cue, motion_cue=motion_cue,
                audio_cue=audio_cue, text_cue=text_cue, hue=hue, saturation=saturation, brightness=brightness,
                speed=speed, direction=direction, shapes=shapes, shake=shake, has_audio=vid not in NO_AUDIO_IDS,
                mode=mode, root_hz=root_hz, tempo_bpm=tempo_bpm, noise=noise, text=text,
                face=face_plan((seed, cls, index), WIDTH, HEIGHT))


def per_class(videos: int) -> list[int]:
    """Balanced class sizes; any remainder goes to the first classes."""
    base, extra = divmod(int(videos), len(CLASSES))
    return [base + (1 if c < extra else 0) for c in range(len(CLASSES))]


class SampleError(cli.UserError, ValueError):
    """Arguments that cannot make a usable dataset; the message says which and why."""


def plan_dataset(videos: int = 60, seed: int = 0, min_seconds: float = 3.0, max_seconds: float = 6.0) -> list[Plan]:
    if videos < MIN_PER_CLASS * len(CLASSES):
        raise SampleError(f"--videos must be at least {MIN_PER_CLASS * len(CLASSES)} "
                         f"({MIN_PER_CLASS} per class fill train/val/test), got {videos}")
    if not 0.5 <= min_seconds <= max_seconds:
        raise SampleError(f"need 0.5 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    return [plan_video(label, i, seed, min_seconds, max_seconds)
            for label, n in zip(CLASSES, per_class(videos)) for i in range(n)]


# ----------------------------------------------------------------------------- rendering


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue % 360.0) / 360.0, float(np.clip(saturation, 0, 1)),
                                        float(np.clip(value, 0, 1)))) * 255.0


class _Shape:
    def __init__(self, rng: np.random.Generator, plan: Plan, canvas_h: int, canvas_w: int):
        self.r = int(rng.integers(22, 61))
        yy, xx = np.mgrid[-self.r: self.r + 1, -self.r: self.r + 1]
        self.mask = (xx ** 2 + yy ** 2 <= self.r ** 2) if rng.random() < 0.6 else np.ones_like(xx, dtype=bool)
        # the background's hues, lighter on a dark background and darker on a light one
        hue = plan.hue + rng.normal(0.0, 25.0)
        value = plan.brightness + (0.35 if plan.brightness < 0.55 else -0.35) + rng.normal(0.0, 0.05)
        self.colour = _rgb(hue, plan.saturation + 0.2, value).astype(np.uint8)
        angle = np.deg2rad(plan.direction + rng.normal(0.0, 15.0))
        speed = plan.speed * float(np.clip(1.0 + rng.normal(0.0, 0.2), 0.4, 1.8))
        self.v = np.array([np.sin(angle), np.cos(angle)]) * speed        # (dy, dx)
        self.span = np.array([canvas_h + 2 * self.r, canvas_w + 2 * self.r], dtype=np.float64)
        self.p0 = rng.uniform(0.0, 1.0, size=2) * self.span

    def draw(self, canvas: np.ndarray, t: int) -> None:
        y, x = (np.mod(self.p0 + self.v * t, self.span) - 2 * self.r).astype(int)   # top-left corner
        h, w = canvas.shape[:2]
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + self.mask.shape[0], h), min(x + self.mask.shape[1], w)
        if y1 <= y0 or x1 <= x0:
            return
        m = self.mask[y0 - y: y1 - y, x0 - x: x1 - x]
        canvas[y0:y1, x0:x1][m] = self.colour


def render_frames(plan: Plan):
    """Yield the plan's frames as contiguous uint8 RGB `[640, 360, 3]` arrays."""
    rng = np.random.default_rng([*plan.seed, 1])
    ch, cw = HEIGHT + 2 * PAD, WIDTH + 2 * PAD
    top = _rgb(plan.hue, plan.saturation, plan.brightness)
    bottom = _rgb(plan.hue + 25.0, plan.saturation * 0.8, plan.brightness * 0.65)
    ramp = np.linspace(0.0, 1.0, ch)[:, None, None]
    background = top * (1.0 - ramp) + bottom * ramp                       # [ch, 1, 3]
    blocks = rng.normal(0.0, 3.0, size=(-(-ch // 8), -(-cw // 8), 1))
    texture = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:ch, :cw]
    background = np.clip(background + texture, 0, 255).astype(np.uint8)    # [ch, cw, 3]
    shapes = [_Shape(rng, plan, ch, cw) for _ in range(plan.shapes)]
    jitter = np.clip(np.round(rng.normal(0.0, plan.shake, size=(plan.frames, 2))), -PAD, PAD).astype(int)
    canvas = np.empty_like(background)
    for t in range(plan.frames):
        np.copyto(canvas, background)
        dy, dx = jitter[t]
        if plan.face:   # behind the shapes (they keep their motion), still in the frame (no camera shake)
            paste_face(canvas, plan.face, t, plan.frames, offset=(PAD + dx, PAD + dy))
        for shape in shapes:
            shape.draw(canvas, t)
        yield np.ascontiguousarray(canvas[PAD + dy: PAD + dy + HEIGHT, PAD + dx: PAD + dx + WIDTH])


def synth_audio(plan: Plan) -> np.ndarray:
    """float32 `[samples, 2]` at 44.1 kHz, as long as the video: a chord struck on every beat."""
    rng = np.random.default_rng([*plan.seed, 2])
    n = int(round(plan.frames / FPS * AUDIO_RATE))
    t = np.arange(n) / AUDIO_RATE
    vibrato = 1.0 + 0.003 * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t)
    phase_base = 2 * np.pi * np.cumsum(vibrato) / AUDIO_RATE
    tone = np.zeros(n)
    for semitones in MODES[plan.mode]:
        f = plan.root_hz * 2.0 ** (semitones / 12.0)
        for h in range(1, 5):
            if f * h < AUDIO_RATE / 2:
                tone += np.sin(f * h * phase_base + rng.uniform(0, 2 * np.pi)) / h
    beat = 60.0 / plan.tempo_bpm
    since_beat = np.mod(t, beat)
    envelope = 0.3 + 0.7 * np.exp(-since_beat / 0.18) * np.minimum(since_beat / 0.01, 1.0)
    tick = rng.standard_normal(n) * np.exp(-since_beat / 0.02)             # a percussive click per beat
    signal = 0.12 * tone * envelope + 0.08 * tick
    signal = signal / max(1e-9, np.abs(signal).max()) * 0.6
    left = signal + plan.noise * rng.standard_normal(n)
    right = 0.85 * signal + plan.noise * rng.standard_normal(n)
    return np.clip(np.stack([left, right], axis=1), -1.0, 1.0).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.round(audio * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[1])
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(pcm.tobytes())


def render_video(plan: Plan, path: str | os.PathLike) -> Path:
    """Render and encode one video to `path` (written as a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = durable.temp_path(path)
    wav = path.with_name(f".{path.stem}.tmp{os.getpid()}.wav")
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0"]
    if plan.has_audio:
        _write_wav(wav, synth_audio(plan))
        command += ["-i", str(wav), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "96k"]
    command += ["-c:v", "libx264", "-preset", "superfast", "-crf", "23", "-pix_fmt", "yuv420p", "-g", "60",
                "-threads", "2", "-movflags", "+faststart", "-metadata", f"comment=dmver-sample {plan.id}",
                "-f", "mp4", str(tmp)]
    try:
        # -loglevel error keeps stderr far below a pipe's buffer, so reading it last cannot block
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            try:
                for frame in render_frames(plan):
                    proc.stdin.write(frame)
            except BrokenPipeError:
                pass                                    # ffmpeg stopped early: its message says why
            finally:
                proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {plan.id}: {err[-2000:]}")
        durable.fsync_file(tmp)
        durable.publish(tmp, path)
    finally:
        for leftover in (tmp, wav):
            leftover.unlink(missing_ok=True)
    return path


def _write_text(path: Path, text: str) -> None:
    durable.atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _render_one(plan: Plan, out: str) -> str:
    out = Path(out)
    render_video(plan, out / plan.label / f"{plan.id}.mp4")
    caption = out / plan.label / f"{plan.id}.txt"
    if plan.text:
        _write_text(caption, plan.text)
    else:
        caption.unlink(missing_ok=True)
    return plan.id


# ----------------------------------------------------------------------------- the dataset


def _read_stamp(out: Path) -> dict:
    try:
        return json.loads((out / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def generate(out: str | os.PathLike, videos: int = 60, seed: int = 0, min_seconds: float = 3.0,
             max_seconds: float = 6.0, jobs: int | None = None, force: bool = False, log=print) -> list[Video]:
    """Write the dataset below `out` (see the module docstring); return the manifest's videos.

    Videos whose file exists and whose parameters are unchanged since the last run (as recorded
    in `out/sample.json`) are kept; `force` renders every video again.
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_dataset(videos, seed, min_seconds, max_seconds)
    args = {"videos": int(videos), "seed": int(seed), "min_seconds": float(min_seconds), "max_seconds": float(max_seconds)}
    stamp = _read_stamp(out)
    done = {} if force else stamp.get("fingerprints", {})
    todo = [p for p in plans
            if done.get(p.id) != p.fingerprint() or not (out / p.label / f"{p.id}.mp4").is_file()]

    # files of videos that an earlier run made and this plan no longer has
    wanted = {p.id for p in plans}
    for old_id, old_label in stamp.get("labels", {}).items():
        if old_id not in wanted and old_label in CLASSES:
            for suffix in (".mp4", ".txt"):
                (out / old_label / f"{old_id}{suffix}").unlink(missing_ok=True)

    if todo:
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
        log(f"rendering {len(todo)} of {len(plans)} videos with {jobs} process(es) ...")
        if jobs == 1:
            for p in todo:
                _render_one(p, str(out))
        else:
            # longest first, so the last worker does not finish alone on a long video
            order = sorted(todo, key=lambda p: -p.frames)
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(_render_one, order, [str(out)] * len(order)))

    manifest_videos = assign_splits(
        [Video(id=p.id, path=str((out / p.label / f"{p.id}.mp4").resolve()), label=p.label, text=p.text) for p in plans],
        seed=seed)
    manifest = out / "manifest.csv"
    unchanged = not todo and stamp.get("args") == args and manifest.is_file() and stamp.get("version") == VERSION
    if unchanged:
        log(f"{out}: all {len(plans)} videos up to date; nothing to do")
        return manifest_videos
    write_manifest(manifest, manifest_videos)
    new_stamp = {"version": VERSION, "args": args,
                 "fingerprints": {p.id: p.fingerprint() for p in plans},
                 "labels": {p.id: p.label for p in plans},
                 "plans": [dataclasses.asdict(p) for p in plans]}
    durable.atomic_write_bytes(out / STAMP, (json.dumps(new_stamp, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    log(f"wrote {manifest} ({len(plans)} videos, {len(todo)} rendered) in {time.perf_counter() - started:.1f} s")
    return manifest_videos


def load_plans(out: str | os.PathLike) -> list[Plan]:
    """The plans recorded in `out/sample.json` (cues included), in manifest order."""
    stamp = _read_stamp(Path(out))
    if "plans" not in stamp:
        raise FileNotFoundError(f"no {STAMP} with plans in {out}")
    return [Plan(**{**p, "seed": tuple(p["seed"]), "face": tuple(p["face"]) if p.get("face") else None})
            for p in stamp["plans"]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m extract.sample", __doc__.split("\n\n")[0],
                        formatter_class=argparse.HelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (manifest.csv, <label>/<id>.mp4)")
    parser.add_argument("--videos", type=int, default=60, help="number of videos, balanced over 3 classes (default 60, at least 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the videos and of the split (default 0)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="shortest duration (default 3)")
    parser.add_argument("--max-seconds", type=float, default=6.0, help="longest duration (default 6)")
    parser.add_argument("--jobs", type=int, default=0, help="parallel processes (default: one per core)")
    parser.add_argument("--force", action="store_true", help="render every video again")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    generate(args.out, args.videos, args.seed, args.min_seconds, args.max_seconds, jobs=args.jobs or None,
             force=args.force)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
