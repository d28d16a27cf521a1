"""Faces and voice per DMVER-like video on one core: the faces stage, the expression network, eGeMAPS.

    python -m benchmarks.faces [--out work/bench-faces] [--weights weights]      # make bench-faces

What it does, all in this process pinned to one core (FFmpeg, started from here, inherits the pin;
torch and OpenCV get one thread):

1. writes a DMVER-like video once (`benchmarks.facevideo`: 15 s, 720x1280 portrait, 30 fps,
   H.264 + AAC, scikit-image's astronaut photograph moving, zooming and turning, a speech-like
   voice);
2. runs the faces stage on it (`extract.faces`, its default settings at `--num-frames`; best of
   `--repeat` runs, each into a new work folder), then the mini-XCEPTION expression network over
   the stored crops of the frames with a face (`features.expression`, features and
   probabilities in one pass), then eGeMAPS (`features.egemaps`, `--window`/`--hop`) over the
   video's 16 kHz waveform;
3. measures the path the faces stage replaces, MTCNN's full search on every picked frame
   (facenet-pytorch's defaults, 20-px smallest face), once at the source's resolution and once
   on the frames the stage searches (decoded the same way), and the stage's decoding alone;
4. measures recall, the share of frames with a face where the face is found (box overlapping
   the true one by IoU >= 0.5), for the stage's search (`extract.facetrack.follow`) and for the
   full search on every frame, on the same frames: the benchmark video's picked frames, the same
   motion with matplotlib's Grace Hopper photograph, and `--lfw` clips of scikit-image's
   LFW faces (25x25 grey photos of real people, enlarged to 28-45% of the frame's width, 100-160
   px in the searched 360x640 frame, and moved, 8 frames each; there the true box is the enlarged photo and IoU >= 0.3
   counts, since the photos are cut tighter than MTCNN's boxes).

It prints and writes `OUT/bench_faces.json`: seconds per video of each part (wall time on the
pinned core, and CPU seconds of this process and its FFmpeg children), the total of the faces
stage and the expression network against the 2-s target, the old path's seconds and the ratio,
and the recall figures. The wall times depend on what else runs on the machine (the load
average is recorded); CPU seconds much less.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from extract import cli

TARGET_SECONDS = 2.0


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, repeat: int = 1):
    """(result of the last call, best wall seconds, CPU seconds of that call)."""
    best = None
    for _ in range(repeat):
        cpu, wall = _cpu(), time.perf_counter()
        out = fn()
        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return out, best[0], best[1]


@contextlib.contextmanager
def one_core():
    """This process (and the FFmpeg it starts) pinned to one core, with one torch and OpenCV
    thread; the core's number is yielded, and the earlier affinity and threads come back after."""
    import cv2
    import torch

    cores, threads, cv_threads = os.sched_getaffinity(0), torch.get_num_threads(), cv2.getNumThreads()
    core = min(cores)
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield core
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return np.nan_to_num(w * h / (area(a) + area(b) - w * h))


def _best_of(found: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray) -> np.ndarray:
    """Per frame, the detected box overlapping the true one most (NaN where none was found)."""
    out = np.full((len(found), 4), np.nan, np.float32)
    for k, (boxes, _) in enumerate(found):
        if len(boxes):
            out[k] = boxes[int(np.argmax(_iou(boxes, np.repeat(truth[k:k + 1], len(boxes), 0))))]
    return out


def recall_of(nets, clips, every: int, min_fraction: float) -> dict:
    """Recall of the stage's search and of the full search on every frame over (frames, truth, iou) clips."""
    from extract import facetrack, mtcnn

    hits = {"stage": 0, "full": 0}
    frames_total = 0
    for frames, truth, threshold in clips:
        min_face = max(float(mtcnn.MIN_FACE), min_fraction * min(frames[0].shape[:2]))
        followed = facetrack.follow(nets, frames, every=every, min_face=min_face)
        full = [f for a in range(0, len(frames), 16) for f in mtcnn.detect(nets, np.stack(frames[a:a + 16]))]
        hits["stage"] += int((_iou(np.nan_to_num(followed.boxes, nan=-1), truth) >= threshold).sum())
        hits["full"] += int((_iou(np.nan_to_num(_best_of(full, truth), nan=-1), truth) >= threshold).sum())
        frames_total += len(frames)
    return {"frames": frames_total, "stage": hits["stage"] / frames_total, "full_search": hits["full"] / frames_total}


