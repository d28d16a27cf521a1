"""`dmver`: one command for every step, so that a user needs no `python -m` and no venv path.

`dmver <step> ARGS...` hands ARGS to the step's own `main` (the same options as
`python -m <module>`). The modules are imported by name only when their step runs, so that
`dmver --help` answers at once instead of loading torch.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# step -> (module whose main runs it, leading arguments, one line of help)
STEPS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "sample": ("extract.sample", (), "write the synthetic sample dataset"),
    "manifest": ("extract.manifest", (), "build a manifest CSV (folder ROOT | list FILE | iemocap ROOT)"),
    "frames": ("extract.frames", (), "stage: decode the picked frames of every video"),
    "flow": ("extract.flow", (), "stage: TV-L1 optical flow"),
    "audio": ("extract.audio", (), "stage: 16 kHz mono audio and log-mel examples"),
    "faces": ("extract.faces", (), "stage: the main face per picked frame (crops, boxes, scores)"),
    "weights": ("features.weights", (), "download and check the backbone checkpoints"),
    "features": ("features.extract", (), "embed one modality into the feature cache"),
    "expressions": ("features.expressions", (), "per-video facial expressions (FER2013) as a CSV"),
    "list": ("features.extract", ("--list",), "list the registered modalities"),
    "train": ("classify.train", (), "train one head on one modality"),
    "fuse": ("classify.fuse", (), "late fusion of several modalities"),
    "table": ("classify.table", (), "the results table (every head, several seeds)"),
    "report": ("classify.report", (), "the HTML report of the table"),
    "export": ("classify.export", (), "save trained heads as a bundle"),
    "predict": ("classify.predict", (), "apply a bundle to new videos"),
}


def usage() -> str:
    width = max(map(len, STEPS))
    lines = ["usage: dmver STEP [ARGS...]   (dmver STEP --help for a step's options)", "", "steps:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in STEPS.items()]
    lines += ["", "exit codes: 0 done; 1 some videos failed, the rest are done; 2 nothing ran, or the run itself "
                  "failed; 3 every video failed; 130 interrupted"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"error: unknown step {step!r}; one of: {', '.join(STEPS)} (dmver --help)", file=sys.stderr)
        return 2
    module, lead, _ = STEPS[step]
    try:  # importing a step takes seconds (torch, cv2): a Ctrl-C meanwhile is one line too
        step_main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    code = step_main([*lead, *rest])
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
