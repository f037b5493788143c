"""The OpenVINO engine: float32 greedy answers equal Hugging Face `generate`'s token for token (Llama and
Qwen2 layers, LoRA-wrapped too), exports are kept by weights, "auto" picks it only where an export pays,
what it cannot take (another allocator, encoder-decoder models) is named and falls back, and what
crashes it (bfloat16 on one thread on AMX CPUs; a probe made to die) costs one line and a fallback,
never the process."""

import json
import sys
from pathlib import Path

import pytest
import torch

import tiny
from instructune.cli.allocator import preloaded_allocator
from instructune.errors import InstructuneError
from instructune.generation import engine_probe
from instructune.generation import openvino_engine
from instructune.generation.engines import Sampling, Where
from instructune.generation.generate import GenerateOptions, encode_prompt, generate, select_engine, stop_token_ids
from test_native import _qwen2
from test_generate import _chatty, assert_greedy_equal_with_early_stops, hf_greedy_ids, lora_with_effect

pytest.importorskip("openvino_genai")

PROMPTS = [
    "Hi", "Where is my order? I want a refund for my purchase", "How do I reset", "abc " * 20,
    "Summarize the dialogue. #Person1#: Hello, how are you? #Person2#: I am fine, thank you.",
    "The quick brown fox", "Question: which option is correct? Answer:", "0123456789",
]


# OpenVINO aborts the whole process beside a preloaded tcmalloc (make test preloads none; a shell might).
needs_openvino = pytest.mark.skipif(preloaded_allocator() is not None,
                                    reason="OpenVINO aborts beside a preloaded allocator: run without LD_PRELOAD")


AMX = "amx_bf16" in engine_probe.cpu_flags()


@pytest.fixture(scope="module")
def _probe_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _probes_kept_apart(_probe_cache, monkeypatch):
    """Probe verdicts go to a cache of this module's own, not the user's (a test may point it elsewhere)."""
    monkeypatch.setenv("INSTRUCTUNE_CACHE", str(_probe_cache))


@pytest.fixture()
def threads_for_bfloat16():
    """Threads OpenVINO can compile bfloat16 on: 2 on an AMX CPU (one thread is refused: SIGFPE), else as set."""
    if not AMX:
        yield
        return
    if engine_probe.usable_cpus() < 2:
        pytest.skip("on AMX CPUs OpenVINO's bfloat16 needs 2 threads (one thread dies with SIGFPE and is refused), "
                    "and this process may use 1 CPU")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _crashing_probe(monkeypatch, tmp_path, code="import os, signal; os.kill(os.getpid(), signal.SIGFPE)"):
    """Make OpenVINO's probe child run `code` (and count its runs in tmp_path/probe-runs)."""
    runs = tmp_path / "probe-runs"
    script = f"open({str(runs)!r}, 'a').write('x')\n{code}"
    monkeypatch.setattr(openvino_engine, "_probe_command", lambda *args: [sys.executable, "-c", script])
    return runs


def _eval_predictions(tmp_path, model_dir) -> dict[str, list[str]]:
    """`instructune eval`'s predictions on 3 tiny dialogues, by engine ("auto", "hf")."""
    from instructune.evaluate import run as run_module

    dialogs = tmp_path / "dialogsum.jsonl"
    dialogs.write_text("\n".join(json.dumps(
        {"dialogue": f"#Person1#: Hi {i}. #Person2#: Hello.", "summary1": "They greet."}) for i in range(3)) + "\n")
    predictions = {}
    for engine in ("auto", "hf"):
        out = tmp_path / f"{engine}.json"
        assert run_module.main(["--model", str(model_dir), "--task", "dialogsum", "--data", str(dialogs),
                                "--max-new-tokens", "6", "--engine", engine, "--no-progress", "-o", str(out)]) == 0
        lines = (tmp_path / f"{engine}.predictions.jsonl").read_text().splitlines()
        predictions[engine] = [json.loads(line)["prediction"] for line in lines]
    return predictions


@pytest.fixture()
def no_preload(monkeypatch):
    """The engine choice as in a process without a preloaded allocator (nothing here loads OpenVINO)."""
    monkeypatch.delenv("LD_PRELOAD", raising=False)


