import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402
import torch  # noqa: E402

from instructune.generation.engines import AUTO_ENGINES_ENV  # noqa: E402

# Tiny models run faster on one thread, and the suite shares 2 cores with whatever else runs.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _auto_engine_without_openvino(request, monkeypatch):
    """generate(engine="auto") skips OpenVINO unless a test is marked `openvino_auto`.

    Each new model object costs OpenVINO an export and a compile (~4 s for a tiny model), and most
    tests build their own models: with OpenVINO in "auto" the suite ran over 15 minutes. The engine
    and the real "auto" order are tested in test_openvino_engine.py (marked); everywhere else "auto"
    decodes as it does without openvino-genai installed.
    """
    if request.node.get_closest_marker("openvino_auto") is None:
        monkeypatch.setenv(AUTO_ENGINES_ENV, "native,hf")  # read by generate's Where.here()


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.make_tokenizer()


@pytest.fixture()
def llama(tokenizer):
    return tiny.make_llama(tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama model folder (safetensors + tokenizer with chat template), as a user's local model."""
    return tiny.save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
