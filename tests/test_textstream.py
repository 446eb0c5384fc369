from demo.textstream import IncrementalDecoder, StopStringFilter
from tests.fakes import ByteTokenizer


def stream(tokenizer, ids):
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add([i]) for i in ids]
    return pieces + [decoder.flush()]


def test_pieces_join_to_full_decode_without_replacement_chars():
    text = "naïve 你好，世界! 日本語のテキスト ∑x² — done"
    pieces = stream(ByteTokenizer(), list(text.encode()))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_a_character_cut_off_at_the_end_is_dropped_not_shown_as_replacement():
    ids = list("ab你".encode())[:-1]
    assert "".join(stream(ByteTokenizer(), ids)) == "ab"


def test_partial_stop_string_is_held_back_and_never_shown():
    f = StopStringFilter(["</answer>"])
    shown = [f.feed(t) for t in ["The", " end</", "ans", "wer> tail"]]
    assert shown == ["The", " end", "", ""]
    assert f.matched == "</answer>"
    assert f.flush() == ""


def test_held_back_text_that_turns_out_harmless_is_released():
    f = StopStringFilter(["</answer>"])
    assert f.feed("a </an") == "a "
    assert f.feed("d b") == "</and b"
    assert f.flush() == ""
    f2 = StopStringFilter(["###"])
    assert f2.feed("x#") == "x"
    assert f2.flush() == "#"


def test_earliest_of_several_stop_strings_wins():
    f = StopStringFilter(["\nUser:", "END"])
    assert f.feed("one END two\nUser: x") == "one "
    assert f.matched == "END"
