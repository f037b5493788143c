"""engine_probe: a child that dies by a signal or fails is a one-line verdict, not the end of this process;
verdicts are kept on disk per key (whole-file replace, a broken file ignored), except those that say
nothing about the engine (a kill from outside, a hang). The OpenVINO side is in test_openvino_engine.py."""

import json
import sys

import pytest

from instructune.generation import engine_probe


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _child(tmp_path, code: str) -> list[str]:
    """A probe command that counts its runs in tmp_path/runs, then runs `code`."""
    return [sys.executable, "-c", f"open({str(tmp_path / 'runs')!r}, 'a').write('x')\n{code}"]


def _runs(tmp_path) -> int:
    runs = tmp_path / "runs"
    return len(runs.read_text()) if runs.exists() else 0


class TestProbe:
    def test_a_passing_child_is_kept_and_not_run_again(self, cache, tmp_path):
        key = {"engine": "test", "compute_type": "float32"}
        assert engine_probe.probe(key, _child(tmp_path, "pass")) is None
        assert engine_probe.probe(key, _child(tmp_path, "raise SystemExit(3)")) is None  # the kept verdict
        assert _runs(tmp_path) == 1
        (record,) = json.loads(engine_probe.probes_path().read_text()).values()
        assert record["ok"] and record["key"] == key and record["seconds"] >= 0

    @pytest.mark.parametrize("code, outcome", [
        ("import os, signal; os.kill(os.getpid(), signal.SIGFPE)", "crashed with SIGFPE"),
        ("import os; os.abort()", "crashed with SIGABRT"),
        ("import ctypes; ctypes.string_at(0)", "crashed with SIGSEGV"),
        ("import sys; print('noise'); sys.exit('RuntimeError: no kernel for this shape')",
         "failed (exit 1: RuntimeError: no kernel for this shape)"),
    ])
    def test_deaths_and_failures_are_kept_one_line_verdicts(self, cache, tmp_path, code, outcome):
        key = {"engine": "test", "code": code}
        assert engine_probe.probe(key, _child(tmp_path, code)) == outcome
        assert engine_probe.probe(key, _child(tmp_path, "pass")) == outcome
        assert engine_probe.known_failure(key) == outcome
        assert _runs(tmp_path) == 1
        (record,) = json.loads(engine_probe.probes_path().read_text()).values()
        assert record["outcome"] == outcome and not record["ok"]

    def test_kills_from_outside_and_hangs_hold_for_this_process_only(self, cache, tmp_path, monkeypatch):
        killed = {"engine": "test", "case": "killed"}
        outcome = engine_probe.probe(killed, _child(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
        assert outcome.startswith("was killed by SIGKILL") and engine_probe.known_failure(killed) == outcome
        hung = {"engine": "test", "case": "hung"}
        assert engine_probe.probe(hung, _child(tmp_path, "import time; time.sleep(30)"), timeout_s=1).startswith(
            "hung for 1 s")
        assert not engine_probe.probes_path().exists()  # nothing kept for the next process
        monkeypatch.setattr(engine_probe, "_SEEN", {})  # the next process
        assert engine_probe.known_failure(killed) is None
        assert engine_probe.probe(killed, _child(tmp_path, "pass")) is None
        assert _runs(tmp_path) == 3

    def test_each_key_gets_its_own_verdict(self, cache, tmp_path):
        crash = "import os; os.abort()"
        assert engine_probe.probe({"compute_type": "bfloat16", "threads": 1}, _child(tmp_path, crash))
        assert engine_probe.probe({"compute_type": "bfloat16", "threads": 2}, _child(tmp_path, "pass")) is None
        assert engine_probe.known_failure({"compute_type": "float32", "threads": 1}) is None  # never probed
        assert len(json.loads(engine_probe.probes_path().read_text())) == 2

    def test_a_broken_file_is_ignored_and_replaced_whole(self, cache, tmp_path):
        cache.mkdir()
        engine_probe.probes_path().write_text('{"half a verdict')
        assert engine_probe.known_failure({"engine": "test"}) is None
        assert engine_probe.probe({"engine": "test"}, _child(tmp_path, "import os; os.abort()")) == "crashed with SIGABRT"
        assert len(json.loads(engine_probe.probes_path().read_text())) == 1
        assert [p.name for p in cache.iterdir()] == [engine_probe.PROBES_FILE]  # no temporary file left

    def test_a_cache_that_cannot_be_written_keeps_the_verdict_in_this_process(self, tmp_path, monkeypatch, capsys):
        (tmp_path / "not-a-folder").write_text("")
        monkeypatch.setenv("INSTRUCTUNE_CACHE", str(tmp_path / "not-a-folder"))
        key = {"engine": "test"}
        assert engine_probe.probe(key, _child(tmp_path, "import os; os.abort()")) == "crashed with SIGABRT"
        assert "could not keep the engine probe's verdict" in capsys.readouterr().err
        assert engine_probe.known_failure(key) == "crashed with SIGABRT"
        assert _runs(tmp_path) == 1


class TestMachineKey:
    def test_the_key_names_the_cpu(self):
        key = engine_probe.machine_key(engine="openvino", compute_type="bfloat16")
        assert key["engine"] == "openvino" and key["machine"]
        assert set(key["cpu_flags"]) <= set(engine_probe.CPU_FLAGS) and key["cpu_flags"] == sorted(key["cpu_flags"])
        assert engine_probe.usable_cpus() >= 1
