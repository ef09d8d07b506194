"""A tiny Hugging Face `BitNetForCausalLM` written by PyPI `transformers`, for `tritium import`.

Writes two model directories and the logits transformers computes for them, which
`crates/cli/tests/pipeline/import.rs` compares with tritium's Burn model after import and with the
engine after export. The files are committed, so CI needs no Python:

    pip install torch transformers peft   # checked with torch 2.15, transformers 5.24, peft 0.21
    TORCHDYNAMO_DISABLE=1 python tests/hf/make_bitnet_fixture.py

- `bitnet-bf16/`: bf16 master weights with `quantization_mode = "online"` (`AutoBitLinear`
  ternarizes the weights and int8-quantizes the activations in every forward), the form of
  Microsoft's `-bf16` repository.
- `bitnet-packed/`: the same model ternarized offline, as the packed repository holds it: uint8
  codes (four rows per byte, `transformers.integrations.bitnet.pack_weights`) and a per-tensor
  `weight_scale` that the default `linear_class = "bitlinear"` divides by.
- `peft-lora/`: a PEFT LoRA adapter (r 4, alpha 8, all seven projections, random factors) on the
  bf16 model, as `PeftModel.save_pretrained` writes it.

The model: relu², grouped-query attention (4 heads, 2 KV heads), tied embedding, 2 layers, width
256 (a multiple of 256, so that TQ2_0 export works), the 320-token byte-level BPE beside it.
Reference logits are computed in float32 (the bf16 weights upcast exactly). Quantization is
discontinuous, so the script searches seeds until every quantizer input lies at least MARGIN (in
int8 or trit units) from a rounding boundary, and records the margin it got; the norms' gains are
random, as a trained model's are, which keeps bf16 activations off exact ties.
"""

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from peft import LoraConfig, get_peft_model
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, pack_weights

HERE = Path(__file__).parent
MARGIN = 5e-5
W_MARGIN = 5e-7  # for f32 weights (1bitLLM layout), in trit units
IDS = [0, 17, 240, 5, 99, 311, 42, 128]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bitnet_config(vocab, hidden, ffn, layers, heads, kv_heads, ctx, rope_theta):
    """A relu², tied-embedding `BitNetConfig` of the given shape (also used by
    `scripts/lora-2b.py` for 2B4T's shape)."""
    return BitNetConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="relu2",
        max_position_embeddings=ctx,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )


def config():
    vocab = Tokenizer.from_file(str(HERE / "tokenizer.json")).get_vocab_size()
    return bitnet_config(vocab, 256, 512, 2, 4, 2, 64, 10000.0)


def margins(model, weights=True):
    """Smallest distance of any weight (unless `weights` is False) or activation quantizer input
    to a .5 boundary."""
    worst = [math.inf]

    def frac(y):
        f = (y.abs() - y.abs().floor() - 0.5).abs()
        return f

    def hook(mod, args):
        x = args[0].float()
        s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        y = x * s
        f = torch.where(y.abs() >= 126.5, torch.ones_like(y), frac(y))
        worst[0] = min(worst[0], f.min().item())

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if type(m) in (AutoBitLinear, BitLinear)]
    for m in model.modules():
        if weights and type(m) is AutoBitLinear:
            w = m.weight.float()
            worst[0] = min(worst[0], frac(w / w.abs().mean().clamp(min=1e-5)).min().item())
    return worst, hooks


def logits(model):
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0]


# Microsoft's -bf16 form: bf16 master weights that `AutoBitLinear` quantizes in every forward.
ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


