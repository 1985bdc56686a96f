"""Named presets: the literature's offloading systems as combinations of simulate() settings.

A preset is a table of ``specmd_env/data/presets.toml`` (its keys are simulate() keywords, plus a
description). :func:`apply_preset` merges one under the caller's explicit keywords: a keyword the caller
sets to something other than its default wins over the preset.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

from specmd_env.errors import SpecMDError


@cache
def presets() -> dict[str, dict]:
    return tomllib.loads(resources.files("specmd_env").joinpath("data/presets.toml").read_text())


def list_presets() -> list[str]:
    return sorted(presets())


def apply_preset(name: str | None, given: dict, defaults: dict) -> dict:
    """``given`` (keyword -> value) with the preset's settings filling every keyword left at its default."""
    if name is None:
        return given
    table = presets()
    if name not in table:
        raise SpecMDError(f"unknown preset {name!r}; known: {', '.join(sorted(table))}")
    settings = {k: v for k, v in table[name].items() if k != "description"}
    unknown = set(settings) - set(defaults)
    if unknown:
        raise SpecMDError(f"preset {name!r} sets unknown keywords {sorted(unknown)}")
    merged = dict(given)
    for key, value in settings.items():
        if given.get(key, defaults[key]) == defaults[key]:
            merged[key] = value
    return merged
