"""Paper-scale overlays (params/*.yaml) as DVC experiment arguments, and the params CLI.

`python -m flows.overlays check [overlays...]` validates params.yaml with overlays stacked in
order; `python -m flows.overlays overrides overlays...` prints them as `-S key=value`
arguments for `dvc exp run`, in the Hydra override grammar DVC parses.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.params import PARAMS_FILE, ParamsError, flatten, load_params, read_yaml


def stack(overlays: Sequence[Path]) -> dict[str, Any]:
    """Deep-merge overlay files in order (later wins) into one overlay mapping."""
    combined: dict[str, Any] = {}

    def update(target: dict[str, Any], values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                update(target[key], value)
            else:
                target[key] = dict(value) if isinstance(value, Mapping) else value

    for overlay in overlays:
        update(combined, read_yaml(overlay))
    return combined


def hydra_value(value: Any) -> str:
    """`value` in the Hydra override grammar that `dvc exp run -S` parses (dict keys bare)."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    return json.dumps(value)  # strings quoted, null/true/false, numbers


def dvc_set_arguments(overlays: Sequence[Path], base: Path = PARAMS_FILE) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` that apply `overlays`, validated first."""
    load_params(base, overlays=tuple(overlays))
    return [
        f"-S {shlex.quote(f'{key}={hydra_value(value)}')}"
        for key, value in flatten(stack(overlays))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate params.yaml (+ overlays)")
    check.add_argument("overlays", nargs="*", type=Path)
    overrides = commands.add_parser("overrides", help="print `dvc exp run -S` arguments")
    overrides.add_argument("overlays", nargs="+", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "check":
            load_params(PARAMS_FILE, overlays=tuple(args.overlays))
            print("ok")
        else:
            print(" ".join(dvc_set_arguments(args.overlays)))
    except ParamsError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