def _ov_ids(model, tokenizer, prompts, max_new_tokens, stop_ids=None, compute_type="float32"):
    engine = openvino_engine.load_engine(model, compute_type=compute_type, cache=False)
    rows = [encode_prompt(model, tokenizer, p) for p in prompts]
    stops = stop_ids or stop_token_ids(model, tokenizer)
    got = openvino_engine.generate_ids(engine, rows, max_new_tokens=max_new_tokens, stop_ids=stops)
    return [row[:next((i for i, t in enumerate(row) if t in stops), len(row))] for row in got]


@needs_openvino
class TestGreedyEquality:
    def test_float32_ids_equal_hf_generate_token_for_token(self, llama, tokenizer):
        model = _chatty(llama)
        assert_greedy_equal_with_early_stops(model, tokenizer, PROMPTS,
                                             lambda stop_ids: _ov_ids(model, tokenizer, PROMPTS, 24, stop_ids=stop_ids))

    def test_qwen2_layers_with_attention_bias(self, tokenizer):
        model = _chatty(_qwen2(tokenizer))
        assert model.model.layers[0].self_attn.q_proj.bias is not None
        got = _ov_ids(model, tokenizer, PROMPTS, 16)
        assert got == [hf_greedy_ids(model, tokenizer, p, 16) for p in PROMPTS]

    def test_generate_answers_equal_hf_in_input_order(self, llama, tokenizer):
        model = _chatty(llama)
        hf = generate(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=3, progress=False, engine="hf")
        ov = generate(model, tokenizer, PROMPTS, max_new_tokens=16, progress=False, engine="openvino")
        assert ov == hf and all(hf)

    def test_repeated_and_shared_prefix_prompts_keep_their_answers(self, llama, tokenizer):
        # Prefix caching reuses the KV blocks of a shared beginning; the answers must not notice.
        model = _chatty(llama)
        long = "Summarize: " + "#Person1#: Hello there, how are you today? " * 12
        prompts = [long + "A", long + "B", long + "A", "Hi"]
        got = _ov_ids(model, tokenizer, prompts, 12)
        assert got == [hf_greedy_ids(model, tokenizer, p, 12) for p in prompts]

    def test_lora_model_exports_with_adapters_and_is_left_unchanged(self, llama, tokenizer):
        model = lora_with_effect(_chatty(llama))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        got = _ov_ids(model, tokenizer, PROMPTS, 12)
        assert got == [hf_greedy_ids(model, tokenizer, p, 12) for p in PROMPTS]
        after = dict(model.named_parameters())
        assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
        with model.disable_adapter():
            base = [hf_greedy_ids(model, tokenizer, p, 12) for p in PROMPTS]
        assert base != got  # the adapters changed the answers, so the export carried them

    def test_bfloat16_runs_and_leaves_the_model_in_float32(self, llama, tokenizer, threads_for_bfloat16):
        model = _chatty(llama)
        got = _ov_ids(model, tokenizer, PROMPTS, 12, compute_type="bfloat16")
        assert len(got) == len(PROMPTS) and all(len(row) <= 12 for row in got)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        with pytest.raises(InstructuneError, match="compute_type 'int8'"):
            openvino_engine.load_engine(model, compute_type="int8", cache=False)


