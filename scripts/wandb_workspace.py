"""Save a W&B workspace for one sweep: its runs grouped by attention layout, with loss curves,
probe accuracy against attention FLOPs and step time (see stjepa/wandb_workspace.py).

    python scripts/wandb_workspace.py --group train-2025-01-31_12-00-00
    python scripts/wandb_workspace.py --group logs/train/multiruns/2025-01-31_12-00-00   # the group of a multirun folder
    python scripts/wandb_workspace.py --entity me --project stjepa --group G --name "ST-A2 vs full"
    python scripts/wandb_workspace.py --group G --group-by layout/kind   # one group per kind, not per layout

Entity and project default to what train.py's W&B logger uses (conf/logger/wandb.yaml):
WANDB_ENTITY and WANDB_PROJECT (environment or ./.env), the project falling back to stjepa. Saving needs W&B online (WANDB_API_KEY set, WANDB_MODE not
offline); offline, nothing is sent and the command exits with status 2. Prints the workspace URL.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from stjepa.cli import load_env
from stjepa.errors import UserError
from stjepa.loggers import wandb_offline
from stjepa.wandb_workspace import LAYOUT_KEYS, group_of_sweep_dir, sweep_workspace


WANDB_LOGGER_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "logger" / "wandb.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", default=None, help="W&B entity (default: WANDB_ENTITY)")
    parser.add_argument("--project", default=None, help="W&B project (default: WANDB_PROJECT, else stjepa)")
    parser.add_argument("--group", required=True,
                        help="the sweep's W&B group, or its multirun folder (the group is derived from it)")
    parser.add_argument("--name", default=None, help="workspace name (default: 'sweep <group>')")
    parser.add_argument("--group-by", nargs="+", default=list(LAYOUT_KEYS), metavar="KEY",
                        help=f"config keys that tell the layouts apart (default: {' '.join(LAYOUT_KEYS)})")
    return parser.parse_args(argv)


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    load_env()
    args = parse_args(argv)
    logger = OmegaConf.load(WANDB_LOGGER_CONFIG).wandb  # its entity and project read the environment
    entity = args.entity or logger.entity
    project = args.project or logger.project
    missing = [f"{what} (give --{what} or set WANDB_{what.upper()})"
               for what, value in (("entity", entity), ("project", project)) if not value]
    if missing:
        return fail(f"No W&B {' and no '.join(missing)}; nothing was saved.")
    try:
        group = group_of_sweep_dir(args.group) if Path(args.group).is_dir() else args.group
    except UserError as exc:
        return fail(str(exc))
    workspace = sweep_workspace(entity, project, group, name=args.name, layout_keys=args.group_by)
    if wandb_offline():
        return fail(f"The workspace for group {group} was not saved because W&B is offline "
                    "(no WANDB_API_KEY, or WANDB_MODE=offline); set WANDB_API_KEY and unset "
                    "WANDB_MODE=offline to save it.")
    workspace.save()
    print(workspace.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
