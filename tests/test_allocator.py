"""The heavy commands re-execute themselves once under tcmalloc where the machine has it."""

import os
import subprocess
import sys

import pytest

from instructune.cli.allocator import ENV, find_tcmalloc

PROBE = ("from instructune.cli.allocator import reexec_with_tcmalloc; reexec_with_tcmalloc(); import os; "
         "print(os.environ.get('INSTRUCTUNE_ALLOCATOR'), any('tcmalloc' in l for l in open('/proc/self/maps')))")


def _probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.skipif(find_tcmalloc() is None or not sys.platform.startswith("linux"),
                    reason="no tcmalloc on this machine (Debian: libtcmalloc-minimal4)")
def test_process_restarts_once_with_tcmalloc_loaded():
    assert _probe() == ["tcmalloc", "True"]


def test_system_allocator_can_be_kept():
    assert _probe(**{ENV: "system"}) == ["system", "False"]


def test_cli_restarts_only_the_heavy_commands(monkeypatch):
    from instructune import cli

    calls = []
    monkeypatch.setattr(cli, "reexec_with_tcmalloc", lambda: calls.append(True))
    monkeypatch.setattr(sys, "argv", ["instructune", "compare", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["instructune", "train", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [True]
    cli.main(["--help"])  # called from Python (a notebook, the tests): never
    assert calls == [True]