@needs_openvino
class TestSampling:
    def test_top_k_1_samples_hf_greedy_answers(self, llama, tokenizer):
        # Sampling that keeps only the most likely token is greedy decoding, whatever the seed and temperature.
        model = _chatty(llama)
        engine = openvino_engine.load_engine(model, cache=False)
        rows = [encode_prompt(model, tokenizer, p) for p in PROMPTS]
        stops = stop_token_ids(model, tokenizer)
        got = openvino_engine.generate_ids(engine, rows, max_new_tokens=12, stop_ids=stops, num_return_sequences=3,
                                           sampling=Sampling(temperature=1.7, top_k=1, seed=5))
        cut = [row[:next((i for i, t in enumerate(row) if t in stops), len(row))] for row in got]
        assert cut == [hf_greedy_ids(model, tokenizer, p, 12) for p in PROMPTS for _ in range(3)]

    def test_groups_admitted_as_the_cache_allows_come_back_whole_and_in_order(self, llama, tokenizer, monkeypatch):
        model = _chatty(llama)
        engine = openvino_engine.load_engine(model, cache=False)
        rows = [encode_prompt(model, tokenizer, p) for p in PROMPTS]
        stops = stop_token_ids(model, tokenizer)
        added = []
        monkeypatch.setattr(openvino_engine, "CACHE_TOKENS", max(map(len, rows)) + 3 * 12)  # one group's worst case
        real = openvino_engine._admitted
        monkeypatch.setattr(openvino_engine, "_admitted", lambda *a: added.append(real(*a)) or added[-1])
        got = openvino_engine.generate_ids(engine, rows, max_new_tokens=12, stop_ids=stops, num_return_sequences=3,
                                           sampling=Sampling(temperature=1.7, top_k=1, seed=5))
        assert [len(r) for r in added if len(r)] == [1] * len(PROMPTS)  # one group in flight at a time
        cut = [row[:next((i for i, t in enumerate(row) if t in stops), len(row))] for row in got]
        assert cut == [hf_greedy_ids(model, tokenizer, p, 12) for p in PROMPTS for _ in range(3)]

    def test_admission_counts_each_unfinished_groups_worst_case(self):
        prompts, answers = [[1] * 10, [1] * 20, [1] * 30, [1] * 5], [None] * 4
        assert openvino_engine._admitted(prompts, 0, answers, None, 48) == range(0, 4)  # greedy: all at once
        assert openvino_engine._admitted(prompts, 0, answers, 130, 48) == range(0, 2)  # 58 + 68 <= 130 < 204
        answers[0] = [[7]]  # the first group finished: its room is free again
        assert openvino_engine._admitted(prompts, 2, answers, 130, 48) == range(2, 2)  # 68 + 78 > 130
        answers[1] = [[7]]
        assert openvino_engine._admitted(prompts, 2, answers, 10, 48) == range(2, 3)  # too large alone: still one

    def test_samples_are_seeded_and_mbr_keeps_their_consensus(self, llama, tokenizer):
        from instructune.generation.mbr import Mbr, choose

        model = _chatty(llama)
        engine = openvino_engine.load_engine(model, cache=False)
        stops = stop_token_ids(model, tokenizer)
        prompt = encode_prompt(model, tokenizer, PROMPTS[1])

        def samples(seed):
            rows = openvino_engine.generate_ids(engine, [prompt], max_new_tokens=8, stop_ids=stops,
                                                num_return_sequences=6, sampling=Sampling(1.5, seed=seed))
            return [tokenizer.decode(row[:next((i for i, t in enumerate(row) if t in stops), len(row))],
                                     skip_special_tokens=True).strip() for row in rows]

        drawn = samples(7)
        assert len(drawn) == 6 and len(set(drawn)) > 2  # six different draws of one prompt
        assert samples(7) == drawn and samples(8) != drawn
        got = generate(model, tokenizer, [PROMPTS[1]], mbr=Mbr(samples=6, temperature=1.5, seed=7), max_new_tokens=8,
                       engine="openvino", progress=False)
        assert got == [drawn[choose(drawn)]]
        with pytest.raises(InstructuneError, match="several answers per prompt need sampling"):
            openvino_engine.generate_ids(engine, [prompt], max_new_tokens=4, stop_ids=stops, num_return_sequences=2)


