import subprocess
import sys

import pytest

from replay_lcmat.cli import SUBCOMMANDS, build_parser, main


def test_help_lists_every_registered_subcommand():
    text = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.slow
def test_console_script_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "replay_lcmat.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: replay-lcmat" in out.stdout


def test_data_command_summarises_digits(capsys):
    assert main(["data", "--data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "1347 train / 450 test images, 1x8x8" in out


def test_data_command_reports_missing_path(capsys, tmp_path):
    assert main(["data", "--data", str(tmp_path / "nope.tar.gz")]) == 1
    assert "unknown dataset" in capsys.readouterr().err
