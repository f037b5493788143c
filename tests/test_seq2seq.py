"""Encoder-decoder models (T5 / FLAN-T5) through the decoder-only path, on a tiny random T5.

The model kind comes from the model's config, never from a flag: tokenization (raw prompt in, the
completion + EOS out), the loss, full and LoRA training with gradient accumulation, the saved
adapter, evaluation (generation and multiple choice), chat, export and the `train` command.
"""

import json

import pytest
import torch
from tokenizers import processors
from transformers import T5ForConditionalGeneration

import tiny
from instructune import cli
from instructune.generation.chat import ChatSession
from instructune.config import load_config
from instructune.errors import InstructuneError
from instructune.evaluate.score import evaluate_examples
from instructune.export.merge import main as export_main
from instructune.train.loss import seq2seq_loss_sum
from instructune.models import is_encoder_decoder, load_model
from instructune.train.pack import collate_seq2seq
from instructune.train.runlog import MetricsLog
from instructune.data.tokenize import IGNORE_INDEX, encode_example
from instructune.data.tokenize import tokenize_examples
from instructune.train.trainer import Trainer

# Targets of different lengths: a mean of per-micro-batch means would weigh their tokens unequally.
EXAMPLES = [
    {"prompt": "Where is my order?", "completion": "It has shipped."},
    {"prompt": "How do I reset my password?",
     "completion": "Click the link in the email we sent you, then choose a new one."},
    {"prompt": "I want a refund.", "completion": "Done."},
    {"prompt": "Summarize: #Person1#: Hello. #Person2#: Hi.", "completion": "Two people greet each other politely."},
]
# What a model must memorise to show it has learned to answer and to stop.
YES_NO = [{"prompt": "Say yes.", "completion": "yes"}, {"prompt": "Say no.", "completion": "no"}]
QUIET = ["train.log_every_n_steps=1", "train.warmup_ratio=0", "data.max_length=64", "train.num_threads=1",
         "lora.dropout=0", "train.max_grad_norm=null", "train.precision=fp32"]


def make_t5(tokenizer, seed=0):
    """The tiny T5 without dropout, so a training step and an eval forward see the same function."""
    config = tiny.make_t5(tokenizer, seed).config
    config.dropout_rate = 0.0  # attention reads it at construction, so build the model anew
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)


def make_config(tmp_path, *overrides, name="run"):
    return load_config(None, [f"output_dir={tmp_path}", f"run_name={name}", *QUIET, *overrides])


run_trainer = tiny.run_trainer


def mean_loss(model, batch):
    with torch.no_grad():
        return float(torch.div(*seq2seq_loss_sum(model, batch)))


def logits(model, tokenizer, prompt="Where is my order?", target="It has shipped."):
    batch = collate_seq2seq([encode_example({"prompt": prompt, "completion": target}, tokenizer, 64,
                                            encoder_decoder=True)], tokenizer.pad_token_id)
    with torch.no_grad():
        return model(**batch).logits


def tokenizer_ids(tokenizer, text):
    """The text's own tokens, without any special token the tokenizer adds."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def appending_tokenizer():
    """The tiny tokenizer with T5's habit of appending EOS to every text it encodes."""
    tokenizer = tiny.make_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|im_end|>", special_tokens=[("<|im_end|>", tokenizer.eos_token_id)]
    )
    return tokenizer


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory, tokenizer):
    """A tiny T5 folder with the tiny tokenizer, as a user's local FLAN-T5 (no dropout)."""
    path = tmp_path_factory.mktemp("tiny-t5")
    make_t5(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_t5_dir):
    """A LoRA run of the tiny T5 folder, loaded from its config (so the adapter names its base)."""
    config = make_config(tmp_path_factory.mktemp("runs"), f"model.name={tiny_t5_dir}", "train.max_steps=3",
                         "train.batch_size=2", "train.lr=1e-2", "lora.r=4")
    return run_trainer(config, train_examples=EXAMPLES)