@needs_openvino
class TestEngineCache:
    def test_cached_model_is_kept_by_weights_and_rebuilt_when_they_change(self, tiny_llama_dir, tmp_path,
                                                                          monkeypatch):
        import shutil

        from instructune.models import load_model

        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path))
        source = shutil.copytree(tiny_llama_dir, tmp_path / "models" / "tiny")
        model, _ = load_model(source)
        first = openvino_engine.load_engine(model)
        assert openvino_engine.load_engine(model) is first  # same weights: the loaded pipeline again
        exported = sorted((tmp_path / "models").glob("tiny.ov-*"))
        assert len(exported) == 1 and (exported[0] / openvino_engine.MODEL_FILE).is_file()
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        assert openvino_engine.load_engine(model) is not first
        assert len(list((tmp_path / "models").glob("tiny.ov-*"))) == 2

    def test_users_folders_and_uncached_exports_leave_nothing_behind(self, tiny_llama_dir, tmp_path, monkeypatch):
        import tempfile

        from instructune.models import load_model

        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        model, _ = load_model(tiny_llama_dir)
        openvino_engine.load_engine(model)
        openvino_engine.load_engine(model, cache=False)
        assert not (tmp_path / "cache" / "models").exists()
        assert not list(tmp_path.glob("instructune-ov-*"))


@pytest.mark.openvino_auto
class TestChoice:
    def test_auto_prefers_openvino_but_not_for_in_training_checks(self, llama, no_preload, threads_for_bfloat16):
        here = Where.here()
        assert select_engine(llama, GenerateOptions(), here).engine == "openvino"
        assert select_engine(llama, GenerateOptions(compute_type="bfloat16"), here).engine == "openvino"
        checks = select_engine(llama, GenerateOptions(), Where.here(weights_change=True))
        assert checks.engine == "native" and checks.news == ()  # by design, nothing to say
        assert select_engine(llama, GenerateOptions(sampling=Sampling()), here).engine == "openvino"
        assert select_engine(llama, GenerateOptions(sampling=Sampling()), Where(auto_engines=("native", "hf"))).engine == "hf"
        assert select_engine(llama, GenerateOptions(), Where(auto_engines=("native", "hf"))).engine == "native"

    def test_a_preloaded_allocator_is_refused_and_auto_falls_back(self, llama, tokenizer, monkeypatch):
        monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
        chosen = select_engine(llama, GenerateOptions(), Where.here())
        assert chosen.engine == "native" and chosen.news == ("openvino",)
        assert "libtcmalloc_minimal" in dict(chosen.passed_over)["openvino"]
        with pytest.raises(InstructuneError, match="engine 'openvino' cannot run here: it aborts beside the preloaded"):
            generate(llama, tokenizer, ["Hi"], progress=False, engine="openvino")

    def test_unsupported_models_and_sampling(self, tokenizer, llama, no_preload):
        t5 = tiny.make_t5(tokenizer)
        assert "encoder-decoder" in openvino_engine.unsupported_reason(t5)
        assert openvino_engine.unsupported_reason(llama) is None
        with pytest.raises(InstructuneError, match="encoder-decoder"):
            generate(t5, tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False, engine="openvino")
        with pytest.raises(InstructuneError, match="engine 'native' cannot run here: it decodes greedily only"):
            generate(llama, tokenizer, PROMPTS[:2], sampling=Sampling(), progress=False, engine="native")

    def test_eval_command_keeps_glibc_malloc_when_openvino_decodes(self):
        from instructune.cli import allocator_for

        assert allocator_for(["eval", "--task", "dialogsum"]) == "system"
        assert allocator_for(["eval", "--engine", "openvino"]) == "system"
        assert allocator_for(["eval", "--engine", "native"]) == "tcmalloc"
        assert allocator_for(["eval", "--engine=hf"]) == "tcmalloc"
        assert allocator_for(["train", "config.yaml"]) == "tcmalloc"
        assert allocator_for(["compare", "a.json"]) == "system"

    @needs_openvino
    def test_eval_command_decodes_on_openvino_by_default_with_hf_answers(self, tmp_path, tiny_llama_dir, monkeypatch):
        calls = []
        real = openvino_engine.generate_ids
        monkeypatch.setattr(openvino_engine, "generate_ids", lambda *a, **k: calls.append(1) or real(*a, **k))
        predictions = _eval_predictions(tmp_path, tiny_llama_dir)
        assert calls == [1]  # auto decoded on OpenVINO, once
        assert predictions["auto"] == predictions["hf"]


