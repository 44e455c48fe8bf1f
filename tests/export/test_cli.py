"""The export command line follows the SDK command's conventions: one dispatcher that lists every
subcommand, one error line ``megaportraits_export: error: ...``, and the SDK's exit codes (1 for
a failure the user caused, 2 for a usage error), never a traceback.

The exit codes are not hard-coded here: they are the ones ``megaportraits`` itself returns for
the same kind of mistake, so the two sides cannot drift apart.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megaportraits import cli as sdk_cli
from megaportraits_export import __main__ as dispatcher
from megaportraits_export import command

ERROR_PREFIX = f"{command.PROG}: error: "
EXPORT_PACKAGE = Path(dispatcher.__file__).resolve().parent
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_test.toml"


def sdk_usage_error_code(capsys) -> int:
    with pytest.raises(SystemExit) as exit_info:
        sdk_cli.main(["info", "--no-such-option"])
    capsys.readouterr()
    return exit_info.value.code


def sdk_user_error_code(tmp_path, capsys) -> int:
    code = sdk_cli.main(["info", "--bundle", str(tmp_path / "no-such-bundle")])
    capsys.readouterr()
    return code


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{text}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert "Traceback" not in text
    return lines[0]


def test_the_dispatcher_lists_every_command_module():
    """Every parser built with ``command.parser(NAME, ...)`` in the package belongs to a command the
    dispatcher lists (NAME's first word), and every listed module builds such a parser."""
    named = {}
    for path in EXPORT_PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "argparse.ArgumentParser(" not in text or path.name == "command.py", \
            f"{path} builds its own parser: use command.parser so usage errors follow the convention"
        for match in re.finditer(r"command\.parser\(\s*\"([a-z][a-z0-9 _-]*)\"", text):
            named.setdefault(match.group(1).split()[0], []).append(path.relative_to(EXPORT_PACKAGE.parent))
    unlisted = {name: paths for name, paths in named.items() if name not in dispatcher.COMMANDS}
    assert not unlisted, f"commands missing from megaportraits_export.__main__.COMMANDS: {unlisted}"
    assert set(dispatcher.COMMANDS) <= set(named)
    assert "preprocess" in dispatcher.COMMANDS  # the one the old dispatcher left out


def exit_code(argv) -> int:
    """The dispatcher's exit status for ``argv``, whether returned or raised (argparse exits)."""
    try:
        return dispatcher.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("name", list(dispatcher.COMMANDS))
def test_each_command_shows_its_help_under_its_dispatcher_name(name, capsys):
    module = importlib.import_module(dispatcher.COMMANDS[name][0])
    assert exit_code([name, "--help"]) == 0
    assert f"usage: python -m megaportraits_export {name} " in capsys.readouterr().out
    assert callable(module.main)


@pytest.mark.parametrize("name", list(dispatcher.COMMANDS))
def test_usage_errors_are_one_line_with_the_sdk_exit_code(name, capsys):
    expected = sdk_usage_error_code(capsys)
    assert exit_code([name, "--no-such-option"]) == expected == 2
    one_error_line(capsys.readouterr().err)


def test_the_dispatcher_refuses_unknown_and_missing_commands_in_one_line(capsys):
    expected = sdk_usage_error_code(capsys)
    assert dispatcher.main(["bogus"]) == expected
    line = one_error_line(capsys.readouterr().err)
    assert "'bogus'" in line and all(name in line for name in dispatcher.COMMANDS)
    assert dispatcher.main([]) == expected
    one_error_line(capsys.readouterr().err)
    assert dispatcher.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in dispatcher.COMMANDS)


def _broken_bundle(tmp_path) -> Path:
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "megaportraits-bundle", "graphs": []}))
    return bundle


def user_errors(tmp_path) -> dict:
    """A mistake a user can make with each command, and a word the error line must contain."""
    return {
        "export-preset": (["export", "--preset", "no-such-preset", "--random-init", "-o", str(tmp_path / "b")],
                          "no-such-preset"),
        "export-checkpoint": (["export", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "b")],
                              "missing.pt"),
        "evaluate-missing-bundle": (["evaluate", "--bundle", str(tmp_path / "no-bundle"), "--pairs", "1"],
                                    "no-bundle"),
        "evaluate-broken-bundle": (["evaluate", "--bundle", str(_broken_bundle(tmp_path)), "--pairs", "1"],
                                   "manifest.json"),
        "evaluate-checkpoint": (["evaluate", "--checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
        "preprocess": (["preprocess", str(tmp_path / "no-clips"), str(tmp_path / "out")], "no-clips"),
        "train": (["train", "--config", str(tmp_path / "missing.toml")], "missing.toml"),
        "expression-eval": (["expression-eval", "--bundle", str(tmp_path / "no-bundle"), "--pairs", "1"],
                            "no-bundle"),
        "train-resume": (["train", "--config", str(TINY_CONFIG), "--out-dir", str(tmp_path / "run"),
                          "--resume", str(tmp_path / "no-state.pt")], "no-state.pt"),
    }


@pytest.mark.parametrize("case", ["export-preset", "export-checkpoint", "evaluate-missing-bundle",
                                  "evaluate-broken-bundle", "evaluate-checkpoint", "preprocess", "train",
                                  "train-resume", "expression-eval"])
def test_user_errors_are_one_line_with_the_sdk_exit_code(case, tmp_path, capsys):
    expected = sdk_user_error_code(tmp_path, capsys)
    argv, word = user_errors(tmp_path)[case]
    assert dispatcher.main(argv) == expected == 1
    assert word in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "b").exists() and not (tmp_path / "out").exists()


def test_run_turns_only_user_errors_into_one_line(capsys):
    def fails(error):
        def body(args):
            raise error
        return body

    assert command.run(fails(command.CommandError("first\nsecond")), None) == 1
    assert one_error_line(capsys.readouterr().err) == ERROR_PREFIX + "first second"
    assert command.run(fails(FileNotFoundError(2, "No such file or directory", "x.toml")), None) == 1
    assert "'x.toml'" in one_error_line(capsys.readouterr().err)
    assert command.run(fails(KeyboardInterrupt()), None) == 130
    with pytest.raises(ZeroDivisionError):  # a bug is not the user's mistake: it keeps its traceback
        command.run(fails(ZeroDivisionError("bug")), None)


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "megaportraits_export", "evaluate", "--bundle",
                             str(_broken_bundle(tmp_path))], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    one_error_line(result.stderr)
