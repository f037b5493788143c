"""QLoRA: LoRA over a frozen 4-bit NF4 base (bitsandbytes; its CPU backend runs these tests)."""

import builtins

import pytest
import torch

import tiny
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.train.loss import causal_lm_loss_sum
from instructune.models import load_model
from instructune.train.pack import collate
from instructune.train.runlog import MetricsLog
from instructune.data.tokenize import encode_prompt_completion

pytest.importorskip("bitsandbytes")

EXAMPLES = [{"prompt": "Is the order late?", "completion": "yes it is"}] * 8


def qlora_config(tmp_path, model_dir, *overrides):
    return load_config(None, [
        f"output_dir={tmp_path}", "run_name=qlora", f"model.name={model_dir}", "lora.load_in_4bit=true",
        # 3e-3: at 3e-2 this tiny model's curve jumps by ~0.3 at some seeds and dropout streams, with
        # or without 4-bit, which the NF4-vs-full comparison below would mistake for rounding.
        "lora.r=8", "data.packing=false", "train.max_steps=8", "train.lr=3e-3", "train.warmup_ratio=0",
        "train.log_every_n_steps=1", "train.num_threads=1", "train.precision=fp32", *overrides,
    ])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save_tiny_llama(tmp_path_factory.mktemp("tiny64"), hidden_size=64)


class TestQLoRA:
    def test_trains_an_adapter_over_a_4bit_base_on_the_lora_curve(self, tmp_path, model_dir):
        import bitsandbytes as bnb

        curves = {}
        for four_bit in (True, False):
            config = qlora_config(tmp_path / str(four_bit), model_dir, f"lora.load_in_4bit={four_bit}")
            trainer = tiny.run_trainer(config, train_examples=EXAMPLES)
            curves[four_bit] = [r["loss"] for r in MetricsLog.read(config.run_dir / "metrics.jsonl") if "loss" in r]
            if four_bit:
                qlora = trainer
        base = qlora.model.get_base_model()
        assert isinstance(base.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
        trainable = {n for n, p in qlora.model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        assert curves[True][-1] < curves[True][0] - 0.3
        # NF4 rounding of the frozen base moves the curve only slightly off full-precision LoRA's.
        assert max(abs(q - f) for q, f in zip(curves[True], curves[False])) < 0.1

        # The adapter goes over the full-precision base, as any LoRA adapter does (export merges it there).
        model, tokenizer = load_model(model_dir, adapter=qlora.run_dir / "adapter")
        batch = collate([encode_prompt_completion(EXAMPLES[0], tokenizer, 128)], tokenizer.pad_token_id)
        with torch.no_grad():
            loss_sum, count = causal_lm_loss_sum(model, batch)
        assert abs(loss_sum.item() / count - curves[True][-1]) < 0.1

    def test_needs_lora(self, tmp_path, model_dir):
        with pytest.raises(InstructuneError, match="lora.enabled"):
            qlora_config(tmp_path, model_dir, "lora.enabled=false")

    def test_missing_bitsandbytes_is_a_clear_error(self, tmp_path, model_dir, monkeypatch):
        real_import = builtins.__import__

        def no_bitsandbytes(name, *args, **kwargs):
            if name == "bitsandbytes":
                raise ImportError("No module named 'bitsandbytes'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
        with pytest.raises(InstructuneError, match=r"pip install 'instructune\[qlora\]'"):
            load_model(model_dir, load_in_4bit=True)
