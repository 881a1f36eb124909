"""Finding the clips of a data set and their classes, whatever folder layout it comes in.

Four layouts are understood:

- ``dcase2020``: ``dev_data/`` and/or ``eval_data/`` roots (or their ``<type>/`` folders, or
  one ``<type>/{train,test}`` tree), files ``normal_id_XX_*.wav`` / ``anomaly_id_XX_*.wav`` /
  ``id_XX_*.wav``; classes ``<type>/id_XX``. With all six official types the fixed 41-class map
  of the paper is used, so label numbers do not depend on which IDs are present.
- ``dcase2021`` (2021-2024): ``<type>/{train,test}/section_XX_{source,target}_{train,test}_
  {normal,anomaly}_NNNN[_attrs].wav``; classes per section or per section and attributes.
- ``own``: ``ROOT/<machine>/[<id>/]*.wav``, all normal training data.
- ``manifest``: a CSV ``file,class[,label[,split]]``.

The result is a ``DatasetIndex``: clips plus the class names in index order (the class map
stored with a trained run).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

LAYOUTS = ("dcase2020", "dcase2021", "own", "manifest")
CLASS_BY = ("section", "attribute")

DCASE2020_TYPES = ("fan", "pump", "slider", "ToyCar", "ToyConveyor", "valve")
"""Machine types of DCASE 2020 Task 2, in the label order of the reference code."""

DCASE2020_IDS: dict[str, tuple[int, ...]] = {
    "fan": tuple(range(0, 7)),
    "pump": tuple(range(0, 7)),
    "slider": tuple(range(0, 7)),
    "ToyCar": tuple(range(1, 8)),
    "ToyConveyor": tuple(range(1, 7)),
    "valve": tuple(range(0, 7)),
}

FIXED_41_CLASSES: tuple[str, ...] = tuple(
    f"{t}/id_{i:02d}" for t in DCASE2020_TYPES for i in DCASE2020_IDS[t]
)
"""The paper's fixed 41-class map (fan 0-6, pump 7-13, slider 14-20, ToyCar 21-27,
ToyConveyor 28-33, valve 34-40): the 23 IDs of the development set plus the 18 of the
additional training set. Fixed rather than derived from the IDs present because the released
code derives training labels as "previous maximum + 1" but test labels as sums of list lengths:
they agree only when the highest ID of every type is in the training data; with dev data alone
ToyCar ends at 24 and every later type's labels shift by 3."""

_RE_2020 = re.compile(r"^(?:(?P<label>normal|anomaly)_)?id_(?P<id>\d+)_(?P<num>\d+)\.wav$", re.IGNORECASE)
_RE_2021 = re.compile(
    r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<num>\d+)(?:_(?P<attrs>.+))?\.wav$",
    re.IGNORECASE,
)
_RE_2021_EVAL = re.compile(r"^section_(?P<section>\d+)_(?P<num>\d+)(?:_(?P<attrs>.+))?\.wav$", re.IGNORECASE)
_LABELS = {"normal": 0, "anomaly": 1, "0": 0, "1": 1, "abnormal": 1}


class DataError(UserError):
    """A data folder or manifest that cannot be used as given."""


@dataclass(frozen=True)
class Clip:
    """One sound file and what is known about it.

    ``label`` is 0 (normal), 1 (anomalous) or None (unlabelled evaluation clip); training clips
    are normal. ``domain`` and ``attrs`` only exist in the 2021+ layouts.
    """

    path: Path
    class_name: str
    split: str  # "train" or "test"
    label: int | None
    machine_type: str
    domain: str | None = None
    attrs: str | None = None
    section: str | None = None  # "section_XX" (2021+) or "id_XX" (2020)

    @property
    def machine_id(self) -> str | None:
        """The machine ID (``id_XX``) or section (``section_XX``) within the type, if known."""
        return self.section


