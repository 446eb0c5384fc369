"""A tokenizer that is the checkpoint's own sentencepiece model, so ids are exactly upstream's `sp.encode`.

ChatGLM3, Baichuan2 and Yi ship a `tokenizer.model` and no `tokenizer.json`; transformers 5 converts such
files into a fast tokenizer that differs from sentencepiece (Baichuan2 merges ordered by id, a Metaspace
prefix Yi's model does not have), so these families encode with sentencepiece itself.

Control pieces, and user-defined pieces spelled like markers (`<reserved_106>`, `<|im_end|>`), are special
tokens. Sentencepiece always matches user-defined pieces inside text, so text is encoded with those
spellings broken up: what a person typed stays text.
"""
from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from transformers import AddedToken
from transformers.tokenization_python import PreTrainedTokenizer

MARKER = re.compile(r"^<[^<>\s]+>$")
USER_DEFINED = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED


class SentencePieceTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, extra_special_pieces: tuple[str, ...] = (), **kwargs):
        self.vocab_file = str(vocab_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.vocab_file)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(vocab_file).read_bytes())
        size = self.sp.get_piece_size()
        self.extra = list(extra_special_pieces)  # ChatGLM3: specials numbered after the sp vocabulary
        markers = {i: p.piece for i, p in enumerate(proto.pieces)
                   if self.sp.is_control(i) or (p.type == USER_DEFINED and MARKER.match(p.piece))}
        markers.update({size + i: piece for i, piece in enumerate(self.extra)})
        self.user_markers = [p.piece for p in proto.pieces if p.type == USER_DEFINED and MARKER.match(p.piece)]
        self._added_tokens_decoder = {i: AddedToken(p, special=True, normalized=False) for i, p in markers.items()}
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + len(self.extra)

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        vocab.update({p: self.sp.get_piece_size() + i for i, p in enumerate(self.extra)})
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self.sp.id_to_piece(i) for i in self.encode_text(text)]

    def encode_text(self, text: str) -> list[int]:
        """sentencepiece ids of `text` as text: a typed marker spelling is not turned into its piece."""
        for marker in self.user_markers:
            if marker in text:
                return [i for part in re.split(f"({re.escape(marker)})", text) if part
                        for i in (self._split_marker(part) if part == marker else self.encode_text(part))]
        return self.sp.encode(text)

    def _split_marker(self, marker: str) -> list[int]:
        return self.sp.encode(marker[:1]) + self.encode_text(marker[1:])

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.extra:
            return self.sp.get_piece_size() + self.extra.index(token)
        return self.sp.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if index >= self.sp.get_piece_size():
            extra = index - self.sp.get_piece_size()
            return self.extra[extra] if extra < len(self.extra) else ""  # padding rows of the embedding
        return self.sp.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Runs of pieces through sentencepiece (bytes, spaces), special tokens as written."""
        out, run = [], []
        for token in tokens:
            if token in self._added_tokens_encoder:
                out.append(self.sp.decode_pieces(run) if run else "")
                out.append(token)
                run = []
            else:
                run.append(token)
        out.append(self.sp.decode_pieces(run) if run else "")
        return "".join(out)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        target = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        if Path(self.vocab_file).resolve() != target.resolve():
            target.write_bytes(Path(self.vocab_file).read_bytes())
        return (str(target),)


def load_sentencepiece(folder: Path, extra_special_pieces=(), **special) -> SentencePieceTokenizer:
    """The tokenizer of `folder/tokenizer.model`; a clear error naming the file when it is missing or bad."""
    from .errors import AdapterError

    path = Path(folder) / "tokenizer.model"
    if not path.is_file():
        raise AdapterError(f"{path}: missing tokenizer file (this family's tokenizer is its tokenizer.model)")
    try:
        return SentencePieceTokenizer(str(path), tuple(extra_special_pieces), **special)
    except Exception as e:  # sentencepiece raises RuntimeError, protobuf DecodeError
        raise AdapterError(f"{path}: not a readable sentencepiece model: {e}") from None
