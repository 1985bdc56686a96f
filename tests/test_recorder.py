"""The recorder against a tiny randomly initialised OLMoE: recorded routing equals a plain forward's."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from specmd_env.cli import main as cli_main  # noqa: E402
from specmd_env.errors import SpecMDError  # noqa: E402
from specmd_env.recorder import read_prompts, record_trace  # noqa: E402
from specmd_env.trace import load_trace  # noqa: E402

LAYERS, EXPERTS, TOP_K, VOCAB = 4, 16, 4, 64
NEW_TOKENS = 6
WORDS = ["the", "cache", "expert", "router", "token", "layer", "model", "prefetch", "gpu", "memory"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=4, num_experts=EXPERTS,
                         num_experts_per_tok=TOP_K, max_position_embeddings=128, initializer_range=0.2,
                         pad_token_id=0, eos_token_id=None, bos_token_id=None, norm_topk_prob=False)
    model = OlmoeForCausalLM(config).eval()
    return model


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


PROMPTS = ["the cache expert router token layer model", "prefetch gpu memory the expert"]


@pytest.fixture(scope="module")
def trace(tiny, tokenizer):
    return record_trace(tiny, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, model_name="tiny-olmoe",
                        domains=["a", "b"], licence="Apache-2.0")


def test_shape_and_metadata(trace):
    assert trace.num_requests == 2 and trace.kind == "recorded" and trace.model == "tiny-olmoe"
    assert (trace.num_layers, trace.num_experts, trace.top_k) == (LAYERS, EXPERTS, TOP_K)
    assert trace.domains == ["a", "b"] and trace.meta["licence"] == "Apache-2.0"
    assert "transformers" in trace.meta["source"]
    assert list(trace.prompt_lengths) == [7, 5]
    assert list(np.diff(trace.request_offsets)) == [7 + NEW_TOKENS, 5 + NEW_TOKENS]
    assert trace.spec_scores.shape == (trace.num_tokens, LAYERS - 1, EXPERTS)
    assert trace.expert_ids.dtype == np.int16 and trace.gate_weights.dtype == np.float32
    assert trace.spec_scores.dtype == np.float16


def test_routing_equals_plain_forward_for_prefill_and_decode_tokens(tiny, trace):
    """Re-run prompt + generated tokens in one plain forward with output_router_logits=True: every
    token's recorded ranked top-k ids and gate weights equal topk(softmax(router_logits))."""
    for r in range(trace.num_requests):
        rows = trace.request_slice(r)
        tokens = torch.tensor(trace.token_ids[rows], dtype=torch.long)[None]
        with torch.no_grad():
            out = tiny(input_ids=tokens, output_router_logits=True)
        assert len(out.router_logits) == LAYERS
        for layer, logits in enumerate(out.router_logits):
            weights, ids = torch.topk(torch.softmax(logits.float(), dim=-1), TOP_K, dim=-1)
            np.testing.assert_array_equal(trace.expert_ids[rows][:, layer], ids.numpy())
            np.testing.assert_allclose(trace.gate_weights[rows][:, layer], weights.numpy(), rtol=1e-4, atol=1e-6)


def test_generated_tokens_equal_greedy_generate(tiny, trace):
    for r in range(trace.num_requests):
        rows = trace.request_slice(r)
        prompt_len = int(trace.prompt_lengths[r])
        prompt = torch.tensor(trace.token_ids[rows][:prompt_len], dtype=torch.long)[None]
        with torch.no_grad():
            generated = tiny.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
        assert generated[0, prompt_len:].tolist() == trace.token_ids[rows][prompt_len:].tolist()


def test_spec_scores_are_next_layer_router_probabilities_of_the_pre_norm_residual(tiny, trace):
    sums = trace.spec_scores.astype(np.float32).sum(axis=-1)
    np.testing.assert_allclose(sums, 1.0, atol=1e-2)
    # independent computation for request 0: capture each layer's post_attention_layernorm input
    rows = trace.request_slice(0)
    captured = {}
    layers = tiny.model.layers
    handles = [layers[i].post_attention_layernorm.register_forward_pre_hook(
        lambda m, a, i=i: captured.__setitem__(i, a[0])) for i in range(LAYERS - 1)]
    try:
        with torch.no_grad():
            tiny(input_ids=torch.tensor(trace.token_ids[rows], dtype=torch.long)[None])
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for layer in range(LAYERS - 1):
            nxt = layers[layer + 1]
            h = nxt.post_attention_layernorm(captured[layer])[0]
            expected = torch.softmax(h @ nxt.mlp.gate.weight.T, dim=-1).numpy()
            np.testing.assert_allclose(trace.spec_scores[rows][:, layer].astype(np.float32), expected, atol=2e-3)


def test_registered_model_shape_is_checked(tiny, tokenizer):
    with pytest.raises(SpecMDError, match="registered with 16 layers"):
        record_trace(tiny, tokenizer, PROMPTS[:1], max_new_tokens=1, model_name="olmoe-1b-7b")
    with pytest.raises(SpecMDError, match="no single registered model"):
        record_trace(tiny, tokenizer, PROMPTS[:1], max_new_tokens=1)


