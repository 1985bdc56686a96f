"""Decode-only requests (prompt length 0, as engines record decode forwards without the prompt): no empty
prefill pass; the first decode pass yields the first token, so TTFT ends there."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SLOW, make_trace, slots, tiny_model
from specmd_env import Replay
from specmd_env.schedule import DECODE, PREFILL, plan_passes

MODEL = tiny_model()
IDS = [[[0, 1], [2, 3]], [[1, 2], [0, 3]], [[0, 1], [2, 3]], [[3, 2], [1, 0]], [[0, 1], [2, 3]]]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_decode_only_request_has_no_prefill_pass(batch_size):
    trace = make_trace(IDS, MODEL, request_lengths=[3, 2], prompt_lengths=[0, 1])  # request 0: decode only
    plan = plan_passes(trace, batch_size)
    assert int(np.sum(plan.pass_kind == PREFILL)) == 1          # request 1's prompt only
    assert plan.pass_kind[plan.prefill_pass[0]] == DECODE       # request 0's first token: its first decode step
    assert plan.decode_tokens.tolist() == [2, 1]                # passes after the first token
    assert int(np.sum(np.diff(plan.pass_ptr))) == trace.num_tokens  # every token replayed once, none invented
    replay = Replay(trace, model=MODEL, hardware=SLOW, capacity=slots(MODEL, 4), batch_size=batch_size)
    result = replay.run()
    first = plan.prefill_pass[0]
    start = 0.0 if plan.group_first_pass[0] == 0 else replay.pass_end[plan.group_first_pass[0] - 1]
    assert result.ttft_seconds[0] == pytest.approx(replay.pass_end[first] - start)
    assert result.tpot_seconds[0] == pytest.approx((replay.pass_end[plan.last_pass[0]] - replay.pass_end[first]) / 2)


def test_all_decode_only_trace_replays():
    trace = make_trace(IDS, MODEL, request_lengths=[5], prompt_lengths=[0])
    result = Replay(trace, model=MODEL, hardware=SLOW, capacity=slots(MODEL, 2)).run()
    assert result.ttft_seconds[0] > 0 and result.output_tokens == 4