@pytest.fixture(scope="module")
def yes_no_t5(tmp_path_factory, tokenizer):
    """A tiny T5 fully fine-tuned until it answers "Say yes." with "yes" and "Say no." with "no"."""
    config = make_config(tmp_path_factory.mktemp("runs"), "lora.enabled=false", "train.max_steps=40",
                         "train.batch_size=2", "train.lr=3e-3", "train.schedule=constant")
    trainer = run_trainer(config, model=make_t5(tokenizer), tokenizer=tokenizer, train_examples=YES_NO)
    return trainer.model.eval()


class TestTokenize:
    def test_encoder_reads_the_raw_prompt_and_labels_are_the_completion_and_eos(self, tokenizer):
        example = EXAMPLES[1]
        item = encode_example(example, tokenizer, 64, encoder_decoder=True)
        # The tiny tokenizer adds no special tokens and has a chat template that must not be used.
        assert item["input_ids"] == tokenizer(example["prompt"])["input_ids"]
        assert tokenizer.decode(item["input_ids"]) == example["prompt"]
        completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
        assert item["labels"] == completion_ids + [tokenizer.eos_token_id]
        assert IGNORE_INDEX not in item["labels"] and not item["truncated"]

    def test_a_tokenizer_that_appends_eos_itself_gets_no_second_one(self, tokenizer):
        t5_like = appending_tokenizer()
        eos = t5_like.eos_token_id
        item = encode_example(EXAMPLES[0], t5_like, 64, encoder_decoder=True)
        completion_ids = tokenizer(EXAMPLES[0]["completion"], add_special_tokens=False)["input_ids"]
        assert item["labels"] == completion_ids + [eos]
        assert item["input_ids"][-1] == eos and item["input_ids"][-2] != eos

    @pytest.mark.parametrize("make_tokenizer", [tiny.make_tokenizer, appending_tokenizer])
    def test_a_cut_target_does_not_end_in_eos_as_on_the_decoder_only_path(self, make_tokenizer):
        # Issue 12: EOS after a target cut mid-answer teaches the decoder to stop mid-answer.
        tok = make_tokenizer()
        answer = EXAMPLES[1]["completion"]
        item = encode_example({"prompt": answer * 3, "completion": answer}, tok, 9, encoder_decoder=True)
        answer_ids = tokenizer_ids(tok, answer)
        assert item["labels"] == answer_ids[:9] and tok.eos_token_id not in item["labels"]
        assert item["truncated"] and item["prompt_cut"] > 0
        assert item["answer_cut"] == len(answer_ids) + 1 - 9  # the rest of the answer and its EOS
        # The decoder-only path cuts the same way: the labels are the answer's first tokens, no EOS.
        decoder_only = encode_example({"prompt": "Hi", "completion": answer}, tok, 12)
        labels = [label for label in decoder_only["labels"] if label != IGNORE_INDEX]
        assert decoder_only["answer_cut"] > 0 and labels == answer_ids[:len(labels)]
        # The encoder input is cut by the tokenizer itself, which keeps its own ending (T5's </s>).
        assert item["input_ids"] == tok(answer * 3, truncation=True, max_length=9)["input_ids"]

    def test_a_target_that_fits_ends_in_exactly_one_eos(self, tokenizer):
        answer = EXAMPLES[1]["completion"]
        n = len(tokenizer_ids(tokenizer, answer)) + 1
        for tok in (tokenizer, appending_tokenizer()):
            item = encode_example({"prompt": "Hi", "completion": answer}, tok, n, encoder_decoder=True)
            assert item["labels"] == tokenizer_ids(tok, answer) + [tok.eos_token_id] and item["answer_cut"] == 0

    def test_chat_examples_are_a_one_line_error(self, tokenizer):
        chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
        with pytest.raises(InstructuneError, match=r"^example 1: .*decoder-only"):
            tokenize_examples([EXAMPLES[0], chat], tokenizer, 64, encoder_decoder=True)

    def test_collate_pads_labels_with_ignore_index_only_past_each_target(self, tokenizer):
        rows = [encode_example(e, tokenizer, 64, encoder_decoder=True) for e in EXAMPLES[:3]]
        batch = collate_seq2seq(rows, tokenizer.pad_token_id)
        for b, row in enumerate(rows):
            n_source, n_target = len(row["input_ids"]), len(row["labels"])
            assert batch["input_ids"][b, :n_source].tolist() == row["input_ids"]
            padding = batch["input_ids"].shape[1] - n_source
            assert batch["attention_mask"][b].tolist() == [1] * n_source + [0] * padding
            assert batch["labels"][b, :n_target].tolist() == row["labels"]
            assert (batch["labels"][b, n_target:] == IGNORE_INDEX).all()


