"""The results table's rows: the published three declared as data, every other row derived.

The seed's table (the DMVER dataset README) has three methods:

    ConvNet+LSTM   RGB = rgb2d features (ResNet-18 per frame) with the LSTM head
    I3D            RGB = rgb, Flow/Audio = flow,  Joint = late fusion of rgb + flow
    Audio+I3D      RGB = rgb, Flow/Audio = audio, Joint = late fusion of rgb + flow + audio

Beyond them, in a table of their own marked as not published, `extra_rows` derives from the
modality registry one row per modality the seed rows do not use (named by its `label`, one cell
in its `column`: Text, R(2+1)D, HuBERT, a plugin's Face...), and "All modalities", the joint of
every modality marked `in_all` whose cache exists. A new modality thus gets its row by being
registered, without an edit here. `classify.table --joint early,tfn,xattn` adds one row per
joint head over those same modalities ("All modalities, early", ...: `joint_rule_rows`).
"""
from __future__ import annotations

import dataclasses

from features import cache

ALL_MODALITIES = "All modalities"
JOINT = "Joint"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: its cells as {column: modalities} (one modality: a single run;
    several: the late fusion of their runs), a fixed head if the method has one, and whether the
    seed's published table has it (published numbers are keyed by row and column name)."""
    name: str
    cells: dict[str, tuple[str, ...]]
    head: str | None = None
    published: bool = True
    rule: str | None = None  # a fixed fusion rule (the joint heads' rows); None: the table's --rule


COLUMNS = ("RGB", "Flow/Audio", JOINT)
SEED_ROWS = (
    Row("ConvNet+LSTM", {"RGB": ("rgb2d",)}, head="lstm"),  # an LSTM whatever --head says
    Row("I3D", {"RGB": ("rgb",), "Flow/Audio": ("flow",), JOINT: ("rgb", "flow")}),
    Row("Audio+I3D", {"RGB": ("rgb",), "Flow/Audio": ("audio",), JOINT: ("rgb", "flow", "audio")}),
)


def modalities_of(rows) -> list[str]:
    """Every modality the rows use, in order of first use."""
    return list(dict.fromkeys(m for row in rows for mods in row.cells.values() for m in mods))


def singles(rows) -> list[tuple[str, str | None]]:
    """(modality, fixed head) of every single run the rows need, in order of first use: the
    training order, one cache in memory at a time."""
    out: dict[tuple[str, str | None], None] = {}
    for row in rows:
        for mods in row.cells.values():
            for m in mods:
                out.setdefault((m, row.head), None)
    return list(out)


def extra_rows(entries, has_cache=lambda name: True) -> tuple[Row, ...]:
    """Every row beyond the seed's table, derived from modality entries (`name`, `label`,
    `column`, `in_all`; `features.modalities.all_modalities()`), in their order.

    "All modalities" fuses the `in_all` modalities for which `has_cache(name)` holds; when fewer
    than two have a cache it names them all (its cells then say which caches are missing). It
    is left out when fewer than two modalities are marked `in_all`."""
    seed = set(modalities_of(SEED_ROWS))
    rows = [Row(m.label, {m.column: (m.name,)}, published=False) for m in entries if m.name not in seed]
    joint = [m.name for m in entries if m.in_all]
    cached = [name for name in joint if has_cache(name)]
    if len(joint) > 1:
        rows.append(Row(ALL_MODALITIES, {JOINT: tuple(cached if len(cached) > 1 else joint)}, published=False))
    return tuple(rows)


def joint_rule_rows(entries, has_cache, rules) -> tuple[Row, ...]:
    """One row per joint rule ("All modalities, early", ", tfn", ", xattn": `classify.joint`),
    over the `in_all` modalities whose cache exists; none when fewer than two have one."""
    cached = tuple(m.name for m in entries if m.in_all and has_cache(m.name))
    return tuple(Row(f"{ALL_MODALITIES}, {r}", {JOINT: cached}, published=False, rule=r) for r in rules) if len(cached) > 1 else ()


def _shown_by_default(row: Row, has_cache) -> bool:
    """`auto`: every cache of the row exists, and the "All modalities" joint adds a modality to
    what the seed rows already fuse (rgb + flow + audio alone is the Audio+I3D joint)."""
    mods = modalities_of([row])
    if not all(has_cache(m) for m in mods):
        return False
    if row.name == ALL_MODALITIES:
        return len(mods) > 1 and not set(mods) <= set(modalities_of(SEED_ROWS))
    return True


def select_extra_rows(work, names: str, entries, joint_rules=()) -> tuple[Row, ...]:
    """The extra rows to show: `auto` (those whose caches exist), `none`, or row names,
    comma-separated (a named row is shown even without its caches: its cells say n/a); then one
    row per joint rule in `joint_rules` (`classify.table --joint`), whatever `names` says."""
    def has_cache(m: str) -> bool:
        return cache.exists(work, m)

    return _select(names, entries, has_cache) + joint_rule_rows(entries, has_cache, joint_rules)


def _select(names: str, entries, has_cache) -> tuple[Row, ...]:
    rows = extra_rows(entries, has_cache)
    if names == "auto":
        return tuple(r for r in rows if _shown_by_default(r, has_cache))
    if names in ("", "none"):
        return ()
    by_name = {r.name.lower(): r for r in rows}
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown extra row(s) {unknown}; known: {', '.join(r.name for r in rows)}")
    return tuple(by_name[n] for n in wanted)


def describe_rows(rows) -> str:
    """'ConvNet+LSTM: RGB = rgb2d (ResNet-18 on each frame); I3D: RGB = rgb, ...' from the declarations."""
    from features import modalities as registry

    def name(m: str) -> str:
        try:
            return f"{m} ({registry.get(m).summary})"
        except ValueError:
            return m
    parts = []
    for row in rows:
        cells = ", ".join(f"{col} = {'+'.join(mods) if len(mods) > 1 else name(mods[0])}" for col, mods in row.cells.items())
        parts.append(f"{row.name}: {cells}")
    return "; ".join(parts)
