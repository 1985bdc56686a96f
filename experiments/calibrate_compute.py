"""Calibrated compute: refit each engine of ``specmd_env/data/engines.toml`` to the published batch-1
latencies of ``specmd_env/data/calibration/compute/figures.toml`` and print modelled against published.

Prints, in order:

1. per engine, the refitted constants beside the ones in ``engines.toml`` (they should agree: the TOML
   holds this fit's output) and each series' request overhead (TTFT time that is not a forward pass);
2. every figure: published, modelled with the TOML's constants, relative error, and its role (fit /
   check / excluded, with the reason for exclusions and the prefill rate that justifies it);
3. a sensitivity check: the vllm fit with the weight-bandwidth efficiency fixed at lower values, and
   what it does to the OLMoE decode layer the simulator charges;
4. predictions where nothing is published: OLMoE-1B-7B and Mixtral-8x7B (bf16, every expert resident,
   one GPU) per engine and GPU, with the per-layer decode time the simulator uses.

    python -m experiments.calibrate_compute
"""

from __future__ import annotations

import argparse
import dataclasses

from specmd_env.compute_calibration import (Figure, MeasuredModel, fit_engine, gpu_profile, implied_prefill_tflops,
                                            load_figures, modelled_ms, pass_seconds, per_layer_decode_ms)
from specmd_env.hardware import get_engine, get_profile, list_engines
from specmd_env.models import get_model

#: (model, vocabulary) predicted; vocabularies from the models' Hugging Face config.json
PREDICTED = (("olmoe-1b-7b", 50304), ("mixtral-8x7b", 32000))
GPUS = ("paper-a100-5gbps", "h100-pcie5", "rtx4090-pcie4")


def series_reference(figure: Figure, figures: list[Figure]) -> Figure | None:
    """The ISL-1024 TTFT of the same model and series, against which an excluded TTFT is judged."""
    for other in figures:
        if (other.series, other.model.name, other.metric, other.prompt_tokens) == \
                (figure.series, figure.model.name, "ttft", 1024) and other is not figure:
            return other
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=512, help="context of the predicted decode step")
    args = parser.parse_args(argv)
    figures = load_figures()

    print("== fitted constants (refit now | engines.toml)")
    fits = {}
    for name in list_engines():
        engine = get_engine(name)
        if not engine.fitted:
            continue
        fits[name] = fit = fit_engine(engine, figures)
        print(f"[{name}] {len(fit.figures)} fit figures")
        for constant in engine.fitted:
            print(f"  {constant:28s} {getattr(fit.engine, constant):10.4g} | {getattr(engine, constant):10.4g}")
        for series, overhead in fit.request_overhead_ms.items():
            print(f"  request overhead of {series}: {overhead:.2f} ms per TTFT (not a forward pass; not simulated)")

    print("\n== published vs modelled (engines.toml constants)")
    print(f"{'figure':42s} {'role':8s} {'published':>10s} {'modelled':>9s} {'error':>7s}")
    for figure in figures:
        overheads = fits[figure.engine].request_overhead_ms if figure.engine in fits else {}
        modelled = modelled_ms(figure, None, overheads)
        print(f"{figure.id:42s} {figure.role:8s} {figure.published_ms:8.2f}ms {modelled:7.2f}ms "
              f"{modelled / figure.published_ms - 1:+7.1%}")
        if figure.role == "excluded":
            ref = series_reference(figure, figures)
            rate = f"; implied prefill rate from the ISL-{ref.prompt_tokens} run: " \
                   f"{implied_prefill_tflops(ref, figure):.0f} TFLOP/s, peak {figure.bf16_tflops:.0f}" if ref else ""
            print(f"  excluded: {figure.note}{rate}")

    print("\n== sensitivity: vllm refitted with weight_bandwidth_efficiency fixed")
    olmoe = get_model("olmoe-1b-7b")
    vllm = get_engine("vllm")
    for eta in (None, 0.9, 0.8):
        fixed = tuple(n for n in vllm.fitted if n != "weight_bandwidth_efficiency")
        engine = vllm if eta is None else dataclasses.replace(vllm, weight_bandwidth_efficiency=eta, fitted=fixed)
        fit = fit_engine(engine, figures)
        worst = max(abs(fit.error(f)) for f in fit.figures)
        layer = per_layer_decode_ms(gpu_profile("a100", 2039.0, 312.0, fit.engine), olmoe, args.context)
        label = "fitted" if eta is None else f"{eta:.2f}"
        print(f"  efficiency {label:>6s} ({fit.engine.weight_bandwidth_efficiency:.3f}): worst fit error {worst:5.1%}; "
              f"OLMoE decode layer {layer:.4f} ms")

    print(f"\n== predictions, bf16, every expert resident, batch 1, decode context {args.context} "
          f"(no published figure for these)")
    print(f"{'model':14s} {'gpu profile':18s} {'engine':9s} {'TPOT':>9s} {'TTFT@512':>10s} {'layer':>10s}")
    for model_name, vocab in PREDICTED:
        spec = get_model(model_name)
        measured = MeasuredModel(model_name, spec, False, vocab, "config.json")
        for gpu in GPUS:
            for engine in list_engines():
                profile = dataclasses.replace(get_profile(gpu), engine=engine)
                tpot = pass_seconds(profile, measured, 1, args.context, prefill=False) * 1e3
                ttft = pass_seconds(profile, measured, 512, 0, prefill=True) * 1e3
                layer = per_layer_decode_ms(profile, spec, args.context)
                print(f"{spec.display_name:14s} {gpu:18s} {engine:9s} {tpot:7.2f}ms {ttft:8.1f}ms {layer:8.4f}ms")
    print("(Mixtral-8x7B in bf16 is 87 GB: it does not fit one 80 GB GPU, let alone 24 GB -- a what-if for the "
          "per-layer time, which is what the simulator uses; the engine 'roofline' is the pre-calibration model)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