def lfw_clips(count: int, width: int = 360, height: int = 640, frames: int = 8) -> list:
    """`count` clips of LFW faces (scikit-image's lfw_subset, the first 100 are faces), moving and growing."""
    import cv2
    import skimage.data

    faces = skimage.data.lfw_subset()[:100]
    clips = []
    for i in range(min(count, len(faces))):
        grey = (faces[i] * 255).astype(np.uint8)
        shots, truth = [], []
        for k in range(frames):
            side = int(width * (0.28 + 0.17 * k / max(1, frames - 1)))
            x0 = int(width / 2 - side / 2 + 0.05 * width * np.sin(k + i))
            y0 = int(height * 0.4 - side / 2 + 0.05 * width * np.cos(k + i))
            frame = np.full((height, width), 120, np.uint8)
            frame[y0:y0 + side, x0:x0 + side] = cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC)
            shots.append(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))
            truth.append([x0, y0, x0 + side, y0 + side])
        clips.append((shots, np.array(truth, np.float32), 0.3))
    return clips


def photo_clip(name: str, n: int, width: int, height: int, seconds: float, fps: float) -> tuple:
    """The picked frames of the benchmark video's motion with another photograph, at the searched size."""
    from benchmarks import facevideo as fv
    from extract import clip

    image, face = fv.photo(name), fv.PHOTOS[name]
    total = int(round(seconds * fps))
    picks = clip.pick_indices(total, n)
    face_range = (0.3 * min(width, height), 0.55 * min(width, height))
    made = [fv.face_frame(image, face, width, height, *fv.motion(p / max(1, total - 1), width, height, face_range))
            for p in picks]
    return [f for f, _ in made], np.stack([b for _, b in made]), 0.5


def run(out: Path, weights: str, seconds: float = 15.0, width: int = 720, height: int = 1280, fps: float = 30.0,
        num_frames: int = 79, repeat: int = 3, lfw: int = 25, window: float = 4.0, hop: float = 2.0,
        old_path: bool = True) -> dict:
    cpus = len(os.sched_getaffinity(0))
    with one_core() as core:
        result = {"cpus": cpus, **_run(core, out, weights, seconds, width, height, fps, num_frames, repeat, lfw, window,
                                       hop, old_path)}
    (out / "bench_faces.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _run(core: int, out: Path, weights: str, seconds: float, width: int, height: int, fps: float, num_frames: int,
         repeat: int, lfw: int, window: float, hop: float, old_path: bool) -> dict:
    import torch

    from benchmarks import facevideo as fv
    from extract import faces, media, mtcnn, stage
    from extract.manifest import Video
    from features import egemaps, expression

    faces.check_weights(weights)
    out.mkdir(parents=True, exist_ok=True)
    video_path = out / f"dmver-like-{width}x{height}-{seconds:g}s.mp4"
    if not video_path.is_file():
        fv.write_video(video_path, width, height, seconds, fps)
    video = Video(id="dmver-like", path=str(video_path), label="happy", split="test")
    settings = faces.FaceSettings(num_frames=num_frames, weights=str(Path(weights).resolve()))
    faces._nets(settings.weights)                                  # loading the nets once is not per video
    runs = iter(range(repeat))

    def stage_once():
        work = out / f"work-{next(runs)}"
        if work.exists():
            import shutil

            shutil.rmtree(work)
        summary = stage.run_stage(faces.STAGE, [video], work, settings, jobs=1, progress=False)
        if summary.done != 1:
            raise RuntimeError(f"the faces stage did not process the benchmark video: {summary.line(work)}")
        return work

    work, stage_wall, stage_cpu = _timed(stage_once, repeat)
    track = faces.load(work, video.id)
    net = expression.load_model(Path(weights) / expression.WEIGHT_FILE)

    def expressions():
        with torch.inference_mode():
            return net.outputs(expression.preprocess(track.crops[track.found]))

    (feats, probs), expr_wall, expr_cpu = _timed(expressions, repeat)
    wave = media.decode_audio(video_path, 1, egemaps.RATE)[:, 0]
    rows, ege_wall, ege_cpu = _timed(lambda: egemaps.egemaps_rows(wave, window, hop), repeat)

    nets = mtcnn.load_mtcnn(weights)
    result = {
        "video": {"path": str(video_path), "seconds": seconds, "width": width, "height": height, "fps": fps,
                  "num_frames": num_frames},
        "core": core, "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: v for k, v in vars(settings).items() if k != "weights"},
        "faces_stage": {"wall": stage_wall, "cpu": stage_cpu, "found": int(track.found.sum()),
                        "full_searches": faces.meta(work, video.id)["full_searches"]},
        "expression": {"wall": expr_wall, "cpu": expr_cpu, "crops": int(len(feats)),
                       "top": expression.EMOTIONS[int(probs.mean(0).argmax())] if len(probs) else None},
        "egemaps": {"wall": ege_wall, "cpu": ege_cpu, "rows": int(len(rows)), "window_s": window, "hop_s": hop},
        "target_seconds": TARGET_SECONDS,
    }
    result["faces_plus_expression"] = {"wall": stage_wall + expr_wall, "cpu": stage_cpu + expr_cpu}
    from extract import clip

    def decode(geometry):
        decoded = clip.decode_clip(video, settings, geometry=geometry)
        return np.stack([decoded.frames[i] for i in decoded.picks.tolist()])

    def full_search(frames):
        return [f for a in range(0, len(frames), 16) for f in mtcnn.detect(nets, frames[a:a + 16])]

    searched, dec_wall, dec_cpu = _timed(lambda: decode(faces._geometry(settings)), repeat)
    result["faces_stage"].update(decode_wall=dec_wall, decode_cpu=dec_cpu)
    found, s_wall, s_cpu = _timed(lambda: full_search(searched))
    result["old_path_searched_size"] = {"wall": dec_wall + s_wall, "cpu": dec_cpu + s_cpu,
                                        "found": int(sum(len(b) > 0 for b, _ in found)),
                                        "ratio_wall": (dec_wall + s_wall) / stage_wall,
                                        "ratio_cpu": (dec_cpu + s_cpu) / stage_cpu}
    if old_path:
        full = ([("null", (), {})], width, height)
        found, old_wall, old_cpu = _timed(lambda: full_search(decode(lambda info: full)))
        result["old_path"] = {"wall": old_wall, "cpu": old_cpu, "found": int(sum(len(b) > 0 for b, _ in found)),
                              "ratio_wall": old_wall / stage_wall, "ratio_cpu": old_cpu / stage_cpu}
    sw, sh = faces.search_size(width, height, settings.detect_size)
    clips = {"astronaut": [photo_clip("astronaut", num_frames, sw, sh, seconds, fps)],
             "hopper": [photo_clip("hopper", num_frames, sw, sh, seconds, fps)],
             "lfw": lfw_clips(lfw, sw, sh)}
    result["recall"] = {name: recall_of(nets, c, settings.every, settings.min_face) for name, c in clips.items() if c}
    return result


