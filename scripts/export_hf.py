"""Write a checkpoint in transformers' V-JEPA 2 format: a folder (config.json, model.safetensors)
that ``transformers.VJEPA2Model.from_pretrained(folder)`` loads, and that stjepa reads back
(probe.py ckpt=<folder>, train.py model.init_from=<folder>). Any checkpoint stjepa reads: a
train.py .ckpt, an official V-JEPA 2 .pt, a transformers folder. V-JEPA 2.0 models only
(transformers has no 2.1). A model trained with local attention is written too; transformers runs
it with global attention, and stjepa keeps its layout in config.json.

    python scripts/export_hf.py logs/train/runs/<time>/checkpoints/last.ckpt exports/my-vjepa2
    python scripts/export_hf.py vitl.pt exports/vitl --crop-size 256 --frames-per-clip 64
"""
from __future__ import annotations

import argparse
import sys

from stjepa.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a train.py .ckpt, an official V-JEPA 2 .pt or a transformers folder")
    parser.add_argument("out", help="the folder to write (replaced whole once the new one is complete)")
    parser.add_argument("--encoder-key", default="target_encoder", choices=("target_encoder", "encoder"),
                        help="which encoder to write (default: the EMA target encoder, the one probes use)")
    parser.add_argument("--crop-size", type=int, help="crop_size in config.json (default: the checkpoint's)")
    parser.add_argument("--frames-per-clip", type=int, help="frames_per_clip in config.json (default: the checkpoint's)")
    args = parser.parse_args(argv)
    try:
        from stjepa.hf_format import export_hf, local_attention_note
        from stjepa.weights import networks_for_export

        encoder, predictor, attention = networks_for_export(args.checkpoint, args.encoder_key)
        clip = (args.crop_size or encoder.img_size, args.frames_per_clip or encoder.num_frames)
        folder = export_hf(args.out, encoder, predictor, attention, clip)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    note = local_attention_note(attention)
    if note:
        print(f"note: {note}")
    print(f"wrote {folder} (crop_size {clip[0]}, frames_per_clip {clip[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
