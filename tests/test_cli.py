"""`specmd simulate` exposes every keyword of simulate(), from one table, and reaches the same result."""

from __future__ import annotations

import inspect
import json

import pytest

from specmd_env import simulate
from specmd_env.cli import main
from specmd_env.commands.simulate import OPTIONS, parse_requests


def test_every_simulate_parameter_has_a_cli_option():
    parameters = [name for name in inspect.signature(simulate).parameters if name != "trace"]
    options = [option.name for option in OPTIONS]
    assert sorted(set(parameters) - set(options)) == [], "simulate() keywords without a `specmd simulate` option"
    assert sorted(set(options) - set(parameters)) == [], "`specmd simulate` options that simulate() does not take"


def test_requests_lists_and_ranges():
    assert parse_requests("0,3,5-9") == [0, 3, 5, 6, 7, 8, 9]
    assert parse_requests("4") == [4]
    for bad in ("1,,2", "a", "3-1", "-2"):
        with pytest.raises(ValueError):
            parse_requests(bad)


def test_cli_matches_simulate_with_every_option(capsys):
    """Non-default values for every option: the CLI's JSON equals simulate() called with the same keywords."""
    argv = ["simulate", "olmoe-synthetic", "--model", "olmoe", "--hardware", "a100-pcie4", "--capacity", "0.1",
            "--eviction", "lfu", "--prefetch", "score", "--lookahead", "2", "--batch-size", "2",
            "--scope", "per-layer", "--mode", "event", "--miss", "drop", "--prefetch-mass", "0.6",
            "--prefetch-max", "3", "--prefetch-budget", "2", "--seed", "3", "--requests", "1,4-5", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    expected = simulate("olmoe-synthetic", model="olmoe", hardware="a100-pcie4", capacity=0.1, eviction="lfu",
                        prefetch="score", lookahead=2, batch_size=2, scope="per-layer", mode="event", miss="drop",
                        prefetch_mass=0.6, prefetch_max=3, prefetch_budget=2, seed=3, requests=[1, 4, 5]).as_dict()
    assert {k: out[k] for k in expected} == pytest.approx(expected)
    assert out["settings"]["requests"] == [1, 4, 5] and out["settings"]["prefetch_budget"] == 2
    assert set(out["settings"]) == set(inspect.signature(simulate).parameters)


@pytest.mark.parametrize("argv, message", [
    (["--requests", "0,x"], "--requests '0,x': 'x' is not an index or a range a-b"),
    (["--batch-size", "0"], "--batch-size '0': must be >= 1"),
    (["--prefetch-mass", "2"], "--prefetch-mass '2': must be in (0, 1]"),
    (["--prefetch-budget", "lots"], "--prefetch-budget 'lots'"),
])
def test_bad_values_are_one_line_errors_naming_the_option(capsys, argv, message):
    assert main(["simulate", "olmoe-synthetic", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