@dataclass
class DatasetIndex:
    """All clips of a data set and the class map (class names in index order)."""

    clips: list[Clip]
    class_names: list[str]
    layout: str
    roots: list[Path] = field(default_factory=list)
    class_by: str = "section"

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.class_names)}

    @property
    def classes(self) -> list[str]:
        """Alias of ``class_names`` (the class map stored with a run)."""
        return self.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train(self) -> list[Clip]:
        return [c for c in self.clips if c.split == "train"]

    @property
    def test(self) -> list[Clip]:
        return [c for c in self.clips if c.split == "test"]

    @property
    def machine_types(self) -> list[str]:
        return sorted({c.machine_type for c in self.clips})

    def class_index(self, clip: Clip) -> int:
        """The index of the clip's own class (training target); DataError if it has none."""
        try:
            return self._index[clip.class_name]
        except KeyError:
            raise DataError(
                f"{clip.path}: class {clip.class_name!r} is not in the class map "
                f"({len(self.class_names)} classes): add training clips of that class or remove the file"
            ) from None

    def score_classes(self, clip: Clip) -> list[int]:
        """Classes a clip is scored against (the min over them is its anomaly score).

        Its own class when known; in attribute mode a test clip with attributes never seen in
        training is scored against every class of its section (DCASE 2022+ practice).
        """
        if clip.class_name in self._index:
            return [self._index[clip.class_name]]
        if self.class_by == "attribute" and clip.section is not None:
            prefix = f"{clip.machine_type}/{clip.section}/"
            found = [i for name, i in self._index.items() if name.startswith(prefix)]
            if found:
                return found
        self.class_index(clip)  # raises the DataError naming the file
        return []

    def summary(self) -> dict:
        """Counts for logs and the CLI."""
        test = self.test
        return {
            "layout": self.layout,
            "roots": [str(r) for r in self.roots],
            "classes": len(self.class_names),
            "train": len(self.train),
            "test_normal": sum(1 for c in test if c.label == 0),
            "test_anomaly": sum(1 for c in test if c.label == 1),
            "test_unlabelled": sum(1 for c in test if c.label is None),
        }


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def parse_dcase2020_name(name: str) -> tuple[int | None, int] | None:
    """``normal_id_01_00000003.wav`` -> (0, 1); ``id_05_00000000.wav`` -> (None, 5); else None."""
    m = _RE_2020.match(name)
    if not m:
        return None
    label = m.group("label")
    return (_LABELS[label.lower()] if label else None), int(m.group("id"))


def _wavs(folder: Path) -> list[Path]:
    """WAV files below ``folder``, sorted; hidden ones (macOS ``._x.wav`` forks) are not clips."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and not p.name.startswith(".") and p.is_file()
    )


def _split_wavs(type_dirs: Sequence[Path]) -> Iterator[tuple[str, str, Path]]:
    """``(machine type, "train"|"test", wav)`` for every clip of ``<type>/{train,test}/``."""
    for type_dir in type_dirs:
        for split in ("train", "test"):
            folder = type_dir / split
            if folder.is_dir():
                for wav in _wavs(folder):
                    yield type_dir.name, split, wav


def _check_roots(roots: Sequence[str | Path] | str | Path) -> list[Path]:
    if isinstance(roots, (str, Path)):
        roots = [roots]
    paths = [Path(r).expanduser() for r in roots]
    if not paths:
        raise DataError("no data folder given: pass at least one folder (or a CSV manifest)")
    for p in paths:
        if not p.exists():
            raise DataError(f"data folder {p} does not exist: check the path")
    return paths


def detect_layout(roots: Sequence[str | Path] | str | Path) -> str:
    """Guess the layout from the file names: "dcase2020", "dcase2021", "own" or "manifest"."""
    paths = _check_roots(roots)
    if all(p.is_file() and p.suffix.lower() == ".csv" for p in paths):
        return "manifest"
    counts: Counter[str] = Counter()
    for root in paths:
        if root.is_file():
            raise DataError(f"{root} is a file: give a data folder, or a .csv manifest")
        any_wav = False
        for wav in _wavs(root):
            any_wav = True
            name = wav.name
            if _RE_2021.match(name) or _RE_2021_EVAL.match(name):
                counts["dcase2021"] += 1
            elif _RE_2020.match(name) and wav.parent.name.lower() in ("train", "test"):
                counts["dcase2020"] += 1
            else:
                counts["own"] += 1
        if not any_wav:
            raise DataError(f"no .wav files found under {root}: point to a folder that holds the clips")
    best = max(("dcase2021", "dcase2020", "own"), key=lambda k: counts[k])
    return best


# --------------------------------------------------------------------------------------------
# DCASE 2020
# --------------------------------------------------------------------------------------------


def _dcase2020_type_dirs(root: Path) -> list[Path]:
    """The ``<type>`` folders under a root in any of the accepted shapes."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return [root]  # a single <type>/{train,test} tree
    out: list[Path] = []
    for sub in ("dev_data", "eval_data"):
        if (root / sub).is_dir():
            out += [d for d in sorted((root / sub).iterdir()) if d.is_dir()]
    if not out:
        out = [d for d in sorted(root.iterdir()) if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir())]
    return out


