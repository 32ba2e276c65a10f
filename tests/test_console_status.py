"""The console helpers: the model-loading status line (shown then erased on a terminal, absent elsewhere) and Ctrl-C."""

from __future__ import annotations

import io

import pytest

from clip_embeddings.apps import cli
from clip_embeddings.apps.console import status
from tests.test_cli import tiny_env  # noqa: F401  (a fixture)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_on_a_terminal_is_written_then_erased():
    stream = Terminal()
    with status("loading model ViT-B/32 ...", stream):
        assert stream.getvalue() == "loading model ViT-B/32 ..."
    assert stream.getvalue() == "loading model ViT-B/32 ...\r\x1b[K"  # back to column 0, line cleared


def test_status_elsewhere_writes_nothing_even_when_the_block_fails():
    stream = io.StringIO()
    try:
        with status("loading", stream):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert stream.getvalue() == ""
    terminal = Terminal()
    try:
        with status("loading", terminal):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert terminal.getvalue().endswith("\r\x1b[K")  # an error message that follows starts on a clean line


def test_cli_shows_the_loading_line_only_on_a_terminal(tiny_env, sample_images, monkeypatch, capsys):
    args = ["classify", str(sample_images[0]), "--labels", "cat,dog"]
    assert cli.main(args) == 0
    assert "loading model" not in capsys.readouterr().err  # captured stderr is not a terminal
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert cli.main(args) == 0
    assert f"loading model {tiny_env} ...\r\x1b[K" in terminal.getvalue()
    assert "loading model" not in capsys.readouterr().out


def test_a_first_ctrl_c_asks_for_a_stop_and_a_second_one_stops_at_once(capsys):
    import os
    import signal

    from clip_embeddings.apps.console import GracefulStop

    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # lands mid-"write": nothing is raised
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back
    assert "Ctrl-C again to stop now" in capsys.readouterr().err