def report(r: dict) -> str:
    lines = [f"one core (#{r['core']}), load average {r['load_average'][0]:.1f}; "
             f"{r['video']['width']}x{r['video']['height']}, {r['video']['seconds']:g} s, "
             f"{r['video']['num_frames']} frames",
             f"{'part':<28}{'wall s':>8}{'CPU s':>8}"]
    for key, name in (("faces_stage", "faces stage"), ("expression", "expression network"),
                      ("faces_plus_expression", "faces + expression"), ("egemaps", "eGeMAPS"),
                      ("old_path_searched_size", "old path, searched size"), ("old_path", "old path, full size")):
        if key in r:
            lines.append(f"{name:<28}{r[key]['wall']:>8.2f}{r[key]['cpu']:>8.2f}")
    total = r["faces_plus_expression"]
    verdict = "within" if max(total["wall"], total["cpu"]) <= r["target_seconds"] else "OVER"
    lines.append(f"faces + expression: {total['wall']:.2f} s wall, {total['cpu']:.2f} s CPU: {verdict} the "
                 f"{r['target_seconds']:g}-s target")
    stage = r["faces_stage"]
    lines.append(f"of the faces stage, decoding the picked frames: {stage['decode_wall']:.2f} s wall, "
                 f"{stage['decode_cpu']:.2f} s CPU")
    for key, name in (("old_path_searched_size", "searched size"), ("old_path", "full size")):
        if key in r:
            lines.append(f"old path ({name}) / faces stage: x{r[key]['ratio_wall']:.1f} wall, "
                         f"x{r[key]['ratio_cpu']:.1f} CPU")
    for name, rec in r["recall"].items():
        lines.append(f"recall {name} ({rec['frames']} frames): stage {rec['stage']:.3f}, "
                     f"full search {rec['full_search']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.faces", __doc__.split("\n\n")[0])
    parser.add_argument("--out", default="work/bench-faces")
    parser.add_argument("--weights", default="weights", help="folder of `make weights NAMES=face`")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--height", type=int, default=1280)
    parser.add_argument("--num-frames", type=int, default=79)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed part (the best is kept)")
    parser.add_argument("--lfw", type=int, default=25, help="LFW clips in the recall measurement")
    parser.add_argument("--window", type=float, default=4.0, help="eGeMAPS window, seconds")
    parser.add_argument("--hop", type=float, default=2.0, help="eGeMAPS hop, seconds")
    parser.add_argument("--no-old-path", action="store_true", help="skip the full search on every frame (slow)")
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args) -> int:
    r = run(Path(args.out), args.weights, args.seconds, args.width, args.height, num_frames=args.num_frames,
            repeat=args.repeat, lfw=args.lfw, window=args.window, hop=args.hop, old_path=not args.no_old_path)
    print(report(r))
    print(f"written: {Path(args.out) / 'bench_faces.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