def _index_dcase2020(roots: list[Path]) -> tuple[list[Clip], list[str]]:
    clips: list[Clip] = []
    skipped = 0
    for root in roots:
        type_dirs = _dcase2020_type_dirs(root)
        if not type_dirs:
            raise DataError(
                f"no DCASE 2020 machine folders under {root}: expected dev_data/<type>/train, "
                "<type>/train or train/ and test/ folders"
            )
        for machine_type, split, wav in _split_wavs(type_dirs):
            parsed = parse_dcase2020_name(wav.name)
            if parsed is None:
                skipped += 1
                logger.warning("skipping %s: not a DCASE 2020 file name", wav)
                continue
            label, mid = parsed
            if split == "train":
                label = 0
            clips.append(
                Clip(wav, f"{machine_type}/id_{mid:02d}", split, label, machine_type, section=f"id_{mid:02d}")
            )
    if not clips:
        raise DataError(
            f"no DCASE 2020 clips (normal_id_XX_*.wav, anomaly_id_XX_*.wav, id_XX_*.wav) under "
            f"{', '.join(map(str, roots))}: check the folder or pass --layout"
        )
    types = {c.machine_type for c in clips}
    if set(DCASE2020_TYPES) <= types:
        classes = list(FIXED_41_CLASSES)
        logger.info("all six DCASE 2020 machine types found: using the fixed 41-class map")
    else:
        classes = _classes_from(clips)
    if skipped:
        logger.warning("%d files with other names were skipped", skipped)
    return clips, classes


# --------------------------------------------------------------------------------------------
# DCASE 2021-2024
# --------------------------------------------------------------------------------------------


def _index_dcase2021(roots: list[Path], class_by: str) -> tuple[list[Clip], list[str]]:
    clips: list[Clip] = []
    for root in roots:
        type_dirs: list[Path] = []
        if (root / "train").is_dir() or (root / "test").is_dir():
            type_dirs = [root]
        else:
            for base in (root, root / "dev_data", root / "eval_data"):
                if base.is_dir():
                    type_dirs += [d for d in sorted(base.iterdir()) if d.is_dir() and d.name not in ("dev_data", "eval_data")]
            # dev_data/raw/<type> (2022+ download layout)
            for raw in (root / "dev_data" / "raw", root / "eval_data" / "raw"):
                if raw.is_dir():
                    type_dirs += [d for d in sorted(raw.iterdir()) if d.is_dir()]
        for machine_type, split, wav in _split_wavs(type_dirs):
            clip = _parse_2021(wav, machine_type, split, class_by)
            if clip is None:
                logger.warning("skipping %s: not a DCASE 2021+ file name", wav)
                continue
            clips.append(clip)
    if not clips:
        raise DataError(
            f"no DCASE 2021+ clips (section_XX_source_train_normal_NNNN*.wav) under "
            f"{', '.join(map(str, roots))}: check the folder or pass --layout"
        )
    return clips, _classes_from(clips)


def _parse_2021(wav: Path, machine_type: str, split: str, class_by: str) -> Clip | None:
    m = _RE_2021.match(wav.name)
    if m:
        section = f"section_{m.group('section')}"
        attrs = m.group("attrs")
        label = _LABELS[m.group("label").lower()]
        domain = m.group("domain").lower()
    else:
        m = _RE_2021_EVAL.match(wav.name)
        if not m:
            return None
        section, attrs, label, domain = f"section_{m.group('section')}", m.group("attrs"), None, None
    if split == "train":
        label = 0
    class_name = f"{machine_type}/{section}"
    if class_by == "attribute" and attrs:
        class_name = f"{class_name}/{attrs}"
    return Clip(wav, class_name, split, label, machine_type, domain, attrs, section)


# --------------------------------------------------------------------------------------------
# Own machines and manifests
# --------------------------------------------------------------------------------------------


def _index_own(roots: list[Path]) -> tuple[list[Clip], list[str]]:
    clips: list[Clip] = []
    for root in roots:
        wavs = _wavs(root)
        if not wavs:
            raise DataError(f"no .wav files found under {root}: point to a folder that holds the clips")
        for wav in wavs:
            rel = wav.relative_to(root).parts[:-1]
            if not rel:
                parts = [root.name]  # WAVs right in the root: the root is the machine
            else:
                parts = list(rel[:2])
            machine = parts[0]
            clips.append(Clip(wav, "/".join(parts), "train", 0, machine))
    return clips, _classes_from(clips)


