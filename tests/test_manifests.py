"""Manifest parsing: the V-JEPA, Kinetics CSV and class-folder formats, label maps, errors.

Videos are empty files: nothing is decoded here."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stjepa.data.manifests import (
    Manifest,
    ManifestError,
    VideoSample,
    build_label_map,
    detect_format,
    load_label_map,
    load_manifests,
    read_manifest,
    save_label_map,
)
from train_helpers import CHILD_TIMEOUT

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_manifest.py"
HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_manifest_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_manifest = _load_script().make_manifest


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def as_set(samples: list[VideoSample]) -> set[tuple[str, int]]:
    return {(s.path, s.label) for s in samples}


# -- the same videos in three formats ------------------------------------------------------------

# (label, youtube_id, start, end, named as a trimmed clip?)
CLIPS = [
    ("zebra", "z1", 10, 20, True),
    ("zebra", "-z_2", 0, 10, False),  # Kinetics ids may start with '-' and contain '_'
    ("apple", "a1", 5, 15, True),
    ("mango", "m1", 100, 110, True),
    ("mango", "m2", 7, 17, False),
]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "videos"
    rows = []
    for label, yid, start, end, trimmed in CLIPS:
        name = f"{yid}_{start:06d}_{end:06d}.mp4" if trimmed else f"{yid}.mp4"
        touch(root / label / name)
        rows.append(f"{label},{yid},{start},{end},train,0\n")
    csv_path = write(tmp_path / "train.csv", HEADER + "".join(rows))
    return root, csv_path


def test_three_formats_agree(dataset, tmp_path):
    root, csv_path = dataset
    from_folders, folder_map = load_manifests(str(root))
    from_csv, csv_map = load_manifests(str(csv_path), video_root=root)
    assert folder_map == csv_map == {"apple": 0, "mango": 1, "zebra": 2}
    assert as_set(from_folders) == as_set(from_csv)
    assert len(from_csv) == len(CLIPS)
    assert all(os.path.isabs(s.path) and os.path.exists(s.path) for s in from_csv)

    for name, source, root_arg in (("a", root, None), ("b", csv_path, root)):
        out = tmp_path / f"{name}.txt"
        result = make_manifest(source, out, video_root=root_arg)
        assert result == {"written": len(CLIPS), "missing": 0, "classes": 3, "out": str(out),
                          "label_map": str(tmp_path / f"{name}_classes.json")}
        assert detect_format(out) == "vjepa"
        from_vjepa, vjepa_map = load_manifests(out)
        assert as_set(from_vjepa) == as_set(from_csv)
        assert vjepa_map == {"0": 0, "1": 1, "2": 2}
        assert load_label_map(result["label_map"]) == csv_map


def test_make_manifest_relative_paths_and_cli(dataset, tmp_path):
    root, csv_path = dataset
    out = tmp_path / "lists" / "train.txt"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(csv_path), str(out), "--video-root", str(root),
         "--relative-to", str(root), "--label-map", str(tmp_path / "classes.json")],
        capture_output=True, text=True, check=True, timeout=CHILD_TIMEOUT,
    )
    assert "wrote 5 videos (0 files not found) in 3 classes" in proc.stdout
    assert all(not os.path.isabs(line.rsplit(" ", 1)[0]) for line in out.read_text().splitlines())
    samples, _ = load_manifests(out, video_root=root)
    expected, _ = load_manifests(csv_path, video_root=root)
    assert as_set(samples) == as_set(expected)
    assert load_label_map(tmp_path / "classes.json") == {"apple": 0, "mango": 1, "zebra": 2}


def test_make_manifest_reuses_label_map(dataset, tmp_path):
    root, _ = dataset
    save_label_map({"apple": 0, "banana": 1, "mango": 2, "zebra": 3}, tmp_path / "train_classes.json")
    make_manifest(root, tmp_path / "val.txt", use_label_map=tmp_path / "train_classes.json")
    labels = {int(line.rsplit(" ", 1)[1]) for line in (tmp_path / "val.txt").read_text().splitlines()}
    assert labels == {0, 2, 3}


# -- label maps ----------------------------------------------------------------------------------

def test_alphabetical_label_ids(tmp_path):
    for name in ("zebra", "apple", "mango"):
        touch(tmp_path / "classes" / name / "clip.webm")
    samples, label_map = load_manifests(tmp_path / "classes")
    assert label_map == {"apple": 0, "mango": 1, "zebra": 2}
    assert {Path(s.path).parent.name: s.label for s in samples} == label_map


def test_label_map_is_union_over_manifests(tmp_path):
    touch(tmp_path / "a" / "zebra" / "1.mp4")
    touch(tmp_path / "b" / "apple" / "2.mp4")
    samples, label_map = load_manifests([tmp_path / "a", tmp_path / "b"])
    assert label_map == {"apple": 0, "zebra": 1}
    assert [(s.label, s.source) for s in samples] == [(1, 0), (0, 1)]


def test_vjepa_and_named_labels_cannot_mix(tmp_path):
    touch(tmp_path / "classes" / "cat" / "1.mp4")
    write(tmp_path / "ints.txt", "x.mp4 3\n")
    with pytest.raises(ManifestError, match="cannot share a label space"):
        load_manifests([tmp_path / "ints.txt", tmp_path / "classes"])
    with pytest.raises(ManifestError, match="cannot share a label space"):
        build_label_map([read_manifest(tmp_path / "classes"), read_manifest(tmp_path / "ints.txt")])


def test_label_map_round_trip(tmp_path):
    label_map = {"zebra": 2, "apple": 0, "petting animal (not cat)": 1, "çà": 3}
    save_label_map(label_map, tmp_path / "sub" / "classes.json")
    assert load_label_map(tmp_path / "sub" / "classes.json") == label_map
    write(tmp_path / "bad.json", '["apple"]')
    with pytest.raises(ManifestError, match="bad.json"):
        load_label_map(tmp_path / "bad.json")


# -- V-JEPA format -------------------------------------------------------------------------------

def test_vjepa_paths_with_spaces_comments_and_blank_lines(tmp_path):
    write(tmp_path / "m.txt", "# a comment\n\n/data/my videos/clip one.mp4 3\n   \nb.mp4\t007\n")
    manifest = read_manifest(tmp_path / "m.txt")
    assert manifest.format == "vjepa"
    assert [s.path for s in manifest.samples] == ["/data/my videos/clip one.mp4", str(tmp_path / "b.mp4")]
    assert manifest.label_names == ["3", "7"]
    samples, label_map = load_manifests(tmp_path / "m.txt")
    assert [s.label for s in samples] == [3, 7]
    assert label_map == {"3": 3, "7": 7}


def test_vjepa_relative_paths(tmp_path):
    write(tmp_path / "lists" / "m.txt", "clips/a.mp4 0\n../b.mp4 1\n")
    own_folder = read_manifest(tmp_path / "lists" / "m.txt").samples
    assert [s.path for s in own_folder] == [str(tmp_path / "lists" / "clips" / "a.mp4"), str(tmp_path / "b.mp4")]
    with_root = read_manifest(tmp_path / "lists" / "m.txt", video_root=tmp_path / "data").samples
    assert [s.path for s in with_root] == [str(tmp_path / "data" / "clips" / "a.mp4"), str(tmp_path / "b.mp4")]


# -- Kinetics CSV --------------------------------------------------------------------------------

def test_kinetics_quoted_labels_float_times_and_layouts(tmp_path):
    root = tmp_path / "k400"
    touch(root / "a_000010_000020.mp4")  # flat
    touch(root / "train" / "b_000000_000010.mkv")  # <split>/
    touch(root / "train" / "dogs, cats" / "c.mp4")  # <split>/<label>/, named by id only
    write(tmp_path / "k.csv", HEADER
          + '"dogs, cats",a,10.0,20.0,train,0\n'
          + 'abseiling,b,0,10,train,1\n'
          + '"dogs, cats",c,3,13,train,0\n')
    manifest = read_manifest(tmp_path / "k.csv", video_root=root)
    assert manifest.format == "kinetics_csv"
    assert manifest.label_names == ["dogs, cats", "abseiling", "dogs, cats"]
    assert [s.path for s in manifest.samples] == [
        str(root / "a_000010_000020.mp4"), str(root / "train" / "b_000000_000010.mkv"),
        str(root / "train" / "dogs, cats" / "c.mp4")]
    assert manifest.missing == 0
    _, label_map = load_manifests(tmp_path / "k.csv", video_root=root)
    assert label_map == {"abseiling": 0, "dogs, cats": 1}


def test_kinetics_split_filter_and_missing_file(tmp_path):
    root = tmp_path / "k"
    touch(root / "a_000000_000010.mp4")
    write(tmp_path / "k.csv", HEADER + "cat,a,0,10,train,0\ncat,gone,1,11,train,0\ndog,v,0,10,val,0\n")
    manifest = read_manifest(tmp_path / "k.csv", video_root=root, split="train")
    assert manifest.label_names == ["cat", "cat"]
    assert manifest.missing == 1
    assert manifest.samples[1].path == str(root / "gone_000001_000011.mp4")
    assert len(read_manifest(tmp_path / "k.csv", video_root=root).samples) == 3
    with pytest.raises(ManifestError, match="lists no videos for split 'test'"):
        read_manifest(tmp_path / "k.csv", video_root=root, split="test")


def test_kinetics_needs_video_root(tmp_path):
    write(tmp_path / "k.csv", HEADER + "cat,a,0,10,train,0\n")
    with pytest.raises(ManifestError, match=r"k\.csv.*video_root"):
        read_manifest(tmp_path / "k.csv")
    with pytest.raises(ManifestError, match="not a directory"):
        read_manifest(tmp_path / "k.csv", video_root=tmp_path / "nowhere")


@pytest.mark.parametrize("row, message", [
    ("cat,a,0\n", "line 3: expected at least 4 columns"),
    ("cat,a,zero,10,train,0\n", "line 3: time_start must be a whole number"),
    ("cat,a,0,1.5,train,0\n", "line 3: time_end must be a whole number"),
])
def test_kinetics_malformed_rows(tmp_path, row, message):
    write(tmp_path / "k.csv", HEADER + "cat,ok,0,10,train,0\n" + row)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "k.csv", video_root=tmp_path)


# -- errors --------------------------------------------------------------------------------------

def test_nonexistent_manifest(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest '.*nope\.txt' does not exist\."):
        load_manifests(tmp_path / "nope.txt")


@pytest.mark.parametrize("text", ["", "\n# only a comment\n\n"])
def test_empty_manifest(tmp_path, text):
    write(tmp_path / "empty.txt", text)
    with pytest.raises(ManifestError, match=r"empty\.txt' lists no videos\."):
        read_manifest(tmp_path / "empty.txt")


def test_empty_class_folder_tree(tmp_path):
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    touch(tmp_path / "classes" / "cat" / "notes.txt")
    with pytest.raises(ManifestError, match="lists no videos"):
        read_manifest(tmp_path / "classes")


@pytest.mark.parametrize("bad_line", ["foo.mp4", "foo.mp4 cat", "foo.mp4 -1", "foo.mp4 1.0"])
def test_malformed_vjepa_line_number(tmp_path, bad_line):
    write(tmp_path / "train.txt", "# header comment\n\na.mp4 0\n" + bad_line + "\nb.mp4 1\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "train.txt")
    assert str(info.value) == (f"manifest '{tmp_path / 'train.txt'}' line 4: "
                               f"expected '<path> <integer label>', got '{bad_line}'.")


def test_val_label_not_in_train_map(tmp_path):
    touch(tmp_path / "train" / "cat" / "1.mp4")
    touch(tmp_path / "val" / "cat" / "2.mp4")
    touch(tmp_path / "val" / "dog" / "3.mp4")
    _, train_map = load_manifests(tmp_path / "train")
    with pytest.raises(ManifestError, match=r"val'.*label 'dog' is not in the label map"):
        load_manifests(tmp_path / "val", label_map=train_map)
    write(tmp_path / "val.txt", "x.mp4 5\n")
    with pytest.raises(ManifestError, match="label '5'"):
        load_manifests(tmp_path / "val.txt", label_map={"0": 0, "1": 1})


def test_unreadable_manifest(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path / "bin.txt")


def test_manifest_dataclass_defaults():
    manifest = Manifest("m.txt", "vjepa", [VideoSample("/a.mp4", 1)], ["1"])
    assert manifest.missing == 0 and manifest.samples[0].source == 0
