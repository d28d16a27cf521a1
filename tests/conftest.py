"""Suite-wide settings and fixtures.

One torch thread: on a loaded 2-core machine, small tensors run many times slower with two
intra-op threads than with one; the tests check behaviour, not speed.

`staged_session` is a work folder with the frames, flow and audio stages run on four generated
videos (tests.workdirs.build_staged), built once per session: read it, never change it. A test
that changes stage outputs or writes features asks for `staged`, its own copy of that folder.
"""
import pytest
import torch

from tests.workdirs import Staged, build_staged, copy_staged

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def staged_session(tmp_path_factory) -> Staged:
    return build_staged(tmp_path_factory.mktemp("staged"))


@pytest.fixture
def staged(staged_session, tmp_path) -> Staged:
    return copy_staged(staged_session, tmp_path / "staged-work")
