"""Peak memory of replaying a 1,000,000-token OLMoE trace (must stay under 1 GB), and proof that
loading a large trace does not read it whole.

The trace is written uncompressed (memory-mappable) with the generator's chunked ``write_trace``,
*without* speculative scores (with them the file would be ~2 GB: 1M tokens x 15 layers x 64 experts
x float16). Each measurement runs in a fresh subprocess and reports its peak resident set (``VmHWM`` of
its own image; ``ru_maxrss`` would also count the parent's pages, which the child shares until it execs):

1. right after ``load_trace`` (arrays are memory maps: RSS stays small);
2. LRU + no prefetch replay (event mode, full timing model);
3. Least-Stale + score prefetch on a 100,000-token trace *with* spec scores (~190 MB file).

    nice -n 10 python experiments/bench_memory.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
t = time.perf_counter()
from specmd_env import load_trace, simulate
path, what = sys.argv[1], sys.argv[2]
def peak_kib():
    status = open("/proc/self/status").read()
    return int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
base = peak_kib()
trace = load_trace(path)
out = {"tokens": trace.num_tokens, "import_rss_mb": base / 1024}
if what == "load":
    _ = int(trace.expert_ids[trace.num_tokens // 2, 0, 0])  # touch one page
else:
    kw = dict(eviction="lru", prefetch="none") if what == "lru" else dict(eviction="least-stale", prefetch="score")
    r = simulate(trace, capacity=0.05, **kw)
    out.update(accesses=r.accesses, hit_rate=round(r.hit_rate, 4), prefetches=r.prefetches_issued)
out["seconds"] = round(time.perf_counter() - t, 1)
out["peak_rss_mb"] = peak_kib() / 1024
print(json.dumps(out))
"""


def child(path: Path, what: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), what], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--spec-tokens", type=int, default=100_000)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    from specmd_env.generator import write_trace

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        per_request = 1000  # 100 prompt + 900 decode tokens
        t = time.perf_counter()
        big = write_trace(tmp / "olmoe-1m.npz", model="olmoe-1b-7b", requests_per_domain=args.tokens // per_request // 5,
                          prompt_len=100, decode_len=per_request - 100, seed=0, with_spec_scores=False)
        print(f"wrote {big.stat().st_size / 1e6:.0f} MB ({args.tokens:,} tokens, no spec scores, uncompressed) "
              f"in {time.perf_counter() - t:.0f} s")
        load = child(big, "load")
        print(f"load_trace only: peak RSS {load['peak_rss_mb']:.0f} MB (after imports {load['import_rss_mb']:.0f} MB) "
              f"for a {big.stat().st_size / 1e6:.0f} MB file -> not read whole")
        lru = child(big, "lru")
        print(f"replay LRU, no prefetch, {lru['tokens']:,} tokens, {lru['accesses']:,} accesses: "
              f"peak RSS {lru['peak_rss_mb']:.0f} MB ({lru['seconds']} s) -> under 1 GB: {lru['peak_rss_mb'] < 1024}")
        spec = write_trace(tmp / "olmoe-spec.npz", model="olmoe-1b-7b", requests_per_domain=args.spec_tokens // per_request // 5,
                           prompt_len=100, decode_len=per_request - 100, seed=1, with_spec_scores=True)
        ls = child(spec, "score")
        print(f"replay Least-Stale + score prefetch, {ls['tokens']:,} tokens with spec scores "
              f"({spec.stat().st_size / 1e6:.0f} MB file): peak RSS {ls['peak_rss_mb']:.0f} MB ({ls['seconds']} s), "
              f"{ls['prefetches']:,} prefetches -> under 1 GB: {ls['peak_rss_mb'] < 1024}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
