"""docs/POLICIES.md's examples are real files: the page shows them verbatim, and they run as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from specmd_env import simulate
from specmd_env.eviction import get_eviction
from specmd_env.user_code import load_object

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "POLICIES.md"
INCLUDE = re.compile(r"<!-- include: (\S+) \[([\w-]+)\] -->\n```python\n(.*?)```", re.S)


def section(path: Path, name: str) -> str:
    text = path.read_text()
    if name == "all":   # the file after its module docstring
        return text.split('"""', 2)[2].lstrip("\n")
    return text.split(f"# [{name}]\n", 1)[1].split(f"# [/{name}]", 1)[0]


def test_the_page_shows_the_example_files_verbatim():
    blocks = INCLUDE.findall(DOC.read_text())
    assert len(blocks) == 3
    for path, name, code in blocks:
        assert code == section(ROOT / path, name), f"{path} [{name}] differs from docs/POLICIES.md"


@pytest.mark.parametrize("scope", ["global", "per-layer"])
@pytest.mark.parametrize("prefetch", ["none", "score"])
def test_both_example_versions_are_the_built_in_layer_distance(scope, prefetch):
    kw = dict(capacity=0.1, scope=scope, prefetch=prefetch, requests=[0, 1, 2])
    ref = simulate("olmoe-synthetic", eviction="layer-distance", **kw).as_dict()
    for name in ("LAYER_DISTANCE", "LAYER_DISTANCE_BY_KEY"):
        got = simulate("olmoe-synthetic", eviction=f"{ROOT}/docs/examples/layer_distance.py:{name}", **kw).as_dict()
        assert {k: v for k, v in got.items() if k != "eviction"} == {k: v for k, v in ref.items() if k != "eviction"}


def test_the_example_parameter_moves_prefetched_experts():
    policy = get_eviction(f"{ROOT}/docs/examples/layer_distance.py:LAYER_DISTANCE")
    assert policy.label == "layer-distance-lists"
    mru = policy.with_params(prefetch_at="mru-end")
    assert mru.label == "layer-distance-lists:prefetch_at=mru-end"
    kw = dict(capacity=0.1, prefetch="score")
    a, b = simulate("olmoe-synthetic", eviction=policy, **kw), simulate("olmoe-synthetic", eviction=mru, **kw)
    assert a.prefetches_issued > 0 and (a.hits, a.collision_misses) != (b.hits, b.collision_misses)


def test_the_example_prefetcher_fetches_one_expert_per_layer():
    NextTop1 = load_object(f"{ROOT}/docs/examples/next_top1.py:NextTop1", what="prefetcher")
    result = simulate("olmoe-synthetic", eviction="lru:prefetch_at=mru-end", prefetch=NextTop1(), capacity=0.05,
                      requests=[0])
    events = (result.prompt_tokens > 0) + result.output_tokens   # forward passes, batch size 1
    assert result.prefetch == "next-top1" and 0 < result.prefetches_issued <= events * 16
    assert result.prefetches_used > 0
