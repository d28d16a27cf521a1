"""Facial expressions per video, as a table: what the published FER2013 network sees in each face.

    python -m features.expressions --manifest M --work W --out expressions.csv [--weights weights]

For each video of the manifest: the faces stage's track (`extract.faces.load`), each frame with
a face through mini-XCEPTION (`features.expression`, the real weights of `make weights
NAMES=face`: expressions of a random network would mean nothing, so there is no random variant),
and one CSV row:

    id, frames_with_face, p_angry, p_disgust, p_fear, p_happy, p_sad, p_surprise, p_neutral, top

`p_<class>` is the mean over the frames with a face of that class's probability (the published
class order), `top` the class with the largest mean. A video without a face has
`frames_with_face` 0 and empty probabilities and `top`; one without a faces output (failed or not
extracted) has every column but `id` empty and is named in a warning.

Exit codes: 0 every video has a row with values or 0 faces; 1 some videos have no faces output;
2 the run failed (no weights, a bad manifest); 3 no video has a faces output.
"""
from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from extract import cli, csvcells, durable
from extract.manifest import Video, read_manifest
from features import expression

log = logging.getLogger(__name__)

COLUMNS = ("id", "frames_with_face", *(f"p_{c}" for c in expression.EMOTIONS), "top")


def frame_probabilities(model: expression.MiniXception, track) -> np.ndarray:
    """float64 [T, 7]: each frame's class probabilities, NaN rows for frames without a face."""
    found = np.asarray(track.found, dtype=bool)
    out = np.full((len(found), len(expression.EMOTIONS)), np.nan)
    if found.any():
        with torch.inference_mode():
            out[found] = model(expression.preprocess(np.asarray(track.crops)[found])).double().numpy()
    return out


def summary_row(video_id: str, probs: np.ndarray | None) -> list[str]:
    """One CSV row from a video's per-frame probabilities (None: no faces output)."""
    if probs is None:
        return [video_id] + [""] * (len(COLUMNS) - 1)
    seen = probs[~np.isnan(probs).any(axis=1)]
    if not len(seen):
        return [video_id, "0"] + [""] * (len(COLUMNS) - 2)
    mean = seen.mean(axis=0)
    return [video_id, str(len(seen)), *(f"{p:.6f}" for p in mean), expression.EMOTIONS[int(np.argmax(mean))]]


def expressions(videos: Sequence[Video], work, model: expression.MiniXception) -> tuple[str, list[str]]:
    """(the CSV text, ids without a faces output)."""
    from extract import faces

    buf = io.StringIO()
    writer = csvcells.writer(buf)
    writer.writerow(COLUMNS)
    failed = []
    for v in videos:
        try:
            track = faces.load(work, v.id)
        except Exception as exc:  # not extracted, failed, unreadable: that video's row is empty
            log.warning("expressions: %r has no usable faces output (%s)", v.id, cli.one_line(exc))
            failed.append(v.id)
            writer.writerow(summary_row(v.id, None))
            continue
        writer.writerow(summary_row(v.id, frame_probabilities(model, track)))
    return buf.getvalue(), failed


def _main(args) -> int:
    videos = read_manifest(args.manifest, require_split=False, require_label=False)
    model = expression.load_model(Path(args.weights) / expression.WEIGHT_FILE)
    text, failed = expressions(videos, args.work, model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    durable.atomic_write_bytes(out, text.encode("utf-8"))
    print(f"expressions: {len(videos) - len(failed)} of {len(videos)} videos -> {out}"
          + (f" ({len(failed)} without a faces output: run the faces stage)" if failed else ""))
    if failed and len(failed) == len(videos):
        print("error: no video has a faces output (run the faces stage first)", file=sys.stderr)
        return cli.EXIT_ALL_FAILED
    return cli.EXIT_SOME_FAILED if failed else cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m features.expressions", __doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--work", required=True, help="the work folder holding the faces stage's outputs")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument("--weights", default="weights",
                        help=f"folder holding {expression.WEIGHT_FILE} (make weights NAMES=face)")
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose, level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
