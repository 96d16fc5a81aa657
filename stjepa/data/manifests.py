"""Video and image lists ("manifests") in three formats, parsed to :class:`VideoSample` lists.

1. ``vjepa``: the V-JEPA 2 text/csv format, one ``<path> <integer label>`` per line (no
   header). The label is the last whitespace-separated field, so paths may contain spaces.
   Integer labels keep their value as class id. Relative paths resolve against
   ``video_root`` if given, else against the manifest's own folder. Blank lines and lines
   starting with ``#`` are skipped.
2. ``kinetics_csv``: a Kinetics annotations CSV (``label,youtube_id,time_start,time_end,split``
   and possibly extra columns). Videos are looked up by file stem in ``video_root`` (flat, in
   ``<label>/``, ``<split>/`` or ``<split>/<label>/`` folders). A row whose video is not found
   is kept with its expected path and counted in :attr:`Manifest.missing`.
3. ``folders``: a directory of class folders; videos anywhere below a class folder.

Image sources (``media="image"``) use the same ``vjepa`` lines and ``folders`` trees (an
ImageNet-style ``root/<class>/*.jpg``) with image extensions; Kinetics CSVs list videos only.

:func:`read_manifest` only parses; class ids for named labels come from
:func:`build_label_map` (alphabetical over all manifests) or from a given map, both through
:func:`load_manifests`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
EXTENSIONS = {"video": VIDEO_EXTENSIONS, "image": IMAGE_EXTENSIONS}  # by media
FORMATS = ("vjepa", "kinetics_csv", "folders")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
UNASSIGNED = -1  # label id of named-label samples until a label map is applied
# earlier names of the data keys that give lists, still read: image sources named theirs
# train_root / val_root (a folder or a list file, as a video source's train_manifest is)
RENAMED_KEYS = {"train_root": "train_manifest", "val_root": "val_manifest"}
LIST_FORMS = {"video": "a V-JEPA '<path> <label>' list, a Kinetics annotations CSV or a folder of class folders",
              "image": "a folder of class folders (root/<class>/*.jpg) or a '<path> <integer label>' list file"}

PathLike = str | os.PathLike


@dataclass(frozen=True)
class VideoSample:
    path: str  # absolute path of the video or image file
    label: int  # class id (UNASSIGNED for named labels straight out of read_manifest)
    source: int = 0  # index of the manifest it came from (for weighted mixing)


@dataclass
class Manifest:
    path: str  # where it came from, as given
    format: str  # one of FORMATS
    samples: list[VideoSample]
    label_names: list[str]  # raw label per sample, same order as samples
    missing: int = 0  # kinetics_csv rows whose video was not found under video_root


# -- format detection ----------------------------------------------------------------------------

def check_lists_exist(key: str, paths: Iterable[PathLike], media: str) -> None:
    """Every path given under config key ``key`` exists, else one sentence naming the key and
    what it may be."""
    for path in paths:
        if not os.path.exists(os.path.expanduser(os.fspath(path))):
            raise ManifestError(f"{key} names '{path}', which does not exist; give {LIST_FORMS[media]}.")


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise ManifestError(f"manifest '{path}' does not exist.")


def _read_text(path: str) -> str:
    try:
        # utf-8-sig: CSVs saved by spreadsheets often start with a byte-order mark
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest '{path}' cannot be read as UTF-8 text: {exc}.") from exc


def _is_kinetics_header(line: str) -> bool:
    fields = {field.strip().lower() for field in next(csv.reader([line]), [])}
    return "label" in fields and "youtube_id" in fields


def detect_format(path: PathLike) -> str:
    """``folders`` for a directory, ``kinetics_csv`` for a CSV with a Kinetics header, else ``vjepa``."""
    path = os.path.expanduser(os.fspath(path))
    _check_exists(path)
    if os.path.isdir(path):
        return "folders"
    try:
        with open(path, encoding="utf-8-sig") as f:  # only up to the first non-empty line
            first = next((line for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest '{path}' cannot be read as UTF-8 text: {exc}.") from exc
    # an empty file counts as vjepa: read_manifest then reports that it lists no videos
    return "kinetics_csv" if _is_kinetics_header(first) else "vjepa"


# -- V-JEPA format -------------------------------------------------------------------------------

def _resolve(path: str, base: str) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def _parse_vjepa_line(line: str, manifest: str, line_no: int) -> tuple[str, str]:
    """``(path, label name)`` of one non-comment line; the label name is the normalised integer."""
    fields = line.rsplit(None, 1)
    # a non-negative integer: isdigit rejects "-1" and "1.0", isascii rejects digits int() cannot parse
    if len(fields) == 2 and fields[1].isascii() and fields[1].isdigit():
        return fields[0].strip(), str(int(fields[1]))
    raise ManifestError(
        f"manifest '{manifest}' line {line_no}: expected '<path> <integer label>', got '{line}'."
    )


def _read_vjepa(path: str, video_root: str | None) -> Manifest:
    base = video_root if video_root is not None else os.path.dirname(os.path.abspath(path))
    samples, names = [], []
    for line_no, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        video, name = _parse_vjepa_line(line, path, line_no)
        samples.append(VideoSample(_resolve(video, base), int(name)))
        names.append(name)
    return Manifest(path, "vjepa", samples, names)


# -- Kinetics annotations CSV --------------------------------------------------------------------

def _check_video_root(path: str, video_root: str | None) -> str:
    if video_root is None:
        raise ManifestError(
            f"manifest '{path}' is a Kinetics annotations CSV, which needs data.video_root "
            "(the folder holding the downloaded videos)."
        )
    if not os.path.isdir(video_root):
        raise ManifestError(f"video_root '{video_root}' for manifest '{path}' is not a directory.")
    return os.path.abspath(video_root)


def index_videos(root: str) -> dict[str, str]:
    """File stem -> path of every video below ``root``, from one walk (the first path wins)."""
    index: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()  # deterministic choice if a stem appears twice
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                index.setdefault(stem, os.path.join(dirpath, name))
    return index


def _time(value: str, column: str, manifest: str, line_no: int) -> int:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds.is_integer():  # also rejects nan and inf
        raise ManifestError(
            f"manifest '{manifest}' line {line_no}: {column} must be a whole number of seconds, got '{value}'."
        )
    return int(seconds)


def _header_columns(header: list[str], manifest: str, need_split: bool) -> dict[str, int]:
    """Index of each column the reader uses (extra columns such as ``is_cc`` are ignored)."""
    columns = {name.strip().lower(): i for i, name in enumerate(header)}
    needed = KINETICS_COLUMNS + (("split",) if need_split else ())
    absent = [name for name in needed if name not in columns]
    if absent:
        raise ManifestError(
            f"manifest '{manifest}' header lacks column(s) {', '.join(absent)}; "
            f"a Kinetics CSV needs {', '.join(needed)}."
        )
    return {name: columns[name] for name in needed}


def _kinetics_rows(path: str, split: str | None) -> Iterator[tuple[int, str, str, int, int]]:
    """``(line number, label, youtube_id, time_start, time_end)`` of each row in ``split``."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    columns: dict[str, int] | None = None
    width = 0  # fields a row needs to reach every column used
    for row in reader:
        if not any(row):  # blank line
            continue
        if columns is None:
            columns = _header_columns(row, path, split is not None)
            width = 1 + max(columns.values())
            continue
        line_no = reader.line_num  # the physical line the row ends on
        if len(row) < width:
            raise ManifestError(
                f"manifest '{path}' line {line_no}: expected at least {width} columns as in the header, got {len(row)}."
            )
        if split is not None and row[columns["split"]].strip() != split:
            continue
        label, youtube_id = row[columns["label"]].strip(), row[columns["youtube_id"]].strip()
        if not label or not youtube_id:
            raise ManifestError(f"manifest '{path}' line {line_no}: empty label or youtube_id.")
        start = _time(row[columns["time_start"]].strip(), "time_start", path, line_no)
        end = _time(row[columns["time_end"]].strip(), "time_end", path, line_no)
        yield line_no, label, youtube_id, start, end


