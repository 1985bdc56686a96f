"""Learned agents: the row scorer, its compiled form, behaviour cloning, bypass, padded and mixed environments."""

import gymnasium as gym
import numpy as np
import pytest

import specmd_env  # noqa: F401
from specmd_env import SpecMDError, simulate
from specmd_env.agents import load_agent
from specmd_env.agents.compiled import ScorerWeights, learned_eviction, scores
from specmd_env.agents.imitation import collect, fit, next_use_key
from specmd_env.envs import memory as M
from specmd_env.envs.observation import S_CANDIDATE, S_FREQ, S_INCOMING, S_RECENCY

SMALL = dict(requests_per_episode=1)


@pytest.fixture(scope="module")
def cloned():
    """A MaskablePPO row-scorer model cloned briefly from Belady's next-use key (non-trivial weights that
    both evict and bypass on held-out request 4)."""
    import torch
    from sb3_contrib import MaskablePPO

    from specmd_env.agents.learned import RowScorerMaskablePolicy

    torch.manual_seed(0)
    env = gym.make("SpecMD-OLMoE-v0", split="train", requests_per_episode=1, oracle_info=True, fixed_prefetch="none")
    model = MaskablePPO(RowScorerMaskablePolicy, env, policy_kwargs={"hidden": [16], "share_features_extractor": False},
                        n_steps=64, batch_size=64, seed=0, device="cpu")
    demos = collect(env, load_agent("belady-bypass", env), 4000, seed=0, target="next-use")
    fit(model.policy, demos, epochs=5, seed=0)
    return model


def test_compiled_and_torch_agree_on_every_decision_of_a_held_out_replay(cloned):
    """The torch policy (SB3's predict, batched over the episode's observations) and the exported weights
    choose the same row at every decision, and the compiled policy (which builds the observation itself
    inside the kernel) replays to the same result."""
    weights = cloned.policy.pi_features_extractor.export()
    h1 = weights.sizes[0]
    flat = weights.flat()
    env = gym.make("SpecMD-OLMoE-v0", split="test", fixed_prefetch="none")
    base = env.unwrapped
    obs, info = env.reset(seed=0, options={"requests": [4]})
    seen_obs, seen_masks, chosen = [], [], []
    while True:
        mask = base.action_masks()
        score = scores(flat, obs, base.rows + 1, h1, 0)
        action = int(np.flatnonzero(mask)[np.argmax(score[mask])])
        seen_obs.append(obs)
        seen_masks.append(mask)
        chosen.append(action)
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            break
    torch_actions, _ = cloned.predict(np.array(seen_obs), action_masks=np.array(seen_masks), deterministic=True)
    chosen = np.array(chosen)
    assert len(chosen) > 1000 and (chosen == base.rows).any() and (chosen < base.rows).any()
    assert np.array_equal(torch_actions, chosen), np.flatnonzero(torch_actions != chosen)[:5]
    requests = base.replay.plan.request_ids
    got = simulate(**base.replay_settings(), eviction=learned_eviction(weights), requests=requests).as_dict()
    for key, value in info["metrics"].items():
        if key not in ("eviction", "decisions"):
            assert got[key] == value, key


def test_weights_file_roundtrip_and_bad_files(tmp_path, cloned):
    weights = cloned.policy.pi_features_extractor.export()
    path = weights.save(tmp_path / "agent", {"name": "agent"})
    again = ScorerWeights.load(path)
    assert np.array_equal(again.flat(), weights.flat()) and (tmp_path / "agent.json").is_file()
    env = gym.make("SpecMD-OLMoE-v0", **SMALL)
    agent = load_agent(str(path), env)  # the exported form acts in the environment too (no torch)
    obs, info = env.reset(seed=0)
    for _ in range(50):
        action = agent.act(obs, info)
        assert env.unwrapped.action_masks()[action]
        obs, _, _, _, info = env.step(action)
    np.savez(tmp_path / "bad.npz", w0=np.zeros((3, 4)), b0=np.zeros(4), w_out=np.zeros(4), b_out=np.zeros(1))
    with pytest.raises(SpecMDError, match="inputs"):
        ScorerWeights.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SpecMDError, match="not a row scorer"):
        ScorerWeights.load(tmp_path / "junk.npz")
    with pytest.raises(SpecMDError, match="non-finite"):
        ScorerWeights(((np.full((31, 2), np.nan), np.zeros(2)),), np.zeros(2), 0.0)