# A child loads an engine, drops the last reference on another thread (OpenVINO's CPU plugin then
# unmaps the signal stack it gave the main thread), and signals itself, as Ctrl-C or SIGTERM would.
_RELEASED_ELSEWHERE = """
import contextlib, gc, os, signal, sys, threading
import tiny
from instructune.generation import openvino_engine
if sys.argv[1] == "unguarded":
    openvino_engine.signal_stack_kept = contextlib.nullcontext
holder = [openvino_engine.load_engine(tiny.make_llama(tiny.make_tokenizer()), cache=False)]
worker = threading.Thread(target=holder.clear)
worker.start(); worker.join(); gc.collect()
handled = []
signal.signal(signal.SIGTERM, lambda *_: handled.append(1))
os.kill(os.getpid(), signal.SIGTERM)
print("handled", len(handled))
"""


@needs_openvino
class TestSignalStack:
    @pytest.mark.parametrize("guard", ["guarded", "unguarded"])
    def test_a_signal_after_the_engine_is_released_reaches_its_handler(self, tmp_path, guard):
        # OpenVINO 2026.4's plugin (SigAltStackSetup) restores the thread's previous signal stack only when
        # destroyed on that thread; unguarded, the signal frame lands on unmapped memory: SIGSEGV, which
        # is how tests/test_train.py::TestSignals died after this module's tests.
        import os
        import resource
        import signal
        import subprocess

        env = {**os.environ, "PYTHONPATH": str(Path(tiny.__file__).parent), "INSTRUCTUNE_CACHE": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", _RELEASED_ELSEWHERE, guard], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path,  # no core file from the unguarded child
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
        if guard == "guarded":
            assert (done.returncode, done.stdout.split()) == (0, ["handled", "1"]), done.stderr[-2000:]
        else:  # the hazard itself, so that this test notices when an OpenVINO release fixes it
            assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stdout, done.stderr[-2000:])


