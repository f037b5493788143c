"""metrics.jsonl: a line torn by a kill mid-write is skipped with a warning and repaired on resume."""

import json

import pytest

from instructune.errors import InstructuneError
from instructune.train.runlog import MetricsLog


def _write(path, records, torn=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


class TestMetricsLogRead:
    def test_torn_last_line_is_skipped_with_a_warning(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        _write(path, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], torn='{"step": 3, "lo')
        with pytest.warns(UserWarning, match=r"metrics.jsonl:3: skipping a half-written last line"):
            records = MetricsLog.read(path)
        assert records == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]

    def test_broken_line_before_the_last_is_an_error_naming_the_line(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
        with pytest.raises(InstructuneError, match=r"metrics.jsonl:2: not valid JSON"):
            MetricsLog.read(path)


class TestMetricsLogResume:
    def test_resume_drops_the_torn_line_and_later_steps_and_appends_cleanly(self, tmp_path):
        path = tmp_path / "metrics.jsonl"
        _write(path, [{"step": 1}, {"step": 2}, {"step": 3}], torn='{"step": 4, "lo')
        with pytest.warns(UserWarning):
            log = MetricsLog(tmp_path, resume_from_step=2, tensorboard=False)
        log.log({"step": 3, "loss": 1.0})
        log.close()
        assert MetricsLog.read(path) == [{"step": 1}, {"step": 2}, {"step": 3, "loss": 1.0}]

    def test_fresh_start_ignores_an_unreadable_old_file(self, tmp_path):
        (tmp_path / "metrics.jsonl").write_text("garbage\nmore garbage\n")
        MetricsLog(tmp_path, resume_from_step=0, tensorboard=False).close()
        assert MetricsLog.read(tmp_path / "metrics.jsonl") == []
