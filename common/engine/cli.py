"""The command line of the experiment tool and the study: option values given through fire, the error a user can fix
(printed without a traceback), and running a function as a fire command."""

from __future__ import annotations

import json
import sys
from typing import Any

import fire

#: options whose value is JSON (the experiment's --override, the study's --grid)
JSON_OPTIONS = ("--override", "--grid")


class ExperimentError(RuntimeError):
    """A problem the user can fix (wrong option, missing input, failed stage); printed without a traceback."""


def as_list(value: Any, what: str) -> list:
    """A fire value given as a list, a tuple, a comma-separated string or a single item, as a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise ExperimentError(f"--{what} must be a list such as \"[a,b]\"; got {value!r}.")


def eps_list(value: Any, what: str) -> list[float]:
    """Training noise levels (> 0, duplicates dropped) from a fire value; ``what`` names the option in errors."""
    out = []
    for v in as_list(value, what):
        try:
            e = float(v)
        except (TypeError, ValueError):
            raise ExperimentError(f"--{what}: {v!r} is not a number (L2 noise levels such as \"[2,6]\").") from None
        if not e > 0:
            raise ExperimentError(f"--{what}: the noise levels must be > 0; got {v!r}.")
        out.append(e)
    return list(dict.fromkeys(out))


def whole_epochs(value: Any) -> int | None:
    """``--finetune_epochs`` as a whole number >= 1 (None: not given)."""
    if value is None:
        return None
    try:
        epochs = int(value)
    except (TypeError, ValueError):
        raise ExperimentError(f"--finetune_epochs must be a whole number of epochs; got {value!r}.") from None
    if epochs < 1 or epochs != float(value):
        raise ExperimentError(f"--finetune_epochs must be a whole number >= 1; got {value!r}.")
    return epochs


def json_override_argv(argv: list[str]) -> list[str]:
    """Turn the JSON of --override (and --grid) into a Python literal, which fire parses faithfully (fire reads JSON's
    true, false and null as the strings 'true', 'false', 'null')."""
    out = list(argv)
    for i, a in enumerate(out):
        option = next((o for o in JSON_OPTIONS if a == o or a.startswith(o + "=")), None)
        if option is None:
            continue
        if a == option and i + 1 < len(out):
            j, raw, prefix = i + 1, out[i + 1], ""
        elif a != option:
            j, raw, prefix = i, a[len(option) + 1:], option + "="
        else:
            continue
        try:
            out[j] = prefix + repr(json.loads(raw))
        except ValueError:
            pass  # not JSON: fire parses it as a Python literal
    return out


def run_cli(func, prog: str, argv: list[str] | None = None) -> int:
    """Run ``func`` as a fire command line: an ExperimentError is printed as ``<prog>: error: ...`` (exit code 1),
    Ctrl-C says how to continue (130)."""
    argv = json_override_argv(sys.argv[1:] if argv is None else argv)
    try:
        fire.Fire(func, command=argv)
    except ExperimentError as e:
        print(f"\n{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    return 0