class TestPrepare:
    def test_prepare_with_a_t5_folder_counts_what_t5_training_cuts(self, tmp_path, tiny_t5_dir):
        from instructune.data.prepare import prepare

        long = "The quick brown fox jumps over the lazy dog. " * 5
        rows = [{"instruction": f"Say {i}", "input": long if i % 2 else "", "output": long if i % 3 == 0 else "ok"}
                for i in range(8)]
        raw = tmp_path / "raw.jsonl"
        raw.write_text("".join(json.dumps(row) + "\n" for row in rows))
        out = tmp_path / "train.jsonl"
        # The model kind comes from the folder's config.json, as training takes it from the model.
        summary = prepare(out, data=raw, task="alpaca", tokenizer=str(tiny_t5_dir), max_length=40)
        assert summary["truncation"]["answer_cut"]["count"] > 0
        trainer = Trainer(make_config(tmp_path, f"model.name={tiny_t5_dir}", f"data.train={out}", "data.max_length=40"),
                          progress=False)
        trainer.setup()
        assert trainer.encoder_decoder and trainer.data_report["train"] == summary["truncation"]
        as_decoder_only = prepare(tmp_path / "d.jsonl", data=raw, task="alpaca", tokenizer=str(tiny_t5_dir),
                                  max_length=40, encoder_decoder=False)
        assert as_decoder_only["truncation"]["prompt_cut"] != summary["truncation"]["prompt_cut"]


