"""The hub slows Gradio's idle queue polling (demo.server.calm_queue), and says so if Gradio changes."""
import gradio as gr
import pytest

from demo import server


def queued_blocks() -> gr.Blocks:
    with gr.Blocks() as blocks:
        gr.Textbox()
    blocks.queue()
    return blocks


def test_calm_queue_sets_the_polling_intervals():
    blocks = queued_blocks()
    assert blocks._queue.sleep_when_free < server.QUEUE_POLL_S  # Gradio's own default: every 1 ms
    server.calm_queue(blocks)
    assert blocks._queue.sleep_when_free == server.QUEUE_POLL_S
    assert blocks._queue.progress_update_sleep_when_free == server.PROGRESS_POLL_S


def test_a_gradio_without_those_attributes_is_a_clear_error():
    blocks = queued_blocks()
    del blocks._queue.sleep_when_free
    with pytest.raises(RuntimeError, match="gradio's queue has no sleep_when_free"):
        server.calm_queue(blocks)