def test_bypass_action_and_switch():
    env = gym.make("SpecMD-OLMoE-v0", **SMALL)
    base = env.unwrapped
    obs, info = env.reset(seed=0)
    assert base.layout.incoming(obs)[S_INCOMING] == 1 and base.action_masks()[base.rows]
    occupied_before = base.replay.slot_i[0].copy()
    obs, *_ = env.step(base.rows)  # bypass: a demand miss served from a staging buffer
    assert base.replay.met is not None
    no = gym.make("SpecMD-OLMoE-v0", bypass=False, **SMALL)
    obs, info = no.reset(seed=0)
    assert not no.unwrapped.action_masks()[no.unwrapped.rows]
    assert no.unwrapped.layout.incoming(obs)[S_CANDIDATE] == 0
    _, _, _, _, info = no.step(no.unwrapped.rows)
    assert info["invalid_action"]  # masked: falls back, with the penalty
    assert len(occupied_before) == base.capacity


def test_padded_observation_gives_the_same_replay():
    """observation_slots pads with empty rows that are never candidates: a handcrafted agent replays the
    same, and the action space is rows + 1 with bypass last."""
    def play(**kw):
        env = gym.make("SpecMD-OLMoE-v0", split="test", requests_per_episode=None, **kw)
        agent = load_agent("lru", env)
        obs, info = env.reset(seed=0)
        while True:
            obs, _, term, _, info = env.step(agent.act(obs, info))
            if term:
                return env, info["metrics"]
    plain, a = play()
    padded, b = play(observation_slots=80)
    assert padded.action_space == gym.spaces.Discrete(81) and plain.action_space == gym.spaces.Discrete(52)
    assert a == b
    with pytest.raises(SpecMDError, match="observation_slots"):
        gym.make("SpecMD-OLMoE-v0", observation_slots=10)


def test_vector_env_variants_share_padded_spaces():
    venv = gym.make_vec("SpecMD-OLMoE-v0", num_envs=3, vectorization_mode="vector_entry_point", observation_slots=110,
                        variants=[{"capacity": 0.02}, {"capacity": 0.1}, {"trace": "olmoe-recorded"}], **SMALL)
    assert [e.capacity for e in venv.envs] == [20, 102, 51]
    obs, _ = venv.reset(seed=0)
    masks = venv.action_masks()
    assert obs.shape[0] == 3 and masks.shape == (3, 111)
    assert not masks[0, 20:110].any() and not masks[1, 102:110].any()
    actions = np.array([int(np.flatnonzero(m)[0]) for m in masks])
    venv.step(actions)
    with pytest.raises(SpecMDError, match="observation_slots"):
        gym.make_vec("SpecMD-OLMoE-v0", num_envs=2, vectorization_mode="vector_entry_point",
                     variants=[{"capacity": 0.02}, {"capacity": 0.1}], **SMALL)


