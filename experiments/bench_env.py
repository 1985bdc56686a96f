"""Decisions per second of the SpecMD environment (not a test; prints what it measured).

    python experiments/bench_env.py [--steps 300000] [--envs 64]

* single env (unwrapped, and through gym.make's wrappers) driven by a random *masked* agent: a
  uniformly random candidate slot, by rejection sampling (draw a slot from a precomputed stream of
  uniform slot indices until the mask allows it);
* CartPole-v1 (unwrapped) stepped with a fixed action in the same run, as the peer figure;
* the vectorised env (one compiled call per step over --envs replays), random masked actions chosen
  with numpy over the [N, capacity] mask: the argmax of precomputed uniform noise times the mask
  (a uniformly random candidate per env).

The random streams are drawn before the clock starts, so the figures measure the environment and
the (cheap) masked choice, not the random number generator.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import specmd_env  # noqa: F401


def bench_single(env, steps: int, rng) -> float:
    base = env.unwrapped
    obs, info = env.reset(seed=0)
    capacity = base.capacity
    draws = rng.integers(0, capacity, 4 * steps + 64).tolist()
    mask = base._mask  # the env's own mask buffer (action_masks() returns a copy of it)
    is_candidate = mask.item
    step = env.step
    j = 0
    t = time.perf_counter()
    for _ in range(steps):
        slot = draws[j]
        j += 1
        while not is_candidate(slot):  # uniform over the candidates (there is always one)
            slot = draws[j]
            j += 1
        obs, r, term, trunc, info = step(slot)
        if term or trunc:
            env.reset()
        if j > 3 * steps:  # an unlucky stream: draw more (rare)
            draws, j = rng.integers(0, capacity, 4 * steps + 64).tolist(), 0
    return steps / (time.perf_counter() - t)


def bench_cartpole(steps: int) -> float:
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    t = time.perf_counter()
    for k in range(steps):
        obs, r, term, trunc, info = env.step(k & 1)
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t)


def bench_vector(num_envs: int, steps: int, rng) -> float:
    venv = gym.make_vec("SpecMD-OLMoE-v1", num_envs=num_envs, vectorization_mode="vector_entry_point")
    venv.reset(seed=0)
    mask = venv._mask
    n_steps = -(-steps // num_envs)
    noise = rng.random((n_steps,) + mask.shape, dtype=np.float32)
    step = venv.step
    t = time.perf_counter()
    for k in range(n_steps):
        # a random candidate per env: argmax of uniform noise over the mask
        step(np.argmax(noise[k] * mask, axis=1))
    return n_steps * num_envs / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300_000, help="decisions per measurement")
    parser.add_argument("--envs", type=int, default=64, help="environments in the vectorised measurement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    warm = gym.make("SpecMD-OLMoE-v1")
    bench_single(warm.unwrapped, 2000, rng)  # compile / warm caches
    bench_vector(4, 2000, rng)
    single = bench_single(gym.make("SpecMD-OLMoE-v1").unwrapped, args.steps, rng)
    wrapped = bench_single(gym.make("SpecMD-OLMoE-v1"), args.steps, rng)
    cart = bench_cartpole(args.steps)
    vec = bench_vector(args.envs, max(args.steps, 20 * args.envs), rng)
    print(f"SpecMD-OLMoE-v1 single env, unwrapped, random masked agent: {single:12,.0f} decisions/s")
    print(f"SpecMD-OLMoE-v1 single env, gym.make wrappers, same agent:  {wrapped:12,.0f} decisions/s")
    print(f"CartPole-v1 unwrapped, fixed actions (peer):                {cart:12,.0f} steps/s")
    print(f"ratio SpecMD unwrapped / CartPole:                          {single / cart:12.2f}")
    print(f"SpecMD-OLMoE-v1 vector_entry_point, {args.envs} envs:               {vec:12,.0f} decisions/s")


if __name__ == "__main__":
    main()
