"""Record a routing trace (format v1, see :mod:`specmd_env.trace`) from a Hugging Face MoE causal LM.

``specmd record --model PATH_OR_HF_ID --prompts FILE --out TRACE.npz --max-new-tokens N``

For each prompt (one request, batch size 1) the model prefills the prompt, then decodes ``N`` tokens
greedily with its KV cache in a manual loop: each generated token is fed back through the model once,
which is when its routing happens (as in a serving engine), so a request holds ``prompt + N`` tokens.
Forward hooks on the router modules record, for every token and MoE layer, the ranked top-k expert ids
(rank 0 = highest gate weight) and the gate weights the model actually multiplies the expert outputs
by (after any top-k renormalisation or scaling the architecture applies).

Supported architectures (``config.model_type``): ``olmoe`` (first), ``mixtral``, ``qwen2_moe``,
``qwen3_moe``, ``deepseek_v2``. Routers are found per decoder layer as ``<mlp>.gate`` where ``<mlp>``
is ``mlp`` (or ``block_sparse_moe`` in transformers 4.x Mixtral) and the gate has a ``weight`` of shape
``[num_experts, hidden]``; layers without one (DeepSeek's leading dense layers, Qwen2-MoE's
``mlp_only_layers``) are not MoE layers and are skipped. Both router conventions are handled: a
transformers 5.x router returns ``(logits, top_k_weights, top_k_indices)``, a 4.x gate is a plain
``nn.Linear`` returning logits, from which the architecture's rule (softmax, top-k, optional
renormalisation) gives the ids and weights. Any other model is refused with a :class:`SpecMDError`.

Speculative scores (``spec_scores[t, l, :]``, float16 probabilities over the next MoE layer's
experts). The project's timing model issues the prefetch for layer l+1 when layer l's router runs, so
only information available at that moment may be used. The definition is therefore: take the
residual-stream hidden state that enters layer l's MoE block *before* normalisation -- the input of
layer l's ``post_attention_layernorm`` -- apply layer l+1's ``post_attention_layernorm`` and layer
l+1's router to it, and take the softmax over experts. This deliberately differs from using layer l's
*output* hidden state (which includes layer l's expert outputs and layer l+1's attention): that state
only exists after layer l finishes, too late for a prefetch issued while layer l's router runs. "Layer
l+1" means the next MoE layer when dense layers sit between MoE layers.

The trace is written with :func:`specmd_env.trace.save_trace`, which writes a temporary file and
renames it when complete, so an interrupted recording never leaves a complete-looking file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from specmd_env.checks import integer, integer_array
from specmd_env.errors import SpecMDError
from specmd_env.safe_json import load_json
from specmd_env.trace import Trace, save_trace

MAX_PROMPT_LINE_BYTES = 16 << 20  # one line of a .jsonl prompts file

SPEC_SCORES_DEFINITION = (
    "softmax(router_{l+1}(post_attention_layernorm_{l+1}(x_l))) where x_l is the residual stream entering "
    "layer l's MoE block before normalisation (the input of layer l's post_attention_layernorm)")


@dataclass(frozen=True)
class _Arch:
    """How one architecture routes: where its gate lives and the rule for a logits-only (4.x) gate."""

    containers: tuple[str, ...]
    renormalise: str  # "always", "never" or the name of a boolean config attribute
    scale_attr: str | None = None  # config attribute multiplying the top-k weights (DeepSeek)


ARCHITECTURES: dict[str, _Arch] = {
    "olmoe": _Arch(("mlp",), "norm_topk_prob"),
    "mixtral": _Arch(("block_sparse_moe", "mlp"), "always"),
    "qwen2_moe": _Arch(("mlp",), "norm_topk_prob"),
    "qwen3_moe": _Arch(("mlp",), "norm_topk_prob"),
    "deepseek_v2": _Arch(("mlp",), "never", "routed_scaling_factor"),
}


@dataclass
class _MoELayer:
    layer_index: int  # position among all decoder layers
    norm: Any  # post_attention_layernorm
    router: Any  # the gate module


def _decoder_layers(model) -> Sequence:
    for path in ("model.layers", "model.model.layers", "transformer.layers", "layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    return ()


def find_moe_layers(model) -> tuple[str, list[_MoELayer]]:
    """The architecture name and the model's MoE layers (norm + router), or a clear SpecMDError."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if model_type not in ARCHITECTURES:
        raise SpecMDError(f"cannot record routing from {name} (model_type={model_type!r}): its router is not "
                          f"recognised; supported model types: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[model_type]
    found = []
    for i, layer in enumerate(_decoder_layers(model)):
        norm = getattr(layer, "post_attention_layernorm", None)
        for attr in arch.containers:
            gate = getattr(getattr(layer, attr, None), "gate", None)
            weight = getattr(gate, "weight", None)
            if gate is not None and weight is not None and getattr(weight, "ndim", 0) == 2 and norm is not None:
                found.append(_MoELayer(i, norm, gate))
                break
    if not found:
        raise SpecMDError(f"cannot record routing from {name} (model_type={model_type!r}): no router module found "
                          f"(looked for decoder layers' {' / '.join(a + '.gate' for a in arch.containers)} with a "
                          f"[num_experts, hidden] weight and a post_attention_layernorm)")
    return model_type, found


def _config_value(config, *names, default=None):
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return value
    return default


def _routing_from_output(output, top_k: int, num_experts: int, arch: _Arch, config):
    """(ids [T, k] int64, weights [T, k] float32), ranked by weight, from a router's forward output."""
    import torch

    tensors = list(output) if isinstance(output, (tuple, list)) else [output]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    ids = next((t for t in tensors if not t.is_floating_point() and t.shape[-1] == top_k), None)
    weights = next((t for t in tensors if t.is_floating_point() and t.shape[-1] == top_k and t.ndim == 2), None)
    if ids is not None and weights is not None:
        ids, weights = ids.reshape(-1, top_k), weights.reshape(-1, top_k).float()
    else:
        logits = next((t for t in tensors if t.is_floating_point() and t.shape[-1] == num_experts), None)
        if logits is None:
            raise SpecMDError(f"router output not understood: {[tuple(t.shape) for t in tensors]} "
                              f"(expected logits [..., {num_experts}] or top-k ids/weights [..., {top_k}])")
        probs = torch.softmax(logits.reshape(-1, num_experts).float(), dim=-1)
        weights, ids = torch.topk(probs, top_k, dim=-1)
        renorm = arch.renormalise == "always" or (
            arch.renormalise not in ("always", "never") and bool(getattr(config, arch.renormalise, False)))
        if renorm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if arch.scale_attr:
            weights = weights * float(getattr(config, arch.scale_attr, 1.0) or 1.0)
    order = torch.argsort(weights, dim=-1, descending=True, stable=True)
    return torch.gather(ids, -1, order), torch.gather(weights, -1, order)


def _router_probs(router, hidden):
    import torch
    import torch.nn.functional as F

    weight = router.weight
    logits = F.linear(hidden.reshape(-1, weight.shape[1]).float(), weight.float(),
                      None if getattr(router, "bias", None) is None else router.bias.float())
    return torch.softmax(logits, dim=-1)


class _Recorder:
    """Hooks on every MoE layer's router and post-attention norm; collects one forward call at a time."""

    def __init__(self, model, arch_name: str, layers: list[_MoELayer], top_k: int, num_experts: int):
        self.model, self.layers = model, layers
        self.arch, self.top_k, self.num_experts = ARCHITECTURES[arch_name], top_k, num_experts
        self.active = False
        self.pre: dict[int, Any] = {}
        self.routes: dict[int, tuple] = {}
        self.handles = []
        for j, layer in enumerate(layers):
            self.handles.append(layer.norm.register_forward_pre_hook(self._pre_hook(j)))
            self.handles.append(layer.router.register_forward_hook(self._router_hook(j)))

    def _pre_hook(self, j):
        def hook(module, args):
            if self.active:
                self.pre[j] = args[0].detach()
        return hook

    def _router_hook(self, j):
        def hook(module, args, output):
            if self.active:
                self.routes[j] = _routing_from_output(output, self.top_k, self.num_experts, self.arch,
                                                      self.model.config)
        return hook

    def forward(self, **kwargs):
        """One model call; returns (output, ids [S, L, k], weights [S, L, k], spec [S, L-1, E])."""
        import torch

        self.pre.clear()
        self.routes.clear()
        self.active = True
        try:
            output = self.model(**kwargs)
        finally:
            self.active = False
        n_layers = len(self.layers)
        missing = [j for j in range(n_layers) if j not in self.routes or j not in self.pre]
        if missing:
            raise SpecMDError(f"router hooks did not fire for MoE layers {missing} "
                              f"(decoder layers {[self.layers[j].layer_index for j in missing]})")
        ids = torch.stack([self.routes[j][0] for j in range(n_layers)], dim=1)
        weights = torch.stack([self.routes[j][1] for j in range(n_layers)], dim=1)
        spec = [_router_probs(self.layers[j + 1].router, self.layers[j + 1].norm(self.pre[j]))
                for j in range(n_layers - 1)]  # hooks are inactive here, so calling the norm records nothing
        seq = ids.shape[0]
        spec = torch.stack(spec, dim=1) if spec else torch.zeros(seq, 0, self.num_experts)
        return output, ids, weights, spec

    def close(self):
        for h in self.handles:
            h.remove()


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(output):
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise SpecMDError("the model returned no KV cache (use_cache=True); cannot decode incrementally")


def resolve_model_name(model_name: str | None, num_layers: int, num_experts: int, top_k: int, arch: str) -> str:
    """The trace's ``meta["model"]``: ``model_name`` (checked against its shape when it is a registered
    model), else the registered model with this routing shape."""
    from specmd_env.models import get_model, list_models

    shape = (num_layers, num_experts, top_k)
    if model_name:
        try:
            spec = get_model(model_name)
        except SpecMDError:
            return model_name  # not registered: stored as given (the caller vouches for it)
        if (spec.num_layers, spec.num_experts, spec.top_k) != shape:
            raise SpecMDError(f"model_name {model_name!r} is registered with {spec.num_layers} layers x "
                              f"{spec.num_experts} experts, top-{spec.top_k}, but the recorded model has "
                              f"{num_layers} x {num_experts}, top-{top_k}")
        return spec.name
    matches = [n for n in list_models() if (lambda s: (s.num_layers, s.num_experts, s.top_k))(get_model(n)) == shape]
    if len(matches) > 1:
        key = arch.split("_")[0]
        preferred = [n for n in matches if key in n or any(key in a for a in get_model(n).aliases)]
        matches = preferred if len(preferred) == 1 else matches
    if len(matches) != 1:
        raise SpecMDError(f"no single registered model has the recorded routing shape {num_layers} layers x "
                          f"{num_experts} experts, top-{top_k} (matches: {matches or 'none'}); pass model_name "
                          f"(--model-name) to name it")
    return matches[0]


def record_trace(model, tokenizer, prompts: Sequence[str | Sequence[int]], *, max_new_tokens: int,
                 device: str = "cpu", model_name: str | None = None, domains: Sequence[str] | None = None,
                 source: str | None = None, licence: str = "unknown", description: str | None = None,
                 stop_at_eos: bool = False, progress: bool = False) -> Trace:
    """Run ``model`` over ``prompts`` (strings, tokenized with ``tokenizer``, or lists of token ids) and
    return the routing trace. See the module docstring for what is recorded and how."""
    import torch
    import transformers

    max_new_tokens = integer("max_new_tokens", max_new_tokens, minimum=0)
    prompts = list(prompts)
    if not prompts:
        raise SpecMDError("no prompts to record")
    if domains is not None and len(domains) != len(prompts):
        raise SpecMDError(f"domains has {len(domains)} entries for {len(prompts)} prompts")
    arch_name, layers = find_moe_layers(model)
    config = model.config
    num_experts = int(layers[0].router.weight.shape[0])
    top_k = int(_config_value(config, "num_experts_per_tok", "top_k", "moe_topk", default=0))
    if not 0 < top_k <= num_experts:
        raise SpecMDError(f"{type(model).__name__}: cannot read top-k from the config (num_experts_per_tok={top_k})")
    num_layers = len(layers)
    name = resolve_model_name(model_name, num_layers, num_experts, top_k, arch_name)
    eos = getattr(config, "eos_token_id", None)
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])

    model.eval()
    model.to(device)
    recorder = _Recorder(model, arch_name, layers, top_k, num_experts)
    cache_kw = _cache_kwarg(model)
    all_ids, all_weights, all_spec, all_tokens, lengths, prompt_lengths = [], [], [], [], [], []
    try:
        with torch.no_grad():
            for r, prompt in enumerate(prompts):
                if isinstance(prompt, str):
                    if tokenizer is None:
                        raise SpecMDError(f"prompt {r} is text but no tokenizer was given")
                    token_ids = list(tokenizer(prompt)["input_ids"])
                else:
                    token_ids = integer_array(f"prompt {r} token ids", prompt, 0, 2**31).tolist()
                if not token_ids:
                    raise SpecMDError(f"prompt {r} is empty after tokenization")
                x = torch.tensor([token_ids], dtype=torch.long, device=device)
                out, ids, weights, spec = recorder.forward(input_ids=x, use_cache=True)
                pieces = [(ids, weights, spec)]
                tokens = list(token_ids)
                cache = _output_cache(out)
                next_token = int(out.logits[0, -1].argmax())
                for _ in range(max_new_tokens):
                    tokens.append(next_token)
                    x = torch.tensor([[next_token]], dtype=torch.long, device=device)
                    out, ids, weights, spec = recorder.forward(input_ids=x, use_cache=True, **{cache_kw: cache})
                    pieces.append((ids, weights, spec))
                    cache = _output_cache(out)
                    if stop_at_eos and next_token in eos:
                        break
                    next_token = int(out.logits[0, -1].argmax())
                all_ids.append(torch.cat([p[0] for p in pieces]).cpu().numpy().astype(np.int16))
                all_weights.append(torch.cat([p[1] for p in pieces]).cpu().numpy().astype(np.float32))
                all_spec.append(torch.cat([p[2] for p in pieces]).cpu().numpy().astype(np.float16))
                all_tokens.append(np.asarray(tokens, np.int32))
                lengths.append(len(tokens))
                prompt_lengths.append(len(token_ids))
                if progress:
                    print(f"request {r + 1}/{len(prompts)}: {len(token_ids)} prompt + "
                          f"{len(tokens) - len(token_ids)} generated tokens", flush=True)
    finally:
        recorder.close()

    path = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    meta = {
        "model": name, "num_layers": num_layers, "num_experts": num_experts, "top_k": top_k, "kind": "recorded",
        "source": source or (f"{path}; recorded with specmd_env.recorder, transformers {transformers.__version__}, "
                             f"torch {torch.__version__}, {_dt.date.today().isoformat()}"),
        "licence": licence,
        "domains": [str(d) for d in domains] if domains is not None else ["unknown"] * len(prompts),
        "description": description or (f"recorded from {path} ({arch_name}, {num_layers} MoE layers x {num_experts} "
                                        f"experts, top-{top_k}), greedy decoding of {max_new_tokens} tokens"),
        "recorder": {"architecture": arch_name, "hf_class": type(model).__name__,
                     "moe_layer_indices": [l.layer_index for l in layers], "max_new_tokens": max_new_tokens,
                     "decoding": "greedy, KV cache, batch 1", "stop_at_eos": stop_at_eos,
                     "spec_scores": SPEC_SCORES_DEFINITION, "transformers": transformers.__version__},
    }
    return Trace(expert_ids=np.concatenate(all_ids), request_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                 prompt_lengths=np.asarray(prompt_lengths, np.int64), meta=meta,
                 gate_weights=np.concatenate(all_weights), spec_scores=np.concatenate(all_spec),
                 token_ids=np.concatenate(all_tokens))


