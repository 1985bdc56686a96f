"""Draw recording prompts from the held-out split of the corpus (never seen in training).

For each domain, ``--per-domain`` held-out documents are picked with a fixed seed; from each, a
prompt of ``--min-tokens``..``--max-tokens`` tokens (model tokenizer) starting at a random line of the
document's first half. Written as JSON lines ``{"prompt": ..., "domain": ...}`` for ``specmd record``.

    python traces/recorded/make_prompts.py --corpus runs/corpus --tokenizer traces/recorded/model \
        --out runs/corpus/prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DOC_SEP = "\n\f\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="runs/corpus")
    p.add_argument("--tokenizer", default="traces/recorded/model")
    p.add_argument("--out", default="runs/corpus/prompts.jsonl")
    p.add_argument("--per-domain", type=int, default=6)
    p.add_argument("--min-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rng = np.random.default_rng(args.seed)
    rows = []
    for path in sorted((Path(args.corpus) / "heldout").glob("*.txt")):
        docs = [d for d in path.read_text(encoding="utf-8").split(DOC_SEP) if len(d.strip()) > 200]
        picked = rng.choice(len(docs), size=min(args.per_domain, len(docs)), replace=False)
        for i in sorted(picked):
            doc = docs[i]
            line_starts = [0] + [k + 1 for k, c in enumerate(doc[: len(doc) // 2]) if c == "\n"]
            start = int(rng.choice(line_starts))
            ids = tokenizer(doc[start:], add_special_tokens=False)["input_ids"]
            n = int(rng.integers(args.min_tokens, args.max_tokens + 1))
            if len(ids) < args.min_tokens:
                ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(ids[:n])
            rows.append({"prompt": text, "domain": path.stem})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    lengths = [len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows]
    print(f"wrote {len(rows)} prompts to {args.out}; tokens min {min(lengths)} mean {np.mean(lengths):.1f} "
          f"max {max(lengths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
