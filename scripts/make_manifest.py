"""Write a V-JEPA format manifest (``<path> <integer label>`` per line) and its label map.

SOURCE is a Kinetics annotations CSV (needs --video-root) or a folder of class folders. Class
ids are alphabetical over SOURCE's labels, unless --use-label-map gives an existing map (use
the training map for the validation manifest, so ids agree even if a class is absent).

    python scripts/make_manifest.py kinetics400/train.csv train.txt --video-root /data/k400 --split train
    python scripts/make_manifest.py kinetics400/validate.csv val.txt --video-root /data/k400 \\
        --use-label-map train_classes.json
    python scripts/make_manifest.py my_videos/ all.txt --relative-to my_videos

Paths are written absolute, or relative to --relative-to (then load the manifest with
data.video_root set to that folder, or keep the manifest inside it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stjepa.data.manifests import (
    ManifestError,
    build_label_map,
    load_label_map,
    read_manifest,
    save_label_map,
)


def default_label_map_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}_classes.json")


def _written_path(path: str, relative_to: str | None) -> str:
    if relative_to is None:
        return path
    rel = os.path.relpath(path, os.path.abspath(relative_to))
    return "./" + rel if rel.startswith("#") else rel  # a leading '#' would read back as a comment


def _write_lines(lines: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(out)  # never leave a half-written manifest behind


def make_manifest(
    source: str | os.PathLike,
    out: str | os.PathLike,
    video_root: str | os.PathLike | None = None,
    split: str | None = None,
    label_map_path: str | os.PathLike | None = None,
    relative_to: str | os.PathLike | None = None,
    use_label_map: str | os.PathLike | None = None,
) -> dict:
    """Convert ``source`` to the V-JEPA format at ``out``; returns the counts and paths written."""
    manifest = read_manifest(source, video_root, split)
    if manifest.format == "vjepa":
        raise ManifestError(f"manifest '{source}' is already in the V-JEPA format.")
    label_map = load_label_map(use_label_map) if use_label_map is not None else build_label_map([manifest])
    relative = None if relative_to is None else os.fspath(relative_to)
    lines = []
    for sample, name in zip(manifest.samples, manifest.label_names):
        if name not in label_map:
            raise ManifestError(f"manifest '{source}': label '{name}' is not in the label map '{use_label_map}'.")
        lines.append(f"{_written_path(sample.path, relative)} {label_map[name]}")
    out = Path(out)
    _write_lines(lines, out)
    map_path = Path(label_map_path) if label_map_path is not None else default_label_map_path(out)
    save_label_map(label_map, map_path)
    return {"written": len(lines), "missing": manifest.missing, "classes": len(label_map),
            "out": str(out), "label_map": str(map_path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Kinetics annotations CSV or folder of class folders")
    parser.add_argument("out", help="V-JEPA manifest to write")
    parser.add_argument("--video-root", help="folder holding the videos of a Kinetics CSV")
    parser.add_argument("--split", help="keep only Kinetics CSV rows of this split")
    parser.add_argument("--label-map", help="label map JSON to write (default: <OUT stem>_classes.json)")
    parser.add_argument("--relative-to", help="write paths relative to this folder instead of absolute")
    parser.add_argument("--use-label-map", help="existing label map JSON to take class ids from")
    args = parser.parse_args(argv)
    try:
        result = make_manifest(args.source, args.out, args.video_root, args.split,
                               args.label_map, args.relative_to, args.use_label_map)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result['written']} videos ({result['missing']} files not found) in "
          f"{result['classes']} classes to {result['out']}; label map: {result['label_map']}")
    if result["missing"]:
        print(f"warning: {result['missing']} listed videos were not found under {args.video_root}; "
              "they are kept and will be skipped as bad videos during training.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