class TestLoss:
    def test_sum_over_count_is_the_models_own_mean_loss(self, tokenizer):
        model = make_t5(tokenizer).eval()
        rows = [encode_example(e, tokenizer, 64, encoder_decoder=True) for e in EXAMPLES]
        batch = collate_seq2seq(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            loss_sum, count = seq2seq_loss_sum(model, batch)
            reference = model(**batch).loss  # transformers' own shift-right and mean over labels
        assert count == sum(len(r["labels"]) for r in rows)
        assert float(loss_sum / count) == pytest.approx(float(reference), rel=1e-5)


class TestTrainer:
    @pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
    def test_one_step_on_a_repeated_batch_lowers_the_loss(self, tmp_path, tokenizer, lora):
        example = EXAMPLES[1]
        batch = collate_seq2seq([encode_example(example, tokenizer, 64, encoder_decoder=True)] * 4,
                                tokenizer.pad_token_id)
        model = make_t5(tokenizer)
        before = mean_loss(model.eval(), batch)
        config = make_config(tmp_path, f"lora.enabled={str(lora).lower()}", "train.max_steps=1",
                             "train.batch_size=4", "train.lr=1e-2")
        trainer = run_trainer(config, model=model, tokenizer=tokenizer, train_examples=[example] * 4)
        assert trainer.encoder_decoder
        after = mean_loss(trainer.model.eval(), batch)
        assert trainer.summary["first_loss"] == pytest.approx(before, rel=1e-4)
        assert after < before - 0.05

    def _one_step(self, tmp_path, tokenizer, batch_size, accum):
        config = make_config(tmp_path, "lora.enabled=false", "train.max_steps=1", "train.lr=1e-3",
                             f"train.batch_size={batch_size}", f"train.grad_accum_steps={accum}",
                             name=f"b{batch_size}x{accum}")
        trainer = Trainer(config, model=make_t5(tokenizer), tokenizer=tokenizer, train_examples=EXAMPLES,
                          progress=False)
        return tiny.train_capturing_first_grads(trainer)

    def test_one_batch_of_4_equals_2_accumulated_batches_of_2(self, tmp_path, tokenizer):
        grads_4, summary_4 = self._one_step(tmp_path, tokenizer, 4, 1)
        grads_2, summary_2 = self._one_step(tmp_path, tokenizer, 2, 2)
        assert summary_4["first_loss"] == pytest.approx(summary_2["first_loss"], abs=1e-5)
        assert grads_4.keys() == grads_2.keys()
        for name in grads_4:
            torch.testing.assert_close(grads_2[name], grads_4[name], atol=1e-5, rtol=1e-4, msg=name)

        # Reference: the gradient of (sum of every target token's loss) / (their count), in one batch.
        model = make_t5(tokenizer)
        rows = [encode_example(e, tokenizer, 64, encoder_decoder=True) for e in EXAMPLES]
        loss_sum, count = seq2seq_loss_sum(model, collate_seq2seq(rows, tokenizer.pad_token_id))
        (loss_sum / count).backward()
        assert (loss_sum / count).item() == pytest.approx(summary_4["first_loss"], abs=1e-5)
        for name, param in model.named_parameters():
            if param.grad is not None:
                torch.testing.assert_close(grads_4[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)

    def test_lora_run_writes_an_adapter_that_loads_as_a_seq2seq_model(self, lora_run, tiny_t5_dir, tokenizer):
        adapter = lora_run.run_dir / "adapter"
        assert (adapter / "adapter_model.safetensors").is_file()
        assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
        model, _ = load_model(tiny_t5_dir, adapter=adapter)
        assert is_encoder_decoder(model)
        assert type(model.get_base_model()).__name__ == "T5ForConditionalGeneration"
        trained = logits(lora_run.model.eval(), tokenizer)
        torch.testing.assert_close(logits(model, tokenizer), trained, atol=1e-5, rtol=1e-5)
        base, _ = load_model(tiny_t5_dir)
        assert not torch.allclose(logits(base, tokenizer), trained, atol=1e-3)

    def test_full_run_writes_a_model_folder_that_loads_as_seq2seq(self, tmp_path, tiny_t5_dir, tokenizer):
        config = make_config(tmp_path, f"model.name={tiny_t5_dir}", "lora.enabled=false", "train.max_steps=1",
                             "train.batch_size=2", "train.lr=1e-2")
        trainer = run_trainer(config, train_examples=EXAMPLES)
        model, _ = load_model(trainer.run_dir / "model")
        assert type(model).__name__ == "T5ForConditionalGeneration"
        torch.testing.assert_close(logits(model, tokenizer), logits(trainer.model.eval(), tokenizer))


class TestEvaluate:
    def test_generation_answers_and_stops_after_training(self, yes_no_t5, tokenizer):
        # A decoder that never learned EOS would run on to max_new_tokens.
        metrics, rows = evaluate_examples(yes_no_t5, tokenizer, YES_NO, kind="generation", max_new_tokens=12,
                                          progress=False)
        assert [row["prediction"] for row in rows] == ["yes", "no"]
        assert metrics["exact_match"] == 1.0

    def test_multiple_choice_scores_one_when_the_model_prefers_the_right_option(self, tokenizer):
        model = make_t5(tokenizer).eval()
        favoured = torch.zeros(len(tokenizer))
        favoured[tokenizer("yes", add_special_tokens=False)["input_ids"]] = 20.0
        model.lm_head.register_forward_hook(lambda module, inputs, output: output + favoured)
        examples = [
            {"prompt": "Say yes.", "options": ["yes", "no"], "label": 0, "completion": "yes"},
            {"prompt": "Which one is correct?", "options": ["the second one", "yes", "no"], "label": 1,
             "completion": "yes"},
        ]
        metrics, rows = evaluate_examples(model, tokenizer, examples, kind="multiple_choice", progress=False)
        assert metrics == {"acc": 1.0, "acc_norm": 1.0}
        assert [row["pred"] for row in rows] == [0, 1]

    def test_adapter_model_evaluates_both_kinds(self, lora_run, tiny_t5_dir, tokenizer):
        model, _ = load_model(tiny_t5_dir, adapter=lora_run.run_dir / "adapter")
        _, rows = evaluate_examples(model, tokenizer, EXAMPLES[:2], kind="generation", max_new_tokens=4,
                                    progress=False)
        assert all(isinstance(row["prediction"], str) for row in rows)
        choices = [{"prompt": "Say yes.", "options": ["yes", "no"], "label": 0, "completion": "yes"}]
        metrics, _ = evaluate_examples(model, tokenizer, choices, kind="multiple_choice", progress=False)
        assert set(metrics) == {"acc", "acc_norm"}


class TestChat:
    def test_reply_reads_the_raw_message_without_the_chat_template(self, yes_no_t5, tokenizer):
        session = ChatSession(yes_no_t5, tokenizer, max_new_tokens=12)
        assert session.render_prompt("Say yes.") == "Say yes."
        assert session.reply("Say yes.") == "yes"
        assert len(session.history) == 2
        session.reset()
        pieces = []
        assert session.reply("Say no.", stream=pieces.append) == "no"
        assert "".join(pieces).strip() == "no"


class TestExport:
    def test_merged_folder_loads_as_seq2seq_and_matches_the_adapter_model(self, lora_run, tiny_t5_dir, tokenizer,
                                                                          tmp_path, capsys):
        from transformers import AutoModelForSeq2SeqLM

        out = tmp_path / "merged"
        assert export_main(["--adapter", str(lora_run.run_dir / "adapter"), "--model", str(tiny_t5_dir),
                            "-o", str(out)]) == 0
        assert "AutoModelForSeq2SeqLM" in capsys.readouterr().out
        merged = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
        assert not any("lora" in name for name in merged.state_dict())
        adapter_model, _ = load_model(tiny_t5_dir, adapter=lora_run.run_dir / "adapter")
        torch.testing.assert_close(logits(merged, tokenizer), logits(adapter_model, tokenizer), atol=1e-5, rtol=1e-5)


class TestCommandLine:
    def test_train_on_a_t5_folder_end_to_end(self, tmp_path, tiny_t5_dir, capsys):
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
        argv = ["train", f"model.name={tiny_t5_dir}", f"data.train={data}", f"output_dir={tmp_path}", "run_name=t5",
                "train.max_steps=2", "train.batch_size=2", "data.max_length=64", "lora.r=4", "train.num_threads=1"]
        assert cli.main(argv) == 0
        assert "done: 2 steps" in capsys.readouterr().out
        run = tmp_path / "t5"
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        assert [r["step"] for r in MetricsLog.read(run / "metrics.jsonl") if "loss" in r] == [1, 2]

        assert cli.main(["chat", "--model", str(tiny_t5_dir), "--adapter", str(run / "adapter"), "--prompt",
                         "Where is my order?", "--max-new-tokens", "4"]) == 0



class TestResume:
    # T5 ties encoder/decoder embed_tokens: saved once, so resume must accept the shared tensor.
    @pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
    def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(self, tmp_path, tiny_t5_dir, tokenizer, lora):
        # A constant schedule, so stopping at step 2 and going on to 3 follows the same learning rates.
        common = [f"model.name={tiny_t5_dir}", f"lora.enabled={str(lora).lower()}", "train.batch_size=2",
                  "train.lr=1e-2", "train.schedule=constant"]
        straight = run_trainer(make_config(tmp_path, *common, "train.max_steps=3", name="straight"),
                               train_examples=EXAMPLES)
        run_trainer(make_config(tmp_path, *common, "train.max_steps=2", name="resumed"), train_examples=EXAMPLES)
        resumed = run_trainer(make_config(tmp_path, *common, "train.max_steps=3", name="resumed"),
                              train_examples=EXAMPLES, resume=True)
        assert resumed.summary["steps"] == 3
        torch.testing.assert_close(logits(resumed.model.eval(), tokenizer), logits(straight.model.eval(), tokenizer))
