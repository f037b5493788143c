"""The benchmark scripts in bench/ still name what the package exports.

They import instructune lazily, inside main(), and run for many minutes before a bad import would
show; when a helper moves between modules (evaluate/run.py -> evaluate/score.py), only the next long
benchmark run would find out. This reads each script's `from instructune... import ...` lines and
checks every name exists, without running the script. Leaves out: the scripts' own behaviour.
"""

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _instructune_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every `from instructune.x import name` in the file, nested ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "instructune":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def _importable(module: str, name: str) -> bool:
    """`from module import name` would work: an attribute of the module, or a submodule of the package."""
    parent = importlib.import_module(module)
    if hasattr(parent, name):
        return True
    return hasattr(parent, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None


class TestBenchImports:
    def test_there_are_scripts_to_check(self):
        assert any(_instructune_imports(path) for path in SCRIPTS)

    @pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
    def test_every_imported_name_exists(self, path):
        missing = [f"{path.name}:{line}: {module}.{name}" for line, module, name in _instructune_imports(path)
                   if not _importable(module, name)]
        assert not missing, f"bench script imports names the package no longer has: {missing}"


class TestRoofline:
    """bench/roofline.py: the FLOPs a figure is divided by, against the issue-33 arithmetic for SmolLM2-135M."""

    def _roofline(self):
        spec = importlib.util.spec_from_file_location("roofline", BENCH / "roofline.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def test_smollm2_counts_106m_weights_and_a_28m_head(self):
        from transformers import LlamaConfig

        roofline = self._roofline()
        smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                              intermediate_size=1536, vocab_size=49152)
        weights = roofline.model_flops(smollm2)
        assert weights == {"body": 106_168_320, "head": 28_311_552}
        # A full fine-tune token, head on every position: 6 x (body + head) ~ 0.81 GFLOP; LoRA: 4 x.
        assert roofline.training_flops_per_token(smollm2, lora=False) == 6 * (106_168_320 + 28_311_552)
        assert roofline.training_flops_per_token(smollm2, lora=True, labelled_share=0.0) == 4 * 106_168_320
        assert roofline.forward_flops_per_token(smollm2, logits=False) == 2 * 106_168_320

    def test_share_divides_by_the_limit_of_the_precision(self):
        roofline = self._roofline()
        limits = {"fp32": 300e9, "bf16": 2000e9}
        assert roofline.share(600e9, "bf16", limits) == 0.3
        assert roofline.share(150e9, "float32", limits) == 0.5
        assert roofline.cpu_kind().endswith(("with AMX", "without AMX"))


class TestStepFloor:
    """bench/step_floor.py times each linear layer of a block: together they must be the roofline's weights."""

    def test_the_timed_shapes_are_every_weight_of_a_block(self):
        from transformers import Gemma3TextConfig, LlamaConfig

        sys.path.insert(0, str(BENCH))
        try:
            spec = importlib.util.spec_from_file_location("step_floor", BENCH / "step_floor.py")
            step_floor = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(step_floor)
            roofline = importlib.import_module("roofline")
        finally:
            sys.path.remove(str(BENCH))
        smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                              intermediate_size=1536, vocab_size=49152)
        gemma = Gemma3TextConfig(hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                 head_dim=256, intermediate_size=2048, vocab_size=262144)
        for config in (smollm2, gemma):
            shapes = step_floor.linear_shapes(config)
            per_block = sum(fan_in * fan_out * count for fan_in, fan_out, count in shapes.values())
            assert per_block * config.num_hidden_layers == roofline.model_flops(config)["body"]
