"""Qwen1's tokenizer: its `qwen.tiktoken` through tiktoken, as upstream's QWenTokenizer does.

Ids are exactly upstream's: NFC, the Qwen split pattern, and special-token text encoded as plain text
(upstream `make_context` passes `allowed_special=set()`). Specials follow the ranks: `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>`, `<|extra_0|>` .. `<|extra_204|>` (151643.. on the real file).
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from transformers import AddedToken
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.tokenization_python import PreTrainedTokenizer

PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


class QwenTikTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "qwen.tiktoken"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, **kwargs):
        self.vocab_file = str(vocab_file)
        ranks = load_tiktoken_bpe(self.vocab_file)
        self.specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
        self.encoding = tiktoken.Encoding("Qwen", pat_str=PATTERN, mergeable_ranks=ranks,
                                          special_tokens=self.specials)
        self.id_to_token = {rank: "".join(BYTE_TO_CHAR[b] for b in piece) for piece, rank in ranks.items()}
        self.token_to_id = {t: i for i, t in self.id_to_token.items()}
        self._added_tokens_decoder = {i: AddedToken(s, special=True, normalized=False)
                                      for s, i in self.specials.items()}
        kwargs.setdefault("eos_token", "<|endoftext|>")
        kwargs.setdefault("pad_token", "<|endoftext|>")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token) + len(self.specials)

    def get_vocab(self) -> dict[str, int]:
        return {**self.token_to_id, **self.specials}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        ids = self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special=set(), disallowed_special=())
        return [self.id_to_token[i] for i in ids]

    def _convert_token_to_id(self, token: str) -> int | None:
        return self.token_to_id.get(token, self.specials.get(token))

    def _convert_id_to_token(self, index: int) -> str:
        return self.id_to_token.get(index, "")  # ids past the vocabulary: padding rows of the embedding

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytearray()
        for token in tokens:
            if token in self.specials:
                data += token.encode("utf-8")
            else:
                data += bytes(CHAR_TO_BYTE[c] for c in token)
        return data.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        target = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + "qwen.tiktoken")
        if Path(self.vocab_file).resolve() != target.resolve():
            target.write_bytes(Path(self.vocab_file).read_bytes())
        return (str(target),)


def load_qwen_tiktoken(folder: Path) -> QwenTikTokenizer:
    from .errors import AdapterError

    path = Path(folder) / "qwen.tiktoken"
    if not path.is_file():
        raise AdapterError(f"{path}: missing tokenizer file (Qwen1's tokenizer is its qwen.tiktoken)")
    try:
        return QwenTikTokenizer(str(path))
    except Exception as e:  # tiktoken raises ValueError / binascii errors on a damaged file
        raise AdapterError(f"{path}: not a readable tiktoken file: {e}") from None
