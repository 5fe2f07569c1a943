"""The one stop-signal helper, in the two ways the project uses it: .venv/bin/python -m pytest tests/test_signals.py

The generator's way (a signal stops at once, except inside `deferred()`) is also pinned through the run itself in
tests/test_generate_pipeline.py; training's way (SIGTERM only noted, acted on at a step's end) in tests/test_resume.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from alpaca_lib.core.signals import StopSignals, stop_on


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler has run by now


def test_stop_on_raises_what_the_signal_would_have_done():
    with pytest.raises(KeyboardInterrupt):
        stop_on(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        stop_on(signal.SIGTERM)
    assert stop.value.code == 143


def test_poll_only_notes_the_signal_and_take_over_replaces_any_handler():
    # Training's use: SIGTERM caught whatever handled it before (here: ignored), then put back as it was.
    outer = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stop = StopSignals((signal.SIGTERM,), poll=True, take_over=True)
        stop.install()
        assert stop.received is None
        _send(signal.SIGTERM)
        _send(signal.SIGTERM)  # a second one changes nothing
        assert stop.received == signal.SIGTERM
        with stop.deferred():  # nothing is raised when polling
            pass
        assert stop.received == signal.SIGTERM
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, outer)


def test_without_take_over_a_changed_handler_is_left_alone():
    outer = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stop = StopSignals()
        stop.install()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        _send(signal.SIGTERM)  # ignored, as before
        assert stop.received is None
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, outer)


def test_the_last_signal_inside_a_deferred_block_is_the_one_acted_on():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = StopSignals()
    stop.install()
    try:
        with pytest.raises(SystemExit) as raised:
            with stop.deferred():
                _send(signal.SIGINT)
                _send(signal.SIGTERM)
        assert raised.value.code == 143 and stop.received is None
    finally:
        stop.restore()
        signal.signal(signal.SIGINT, outer)


def test_install_outside_the_main_thread_does_nothing():
    stop = StopSignals((signal.SIGTERM,), poll=True, take_over=True)
    before = signal.getsignal(signal.SIGTERM)
    installed = []
    worker = threading.Thread(target=lambda: installed.append(stop.install()))
    worker.start()
    worker.join()
    assert installed == [False]
    assert signal.getsignal(signal.SIGTERM) is before
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_training_outside_the_main_thread_says_a_stop_signal_will_not_save(caplog):
    from alpaca_lib.training.resumable import StopOnSigterm

    callback = StopOnSigterm()
    worker = threading.Thread(target=callback.on_train_begin, args=(None, None, None))
    with caplog.at_level("WARNING"):
        worker.start()
        worker.join()
    assert [r.getMessage() for r in caplog.records] == [
        "training runs outside the main thread, where Python cannot catch signals: SIGTERM or Ctrl-C will stop it "
        "without saving a checkpoint."]
    callback.on_train_end(None, None, None)


def test_on_interrupt_turns_ctrl_c_into_one_line_and_exit_130(capsys):
    from alpaca_lib.core.signals import INTERRUPTED_EXIT_CODE, on_interrupt

    with pytest.raises(SystemExit) as exited:
        with on_interrupt(lambda: "3 answers kept in j.jsonl"):
            raise KeyboardInterrupt
    assert exited.value.code == INTERRUPTED_EXIT_CODE == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C): 3 answers kept in j.jsonl\n"
    with on_interrupt("unused"):  # nothing happens without Ctrl-C
        pass
    assert capsys.readouterr().err == ""


def test_under_poll_a_second_ctrl_c_stops_at_once_and_the_first_is_announced():
    said = []
    stop = StopSignals((signal.SIGTERM, signal.SIGINT), poll=True, take_over=True, again_stops=(signal.SIGINT,),
                       on_first=said.append)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM is only noted, however often it comes
        assert (stop.received, said) == (signal.SIGTERM, [signal.SIGTERM])
        stop.received = None
        os.kill(os.getpid(), signal.SIGINT)
        assert (stop.received, said) == (signal.SIGINT, [signal.SIGTERM, signal.SIGINT])
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
