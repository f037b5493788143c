"""Supervised fine-tuning on accelerate: loss on responses only, resumable, full or LoRA.

Reads top to bottom: `Trainer.__init__` takes the validated config, `setup()` builds the parts in
dependency order, `train()` runs the optimizer steps, `cleanup()` leaves the process group of a
multi-process launch, and `main()` is the `instructune train` command.
The batch order is a pure function of (seed, step), so a checkpoint's step is its data position and
a resumed run continues the same loss curve. `--resume` with no checkpoint yet says so in one line
and starts at step 0 (so a job that always passes it can be relaunched); an unreadable newest
checkpoint is passed over for the one before it, saying so. Running out of memory in a step or a validation is one line naming
the step, the batch shape and the settings to lower; nothing is saved from that state, so the last
good checkpoint stays the newest. What this file leaves out: tokenization (tokenize.py),
packing (pack.py), LoRA/QLoRA wrapping (adapters.py), the loss (loss.py), checkpoint files
(checkpoint.py) and evaluation (evaluate/).
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from contextlib import nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from instructune.train import checkpoint as ckpt
from instructune.train.adapters import fuse_dropout_masks, prepare_for_training, use_fast_dropout
from instructune.train.attention import use_packed_attention
from instructune.train.compiling import compile_blocks, uncompiled
from instructune.config import RunConfig, config_keys_help, load_config, save_config
from instructune.data.sources import read_examples
from instructune.errors import InstructuneError, OutOfMemory, is_out_of_memory
from instructune.evaluate.score import evaluate_examples
from instructune.generation.engines import Where
from instructune.train.fsdp import gather_model_state, gather_optimizer_state, is_sharded, refuse_ignored_fsdp, state_loaders
from instructune.train.loss import causal_lm_loss_sum, label_count, seq2seq_loss_sum
from instructune.models import DEFAULT_MODEL, context_length, is_encoder_decoder, load_model
from instructune.train.optim import BF16AdamW
from instructune.train.precision import auto_precision
from instructune.train.pack import (PACKED_WIDTH_MULTIPLE, collate, collate_seq2seq, pack_examples,
                                     refuse_packed_flash_attention)
from instructune.train.runlog import MetricsLog, plot_losses
from instructune.data.tokenize import apply_chat_template_setting, describe_report, tokenize_examples


class Trainer:
    """One fine-tuning run. Pass model/tokenizer/examples to skip loading them from the config."""

    def __init__(
        self, config: RunConfig, *, model: Any = None, tokenizer: Any = None,
        train_examples: list[dict] | None = None, validation_examples: list[dict] | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = True,
    ):
        if train_examples is None and not config.data.train:
            raise InstructuneError("config key 'data.train': a training file is required")
        self.config = config
        self.model, self.tokenizer = model, tokenizer
        self.train_examples, self.validation_examples = train_examples, validation_examples
        self.resume, self.overwrite = resume, overwrite
        self.progress = progress
        self.run_dir = config.run_dir

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from transformers import set_seed

        cfg = self.config
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        set_seed(cfg.seed)
        # accelerate keeps one global state; a second run in the same process (a notebook, the quickstart)
        # may want another precision. The process-group part (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        self._precision_reason = ""
        self.accelerator = Accelerator(mixed_precision=self._mixed_precision(), cpu=not torch.cuda.is_available())
        refuse_ignored_fsdp(self.accelerator)
        self.world = self.accelerator.num_processes
        if self.resume and ckpt.latest_checkpoint(self.run_dir) is None:
            # Said before the model loads, so a mistyped run_name shows at once; a job that always passes
            # --resume (a requeued or killed launch) still starts when nothing was saved yet.
            self._say(f"--resume: no checkpoint in {ckpt.checkpoint_dir(self.run_dir)} yet; starting the run at step 0")
            self.resume = False

        # Model before data: tokenization needs the tokenizer and the model kind.
        if self.model is None:
            # bf16-true loads straight into bf16 (the same round-to-nearest as a cast after an fp32 load): no fp32
            # copy is made. (It did not lower the measured peak of Gemma 3 270M's full fine-tune: 4.97 GB either
            # way, the peak lies later in the run; bench/RESULTS.md.)
            straight_to_bf16 = (cfg.train.precision == "bf16-true" and not cfg.lora.load_in_4bit
                                and not is_sharded(self.accelerator))
            self.model, self.tokenizer = load_model(
                cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, load_in_4bit=cfg.lora.load_in_4bit,
                device=self.accelerator.device, dtype=torch.bfloat16 if straight_to_bf16 else None,
            )
        # The turn format rides on the tokenizer, which every save writes: eval, chat and export read it back.
        self.tokenizer = apply_chat_template_setting(self.tokenizer, cfg.model.chat_template, self.model, say=self._say)
        self._check_context_length()  # before the run folder exists: a bad max_length writes nothing
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.encoder_decoder = is_encoder_decoder(self.model)
        if cfg.data.packing and not self.encoder_decoder:
            refuse_packed_flash_attention(self.model, cfg.train.batch_size)
        if cfg.train.packed_attention and not self.encoder_decoder:
            use_packed_attention(self.model)
        self.model = prepare_for_training(self.model, cfg.lora, gradient_checkpointing=cfg.train.gradient_checkpointing)
        if cfg.train.precision == "bf16-true":
            if is_sharded(self.accelerator):
                raise InstructuneError("config key 'train.precision': bf16-true is not supported under FSDP; "
                                       "use train.precision=bf16 (FSDP's own mixed precision)")
            self.model.to(torch.bfloat16)  # weights, then gradients and AdamW moments, in bf16
        if cfg.lora.enabled and cfg.lora.fast_dropout:
            use_fast_dropout(self.model)
        if cfg.train.compile and not self.encoder_decoder:
            self._compile()

        self.data_report: dict[str, dict] = {}  # per split: examples cut, dropped, skipped (to metrics.jsonl)
        self.train_rows = self._rows(self.train_examples, cfg.data.train, "train", cfg.data.limit)
        if not self.train_rows:
            raise InstructuneError(f"{cfg.data.train or 'training data'}: no examples left after filtering")
        validation_source = None
        if self.validation_examples is None and cfg.data.validation:
            self.validation_examples = read_examples(cfg.data.validation)
            validation_source = cfg.data.validation
        self.validation_rows = self._rows(self.validation_examples, None, "validation", None, validation_source)
        # A fixed sample for in-training generation: the first prompt/completion validation examples.
        self.generation_sample = [e for e in (self.validation_examples or []) if "prompt" in e][: cfg.train.generate_samples]

        # Optimizer after LoRA wrapping: only the trainable parameters get optimizer state.
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        self.rows_per_step = cfg.train.batch_size * self.world * cfg.train.grad_accum_steps
        steps_per_epoch = math.ceil(len(self.train_rows) / self.rows_per_step)
        self.total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
        from transformers import get_scheduler

        schedule = {"constant": "constant_with_warmup"}.get(cfg.train.schedule, cfg.train.schedule)
        self.scheduler = get_scheduler(
            schedule, self.optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        # One call: under FSDP it shards the weights and repoints the optimizer, so clipping re-reads them.
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._say(
            f"{len(self.train_rows)} training rows ({'packed' if cfg.data.packing and not self.encoder_decoder else 'unpacked'}, "
            f"max_length {cfg.data.max_length}), {self.rows_per_step} rows per optimizer step, "
            f"{self.total_steps} steps; {sum(p.numel() for p in self.params):,} trainable parameters; "
            f"precision {'bf16-true (bf16 weights and AdamW state, stochastic rounding)' if cfg.train.precision == 'bf16-true' else self.accelerator.mixed_precision}"
            f"{self._precision_reason}"
        )

    def _check_context_length(self) -> None:
        """Refuse rows longer than the model's positions: past them the attention mask alone can ask for tens of GB."""
        limit = context_length(self.model)
        max_length = self.config.data.max_length
        if limit is not None and max_length > limit[0]:
            raise InstructuneError(
                f"config key 'data.max_length': {max_length} tokens, but the model ({self.config.model.name or DEFAULT_MODEL}) "
                f"has a context of {limit[0]} ({limit[1]} in its config.json); set data.max_length={limit[0]} or less")

    def _compile(self) -> None:
        cfg = self.config
        why_not = ("train.packed_attention is on" if cfg.train.packed_attention else
                   "the model is 4-bit (QLoRA)" if cfg.lora.load_in_4bit else
                   "FSDP shards the blocks" if is_sharded(self.accelerator) else None)
        if why_not:
            raise InstructuneError(f"config key 'train.compile': cannot compile while {why_not}; set train.compile=false")
        # Eager matmul-softmax attention pays only where the blocks compute in bf16 (compiling.py).
        in_bf16 = cfg.train.precision == "bf16-true" or self.accelerator.mixed_precision == "bf16"
        n = compile_blocks(self.model, cfg.train.compile_memory_budget, matmul_attention=in_bf16)
        if n:
            fuse_dropout_masks(self.model)  # LoRA's dropout masks from a compiled kernel too (none without LoRA)
        self._say(f"compiled {n} decoder blocks (torch.compile; the first step includes compilation)" if n
                  else "train.compile: no repeated decoder blocks found; running eagerly")

    def _mixed_precision(self) -> str:
        precision = self.config.train.precision
        if precision == "auto":
            from accelerate import PartialState
            from accelerate.utils import broadcast_object_list

            choice = [auto_precision()]
            if PartialState().num_processes > 1:  # every process trains in what the first one measured
                broadcast_object_list(choice, from_process=0)
            self._precision_reason = f" (auto: {choice[0].reason})"
            return choice[0].mixed_precision
        return "bf16" if precision == "bf16" else "no"

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config.train
        if cfg.precision == "bf16-true":
            return BF16AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        try:
            return torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):  # fused needs floating-point params on a supported device
            return torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _rows(self, examples: list[dict] | None, path: str | None, split: str, limit: int | None,
              source: str | None = None) -> list[dict]:
        """Encode (and pack) one split; `source` is the file in-memory examples came from, for file:line."""
        if examples is None:
            if not path:
                return []
            examples, source = read_examples(path, limit), path
        elif limit:
            examples = examples[:limit]
        data = self.config.data
        encoded, report = tokenize_examples(
            examples, self.tokenizer, data.max_length, encoder_decoder=self.encoder_decoder,
            chat_template=None, desc=f"tokenize {split}", source=source,  # the tokenizer carries model.chat_template
        )
        self.data_report[split] = report.to_dict()
        self._say(f"{split}: {describe_report(self.data_report[split])}")
        if data.packing and not self.encoder_decoder and encoded:
            return pack_examples(encoded, data.max_length)
        return encoded

    # ---------------------------------------------------------------- data order

    def step_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This process's micro-batches for optimizer step `step` (a pure function of seed and step)."""
        n_rows, per_micro = len(self.train_rows), self.config.train.batch_size * self.world
        start = step * self.rows_per_step
        orders: dict[int, list[int]] = {}
        picked = []
        for i in range(start, start + self.rows_per_step):
            epoch = i // n_rows
            if epoch not in orders:
                orders[epoch] = row_order(n_rows, self.config.seed, epoch)
            picked.append(orders[epoch][i % n_rows])
        rank = self.accelerator.process_index
        micro = [picked[j : j + per_micro][rank :: self.world] for j in range(0, len(picked), per_micro)]
        return [self._collate([self.train_rows[i] for i in rows]) for rows in micro]

    def _collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        if self.encoder_decoder:
            batch = collate_seq2seq(rows, pad)
        elif self.config.data.packing:
            batch = collate(rows, pad, PACKED_WIDTH_MULTIPLE, max_width=self.config.data.max_length)
        else:
            batch = collate(rows, pad)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        batch["num_tokens"] = sum(len(r["input_ids"]) for r in rows)  # real (non-padding) input tokens
        return batch

    def _loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        with self.accelerator.autocast():
            return (seq2seq_loss_sum if self.encoder_decoder else causal_lm_loss_sum)(self.model, batch)

    # ---------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run (or resume) training to `total_steps`; returns a summary dict."""
        cfg = self.config
        start_step, state = 0, {"best_val_loss": None, "bad_evals": 0}
        if self.resume:
            last, state = ckpt.load_latest_checkpoint(
                self.run_dir, say=self._say, set_aside=self.accelerator.is_main_process,
                model=self.accelerator.unwrap_model(self.model), optimizer=self.optimizer, scheduler=self.scheduler,
                **state_loaders(self.accelerator, self.model, self.optimizer))
            start_step = state["step"]
            self._say(f"resuming from {last} (step {start_step})")
        elif self.accelerator.is_main_process and ckpt.latest_checkpoint(self.run_dir) is not None:
            # Another run's checkpoints would survive pruning and be what --resume picks up, so a
            # fresh start replaces them only when asked: bad input must never cost a user's work.
            if not self.overwrite:
                raise InstructuneError(f"{self.run_dir}: holds checkpoints of an earlier run; pass --resume "
                                       "to continue it, --overwrite to replace it, or choose another run_name")
            shutil.rmtree(ckpt.checkpoint_dir(self.run_dir), ignore_errors=True)
        if self.accelerator.is_main_process:
            save_config(cfg, self.run_dir / "config.yaml")
        log = MetricsLog(self.run_dir, resume_from_step=start_step) if self.accelerator.is_main_process else None
        if log and start_step == 0:  # what tokenizing cut, dropped and skipped, once per run (kept on resume)
            log.log({"step": 0, "data": self.data_report})

        bar = tqdm(total=self.total_steps, initial=start_step, desc="train", disable=not self.progress
                   or not self.accelerator.is_main_process, dynamic_ncols=True)
        step, started, tokens_seen, stopped_early = start_step, time.perf_counter(), 0, False
        train_seconds = 0.0  # optimizer steps only: validation and generation do not count against tokens/s
        # Ctrl-C and SIGTERM only ask to stop; the loop stops between steps, where weights, optimizer,
        # RNG and step counter agree (issue 12, item 7).
        self._stop_signal, self._updating, self._saved_step = None, False, start_step
        previous_handlers = _install_handlers(self._request_stop)
        self.model.train()
        try:
            while step < self.total_steps:
                rng_state = torch.get_rng_state()  # the RNG that belongs to `step`, for a save if a step is cut short
                if self._stop_requested():
                    raise KeyboardInterrupt
                step_started = time.perf_counter()
                try:
                    loss, grad_norm, tokens = self._optimizer_step(step)
                except (RuntimeError, MemoryError) as error:
                    if not is_out_of_memory(error):
                        raise
                    self.optimizer.zero_grad(set_to_none=True)  # the step's gradients; its weights are never saved
                    raise InstructuneError(self._out_of_memory(f"at step {step + 1}", training=True)) from None
                train_seconds += time.perf_counter() - step_started
                step += 1
                self._updating = False  # the weights are those of `step` again
                tokens_seen += tokens
                record = {"step": step, "total_steps": self.total_steps, "loss": loss,
                          "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "tokens_per_s": tokens_seen / train_seconds, "elapsed_s": time.perf_counter() - started}
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                if self._due(step, cfg.train.eval_every_n_steps) and self.validation_rows:
                    try:
                        record["val_loss"] = self.validation_loss()
                    except (RuntimeError, MemoryError) as error:
                        if not is_out_of_memory(error):
                            raise
                        raise InstructuneError(self._out_of_memory(f"in the validation loss after step {step}",
                                                                   training=False)) from None
                if self._due(step, cfg.train.generate_every_n_steps) and self.generation_sample:
                    try:
                        record.update(self.generation_metrics(step))
                    except OutOfMemory as error:
                        raise InstructuneError(f"{error}; {self._kept()}") from None
                scored = {k: v for k, v in record.items() if k.startswith(("val_", "gen_"))}
                if scored:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scored.items()))
                    stopped_early = self._track_best(state, record, step)
                if log and (step % cfg.train.log_every_n_steps == 0 or scored):
                    log.log(record)
                if self._due(step, cfg.train.save_every_n_steps) and step < self.total_steps:
                    self._save(step, state)
                if stopped_early:
                    self._say(f"early stopping at step {step}: no validation improvement "
                              f"in {cfg.train.early_stopping_patience} evaluations")
                    break
        except KeyboardInterrupt:
            bar.close()
            if self._updating:  # cut short inside the weight update: the weights are of no step
                self._say(f"interrupted during the weight update of step {step + 1}: not saved; --resume "
                          f"continues from {ckpt.latest_checkpoint(self.run_dir) or 'the start'}")
            elif step != self._saved_step:
                where = self._save(step, state, rng_state=rng_state)
                self._say(f"interrupted: checkpoint saved at {where}; continue with --resume")
            elif step:
                self._say(f"interrupted: step {step} was already saved; continue with --resume")
            raise
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            bar.close()
            if log:
                log.close()
        return self._finish(step, state, tokens_seen, train_seconds)

    def _optimizer_step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step over all its micro-batches; loss = sum over label tokens / their count."""
        self._batch_shape = None
        batches = self.step_batches(step)
        # Count the labels of the whole step (all micro-batches, all processes) before any backward,
        # so each token weighs the same however the step is split.
        labels = sum(label_count(b, self.encoder_decoder) for b in batches)
        total = self.accelerator.reduce(torch.tensor(float(labels), device=self.accelerator.device), "sum")
        total = max(float(total), 1.0)
        loss_total = 0.0
        for i, batch in enumerate(batches):
            self._batch_shape = tuple(batch["input_ids"].shape)  # (B, T), for an out-of-memory line
            sync = i == len(batches) - 1
            context = self.accelerator.no_sync(self.model) if not sync else nullcontext()
            with context:
                loss_sum, _ = self._loss_sum(batch)
                # DDP and FSDP average gradients over processes; scale up by world so the result is sum / total.
                self.accelerator.backward(loss_sum * self.world / total)
            loss_total += float(loss_sum.detach())
        loss = float(self.accelerator.reduce(torch.tensor(loss_total, device=self.accelerator.device), "sum")) / total
        if not math.isfinite(loss):
            raise InstructuneError(f"loss became {loss} at step {step + 1}; training stopped ({self._kept()}). "
                                   "Try a lower train.lr or precision=fp32")
        grad_norm = 0.0
        self._updating = True  # from here until the loop counts the step, no checkpoint may be written
        if self.config.train.max_grad_norm:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.params, self.config.train.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(b["num_tokens"] for b in batches)
        return loss, grad_norm, tokens

    def _kept(self) -> str:
        last = ckpt.latest_checkpoint(self.run_dir)
        return f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"

    def _out_of_memory(self, where: str, *, training: bool) -> str:
        """The out-of-memory line: where, the micro-batch that did not fit (rows x tokens), what to lower."""
        cfg = self.config
        shape = getattr(self, "_batch_shape", None)  # None: memory ran out before the first micro-batch ran
        batch = (f"a batch of {shape[0]} row(s) x {shape[-1]} tokens" if shape else
                 f"batches of up to {cfg.train.batch_size} row(s) x {cfg.data.max_length} tokens")
        lower = (f"lower train.batch_size (raising train.grad_accum_steps keeps {self.rows_per_step} rows per step) "
                 f"or data.max_length" if training else "lower train.batch_size (validation batches use it) or "
                 "data.max_length")
        if training and not cfg.train.gradient_checkpointing:
            lower += ", or set train.gradient_checkpointing=true"
        return (f"out of memory {where} on {batch} (train.batch_size="
                f"{cfg.train.batch_size}, data.max_length={cfg.data.max_length}): {lower}; {self._kept()}")

    def _request_stop(self, signum, frame) -> None:
        """Signal handler: stop after the step in flight; a second signal stops at once, but never mid-update."""
        if self._stop_signal is not None and not self._updating:
            raise KeyboardInterrupt
        self._stop_signal = signum
        self._say(f"signal {signum}: stopping after this step (once more to stop now)")

    def _stop_requested(self) -> bool:  # any process signalled: all stop at the same step, to save together
        asked = torch.tensor(float(self._stop_signal is not None), device=self.accelerator.device)
        return bool((self.accelerator.reduce(asked, "sum") if self.world > 1 else asked) > 0)

    def validation_loss(self) -> float:
        """Mean loss over every label token of the validation rows."""
        self.model.eval()
        total, count = 0.0, 0
        size = self.config.train.batch_size
        self._batch_shape = None
        with torch.no_grad():
            for i in range(0, len(self.validation_rows), size):
                batch = self._collate(self.validation_rows[i : i + size])
                self._batch_shape = tuple(batch["input_ids"].shape)
                loss_sum, n = self._loss_sum(batch)
                total, count = total + float(loss_sum), count + n
        self.model.train()
        return total / max(count, 1)

    def generation_metrics(self, step: int | None = None) -> dict[str, float]:
        """Generate on the fixed validation sample; ROUGE and exact match against the completions.

        Raises:
            OutOfMemory: one line naming `step`, the batch shape and the train.* settings to lower.
        """
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        with uncompiled(model):
            metrics, _ = evaluate_examples(
                model, self.tokenizer, self.generation_sample, kind="generation", progress=False,
                # Weights that change between calls: an engine that needs no export (the native engine decodes
                # the live weights in place; HF generate where it cannot), never an export per check.
                where=Where.here(weights_change=True),
                batch_size=self.config.train.batch_size, max_new_tokens=self.config.train.generate_max_new_tokens,
                chat_template=None,  # as training formats: the tokenizer carries model.chat_template
                label=f"in-training generation after step {step}", settings=("train.batch_size", "train.generate_max_new_tokens"),
            )
        model.train()
        return {f"gen_{k}": metrics[k] for k in ("rouge1", "rougeL", "exact_match", "f1") if k in metrics}

    def _track_best(self, state: dict, record: dict, step: int) -> bool:
        """Keep the best weights (best/) by the chosen metric; True when early stopping should end the run."""
        name = self.config.train.select_best_by
        key = "val_loss" if name == "val_loss" else f"gen_{name}"
        if key not in record:
            return False
        value, best = record[key], state.get("best_value")
        improved = best is None or (value < best if key == "val_loss" else value > best)
        if improved:
            state.update(best_value=value, best_metric=key, best_step=step, bad_evals=0)
            if key == "val_loss":
                state["best_val_loss"] = value
            self._save_weights(self.run_dir / "best")
            return False
        state["bad_evals"] = state.get("bad_evals", 0) + 1
        patience = self.config.train.early_stopping_patience
        return bool(patience and state["bad_evals"] >= patience)

    @staticmethod
    def _due(step: int, every: int | None) -> bool:
        return bool(every) and step % every == 0

    def _save_weights(self, folder: Path) -> None:
        """The model or adapter with the tokenizer (so the folder loads as a model); every process calls it."""
        full = gather_model_state(self.accelerator, self.model, adapter_only=self.config.lora.enabled)
        if self.accelerator.is_main_process:
            ckpt.save_weights(self.accelerator.unwrap_model(self.model), folder, full)
            self.tokenizer.save_pretrained(folder)

    def _save(self, step: int, state: dict, rng_state: torch.Tensor | None = None) -> Path | None:
        self.accelerator.wait_for_everyone()
        self._saved_step = step
        # Under FSDP the full states are gathered by all processes before rank 0 writes them.
        model_state = gather_model_state(self.accelerator, self.model, adapter_only=self.config.lora.enabled)
        optimizer_state = gather_optimizer_state(self.accelerator, self.model, self.optimizer)
        if not self.accelerator.is_main_process:
            return None
        return ckpt.save_checkpoint(
            self.run_dir, step, model=self.accelerator.unwrap_model(self.model), optimizer=self.optimizer,
            scheduler=self.scheduler, state=state, keep_last=self.config.train.keep_last_n_checkpoints,
            rng_state=rng_state, model_state=model_state, optimizer_state=optimizer_state,
        )

    def _finish(self, step: int, state: dict, tokens: int, seconds: float) -> dict:
        """Save the final weights (adapter/ or model/) with the tokenizer, the loss plot and a summary."""
        if step != self._saved_step:  # a run resumed from its last step has nothing new to save
            self._save(step, state)
        summary = {"steps": step, "train_tokens": tokens, "train_seconds": seconds,
                   "tokens_per_s": tokens / max(seconds, 1e-9), "best_val_loss": state.get("best_val_loss"),
                   "best_metric": state.get("best_metric"), "best_value": state.get("best_value"),
                   "best_step": state.get("best_step")}
        out = self.run_dir / ("adapter" if self.config.lora.enabled else "model")
        self._save_weights(out)
        if self.accelerator.is_main_process:
            records = MetricsLog.read(self.run_dir / "metrics.jsonl")
            losses = [r["loss"] for r in records if "loss" in r]
            summary.update(first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
                           weights=str(out))
            plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png", title=self.config.run_name)
        self.summary = summary
        return summary

    def cleanup(self) -> None:
        """Leave the process group of a multi-process launch; nothing to do in one process.

        A process that exits with its gloo group alive can abort in the C++ teardown ("terminate called
        without an active exception"), failing the launch after a good save. No barrier first: after a
        second Ctrl-C one process may leave mid-step while the others wait in a collective.
        """
        if self.accelerator.num_processes > 1:
            self.accelerator.end_training()

    def _say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message)


def row_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The order epoch `epoch` visits the n training rows in: a pure function, so a step is a data position."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_rows, generator=generator).tolist()


def _install_handlers(handler) -> dict:
    """Route Ctrl-C and SIGTERM to `handler` (main thread only); returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def train(config: RunConfig, **kwargs: Any) -> dict:
    """Fine-tune as the config says; returns the run summary. kwargs go to `Trainer`.

    Example:
        >>> summary = train(load_config("src/instructune/configs/quickstart.yaml", ["train.max_steps=10"]))
        >>> summary["final_loss"] < summary["first_loss"]
        True
    """
    trainer = Trainer(config, **kwargs)
    trainer.setup()
    try:
        return trainer.train()
    finally:
        trainer.cleanup()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructune train", description="Fine-tune a model on instruction JSONL, as a YAML config says.",
        epilog="Example: instructune train src/instructune/configs/quickstart.yaml train.lr=1e-4 lora.r=8\n\n"
               + config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="YAML run config (e.g. src/instructune/configs/quickstart.yaml, configs/).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50 data.packing=false; "
                        "anywhere on the line, before or after the flags")
    parser.add_argument("--resume", action="store_true",
                        help="Continue from the run's latest checkpoint; an unreadable one is passed over for the one "
                        "before it (said, and moved to checkpoints/unreadable-step-N). With no checkpoint yet it "
                        "says so in one line and starts at step 0.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier run's checkpoints in the run folder.")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Intermixed: `train CFG --resume train.max_steps=4` puts the override after a flag.
    args = make_parser().parse_intermixed_args(argv)
    config_path = args.config
    overrides = list(args.overrides)
    if config_path and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)
        config_path = None
    config = load_config(config_path, overrides)
    summary = train(config, resume=args.resume, overwrite=args.overwrite)
    print(f"done: {summary['steps']} steps, loss {summary.get('first_loss') or 0:.4f} -> "
          f"{summary.get('final_loss') or 0:.4f}, {summary['tokens_per_s']:.0f} tokens/s; weights in {summary.get('weights')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
