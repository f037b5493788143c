"""The run config: one pydantic model per stage, validated, loadable from YAML with key=value overrides.

An unknown key or a value of the wrong type is a one-line error naming the key (exit code 2 from the
CLI). The resolved config is saved into the run folder, so every run can be reproduced from it.
What this file leaves out: mixture and task configs, which belong to the data stage (data/prepare.py).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from instructune.errors import InstructuneError
from instructune.fileio.yaml_io import read_yaml_mapping, validation_message


class _Section(BaseModel):
    # Numbers become strings where a string is expected: `run_name=2024` parses as the YAML int 2024.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


# The built-in chat templates (models/chat_templates.py writes them out); config checks the names only.
CHAT_TEMPLATE_NAMES = ("chatml", "gemma")


class ModelConfig(_Section):
    name: str | None = Field(None, description="A built-in model (default, gemma3-270m) or a local Hugging Face model folder; null = default SmolLM2-135M-Instruct.")
    chat_template: bool | str | None = Field(None, description="The turn format prompts are written in, used in training and saved with the tuned model, so eval, chat and export use it too. null or true = the tokenizer's own chat template, else its model family's (gemma for Gemma 3), else plain text; false = plain text; chatml or gemma = that built-in format; or a path to a .jinja file.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (off unless you trust it).")

    @field_validator("chat_template", mode="before")
    @classmethod
    def _check_chat_template(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        expected = f"expected null, true, false, one of {', '.join(CHAT_TEMPLATE_NAMES)}, or a path to a .jinja file"
        if isinstance(value, str) and value in CHAT_TEMPLATE_NAMES:
            return value
        if not isinstance(value, str) or not value.endswith(".jinja"):
            raise ValueError(f"unknown chat template {value!r}; {expected}")
        if not Path(value).expanduser().is_file():
            raise ValueError(f"{value}: chat template file not found")
        return value


class DataConfig(_Section):
    train: str | None = Field(None, description="Instruction JSONL for training (prompt/completion or messages rows).")
    validation: str | None = Field(None, description="Instruction JSONL for validation loss; optional.")
    max_length: int = Field(512, gt=8, description="Tokens per example (and per packed row). Longer ones are truncated.")
    packing: bool = Field(True, description="Best-fit pack examples into rows of max_length (no cross-attention).")
    limit: int | None = Field(None, gt=0, description="Use only the first N training examples.")


class LoraConfig(_Section):
    enabled: bool = Field(True, description="Train a LoRA adapter (true) or all weights (false).")
    r: int = Field(16, gt=0, description="LoRA rank: higher learns more, costs more memory.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    fast_dropout: bool = Field(True, description="Training draws LoRA dropout masks from 16 random bits per element (same distribution, p within 2**-17) instead of torch's one draw per element (the masks were a quarter of a CPU LoRA step), folded into the adapter's A so that the backward draws each mask again from its seed instead of keeping a dropped copy of every projection's input (0.26 GB less peak memory on a Gemma 3 270M step). With train.compile the masks come from a hash of the seed computed inside a compiled kernel instead (other masks, the same distribution; 1.3x the compiled SmolLM2 LoRA step on an AMX CPU). false = PEFT's nn.Dropout, for its exact random stream.")
    target_modules: str | list[str] = Field("all-linear", description="Modules to adapt: 'all-linear' or a list of names.")
    load_in_4bit: bool = Field(False, description="QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes) under the adapter.")


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(8, gt=0, description="Rows per micro-batch (per process).")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warmup.")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm; null = off.")
    precision: Literal["auto", "fp32", "bf16", "bf16-true"] = Field("auto", description="bf16 = bf16 autocast over fp32 weights, gradients and AdamW state; auto = bf16 where it pays: a GPU with bf16, or a CPU whose bf16 matmuls, timed once per process (~0.3 s), beat fp32's by 1.2x (AMX CPUs, AMD EPYC; not an Intel Xeon with AVX512-BF16 but no AMX, where they run at ~0.55x), else fp32; the run's log says which and why. bf16-true = weights, gradients and AdamW moments all in bf16 (as torchtune trains), updates rounded stochastically so small ones are not lost: half the training state (a 135M full fine-tune: 1.1 GB instead of 2.2 GB); on a 2-core CPU 0.68x the peak memory and ~1.15x the speed of bf16 autocast for a full fine-tune, and a loss curve within 0.004 of fp32's after the first step where autocast's strayed by up to 0.08 (bench/RESULTS.md). Not with FSDP or 4-bit QLoRA.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, ~30% slower.")
    packed_attention: bool = Field(False, description="Decoder-only models on SDPA: attention runs as one causal block per example of a packed row instead of a masked square over the row. Same result; pays on long rows of many examples (attention 5.5x faster on 2,048-token rows of 8), not at 512 tokens, where it costs ~0.4 GB of peak memory (bench/RESULTS.md).")
    compile: bool = Field(False, description="Decoder-only models: compile each decoder block with torch.compile (inductor, dynamic length; ~30 s once, then cached) and, on CPU in bf16, run attention as fused matmul-softmax inside it (in fp32 torch's flash kernel stays: as fast there and 0.65 GB lighter on a SmolLM2 LoRA step). Full fine-tune: 1.34x the tokens/s of the eager bf16 step on a 2-core CPU, loss within bf16 rounding; LoRA (lora.fast_dropout's masks drawn inside the compiled graph): 1.16x the eager tokens/s over a 16-step run, 1.4x in the steady state, and nearer the fp32 loss curve than eager bf16 (bench/RESULTS.md). Falls back to eager where compilation fails. Not with train.packed_attention, FSDP or 4-bit QLoRA.")
    compile_memory_budget: float = Field(0.8, gt=0, le=1, description="With train.compile: the share of each block's activations its backward may keep; the compiler recomputes the cheapest of the rest (AOTAutograd's activation_memory_budget; 1 keeps all it would). 0.8 lowered Gemma 3 270M's peak by 0.17 GB (LoRA) and 0.25 GB (full) at the same tokens/s on a 2-core CPU (bench/RESULTS.md).")
    eval_every_n_steps: int | None = Field(None, gt=0, description="Validation loss every N steps; null = at the end only.")
    save_every_n_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps; null = at the end only.")
    keep_last_n_checkpoints: int = Field(2, gt=0, description="Older checkpoints are deleted.")
    log_every_n_steps: int = Field(1, gt=0, description="Metrics line every N steps.")
    early_stopping_patience: int | None = Field(None, gt=0, description="Stop after N validations without improvement.")
    generate_every_n_steps: int | None = Field(None, gt=0, description="Generate on a fixed validation sample every N steps and log ROUGE / exact match.")
    generate_samples: int = Field(16, gt=0, description="Validation examples in that sample (the first N); each costs a generation.")
    generate_max_new_tokens: int = Field(64, gt=0, description="Answer length cap for in-training generation.")
    select_best_by: Literal["val_loss", "rougeL", "rouge1", "exact_match", "f1"] = Field("val_loss", description="Metric for early stopping and the best checkpoint (saved as best/).")
    num_threads: int | None = Field(None, gt=0, description="CPU threads for torch; null = all cores.")


class RunConfig(_Section):
    run_name: str = Field("run", description="Name of the run folder under output_dir.")
    output_dir: str = Field("runs", description="Parent folder of run folders.")
    seed: int = Field(0, description="Seed for data order, initialisation and dropout.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        every = self.train.eval_every_n_steps if self.train.select_best_by == "val_loss" else self.train.generate_every_n_steps
        if self.train.early_stopping_patience and not every:
            raise ValueError(f"train.early_stopping_patience with select_best_by={self.train.select_best_by} needs "
                             f"train.{'eval' if self.train.select_best_by == 'val_loss' else 'generate'}_every_n_steps "
                             "and validation data")
        if self.lora.load_in_4bit and self.train.precision == "bf16-true":
            raise ValueError("train.precision=bf16-true casts every weight to bf16; a 4-bit QLoRA base cannot be: "
                             "use train.precision=bf16 with lora.load_in_4bit")
        if self.lora.load_in_4bit and not self.lora.enabled:
            raise ValueError("lora.load_in_4bit (QLoRA) trains an adapter over a frozen 4-bit base: it needs lora.enabled: true")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name


def config_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[dict[str, Any]]:
    """Every settable key of the run config, dotted, with its default and description, in YAML order.

    The one source for `instructune train --help` and any form built over the config, so neither drifts
    from the config model.

    Returns:
        One dict per key: "key", "default", "description", "annotation" (the type as text) and
        "choices" (the allowed values of a Literal field, else None).

    Example:
        >>> config_fields()[0]
        {'key': 'run_name', 'default': 'run', 'description': 'Name of the run folder under output_dir.', 'annotation': 'str', 'choices': None}
        >>> [f["choices"] for f in config_fields() if f["key"] == "train.schedule"]
        [['cosine', 'linear', 'constant']]
    """
    fields = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields += config_fields(annotation, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        fields.append({"key": prefix + name, "default": default, "description": field.description or "",
                       "annotation": getattr(annotation, "__name__", None) or str(annotation).replace("typing.", ""),
                       "choices": list(get_args(annotation)) if get_origin(annotation) is Literal else None})
    return fields


def config_keys_help() -> str:
    """The config keys as `--help` text: `section.key (default): description`, one per line."""
    lines = ["config keys (set in the YAML or as key=value; default in brackets):"]
    for field in config_fields():
        default = "null" if field["default"] is None else yaml.safe_dump(field["default"], default_flow_style=True).strip()
        default = default.removesuffix("\n...").strip()
        lines.append(f"  {field['key']} [{default}]: {field['description']}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """`key=value` overrides take YAML scalars: 3, 0.1, true, null, [a, b]."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `section.key=value` overrides to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise InstructuneError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InstructuneError(f"override {key}: {part} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **defaults: Any) -> RunConfig:
    """Read a YAML run config, apply `key=value` overrides, and validate it.

    Example:
        >>> cfg = load_config("src/instructune/configs/quickstart.yaml", ["train.lr=1e-4"])
        >>> cfg.train.lr
        0.0001
    """
    raw: dict = dict(defaults)
    source = str(path) if path else "config"
    if path is not None:
        raw.update(read_yaml_mapping(path, "a mapping of config sections at the top level", kind="config file",
                                     empty_ok=True))
    apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise InstructuneError(validation_message(error, source, key_label="config key")) from None


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))


def default_config_path() -> Path:
    """The packaged quickstart config (src/instructune/configs/quickstart.yaml)."""
    return Path(str(resources.files("instructune") / "configs" / "quickstart.yaml"))