def test_memory_counts_the_routing_replayed_so_far():
    """The whole-history frequency and recency of each slot's expert follow from the trace's layer events up
    to the current one, counted directly."""
    env = gym.make("SpecMD-OLMoE-v0", fixed_prefetch="none", **SMALL)
    base = env.unwrapped
    obs, info = env.reset(seed=3)
    for _ in range(300):
        obs, _, term, _, info = env.step(load_agent("lru", env).act(obs, info))
        assert not term
    r = base.replay
    from specmd_env import kernel as K
    chunk = r.chunk
    e = int(r.ist[K.I_EVENT])
    n_obj = base.num_layers * base.num_experts
    seen = np.zeros(n_obj)
    last = np.full(n_obj, -1)
    for ev in range(e + 1):
        objs = chunk.ev_obj[chunk.ev_ptr[ev]:chunk.ev_ptr[ev + 1]]
        seen[objs] += 1
        last[objs] = chunk.ev_pass[ev]
    pass_id = int(r.ist[K.I_PASS])
    slots = base.layout.slots(obs)
    for s in range(base.capacity):
        o = int(r.slot_i[K.SL_OBJ, s])
        if o < 0:
            continue
        assert slots[s, S_FREQ] == np.float32(min((seen[o] + 1) / (pass_id + 3), 1.0))
        assert slots[s, S_RECENCY] == np.float32(0 if last[o] < 0 else 1 / (1 + pass_id - last[o]))
    mem = M.new_memory(n_obj)
    assert mem.size == M.memory_size(n_obj) and (mem[M.LAST * n_obj:] == -1).all()


def test_next_use_key_caps_never():
    key = next_use_key(np.array([0, 128, -1, 10**9]), 128.0)
    assert key[0] == 0 and key[1] == 1 and key[2] == key[3] == np.float32(np.log2(257))


def test_learned_policy_is_an_eviction_policy(cloned):
    policy = learned_eviction(cloned.policy.pi_features_extractor.export(), name="learned:t")
    assert policy.label == "learned:t" and not policy.is_oracle and policy.needs_orders
    a = simulate("olmoe-synthetic", eviction=policy, requests=[4])
    b = simulate("olmoe-synthetic", eviction=policy.with_params(bypass="no"), requests=[4])
    assert a.bypassed > 0 and b.bypassed == 0
    c = simulate("mixtral-synthetic", capacity=0.1, eviction=policy, prefetch="score", requests=[0])  # any model shape
    assert c.evictions + c.bypassed > 0


def test_leaderboard_scores_a_learned_agent_on_held_out_requests_of_every_cell(tmp_path):
    from specmd_env.agents.compiled import F, G
    from specmd_env.generator import generate_trace
    from specmd_env.leaderboard import command as leaderboard
    from specmd_env.leaderboard.sweep import load_rows
    from specmd_env.trace import save_trace

    trace = generate_trace("olmoe-1b-7b", domains=("github", "arxiv"), requests_per_domain=5, prompt_len=(6, 14),
                           decode_len=(3, 6), seed=0)
    save_trace(trace, tmp_path / "tiny.npz")
    rng = np.random.default_rng(0)
    agents = tmp_path / "agents"
    agents.mkdir()
    ScorerWeights(((rng.normal(size=(F + G, 8)), rng.normal(size=8)),), rng.normal(size=8), 0.0).save(
        agents / "probe", {"name": "probe", "env_id": "SpecMD-OLMoE-v0", "env_kwargs": {"trace": "olmoe-synthetic"}})
    out = tmp_path / "out"
    assert leaderboard.main(["--traces", str(tmp_path / "tiny.npz"), "--capacities", "0.02", "0.1", "--hardware",
                             "paper-a100-5gbps", "--seeds", "0-1", "--evictions", "lru", "random", "belady",
                             "--prefetches", "none", "score", "--out", str(out), "--workers", "1", "--quiet",
                             "--trained-dir", str(agents), "--no-plots"]) == 0
    rows = list(load_rows(out / "runs.csv").values())
    agent_rows = [r for r in rows if r["agent"] == "probe"]
    held = [r for r in rows if r["trace"] == "tiny:held-out" and not r["agent"]]
    assert {(r["capacity"], r["prefetch"]) for r in agent_rows} == {(0.02, "none"), (0.02, "score"), (0.1, "none"),
                                                                       (0.1, "score")}
    assert all(r["eviction"] == "learned:probe" and r["trace"] == "tiny:held-out" for r in agent_rows)
    assert {r["eviction"] for r in held} == {"lru", "random", "belady"}
    assert all(r["requests"] <= 2 for r in agent_rows + held)  # the held-out requests (4 and 9) of each sample
    text = (out / "leaderboard.md").read_text()
    assert "## Learned agents" in text and "learned:probe + none" in text and "zero-shot" in text
