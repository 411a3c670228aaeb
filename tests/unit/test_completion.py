"""Shell completion: typer's --show-completion prints a script for `meshplan`, and the script's
completion call goes through `main()` and completes subcommand names."""

from __future__ import annotations

import os
import subprocess
import sys


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshplan", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_show_completion_prints_a_bash_script():
    # typer takes the shell as an argument when its shell detection is off (its own tests'
    # switch); otherwise it detects the shell that runs meshplan.
    out = run("--show-completion", "bash", SHELL="/bin/bash",
              _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert out.returncode == 0, out.stderr
    assert "complete -o default -F _meshplan_completion meshplan" in out.stdout
    assert "_MESHPLAN_COMPLETE=complete_bash" in out.stdout


def test_the_script_completes_subcommands():
    out = run(COMP_WORDS="meshplan pl", COMP_CWORD="1", _MESHPLAN_COMPLETE="complete_bash")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["plan"]
    out = run(COMP_WORDS="meshplan serve s", COMP_CWORD="2",
              _MESHPLAN_COMPLETE="complete_bash")
    assert "simulate" in out.stdout.split()


def test_help_lists_the_completion_options_and_errors_stay_one_line():
    out = run("--help")
    assert out.returncode == 0 and "--install-completion" in out.stdout
    out = run("plan", "--model", "nope")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_flag_values_complete_from_their_definitions():
    """--model / --cluster from the presets, --schedule from the schedule specs, --engine from
    the serving profiles."""
    cases = [("meshplan plan --model llama3.1", "3", "llama3.1-405b"),
             ("meshplan estimate --cluster dgx-h", "3", "dgx-h100"),
             ("meshplan estimate --schedule zb", "3", "zb-v"),
             ("meshplan serve simulate --engine vllm", "4", "vllm-v0")]
    for words, cword, expected in cases:
        out = run(COMP_WORDS=words, COMP_CWORD=cword, _MESHPLAN_COMPLETE="complete_bash")
        assert out.returncode == 0, out.stderr
        got = out.stdout.split()
        assert expected in got and all(g.startswith(words.split()[-1]) for g in got), got