def test_unrecognised_model_is_refused(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(SpecMDError, match="LlamaForCausalLM.*router is not recognised"):
        record_trace(llama, tokenizer, PROMPTS, max_new_tokens=1)
    with pytest.raises(SpecMDError, match="not recognised"):
        record_trace(torch.nn.Linear(2, 2), tokenizer, PROMPTS, max_new_tokens=1)


@pytest.mark.parametrize("content, match", [
    ("", "holds no prompts"),
    ("\n  \n", "holds no prompts"),
    ('{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
    ('{"prompt": "a"}\n\n["a list"]\n', "line 3: expected an object"),
    ('{"prompt": ""}\n', "line 1: expected an object"),
    ('{"prompt": "a", "domain": 3}\n', "line 1: \"domain\" must be"),
])
def test_bad_prompts_file_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "prompts.txt"
    path.write_text(content)
    with pytest.raises(SpecMDError, match=match):
        read_prompts(path)


def test_prompts_file_missing_or_not_utf8(tmp_path):
    with pytest.raises(SpecMDError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(SpecMDError, match="line 2 is not UTF-8"):
        read_prompts(path)


def test_prompts_file_formats(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("first prompt\n\nsecond prompt\n")
    assert read_prompts(plain, "docs") == (["first prompt", "second prompt"], ["docs", "docs"])
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a\nb", "domain": "code"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    assert read_prompts(jsonl, "x") == (["a\nb", "c"], ["code", "x"])


def test_cli_record_writes_a_loadable_trace(tiny, tokenizer, tmp_path, trace):
    model_dir = tmp_path / "model"
    tiny.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "domain": d}) + "\n" for p, d in zip(PROMPTS, "ab")))
    out = tmp_path / "trace.npz"
    rc = cli_main(["record", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out),
                   "--max-new-tokens", str(NEW_TOKENS), "--model-name", "tiny-olmoe", "--threads", "1"])
    assert rc == 0
    loaded = load_trace(out)
    assert loaded.domains == ["a", "b"] and loaded.kind == "recorded"
    np.testing.assert_array_equal(loaded.token_ids, trace.token_ids)
    np.testing.assert_array_equal(loaded.expert_ids, trace.expert_ids)
    assert not list(tmp_path.glob("*.partial"))
    assert cli_main(["record", "--model", str(model_dir), "--prompts", str(tmp_path / "missing.txt"),
                     "--out", str(tmp_path / "x.npz"), "--max-new-tokens", "1"]) == 2
    assert not (tmp_path / "x.npz").exists()


def _other_architectures():
    from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, MixtralConfig, MixtralForCausalLM,
                              Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                  max_position_embeddings=64, initializer_range=0.2, pad_token_id=0, eos_token_id=None,
                  bos_token_id=None, intermediate_size=32)
    moe = dict(moe_intermediate_size=16, num_experts_per_tok=2)
    return {
        "mixtral": (MixtralForCausalLM, MixtralConfig(num_local_experts=8, num_experts_per_tok=2, **common), [0, 1, 2]),
        "qwen2_moe": (Qwen2MoeForCausalLM, Qwen2MoeConfig(num_experts=8, shared_expert_intermediate_size=16,
                                                          mlp_only_layers=[1], **moe, **common), [0, 2]),
        "qwen3_moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig(num_experts=8, norm_topk_prob=True, **moe, **common),
                      [0, 1, 2]),
        "deepseek_v2": (DeepseekV2ForCausalLM, DeepseekV2Config(
            n_routed_experts=8, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=None,
            qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, topk_method="greedy", n_group=1, topk_group=1,
            **moe, **common), [1, 2]),
    }


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2"])
def test_other_architectures(arch):
    try:
        cls, config, moe_layers = _other_architectures()[arch]
    except (ImportError, TypeError) as exc:  # an older transformers without this model
        pytest.skip(f"{arch} not available: {exc}")
    torch.manual_seed(0)
    model = cls(config).eval()
    trace = record_trace(model, None, [[3, 4, 5, 6, 7]], max_new_tokens=3, model_name="tiny")
    assert trace.meta["recorder"]["moe_layer_indices"] == moe_layers
    with torch.no_grad():
        out = model(input_ids=torch.tensor(trace.token_ids, dtype=torch.long)[None], output_router_logits=True)
    assert len(out.router_logits) == len(moe_layers) == trace.num_layers
    for layer, logits in enumerate(out.router_logits):
        ids = torch.topk(torch.softmax(logits.float(), dim=-1), trace.top_k, dim=-1).indices
        np.testing.assert_array_equal(trace.expert_ids[:, layer], ids.numpy())
    np.testing.assert_allclose(trace.spec_scores.astype(np.float32).sum(-1), 1.0, atol=1e-2)