def kinetics_stems(youtube_id: str, start: int, end: int) -> tuple[str, str]:
    """File stems a downloaded clip may have, the preferred (trimmed clip) one first."""
    return f"{youtube_id}_{start:06d}_{end:06d}", youtube_id


def _read_kinetics(path: str, video_root: str | None, split: str | None) -> Manifest:
    root = _check_video_root(path, video_root)
    index = index_videos(root)
    samples, names, missing = [], [], 0
    for _, label, youtube_id, start, end in _kinetics_rows(path, split):
        stems = kinetics_stems(youtube_id, start, end)
        found = next((index[stem] for stem in stems if stem in index), None)
        if found is None:
            # kept so the dataset counts it as a bad video instead of it vanishing silently
            missing += 1
            found = os.path.join(root, stems[0] + VIDEO_EXTENSIONS[0])
        samples.append(VideoSample(found, UNASSIGNED))
        names.append(label)
    return Manifest(path, "kinetics_csv", samples, names, missing)


# -- folder of class folders ---------------------------------------------------------------------

def _files_below(folder: str, extensions: tuple[str, ...]) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, name) for name in sorted(filenames)
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions]
    return found


def _read_folders(path: str, media: str) -> Manifest:
    root = os.path.abspath(path)
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    classes = [e for e in entries if e.is_dir()]
    if not classes:
        what = "is empty" if not entries else "has no class subfolders, only files"
        raise ManifestError(f"folder '{path}' {what}; a folder source needs one subfolder per class "
                            f"(root/<class>/<{media} files>).")
    samples, names = [], []
    for entry in classes:
        for file in _files_below(entry.path, EXTENSIONS[media]):
            samples.append(VideoSample(file, UNASSIGNED))
            names.append(entry.name)
    return Manifest(path, "folders", samples, names)


