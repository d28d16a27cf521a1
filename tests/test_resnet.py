"""ResNet-18 per-frame features: torchvision's layout, strict loading, same numbers as torchvision."""
from __future__ import annotations

import pytest
import torch
import torchvision

from features.checkpoints import CheckpointError
from features.resnet import ResNet18Features

try:
    from backbone_helpers import one_torch_thread, randomized_state, without_counters  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.backbone_helpers import one_torch_thread, randomized_state, without_counters  # noqa: F401


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A file in the layout of torchvision's resnet18-f37072fd.pth (fc.* included), random values."""
    reference = torchvision.models.resnet18(weights=None)
    state = randomized_state(reference, seed=7)
    path = tmp_path_factory.mktemp("resnet") / "resnet18-f37072fd.pth"
    torch.save(state, path)
    reference.load_state_dict(state)
    return state, path, reference.eval()


def test_layout_is_torchvisions():
    with torch.device("meta"):
        ours = ResNet18Features().state_dict()
        theirs = torchvision.models.resnet18(weights=None).state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]


def test_features_are_torchvisions_pooled_output(torchvision_file):
    state, path, reference = torchvision_file
    model = ResNet18Features.load_checkpoint(path)
    assert not model.training
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        feats = model(x)
        logits = reference(x)
        head, reference.fc = reference.fc, torch.nn.Identity()
        try:
            pooled = reference(x)
        finally:
            reference.fc = head
        assert feats.shape == (2, 512) and (feats > 0).any()
        torch.testing.assert_close(feats, pooled)
        torch.testing.assert_close(model.classify(x), logits)


def test_accepts_old_files_and_files_without_the_head(torchvision_file, tmp_path):
    state = torchvision_file[0]
    old = tmp_path / "old.pth"
    torch.save(without_counters(state), old)
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, headless)
    for path in (old, headless):
        loaded = ResNet18Features.load_checkpoint(path).state_dict()
        assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_layout_errors_name_the_keys(torchvision_file, tmp_path):
    state = dict(torchvision_file[0])
    del state["layer3.0.downsample.0.weight"]
    state["fc.weight"] = torch.zeros(10, 512)
    state["fc.bias"] = torch.zeros(10)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        ResNet18Features.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing keys: layer3.0.downsample.0.weight" in message
    assert "2 mis-shaped keys: fc.weight (file (10, 512), model (1000, 512))" in message
