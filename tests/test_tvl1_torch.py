"""TorchTVL1 against OpenCV contrib's DualTVL1OpticalFlow (defaults) on realistic small frame pairs.

Agreement targets per pair: mean end-point error <= 0.15 px, and after quantising both flows with
bound 20 (q = clip(round((f + 20) * 255 / 40), 0, 255)) at least 95% of values within 1 grey level.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "optflow"):
    pytest.skip("OpenCV contrib (cv2.optflow) is not installed", allow_module_level=True)

from extract.tvl1_torch import TorchTVL1  # noqa: E402

EPE_MAX = 0.15
WITHIN1_MIN = 0.95
EPE_FIDELITY = 0.04  # what this port reaches on the synthetic pairs (<= 0.01 px), with margin


def _quantise(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    return np.clip(np.rint((flow + bound) * 255.0 / (2 * bound)), 0, 255).astype(np.uint8)


def _agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    epe = float(np.sqrt(((ours - ref) ** 2).sum(-1)).mean())
    within = float((np.abs(_quantise(ours).astype(np.int16) - _quantise(ref)) <= 1).mean())
    return epe, within


def _opencv_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    return cv2.optflow.DualTVL1OpticalFlow_create().calc(prev, nxt, None)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Natural-looking float texture: smoothed multi-scale noise plus filled shapes with sharp edges."""
    tex = np.zeros((size, size), np.float32)
    for cells, amp in ((3, 50.0), (8, 35.0), (24, 25.0), (size // 3, 12.0)):
        layer = rng.standard_normal((cells, cells)).astype(np.float32)
        tex += amp * cv2.resize(layer, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(5):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(tex, centre, int(rng.integers(size // 20, size // 6)), float(rng.uniform(-70, 70)), -1)
    for _ in range(3):
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.rectangle(tex, p0, p1, float(rng.uniform(-60, 60)), -1)
    return cv2.GaussianBlur(tex, (0, 0), 0.8) + 128.0


def _view(tex: np.ndarray, size: int, angle=0.0, zoom=1.0, shift=(0.0, 0.0)) -> np.ndarray:
    """A size x size camera view of the centre of `tex`, rotated/zoomed/shifted (bicubic)."""
    big = tex.shape[0]
    a = cv2.getRotationMatrix2D((big / 2.0, big / 2.0), angle, zoom)
    a[:, 2] += np.asarray(shift) - (big - size) / 2.0
    return cv2.warpAffine(tex, a, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pair_translation(size=96):
    rng = np.random.default_rng(11)
    tex = _texture(rng, 2 * size)
    return _u8(_view(tex, size)), _u8(_view(tex, size, shift=(1.37, -0.62)))


def _pair_rotation_zoom(size=96):
    rng = np.random.default_rng(12)
    tex = _texture(rng, 2 * size)
    return _u8(_view(tex, size)), _u8(_view(tex, size, angle=2.0, zoom=1.03, shift=(0.4, 0.3)))


def _object_frame(bg, obj, mask, size, bg_shift, obj_pos):
    frame = _view(bg, size, shift=bg_shift)
    m = np.float32([[1, 0, obj_pos[0]], [0, 1, obj_pos[1]]])
    o = cv2.warpAffine(obj, m, (size, size), flags=cv2.INTER_CUBIC)
    a = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR)
    return frame * (1 - a) + o * a


def _pair_moving_object(size=96):
    rng = np.random.default_rng(13)
    bg = _texture(rng, 2 * size)
    obj = _texture(np.random.default_rng(99), 40) * 0.6 + 60.0  # darker, differently textured object
    mask = np.zeros((40, 40), np.float32)
    cv2.circle(mask, (20, 20), 16, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.7)
    f0 = _object_frame(bg, obj, mask, size, (0.0, 0.0), (20.0, 30.0))
    f1 = _object_frame(bg, obj, mask, size, (0.5, 0.3), (23.2, 27.9))
    return _u8(f0), _u8(f1)


def _pair_h264(tmp_dir: str, size=112):
    """Consecutive frames of a numpy-rendered clip after an H.264 round trip through ffmpeg."""
    from extract.media import ffmpeg_exe

    rng = np.random.default_rng(14)
    tex = _texture(rng, 2 * size)
    obj = _texture(np.random.default_rng(98), 40) * 0.5 + 90.0
    mask = np.zeros((40, 40), np.float32)
    cv2.rectangle(mask, (6, 8), (33, 30), 1.0, -1)
    frames = []
    for t in range(6):
        grey = _object_frame(tex, obj, mask, size, (0.8 * t, 0.4 * t), (30.0 - 1.7 * t, 40.0 + 1.1 * t))
        frames.append(cv2.cvtColor(_u8(grey), cv2.COLOR_GRAY2BGR))
    path = os.path.join(tmp_dir, "clip.mp4")
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
           "-s", f"{size}x{size}", "-r", "25", "-i", "-", "-c:v", "libx264", "-preset", "medium", "-crf", "23",
           "-pix_fmt", "yuv420p", path]
    subprocess.run(cmd, input=np.stack(frames).tobytes(), check=True)
    cap = cv2.VideoCapture(path)
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    cap.release()
    assert len(decoded) == 6, f"decoded {len(decoded)} of 6 frames"
    return decoded[2], decoded[3]


@pytest.fixture(scope="module")
def tvl1():
    return TorchTVL1()


@pytest.fixture(scope="module")
def synthetic(tvl1):
    """The three synthetic pairs (same size) solved in one batch, plus OpenCV's flows."""
    pairs = {"translation": _pair_translation(), "rotation_zoom": _pair_rotation_zoom(),
             "moving_object": _pair_moving_object()}
    names = list(pairs)
    prev = np.stack([pairs[n][0] for n in names])
    nxt = np.stack([pairs[n][1] for n in names])
    ours = tvl1.calc(prev, nxt)
    return {n: (prev[k], nxt[k], ours[k], _opencv_flow(prev[k], nxt[k])) for k, n in enumerate(names)}


@pytest.mark.parametrize("name", ["translation", "rotation_zoom", "moving_object"])
def test_agrees_with_opencv_synthetic(synthetic, name):
    _, _, ours, ref = synthetic[name]
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ref).mean() > 0.3, "test pair should actually move"
    epe, within = _agreement(ours, ref)
    print(f"{name}: EPE {epe:.4f} px, within 1 level {100 * within:.2f}%")
    assert epe <= EPE_MAX
    assert within >= WITHIN1_MIN
    # Far inside the 0.15 px target on purpose: a dropped step (no median filter: 0.06 px on the
    # moving object, fewer warps: 0.09 px) would still pass 0.15 px.
    assert epe <= EPE_FIDELITY


def test_agrees_with_opencv_h264(tvl1, tmp_path):
    prev, nxt = _pair_h264(str(tmp_path))
    ref = _opencv_flow(prev, nxt)
    ours = tvl1.calc(prev, nxt)
    epe, within = _agreement(ours, ref)
    print(f"h264: EPE {epe:.4f} px, within 1 level {100 * within:.2f}%")
    assert np.abs(ref).mean() > 0.3
    assert epe <= EPE_MAX
    assert within >= WITHIN1_MIN


def test_flow_stage_torch_backend_matches_opencv_backend(tmp_path):
    """What `--flow-backend torch` stores (extract.flow: solve, quantise with bound 20) against the
    OpenCV backend, on all pairs of the H.264 clip."""
    from extract import flow

    prev, nxt = _pair_h264(str(tmp_path))
    first, second = np.stack([prev, nxt]), np.stack([nxt, prev])  # both directions
    q_torch = flow.quantise(flow.compute_pairs(first, second, "torch", batch_pairs=1), 20.0).astype(np.int16)
    q_cv = flow.quantise(flow.compute_pairs(first, second, "opencv"), 20.0).astype(np.int16)
    assert q_torch.shape == q_cv.shape == (2, 112, 112, 2)
    diff = np.abs(q_torch - q_cv)
    print(f"flow stage torch vs opencv: mean abs diff {diff.mean():.3f} levels, within 1 {100 * (diff <= 1).mean():.2f}%")
    assert (diff <= 1).mean() >= WITHIN1_MIN
    assert diff.mean() < 0.3
    assert np.abs(q_cv - 128).mean() > 1, "the clip should move"


def test_flow_direction_matches_motion(synthetic):
    """Sanity check independent of OpenCV: a shift of (+1.37, -0.62) is found as such in the middle."""
    _, _, ours, _ = synthetic["translation"]
    centre = ours[24:-24, 24:-24].reshape(-1, 2)
    assert np.allclose(np.median(centre, axis=0), [1.37, -0.62], atol=0.1)


def test_batch_equals_single(tvl1, synthetic):
    names = list(synthetic)
    batched = np.stack([synthetic[n][2] for n in names])
    for k, n in enumerate(names):
        prev, nxt = synthetic[n][0], synthetic[n][1]
        single = tvl1.calc(prev[None], nxt[None])[0]
        assert np.abs(single - batched[k]).max() < 1e-3, n


def test_hw_input_and_float_input(tvl1, synthetic):
    prev, nxt, batched, _ = synthetic["translation"]
    flow_hw = tvl1.calc(prev, nxt)
    assert flow_hw.shape == prev.shape + (2,) and flow_hw.dtype == np.float32
    assert np.abs(flow_hw - batched).max() < 1e-3
    flow_float = tvl1.calc(prev.astype(np.float32), torch.from_numpy(nxt.astype(np.float64)))
    np.testing.assert_array_equal(flow_float, flow_hw)
    flow_tensor = tvl1.calc_tensor(torch.from_numpy(prev), torch.from_numpy(nxt))
    assert isinstance(flow_tensor, torch.Tensor) and flow_tensor.shape == (*prev.shape, 2)
    np.testing.assert_array_equal(flow_tensor.numpy(), flow_hw)


def test_identical_frames_give_zero_flow(tvl1):
    img = _u8(_texture(np.random.default_rng(3), 64))
    flow = tvl1.calc(img, img)
    assert np.abs(flow).max() < 1e-3


def test_building_blocks_match_opencv(tvl1):
    """Resize (pyramid and flow upscaling), bicubic warp and median filter against cv2 itself."""
    rng = np.random.default_rng(5)
    img = (rng.random((37, 45)) * 255).astype(np.float32)
    t = torch.from_numpy(img)[None]
    down = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    ours = tvl1._resize(t, down.shape[0], down.shape[1], 1.25, 1.25)[0].numpy()
    assert np.abs(ours - down).max() < 1e-3
    up = cv2.resize(down, (45, 37), interpolation=cv2.INTER_LINEAR)
    ours = tvl1._resize(torch.from_numpy(down)[None], 37, 45, 1.0 / (37 / down.shape[0]),
                        1.0 / (45 / down.shape[1]))[0].numpy()
    assert np.abs(ours - up).max() < 1e-3

    h, w = img.shape
    flow = (rng.standard_normal((2, h, w)) * 3).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ref = cv2.remap(img, xs + flow[0], ys + flow[1], cv2.INTER_CUBIC)
    ours = tvl1._warp(t[:, None], torch.from_numpy(flow)[None], torch.from_numpy(xs), torch.from_numpy(ys))
    assert np.abs(ours[0, 0].numpy() - ref).max() < 1e-2

    for k in (3, 5):
        med = TorchTVL1(median_filtering=k)._median(torch.from_numpy(flow)[None])[0].numpy()
        for c in range(2):
            np.testing.assert_array_equal(med[c], cv2.medianBlur(flow[c], k))
    ties = np.round(flow * 2) / 2  # many equal values
    med = tvl1._median(torch.from_numpy(ties)[None])[0].numpy()
    for c in range(2):
        np.testing.assert_array_equal(med[c], cv2.medianBlur(ties[c], 5))


def test_dropping_converged_pairs_changes_nothing(synthetic):
    """The working-set compaction (compact_ratio) and the sync interval only change the speed."""
    names = list(synthetic)
    prev = np.stack([synthetic[n][0] for n in names])
    nxt = np.stack([synthetic[n][1] for n in names])
    default = np.stack([synthetic[n][2] for n in names])
    compacting = TorchTVL1()
    np.testing.assert_allclose(compacting.calc(prev, nxt), default, rtol=0, atol=1e-4)
    assert compacting.last_compactions > 0, "pairs converge at different steps: the working set should shrink"
    plain = TorchTVL1(compact_ratio=0.0, sync_every=3)
    np.testing.assert_allclose(plain.calc(prev, nxt), default, rtol=0, atol=1e-4)
    assert plain.last_compactions == 0
    chunked = TorchTVL1(cpu_chunk_pixels=2 * prev[0].size)  # CPU chunks of 2 + 1 pairs
    np.testing.assert_allclose(chunked.calc(prev, nxt), default, rtol=0, atol=1e-4)


def test_agrees_with_opencv_on_test_video_batch(tmp_path):
    """All consecutive pairs of a non-square H.264 clip (tests/videos.py: blocky texture, a moving
    bar, a brightness step each frame) solved in one batch, each pair against OpenCV."""
    from tests import videos

    path = videos.make_video(tmp_path / "moving.mp4", width=96, height=64, frames=6, audio=False)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in videos.decode_frames(path)])
    assert grey.shape == (6, 64, 96)
    ours = TorchTVL1().calc(grey[:-1], grey[1:])
    assert ours.shape == (5, 64, 96, 2)
    for k in range(5):
        ref = _opencv_flow(grey[k], grey[k + 1])
        assert np.abs(ref).mean() > 0.1
        epe, within = _agreement(ours[k], ref)
        print(f"test video pair {k}: EPE {epe:.4f} px, within 1 level {100 * within:.2f}%")
        assert epe <= EPE_MAX, k
        assert within >= WITHIN1_MIN, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(synthetic):
    names = list(synthetic)
    prev = torch.from_numpy(np.stack([synthetic[n][0] for n in names]))
    nxt = np.stack([synthetic[n][1] for n in names])
    gpu = TorchTVL1(device="cuda")
    flow = gpu.calc_tensor(prev.cuda(), nxt)
    assert flow.device.type == "cuda"
    cpu = np.stack([synthetic[n][2] for n in names])
    assert np.sqrt(((flow.cpu().numpy() - cpu) ** 2).sum(-1)).mean() < 0.01
    for k, n in enumerate(names):
        epe, within = _agreement(flow[k].cpu().numpy(), synthetic[n][3])
        assert epe <= EPE_MAX and within >= WITHIN1_MIN, n