# -- public API ----------------------------------------------------------------------------------

def read_manifest(path: PathLike, video_root: PathLike | None = None, split: str | None = None,
                  media: str = "video") -> Manifest:
    """Parse one manifest of ``media`` files ("video" or "image"). ``split`` filters the rows of
    a Kinetics CSV (other formats have no split column and ignore it). Named labels get
    ``label=UNASSIGNED`` until a map is applied."""
    if media not in EXTENSIONS:
        raise ValueError(f"media={media!r}; allowed values are {', '.join(EXTENSIONS)}.")
    path = os.path.expanduser(os.fspath(path))
    root = None if video_root is None else os.path.expanduser(os.fspath(video_root))
    fmt = detect_format(path)
    if fmt == "kinetics_csv" and media != "video":
        raise ManifestError(f"manifest '{path}' is a Kinetics annotations CSV, which lists videos; an {media} "
                            f"source is a folder of class folders or a '<path> <integer label>' list.")
    if fmt == "folders":
        manifest = _read_folders(path, media)
    elif fmt == "kinetics_csv":
        manifest = _read_kinetics(path, root, split)
    else:
        manifest = _read_vjepa(path, root)
    if not manifest.samples:
        where = f" for split '{split}'" if split is not None and fmt == "kinetics_csv" else ""
        raise ManifestError(f"manifest '{path}' lists no {media}s{where}.")
    return manifest


def _has_integer_labels(manifest: Manifest) -> bool:
    return manifest.format == "vjepa"


def build_label_map(manifests: Sequence[Manifest]) -> dict[str, int]:
    """Integer labels map to themselves; named labels get ids in alphabetical order of the
    union of names. The two kinds cannot be mixed."""
    integer = [m for m in manifests if _has_integer_labels(m)]
    named = [m for m in manifests if not _has_integer_labels(m)]
    if integer and named:
        raise ManifestError(
            f"manifest '{integer[0].path}' has integer labels and manifest '{named[0].path}' has named labels; "
            "they cannot share a label space (convert the named one with scripts/make_manifest.py)."
        )
    names = {name for m in manifests for name in m.label_names}
    if integer:
        return {name: int(name) for name in sorted(names, key=int)}
    return {name: i for i, name in enumerate(sorted(names))}


def _apply_label_map(manifest: Manifest, label_map: dict[str, int], source: int) -> list[VideoSample]:
    samples = []
    for sample, name in zip(manifest.samples, manifest.label_names):
        if name not in label_map:
            raise ManifestError(
                f"manifest '{manifest.path}': label '{name}' is not in the label map "
                f"({len(label_map)} classes, e.g. {', '.join(list(label_map)[:3])})."
            )
        samples.append(VideoSample(sample.path, label_map[name], source))
    return samples


def _as_path_list(paths: PathLike | Iterable[PathLike]) -> list[str]:
    # accepts a single path or any sequence (lists from Hydra configs are ListConfig, not list)
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def load_manifests(
    paths: PathLike | Iterable[PathLike],
    video_root: PathLike | None = None,
    label_map: dict[str, int] | None = None,
    split: str | Sequence[str | None] | None = None,
    media: str = "video",
) -> tuple[list[VideoSample], dict[str, int]]:
    """Samples of all manifests (``source`` = position in ``paths``) and the label map used:
    ``label_map`` if given (e.g. the training map for validation), else one built from them.
    ``split`` filters Kinetics CSV rows: one value for all manifests or one per manifest."""
    path_list = _as_path_list(paths)
    if not path_list:
        raise ManifestError("no manifest given; set data.train_manifest / data.val_manifest.")
    splits = [split] * len(path_list) if split is None or isinstance(split, str) else list(split)
    manifests = [read_manifest(p, video_root, s, media) for p, s in zip(path_list, splits)]
    if label_map is None:
        label_map = build_label_map(manifests)
    samples = []
    for source, manifest in enumerate(manifests):
        samples += _apply_label_map(manifest, label_map, source)
    return samples, label_map


def save_label_map(label_map: dict[str, int], path: PathLike) -> None:
    """Write ``{name: id}`` as JSON, ordered by id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = dict(sorted(label_map.items(), key=lambda item: item[1]))
    path.write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_label_map(path: PathLike) -> dict[str, int]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"label map '{path}' cannot be read as JSON: {exc}.") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise ManifestError(f"label map '{path}' must be a JSON object {{name: integer id}}.")
    return data
