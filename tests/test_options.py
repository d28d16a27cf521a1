"""The stage commands' options come from the settings dataclasses, and extract/ stays in small modules."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from extract import audio, clip, flow, frames, stage
from extract.options import cli_fields, dest_of, flag_of, option, settings_from

REQUIRED = ["--manifest", "m.csv", "--work", "w"]
EXTRACT = Path(__file__).resolve().parents[1] / "extract"


def _help_default(help_text: str, flag: str) -> str:
    """The `(default: ...)` shown for `flag` in a parser's help."""
    block = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|^\S|\Z)", help_text, re.M | re.S)
    assert block, f"{flag} is not in the help"
    found = re.search(r"\(default: ([^)]*)\)", " ".join(block.group(0).split()))
    assert found, f"{flag} shows no default"
    return found.group(1)


@pytest.mark.parametrize("module", [frames, flow, audio], ids=lambda m: m.NAME)
def test_every_settings_field_is_an_option_with_the_dataclass_default(module):
    settings_type = module.STAGE.settings_type
    parser = stage.stage_parser(module.STAGE, "test")
    text = parser.format_help()
    fields = cli_fields(settings_type)
    assert {f.name for f in fields} == {f.name for f in dataclasses.fields(settings_type)}
    for f in fields:
        assert _help_default(text, flag_of(f)) == str(f.default), f.name
    assert settings_from(parser.parse_args(REQUIRED), settings_type) == settings_type()


def test_changing_a_default_in_the_dataclass_changes_the_command():
    @dataclasses.dataclass(frozen=True)
    class Other(frames.FrameSettings):
        num_frames: int = option(33, "frames picked per video")
        jpeg_quality: int = option(71, "JPEG quality")

    other = dataclasses.replace(frames.STAGE, settings_type=Other)
    parser = stage.stage_parser(other, "test")
    text = parser.format_help()
    assert _help_default(text, "--num-frames") == "33" and _help_default(text, "--jpeg-quality") == "71"
    assert _help_default(stage.stage_parser(frames.STAGE, "test").format_help(), "--num-frames") == str(
        clip.ClipSettings().num_frames)
    settings = settings_from(parser.parse_args(REQUIRED), Other)
    assert (settings.num_frames, settings.jpeg_quality, settings.size) == (33, 71, clip.ClipSettings().size)
    given = settings_from(parser.parse_args([*REQUIRED, "--num-frames", "5"]), Other)
    assert given.num_frames == 5


def test_a_renamed_flag_does_not_clash_with_the_runner_options():
    parser = stage.stage_parser(flow.STAGE, "test")
    args = parser.parse_args([*REQUIRED, "--backend", "dask", "--flow-backend", "torch"])
    backend = next(f for f in dataclasses.fields(flow.FlowSettings) if f.name == "backend")
    assert flag_of(backend) == "--flow-backend" and dest_of(backend) == "flow_backend"
    assert args.backend == "dask" and settings_from(args, flow.FlowSettings).backend == "torch"
    with pytest.raises(SystemExit):
        parser.parse_args([*REQUIRED, "--resize", "stretch"])  # choices come from the field too


def test_no_module_of_extract_is_over_600_lines():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in EXTRACT.glob("*.py")}
    assert "stage.py" in sizes
    assert {name: n for name, n in sizes.items() if n > 600} == {}