@pytest.mark.openvino_auto
@needs_openvino
class TestCrashes:
    def test_bfloat16_on_one_thread_on_amx_is_refused_before_any_export(self, llama, tokenizer, monkeypatch, capsys):
        # Any CPU plays an AMX one here: the rule is checked, not OpenVINO (test_the_real_crash... runs it).
        monkeypatch.setattr(engine_probe, "cpu_flags", lambda: ["amx_bf16", "avx512_bf16", "avx512f"])
        monkeypatch.setattr(openvino_engine, "export", lambda *a: pytest.fail("exported a configuration it refuses"))
        model = _chatty(llama)
        assert torch.get_num_threads() == 1  # conftest
        assert "SIGFPE" in openvino_engine.crash_reason(model, "bfloat16")
        assert openvino_engine.crash_reason(model, "float32") is None
        chosen = select_engine(model, GenerateOptions(compute_type="bfloat16"), Where.here())
        assert chosen.engine == "native" and chosen.news == ("openvino",)
        assert "one thread crashes OpenVINO on AMX CPUs" in dict(chosen.passed_over)["openvino"]
        with pytest.raises(InstructuneError, match="engine 'openvino' cannot run here: bfloat16 on one thread crashes"):
            generate(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False, engine="openvino",
                     compute_type="bfloat16")
        capsys.readouterr()
        auto = generate(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False, compute_type="bfloat16")
        native = generate(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False, engine="native",
                          compute_type="bfloat16")
        assert auto == native
        (line,) = capsys.readouterr().err.splitlines()
        assert "openvino engine skipped" in line and "SIGFPE" in line and line.endswith("decoding on the native engine")
        monkeypatch.setattr(engine_probe, "usable_cpus", lambda: 2)
        torch.set_num_threads(2)
        try:
            assert openvino_engine.crash_reason(model, "bfloat16") is None  # two threads compile
        finally:
            torch.set_num_threads(1)
        monkeypatch.setattr(engine_probe, "usable_cpus", lambda: 1)
        assert "SIGFPE" in openvino_engine.crash_reason(model, "bfloat16")  # OpenVINO runs on 1 CPU whatever it is told

    @pytest.mark.parametrize("code, outcome", [
        ("import os, signal; os.kill(os.getpid(), signal.SIGFPE)", "crashed with SIGFPE"),
        ("import os; os.abort()", "crashed with SIGABRT"),
    ])
    def test_a_crashing_probe_costs_one_line_and_auto_answers_as_hf(self, llama, tokenizer, tmp_path, monkeypatch,
                                                                    capsys, code, outcome):
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
        runs = _crashing_probe(monkeypatch, tmp_path, code)
        model = _chatty(llama)
        hf = generate(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=3, progress=False, engine="hf")
        capsys.readouterr()
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=16, progress=False) == hf
        (line,) = capsys.readouterr().err.splitlines()
        assert f"openvino engine skipped: OpenVINO {outcome} in a probe" in line
        assert line.endswith("decoding on the native engine")
        (record,) = json.loads(engine_probe.probes_path().read_text()).values()
        assert record["outcome"] == outcome and record["key"]["compute_type"] == "float32"
        # The verdict is kept: the next call (or process) neither probes nor exports again.
        monkeypatch.setattr(engine_probe, "_SEEN", {})
        monkeypatch.setattr(openvino_engine, "export", lambda *a: pytest.fail("exported again"))
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=16, progress=False) == hf
        assert runs.read_text() == "x"
        assert outcome in capsys.readouterr().err
        with pytest.raises(InstructuneError, match=f"engine 'openvino' cannot run here: OpenVINO {outcome}"):
            generate(model, tokenizer, PROMPTS, progress=False, engine="openvino")

    def test_engine_openvino_raises_the_probes_crash_as_one_error(self, llama, tokenizer, tmp_path, monkeypatch):
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
        _crashing_probe(monkeypatch, tmp_path)
        with pytest.raises(InstructuneError, match="engine 'openvino' cannot run here: OpenVINO crashed with SIGFPE in "
                                                   "a probe .* delete it to probe again"):
            generate(_chatty(llama), tokenizer, PROMPTS, progress=False, engine="openvino")
        with pytest.raises(openvino_engine.EngineCrashed, match="SIGFPE"):
            openvino_engine.load_engine(llama, cache=False)

    def test_a_passing_probe_is_kept_and_answers_stay_equal_to_hf(self, llama, tokenizer, tmp_path, monkeypatch):
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
        model = _chatty(llama)
        got = _ov_ids(model, tokenizer, PROMPTS, 12)
        (record,) = json.loads(engine_probe.probes_path().read_text()).values()
        assert record["ok"] and record["key"]["hidden"] == 32 and record["key"]["threads"] == 1
        assert record["seconds"] < 30  # ~0.5-1 s on a 2-core Xeon
        runs = _crashing_probe(monkeypatch, tmp_path)  # a probe now would crash: none runs
        assert _ov_ids(model, tokenizer, PROMPTS, 12) == got == [hf_greedy_ids(model, tokenizer, p, 12) for p in PROMPTS]
        assert not runs.exists()

    @pytest.mark.skipif(not AMX, reason="needs an AMX CPU: only there does OpenVINO's bfloat16 compile die on one thread")
    def test_the_real_one_thread_bfloat16_crash_is_caught_by_the_probe(self, llama, tokenizer, tmp_path, monkeypatch,
                                                                       capsys):
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(openvino_engine, "_known_crash", lambda *args: None)  # as if the rule were unknown
        model = _chatty(llama)
        native = generate(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False, engine="native",
                          compute_type="bfloat16")
        capsys.readouterr()
        auto = generate(model, tokenizer, PROMPTS, max_new_tokens=8, progress=False, compute_type="bfloat16")
        err = capsys.readouterr().err
        if "openvino engine skipped" not in err:
            import openvino

            pytest.skip(f"OpenVINO {openvino.__version__} compiles bfloat16 on one thread on this AMX CPU: fixed there")
        assert auto == native and "OpenVINO crashed with SIGFPE in a probe" in err

    def test_eval_command_survives_a_crashing_engine(self, tmp_path, tiny_llama_dir, monkeypatch, capsys):
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
        _crashing_probe(monkeypatch, tmp_path)
        predictions = _eval_predictions(tmp_path, tiny_llama_dir)
        assert predictions["auto"] == predictions["hf"]
        assert "openvino engine skipped: OpenVINO crashed with SIGFPE" in capsys.readouterr().err
