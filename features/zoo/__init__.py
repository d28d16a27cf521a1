"""The built-in modalities, one file per modality or per family of backbones.

Each module reads top to bottom: the weights file(s), the network (which activation is the
feature), the prepare function (`features.inputs`: where a stage output becomes a tensor), a
seeded example input, and the `Modality` entries, listed in `MODALITIES`. The registry
(`features.modalities`) loads every module of this package on its first use; `ORDER` fixes the
order of the tables (a module not listed here comes after these, by name), so a new built-in
modality is one new file. Modalities of other distributions come in through the entry-point
group `dmver.modalities` instead (see `features.modalities`).
"""

ORDER = ("i3d", "vggish", "rgb2d", "text", "face", "egemaps", "videonets", "hf")