def write_dir(out, state, cfg_dict, chat=True):
    """A model directory: weights, config, tokenizer, and (unless `chat` is False, as in the
    1bitLLM repositories) a tokenizer_config.json with the ChatML template."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    shutil.copy(HERE / "tokenizer.json", out / "tokenizer.json")
    if chat:
        (out / "tokenizer_config.json").write_text(
            json.dumps({"chat_template": CHATML, "eos_token": "<|endoftext|>"}, indent=2) + "\n"
        )


def main():
    torch.set_grad_enabled(False)
    # The first seed whose every quantizer input clears MARGIN in both forms.
    for seed in range(400):
        torch.manual_seed(seed)
        cfg = config()
        plain = BitNetForCausalLM(cfg)
        # Gains as a trained model has them, not all ones: with bf16 weights, two entries of a
        # row are often in ratio exactly 1/2, an exact .5 tie for the activation quantizer.
        for name, p in plain.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        plain = plain.to(torch.bfloat16)
        tmp = HERE / "bitnet-bf16"
        plain.save_pretrained(tmp)
        cfg_dict = json.loads((tmp / "config.json").read_text())
        cfg_dict["quantization_config"] = dict(ONLINE)
        state = load_file(tmp / "model.safetensors")
        state = {k: v.contiguous() for k, v in state.items()}
        write_dir(tmp, state, cfg_dict)
        online = BitNetForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        assert any(isinstance(m, AutoBitLinear) for m in online.modules()), "not loaded as AutoBitLinear"
        worst, hooks = margins(online)
        ref_online = logits(online)
        for h in hooks:
            h.remove()
        if worst[0] < MARGIN:
            continue

        # The packed form: trits as codes 0/1/2 four rows to a byte, and the scale the default
        # `bitlinear` class divides by (1/mean|W|), kept in bf16 as the packed repository keeps it.
        packed = {}
        for name, w in state.items():
            if name.endswith("_proj.weight"):
                w = w.float()
                s = 1.0 / w.abs().mean().clamp(min=1e-5)
                t = (w * s).round().clamp(-1, 1)
                packed[name] = pack_weights(t.clone().to(torch.int8))
                packed[name.replace(".weight", ".weight_scale")] = s.reshape(1).to(torch.bfloat16)
            else:
                packed[name] = w
        pdict = dict(cfg_dict)
        pdict["quantization_config"] = {
            "quant_method": "bitnet",
            "linear_class": "bitlinear",
            "quantization_mode": "offline",
        }
        write_dir(HERE / "bitnet-packed", packed, pdict)
        offline = BitNetForCausalLM.from_pretrained(HERE / "bitnet-packed", dtype=torch.float32)
        assert any(isinstance(m, BitLinear) for m in offline.modules()), "not loaded as BitLinear"
        worst_p, hooks = margins(offline)
        ref_packed = logits(offline)
        for h in hooks:
            h.remove()
        if worst_p[0] < MARGIN:
            continue

        # A PEFT LoRA adapter on the bf16 model, every factor random (B = 0 would test nothing).
        torch.manual_seed(1000 + seed)
        lora = get_peft_model(
            BitNetForCausalLM.from_pretrained(tmp, dtype=torch.float32),
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        )
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn_like(p))
        worst_l, hooks = margins(lora)
        ref_lora = logits(lora)
        for h in hooks:
            h.remove()
        if worst_l[0] >= MARGIN:
            out = HERE / "peft-lora"
            if out.exists():
                shutil.rmtree(out)
            lora.save_pretrained(out)
            # Where the base is, relative to the repository, and no model card.
            cfg_path = out / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = "tests/hf/bitnet-bf16"
            adapter_cfg["target_modules"] = sorted(adapter_cfg["target_modules"])  # a set in peft
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
            (out / "README.md").unlink(missing_ok=True)
            break
    print(f"seed {seed}: margin {worst[0]:.2e} (bf16), {worst_p[0]:.2e} (packed), {worst_l[0]:.2e} (LoRA)")

    seed_1b, margin_1b, ref_1b = one_bit_llm()
    print(f"1bitLLM layout: seed {seed_1b}, margin {margin_1b:.2e}")

    (HERE / "reference.json").write_text(
        json.dumps(
            {
                "ids": IDS,
                "seed": seed,
                "margin": min(worst[0], worst_p[0], worst_l[0]),
                "peft": __import__("peft").__version__,
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__,
                "logits_bf16": [round(x, 7) for x in ref_online.flatten().tolist()],
                "logits_packed": [round(x, 7) for x in ref_packed.flatten().tolist()],
                "logits_bf16_lora": [round(x, 7) for x in ref_lora.flatten().tolist()],
                "seed_1bitllm": seed_1b,
                "logits_1bitllm": [round(x, 7) for x in ref_1b.flatten().tolist()],
            }
        )
        + "\n"
    )


def one_bit_llm():
    """The 1bitLLM reproductions' layout (`1bitLLM/bitnet_b1_58-large`): custom code registered as
    `BitnetForCausalLM` with `model_type = "llama"`, SiLU, multi-head attention, fp32 latent
    weights quantized online by the custom BitLinear (the same absmean / per-token absmax as
    transformers' online mode), and sub-norms named `self_attn.inner_attn_ln` and
    `mlp.ffn_layernorm`. Its reference logits come from transformers' BitNet on the same weights
    (the custom code is not in transformers); the directory holds the 1bitLLM names and config."""
    out = HERE / "bitnet-1bitllm"
    for seed in range(400):
        torch.manual_seed(5000 + seed)
        cfg = config()
        cfg.hidden_act = "silu"
        cfg.num_key_value_heads = cfg.num_attention_heads
        plain = BitNetForCausalLM(cfg)
        for name, p in plain.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        tmp = HERE / "bitnet-1bitllm-transformers"
        plain.save_pretrained(tmp)
        cfg_dict = json.loads((tmp / "config.json").read_text())
        cfg_dict["quantization_config"] = dict(ONLINE)
        (tmp / "config.json").write_text(json.dumps(cfg_dict))
        online = BitNetForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        # f32 weights are continuous: among 65k of them one always lies within ~1e-6 of a trit
        # boundary, which the two scales (equal to 1e-7) still agree on; activations need MARGIN.
        worst, hooks = margins(online, weights=False)
        ref = logits(online)
        for h in hooks:
            h.remove()
        w_worst, _ = margins(online)
        state = {k: v.contiguous() for k, v in load_file(tmp / "model.safetensors").items()}
        shutil.rmtree(tmp)
        if worst[0] >= MARGIN and w_worst[0] >= W_MARGIN:
            break
    renamed = {
        k.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln").replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm"): v
        for k, v in state.items()
    }
    one_bit = {
        "architectures": ["BitnetForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "vocab_size": cfg.vocab_size,
        "input_bits": 8,
        "weight_bits": 1,
        "torch_dtype": "float32",
    }
    write_dir(out, renamed, one_bit, chat=False)
    return seed, worst[0], ref


if __name__ == "__main__":
    main()
