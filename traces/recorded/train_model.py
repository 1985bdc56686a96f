"""Train the small model the recorded default traces come from.

A Hugging Face ``OlmoeForCausalLM`` with OLMoE-1B-7B's *routing topology* -- 16 MoE layers, 64 routed
experts per layer, top-8, softmax router without top-k renormalisation, load-balancing auxiliary loss
(coefficient 0.01) and router z-loss (0.001) -- but tiny widths, so it trains on two CPU cores in under
an hour. It is **not** OLMoE-1B-7B: only the routing shape (what the cache simulator sees) matches.

Steps: (1) a byte-level BPE tokenizer (``tokenizers``) trained on the corpus of ``build_corpus.py``;
(2) the model, trained for a wall-clock budget on random 256-token windows of the concatenated
training documents; (3) the checkpoint (fp32) under ``--out``; its weights rounded to bf16 and saved in
bf16 under ``--export`` when the export is small enough (the recording uses that exported copy, loaded
in fp32, so the committed model reproduces the committed trace exactly).

Transformers' OLMoE computes the auxiliary loss when ``output_router_logits=True`` and labels are
given; it has no z-loss, so this script adds ``router_z_loss_coef * mean(logsumexp(router_logits)^2)``
(ST-MoE / OLMoE) itself.

    nice -n 19 python traces/recorded/train_model.py --corpus runs/corpus --out runs/olmoe-recorded \
        --minutes 45 --export traces/recorded/model
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DOC_SEP = "\n\f\n"
SPECIALS = ["<|endoftext|>", "<|pad|>"]


def read_docs(folder: Path) -> dict[str, list[str]]:
    return {p.stem: [d for d in p.read_text(encoding="utf-8").split(DOC_SEP) if d.strip()]
            for p in sorted(folder.glob("*.txt"))}


def train_tokenizer(docs: dict[str, list[str]], vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((d for ds in docs.values() for d in ds), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], bos_token=SPECIALS[0],
                                   pad_token=SPECIALS[1], unk_token=None)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def encode_stream(tokenizer, docs: list[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def build_model(args, tokenizer):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=16, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
        router_aux_loss_coef=0.01, output_router_logits=False,  # set per call: True in training
        max_position_embeddings=args.context, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    config.router_z_loss_coef = 0.001  # not used by transformers; applied by this script, kept for the record
    torch.manual_seed(args.seed)
    model = OlmoeForCausalLM(config)
    try:
        model.set_experts_implementation("grouped_mm")  # ~1.5x faster than eager on CPU
    except Exception:  # noqa: BLE001 -- older transformers: eager only
        pass
    return model


def z_loss(router_logits) -> torch.Tensor:
    return torch.stack([torch.logsumexp(l.float(), dim=-1).pow(2).mean() for l in router_logits]).mean()


def lr_at(frac: float, step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@torch.no_grad()
def evaluate(model, streams: dict[str, np.ndarray], context: int, windows: int, rng) -> dict[str, float]:
    model.eval()
    result = {}
    for domain, stream in streams.items():
        starts = rng.integers(0, len(stream) - context - 1, size=windows)
        x = torch.from_numpy(np.stack([stream[s:s + context] for s in starts]).astype(np.int64))
        result[domain] = float(model(input_ids=x, labels=x, output_router_logits=False).loss)
    model.train()
    return result


def plot(log_path: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_path.open()))
    if not rows:
        return
    tokens = [int(r["tokens"]) / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(tokens, [float(r["ce_loss"]) for r in rows], label="train cross-entropy (smoothed)")
    held = [(int(r["tokens"]) / 1e6, float(r["heldout_ce"])) for r in rows if r.get("heldout_ce")]
    if held:
        ax.plot(*zip(*held), "o-", label="held-out cross-entropy")
    ax2 = ax.twinx()
    ax2.plot(tokens, [float(r["aux_loss"]) for r in rows], color="tab:gray", alpha=0.5, label="aux loss (right)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("loss (nats/token)")
    ax2.set_ylabel("load-balancing aux loss")
    ax.set_title("16x64 top-8 OLMoE-architecture model (this project)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def export(model, tokenizer_dir: Path, dest: Path, max_mb: float) -> bool:
    """Round weights to bf16 in place (so the fp32 model used afterwards equals the exported one) and
    save a bf16 copy to ``dest`` if it is smaller than max_mb."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    model.to(torch.float32)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, tmp / name)
    size = sum(f.stat().st_size for f in tmp.iterdir()) / 1e6
    if size > max_mb:
        print(f"export is {size:.1f} MB > {max_mb} MB; not copied to {dest}")
        shutil.rmtree(tmp)
        return False
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"exported {size:.1f} MB to {dest}")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="runs/corpus")
    p.add_argument("--out", default="runs/olmoe-recorded")
    p.add_argument("--export", default=str(HERE / "model"), help="small bf16 copy (committed); '' to skip")
    p.add_argument("--export-max-mb", type=float, default=20.0)
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", default=str(HERE / "train_log.csv"))
    p.add_argument("--plot", default=str(HERE / "loss_curve.png"))
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    if args.plot_only:
        plot(Path(args.log), Path(args.plot))
        return 0

    torch.set_num_threads(args.threads)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    train_docs, held_docs = read_docs(corpus / "train"), read_docs(corpus / "heldout")
    tokenizer = train_tokenizer(train_docs, args.vocab, out / "tokenizer")
    streams = {d: encode_stream(tokenizer, docs) for d, docs in train_docs.items()}
    held = {d: encode_stream(tokenizer, docs) for d, docs in held_docs.items()}
    data = np.concatenate(list(streams.values()))
    print(f"tokenizer + encoding: {time.time() - t_start:.0f} s; train tokens {len(data):,} "
          f"({ {d: len(s) for d, s in streams.items()} })", flush=True)

    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, experts impl {model.config._experts_implementation}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(args.seed)
    eval_rng = np.random.default_rng(args.seed + 1)
    budget = args.minutes * 60
    t_train = time.time()
    log = open(args.log, "w", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "elapsed_s", "tokens", "lr", "loss", "ce_loss", "aux_loss", "z_loss", "heldout_ce"])
    model.train()
    step = tokens = 0
    smooth = None
    last_eval = last_ckpt = time.time()
    heldout_ce = ""
    while True:
        elapsed = time.time() - t_train
        if elapsed >= budget:
            break
        lr = lr_at(elapsed / budget, step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(data) - args.context - 1, size=args.batch)
        x = torch.from_numpy(np.stack([data[s:s + args.context] for s in starts]).astype(np.int64))
        outputs = model(input_ids=x, labels=x, output_router_logits=True)
        aux = outputs.aux_loss
        ce = outputs.loss - model.config.router_aux_loss_coef * aux
        zl = z_loss(outputs.router_logits)
        loss = outputs.loss + model.config.router_z_loss_coef * zl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        loss, aux, zl = loss.detach(), aux.detach(), zl.detach()
        ce_value = float(ce.detach())
        smooth = ce_value if smooth is None else 0.95 * smooth + 0.05 * ce_value
        if time.time() - last_eval > 300:
            h = evaluate(model, held, args.context, 4, eval_rng)
            heldout_ce = f"{np.mean(list(h.values())):.4f}"
            last_eval = time.time()
            print(f"step {step} held-out CE {heldout_ce} {h}", flush=True)
        if step % 10 == 0 or heldout_ce:
            writer.writerow([step, f"{time.time() - t_train:.1f}", tokens, f"{lr:.6f}", f"{float(loss):.4f}",
                             f"{smooth:.4f}", f"{float(aux):.4f}", f"{float(zl):.4f}", heldout_ce])
            log.flush()
            heldout_ce = ""
        if step % 50 == 0:
            print(f"step {step} {time.time() - t_train:.0f}s tokens {tokens:,} ce {smooth:.3f} aux {float(aux):.3f} "
                  f"z {float(zl):.2f} lr {lr:.5f}", flush=True)
        if time.time() - last_ckpt > 600:
            model.save_pretrained(out / "checkpoint")
            last_ckpt = time.time()
    train_seconds = time.time() - t_train
    final_held = evaluate(model, held, args.context, 16, eval_rng)
    writer.writerow([step, f"{train_seconds:.1f}", tokens, f"{lr:.6f}", f"{float(loss):.4f}", f"{smooth:.4f}",
                     f"{float(aux):.4f}", f"{float(zl):.4f}", f"{np.mean(list(final_held.values())):.4f}"])
    log.close()
    exported = export(model, out / "tokenizer", Path(args.export), args.export_max_mb) if args.export else False
    model.save_pretrained(out / "checkpoint")  # bf16-rounded weights, fp32 storage
    tokenizer.save_pretrained(out / "checkpoint")
    summary = {"train_tokens_seen": tokens, "steps": step, "train_seconds": round(train_seconds, 1),
               "total_seconds": round(time.time() - t_start, 1), "corpus_train_tokens": int(len(data)),
               "final_train_ce_smoothed": round(smooth, 4), "final_heldout_ce": {k: round(v, 4) for k, v in final_held.items()},
               "final_heldout_ce_mean": round(float(np.mean(list(final_held.values()))), 4),
               "final_aux_loss": round(float(aux), 4), "final_z_loss": round(float(zl), 4),
               "parameters": n_params, "exported_to": args.export if exported else None, "args": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (Path(args.log).parent / "train_summary.json").write_text(json.dumps(summary, indent=2))
    plot(Path(args.log), Path(args.plot))
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