def _index_manifest(csv_paths: list[Path]) -> tuple[list[Clip], list[str]]:
    clips: list[Clip] = []
    for csv_path in csv_paths:
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read manifest {csv_path}: {err}") from err
        rows = [r for r in csv.reader(text.splitlines()) if r and any(x.strip() for x in r)]
        if not rows:
            raise DataError(f"manifest {csv_path} is empty: write one line per clip as file,class[,label]")
        columns = ["file", "class", "label", "split"]
        if rows[0][0].strip().lower() in ("file", "path", "filename"):
            header = [h.strip().lower() for h in rows[0]]
            rows = rows[1:]
            if "class" not in header:
                raise DataError(f"manifest {csv_path}: the header needs a 'class' column (file,class[,label])")
            columns = ["file" if h in ("path", "filename") else h for h in header]
        for line_no, row in enumerate(rows, start=2 if columns[0] == "file" else 1):
            rec = {columns[i]: row[i].strip() for i in range(min(len(row), len(columns)))}
            if not rec.get("file") or not rec.get("class"):
                raise DataError(f"manifest {csv_path} line {line_no}: need at least file,class, got {row!r}")
            path = Path(rec["file"])
            if not path.is_absolute():
                path = csv_path.parent / path
            if not path.is_file():
                raise DataError(f"manifest {csv_path} line {line_no}: audio file {path} does not exist")
            raw_label = rec.get("label", "").lower()
            if raw_label and raw_label not in _LABELS:
                raise DataError(
                    f"manifest {csv_path} line {line_no}: label {rec['label']!r} must be normal/anomaly or 0/1"
                )
            label = _LABELS[raw_label] if raw_label else None
            split = rec.get("split", "").lower() or ("test" if label is not None else "train")
            if split not in ("train", "test"):
                raise DataError(f"manifest {csv_path} line {line_no}: split {rec['split']!r} must be train or test")
            if split == "train":
                if label == 1:
                    raise DataError(f"manifest {csv_path} line {line_no}: training clips must be normal")
                label = 0
            cls = rec["class"]
            clips.append(Clip(path, cls, split, label, cls.split("/")[0]))
    return clips, _classes_from(clips)


def _classes_from(clips: Iterable[Clip]) -> list[str]:
    """Sorted class names of the training clips (of all clips when there are none)."""
    clips = list(clips)
    train = [c for c in clips if c.split == "train"]
    return sorted({c.class_name for c in (train or clips)})


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_index(
    roots: Sequence[str | Path] | str | Path,
    layout: str = "auto",
    class_by: str = "section",
    classes: Sequence[str] | None = None,
) -> DatasetIndex:
    """Index the clips under ``roots`` (folders, or CSV manifests) and build the class map.

    ``classes``: a stored class map (a trained run's) to use instead of deriving one; every
    clip must then fall in it. Raises ``DataError`` naming the path for a missing root, a
    folder without WAVs, an unknown layout or a test clip outside the class map.
    """
    if layout not in ("auto", *LAYOUTS):
        raise DataError(f"unknown data layout {layout!r}: use auto, {', '.join(LAYOUTS)}")
    if class_by not in CLASS_BY:
        raise DataError(f"unknown class_by {class_by!r}: use {' or '.join(CLASS_BY)}")
    paths = _check_roots(roots)
    if layout == "auto":
        layout = detect_layout(paths)
        logger.info("data layout: %s (detected from %s)", layout, ", ".join(map(str, paths)))
    for p in paths:
        if layout == "manifest" and not p.is_file():
            raise DataError(f"layout 'manifest' needs CSV files, but {p} is a folder")
        if layout != "manifest" and not p.is_dir():
            raise DataError(f"{p} is not a folder: give a data folder (or a .csv manifest with layout manifest)")
        if p.is_dir() and not _wavs(p):
            raise DataError(f"no .wav files found under {p}: point to a folder that holds the clips")
    if layout == "dcase2020":
        clips, class_names = _index_dcase2020(paths)
    elif layout == "dcase2021":
        clips, class_names = _index_dcase2021(paths, class_by)
    elif layout == "own":
        clips, class_names = _index_own(paths)
    else:
        clips, class_names = _index_manifest(paths)
    if classes is not None:
        class_names = list(classes)
    index = DatasetIndex(clips, class_names, layout, paths, class_by)
    for clip in clips:
        if clip.split == "train":
            index.class_index(clip)
        else:
            index.score_classes(clip)
    logger.info(
        "indexed %d clips (%d train, %d test) in %d classes", len(clips), len(index.train), len(index.test), len(class_names)
    )
    return index


__all__ = [
    "CLASS_BY",
    "DCASE2020_TYPES",
    "FIXED_41_CLASSES",
    "LAYOUTS",
    "Clip",
    "DataError",
    "DatasetIndex",
    "build_index",
    "detect_layout",
    "parse_dcase2020_name",
]
