"""The ``specmd`` command: one subcommand per module, imported only when it runs.

Each subcommand module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
Adding a command is one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from specmd_env.errors import SpecMDError

COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("specmd_env.commands.simulate", "replay a trace with one eviction/prefetch policy and print metrics"),
    "trace-stats": ("specmd_env.trace_stats", "routing statistics of a trace, beside the real model's published figures"),
    "generate": ("specmd_env.generator", "write a synthetic (calibrated) routing trace"),
    "import": ("specmd_env.commands.import_trace", "convert another tool's routing (vLLM, SGLang, a table, AllenAI, "
                                                  "moe-cache-eval) to a trace"),
    "import-allenai": ("specmd_env.importers.allenai", "convert AllenAI analysis_olmoe / analysis_mixtral jsonl to a trace "
                                                      "(= specmd import allenai)"),
    "record": ("specmd_env.recorder", "record a routing trace from a Hugging Face MoE model"),
    "leaderboard": ("specmd_env.leaderboard.command", "score every policy over traces x capacities x hardware x seeds"),
    "train": ("specmd_env.agents.train", "train an RL eviction/prefetch agent with Stable-Baselines3"),
    "evaluate": ("specmd_env.agents.evaluate", "evaluate any agent (handcrafted, learned or oracle) on an env id"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="specmd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SpecMDError as exc:
        print(f"specmd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
