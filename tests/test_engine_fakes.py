"""Engine edge cases on a scripted model and a byte tokenizer."""
import time

from demo.engine import CancelToken, complete, stream_chat, stream_ids
from tests.fakes import EOS, scripted

USER = [{"role": "user", "content": "hi"}]


def test_stream_joins_to_reply_and_reports_stop_on_eos():
    loaded = scripted(list("你好, world".encode()) + [EOS, *b"never"])
    chunks = list(stream_chat(loaded, USER))
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.text == "你好, world"
    assert "".join(c.delta for c in chunks) == last.text
    assert all("\ufffd" not in c.delta for c in chunks)
    assert last.output_ids[-1] == EOS and last.stats.new_tokens == len("你好, world".encode()) + 1
    assert last.stats.prompt_tokens == 2 and last.stats.ttft_s is not None


def test_length_finish_when_max_new_tokens_is_reached():
    loaded = scripted("abcdefghij")
    last = complete(loaded, USER, loaded.defaults.override({"max_new_tokens": 4}))
    assert (last.finish_reason, last.text, last.stats.new_tokens) == ("length", "abcd", 4)


def test_stop_string_ends_generation_and_is_never_shown_even_in_part():
    # 10 ms a step, as a real model takes at least that: the bound below is in steps, not a race.
    loaded = scripted("Answer: 42\nUser: and more text after", step_s=0.01, stop_strings=["\nUser:"])
    chunks = list(stream_chat(loaded, USER))
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].text == "Answer: 42"
    assert all("\n" not in c.text for c in chunks)
    # the worker stopped right after the marker, not at the end of the script
    assert loaded.model.finished.wait(2)
    assert loaded.model.steps_run <= len("Answer: 42\nUser:") + 2


def test_cancel_ends_the_worker_thread_within_a_couple_of_steps():
    loaded = scripted("x" * 500, step_s=0.01)
    cancel = CancelToken()
    stream = stream_chat(loaded, USER, cancel=cancel)
    next(stream)
    cancel.cancel()
    steps_at_cancel = loaded.model.steps_run
    last = list(stream)[-1]
    assert last.finish_reason == "cancelled"
    assert loaded.model.finished.wait(2)
    assert loaded.model.steps_run - steps_at_cancel <= 2


def test_consumer_that_goes_away_stops_the_worker():
    loaded = scripted("y" * 500, step_s=0.01)
    stream = stream_chat(loaded, USER)
    next(stream)
    stream.close()  # what Gradio does when a client disconnects or an event is cancelled
    assert loaded.model.finished.wait(2)
    assert loaded.model.steps_run < 100


def test_crashed_worker_ends_the_reply_with_an_error_not_a_hang():
    loaded = scripted("abcdef", crash_after=3)
    started = time.perf_counter()
    last = complete(loaded, USER)
    assert last.finish_reason == "error" and "scripted crash" in last.error
    assert last.text == "abc"
    assert time.perf_counter() - started < 5
    # the model is free again for the next request
    assert complete(scripted("ok"), USER).text == "ok"
    assert not loaded.lock.locked()


def test_stalled_worker_times_out():
    loaded = scripted("abcdef", step_s=1.0)
    last = list(stream_ids(loaded, [1], loaded.defaults, stall_timeout_s=0.3))[-1]
    assert last.finish_reason == "error" and "no token" in last.error


def test_requests_for_one_model_are_served_one_at_a_time():
    import threading

    loaded = scripted("z" * 20, step_s=0.005)
    results = []
    threads = [threading.Thread(target=lambda: results.append(complete(loaded, USER))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [r.text for r in results] == ["z" * 20] * 3
    assert sorted(r.stats.queue_s > 0.05 for r in results) == [False, True, True]


def test_cancel_while_queued_returns_without_generating():
    loaded = scripted("abc")
    cancel = CancelToken()
    loaded.lock.acquire()
    try:
        cancel.cancel()
        last = list(stream_chat(loaded, USER, cancel=cancel))[-1]
    finally:
        loaded.lock.release()
    assert last.finish_reason == "cancelled" and loaded.model.steps_run == 0