def read_prompts(path: str | Path, default_domain: str = "unknown") -> tuple[list[str], list[str]]:
    """Prompts and their domains from a file: one prompt per line, or JSON lines
    ``{"prompt": ..., "domain": ...}`` (chosen when the file ends in .jsonl or its first non-blank line
    starts with ``{``). Blank lines are skipped; every defect is a SpecMDError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecMDError(f"prompts file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise SpecMDError(f"prompts file {str(path)!r}: line {line} is not UTF-8 text") from None
    except OSError as exc:
        raise SpecMDError(f"prompts file {str(path)!r} cannot be read: {exc}") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    jsonl = path.suffix == ".jsonl" or first.lstrip().startswith("{")
    prompts, domains = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line)
            domains.append(default_domain)
            continue
        row = load_json(line, f"prompts file {str(path)!r} line {number}", max_bytes=MAX_PROMPT_LINE_BYTES,
                        error=SpecMDError)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise SpecMDError(f"prompts file {str(path)!r} line {number}: expected an object with a non-empty "
                              f"string \"prompt\", got {line.strip()[:80]!r}")
        domain = row.get("domain", default_domain)
        if not isinstance(domain, str) or not domain:
            raise SpecMDError(f"prompts file {str(path)!r} line {number}: \"domain\" must be a non-empty string, "
                              f"got {domain!r}")
        prompts.append(row["prompt"])
        domains.append(domain)
    if not prompts:
        raise SpecMDError(f"prompts file {str(path)!r} holds no prompts")
    return prompts, domains


def load_model(model_id: str, device: str = "cpu", dtype: str = "float32"):
    """A causal LM and its tokenizer from a local folder or a Hugging Face id."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise SpecMDError(f"recording needs the 'record' extra (pip install 'specmd-env[record]'): {exc}") from None
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise SpecMDError(f"unknown dtype {dtype!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        # use_safetensors: weights are read from safetensors only, never from pickled .bin checkpoints
        try:
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype, use_safetensors=True)
        except TypeError:  # transformers 4.x
            model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype=torch_dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise SpecMDError(f"cannot load model {model_id!r}: {exc}") from None
    return model.to(device), tokenizer


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local folder or Hugging Face id of an MoE causal LM")
    parser.add_argument("--prompts", required=True, help="one prompt per line, or jsonl {\"prompt\", \"domain\"}")
    parser.add_argument("--out", required=True, help="trace file to write (.npz)")
    parser.add_argument("--max-new-tokens", type=int, required=True, help="greedy decode steps per request")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", help="weights dtype for the run (default float32)")
    parser.add_argument("--domain", default="unknown", help="domain of prompts that do not name one")
    parser.add_argument("--model-name", default=None,
                        help="trace model name (default: the registered model with the recorded routing shape)")
    parser.add_argument("--licence", default="unknown", help="licence of the recorded trace")
    parser.add_argument("--source", default=None, help="override the trace's source string")
    parser.add_argument("--description", default=None, help="the trace's description")
    parser.add_argument("--stop-at-eos", action="store_true", help="end a request at the end-of-sequence token")
    parser.add_argument("--compress", action="store_true", help="deflate the trace file (smaller, not mmapped)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def run(args: argparse.Namespace) -> int:
    from specmd_env.outputs import writable_file

    writable_file(args.out, "--out")
    threads = integer("--threads", args.threads, minimum=0)
    prompts, domains = read_prompts(args.prompts, args.domain)
    import torch
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.device(args.device)
    except RuntimeError:
        raise SpecMDError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecMDError("--device cuda given but CUDA is not available")
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    import transformers
    source = args.source or (f"{args.model}; recorded with specmd_env.recorder, transformers "
                             f"{transformers.__version__}, {_dt.date.today().isoformat()}")
    trace = record_trace(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, device=args.device,
                         model_name=args.model_name, domains=domains, source=source, licence=args.licence,
                         description=args.description, stop_at_eos=args.stop_at_eos, progress=True)
    out = save_trace(trace, args.out, compress=args.compress)
    print(f"wrote {out}: {trace!r}, {out.stat().st_size / 1e6:.2f} MB")
    return 0
