"""Streaming several models at once, on scripted fake models (the scheduling is the point here)."""
import time

import pytest

from demo.compare import FAULT, Comparison, own_defaults, shared_settings
from demo.manager import ModelLoadError
from tests.fakes import scripted

HI = [{"role": "user", "content": "hi"}]


def loader(models):
    def load(model_id):
        model = models[model_id]
        if isinstance(model, Exception):
            raise model
        return model
    return load


def run(models, tick_s=0.02, params_for=own_defaults, on_snapshot=None):
    comparison = Comparison(loader(models), [(m, HI) for m in models], params_for).start()
    snapshots = []
    for panes in comparison.stream(tick_s):
        snapshots.append(panes)
        if on_snapshot:
            on_snapshot(comparison, panes)
    return comparison, snapshots


def test_a_slow_model_streams_while_a_fast_one_is_still_going():
    fast = scripted("f" * 400, step_s=0.002)
    slow = scripted("slow reply", step_s=0.05)
    _, snapshots = run({"fast": fast, "slow": slow})
    final = {p.model_id: p for p in snapshots[-1]}
    assert final["fast"].text == "f" * 400 and final["slow"].text == "slow reply"
    # Fair: the slow model's first tokens show up before the fast model has finished.
    first_slow = next(k for k, s in enumerate(snapshots) if s[1].text)
    assert not snapshots[first_slow][0].finished
    # Concurrent, not one after the other: both are mid-reply in some snapshot.
    assert any(s[0].text and s[1].text and not s[0].finished and not s[1].finished for s in snapshots)


def test_a_failing_model_reports_in_its_pane_and_the_others_finish(caplog):
    crash = scripted("abcdef", step_s=0.01, crash_after=3)
    _, snapshots = run({"ok": scripted("fine", step_s=0.01), "gone": ModelLoadError("gone: no weights"),
                        "crash": crash})
    ok, gone, crashed = snapshots[-1]
    assert ok.text == "fine" and ok.finish_reason == "stop" and ok.error is None
    assert gone.finish_reason == "error" and "no weights" in gone.error and "⚠️" in gone.footer()
    # a fault's exception text goes to the log; the pane says the server failed (a load error says why)
    assert crashed.finish_reason == "error" and crashed.error == FAULT and crashed.text == "abc"
    assert "scripted crash" in caplog.text


def test_stopping_one_pane_leaves_the_others_running():
    models = {"a": scripted("x" * 200, step_s=0.01), "b": scripted("y" * 60, step_s=0.01)}

    def stop_a(comparison, panes):
        if panes[0].text and not comparison.cancels[0].cancelled:
            comparison.cancel(0)

    comparison, snapshots = run(models, on_snapshot=stop_a)
    a, b = snapshots[-1]
    assert a.finish_reason == "cancelled" and len(a.text) < 200 and "cancelled" in a.footer()
    assert b.finish_reason == "stop" and b.text == "y" * 60


def test_closing_the_stream_cancels_every_model():
    models = {"a": scripted("x" * 500, step_s=0.01), "b": scripted("y" * 500, step_s=0.01)}
    comparison = Comparison(loader(models), [(m, HI) for m in models], own_defaults).start()
    stream = comparison.stream(0.02)
    next(stream)
    stream.close()
    assert all(t.cancelled for t in comparison.cancels)
    deadline = time.time() + 5
    while not comparison.done and time.time() < deadline:
        time.sleep(0.02)
    assert [p.finish_reason for p in comparison.panes] == ["cancelled", "cancelled"]


def test_shared_settings_override_each_models_defaults():
    models = {"a": scripted("x" * 50), "b": scripted("y" * 50, max_new_tokens=5)}
    _, snapshots = run(models, params_for=shared_settings({"max_new_tokens": 7}))
    assert [len(p.text) for p in snapshots[-1]] == [7, 7]
    assert snapshots[-1][0].params["max_new_tokens"] == 7
    _, snapshots = run(models)  # own defaults
    assert [len(p.text) for p in snapshots[-1]] == [50, 5]


def test_a_model_twice_is_refused():
    with pytest.raises(ValueError, match="each model may appear once"):
        Comparison(loader({}), [("a", HI), ("a", HI)], own_defaults)
