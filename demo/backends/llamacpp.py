"""The llama.cpp engine: a GGUF file kept quantized, every request of a model decoded together.

One llama.cpp context per loaded model, shared by all its requests: each request is one sequence id in it,
and one decode loop (a thread) puts the next token of every running sequence, and the prompt of a newly
admitted one, into a single `llama_batch` per step (llama.cpp's low-level batch API). A finished
sequence's cells are removed from the shared KV cache (`llama_memory_seq_rm`) and its id goes back to
the free list.

The prompt ids are the family adapter's (those of `prompt --json`); llama.cpp's own tokenizer and chat
template are not used. Sampling (temperature, top-k, top-p, repetition penalty, seed; argmax when
greedy) runs here on the step's logits, with the request's logits processors applied first; a request that
asks for logprobs gets them from the same logits (demo/logprobs.py).
The loop speaks the engine's producer protocol (demo.engine.stream_tokens): the engine turns the ids into
text, holds back stop strings, counts stats and enforces cancel and timeouts.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..logprobs import distribution, token_entry
from ..stream import LLAMA_CPP, CancelToken, Capabilities, Chunk, Prompt

log = logging.getLogger(__name__)

MAX_SEQUENCES = 4  # requests decoded together; more wait in the loop's queue
MAX_BATCH_TOKENS = 512  # tokens per llama_decode call (a long prompt is fed in pieces of this size)
# KV cells of each sequence (its prompt and reply), unless the registry's context_length is smaller.
# Memory, not speed, sets it: the cache takes ~12 KiB a cell on the default model (q8_0), for every
# cell of every sequence, from the load on.
DEFAULT_CONTEXT = int(os.environ.get("HUB_LLAMA_CONTEXT") or 1024)
IDLE_EXIT_S = 2.0  # the loop's thread ends after this long without work (a new request starts it again)
_CLOSE = object()
_backend_lock = threading.Lock()
_backend_ready = False


class LlamaCppError(RuntimeError):
    pass


def _llama():
    """The llama_cpp module, with its backend initialised once per process."""
    global _backend_ready
    import llama_cpp

    with _backend_lock:
        if not _backend_ready:
            # llama-cpp-python routes llama.cpp's log to stderr at every level until told otherwise
            chatter = logging.getLogger("llama-cpp-python")
            if chatter.level == logging.NOTSET:
                chatter.setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def default_threads() -> int:
    return int(os.environ.get("HUB_LLAMA_THREADS") or len(os.sched_getaffinity(0)))


@dataclass
class LlamaSettings:
    seq_ctx: int = DEFAULT_CONTEXT  # cells of one sequence
    n_seq_max: int = MAX_SEQUENCES
    n_batch: int = MAX_BATCH_TOKENS
    n_threads: int = field(default_factory=default_threads)
    kv_type: str = "q8_0"  # half of f16's bytes; with flash attention llama.cpp reads it directly

    @property
    def n_ctx(self) -> int:
        return self.seq_ctx * self.n_seq_max


class LlamaModel:
    """A GGUF file loaded by llama.cpp (memory-mapped, quantized as on disk) and one context for it."""

    def __init__(self, path: Path, settings: LlamaSettings):
        lib = _llama()
        self.lib, self.path, self.settings = lib, path, settings
        mparams = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {path}")
        try:
            self.vocab = lib.llama_model_get_vocab(self.model)
            self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
            self.ctx = self._context(settings)
        except BaseException:
            lib.llama_model_free(self.model)
            raise
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(settings.n_batch, 0, 1)

    def _context(self, s: LlamaSettings):
        lib = self.lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = s.n_ctx, s.n_batch, s.n_batch
        cparams.n_seq_max = s.n_seq_max
        cparams.n_threads = cparams.n_threads_batch = s.n_threads
        # One KV stream per sequence, not one unified pool: a sequence's cells then sit where they would if
        # it ran alone, so its reply does not depend on who else is decoding (measured: with a unified
        # pool, two of four concurrent greedy replies differed from their replies alone).
        cparams.kv_unified = False
        cparams.type_k = cparams.type_v = getattr(lib, f"GGML_TYPE_{s.kv_type.upper()}")
        # Flash attention skips other sequences' cells and sums a sequence's own in order, so a reply does not
        # depend on where its cells sit in the shared cache, nor on who else is decoding (and it is faster).
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.no_perf = True
        ctx = lib.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise LlamaCppError(f"llama.cpp could not create a context of {s.n_ctx} tokens for {self.path}")
        return ctx

    def context_bytes(self) -> int:
        """The KV cache's bytes (keys and values for every cell of every layer)."""
        lib, model = self.lib, self.model
        head_dim = lib.llama_model_n_embd(model) // max(1, lib.llama_model_n_head(model))
        per_cell = lib.llama_model_n_layer(model) * 2 * head_dim * lib.llama_model_n_head_kv(model) * 2
        return int(self.settings.n_ctx * per_cell * (1.0625 / 2 if self.settings.kv_type == "q8_0" else 1))

    def model_bytes(self) -> int:
        return int(self.lib.llama_model_size(self.model))

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries (at most n_batch)."""
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i] = token, pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise LlamaCppError("llama_decode: no room left in the context (KV cache full)" if status == 1
                                else f"llama_decode failed with status {status}")

    def logits(self, index: int) -> np.ndarray:
        """The logits of the `index`-th entry of the last batch, copied (the buffer is reused next step)."""
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def forget(self, seq: int) -> None:
        """Free every KV cell of sequence `seq`."""
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def free(self) -> None:
        lib = self.lib
        if getattr(self, "ctx", None):
            lib.llama_batch_free(self.batch)
            lib.llama_free(self.ctx)
            lib.llama_model_free(self.model)
            self.ctx = self.model = None


# -- sampling ----------------------------------------------------------------------------------------
class Sampler:
    """Next-token choice as transformers' generate() makes it: repetition penalty, temperature, top-k,
    top-p, then a draw from the request's own generator (seeded when `seed` is given); argmax when greedy."""

    def __init__(self, params, processors=()):
        self.greedy = params.greedy or params.temperature == 0
        self.temperature, self.top_p, self.top_k = params.temperature, params.top_p, params.top_k
        self.penalty = params.repetition_penalty
        self.processors = list(processors)
        self.rng = np.random.default_rng(params.seed)
        self.top = params.logprobs  # None: no logprobs wanted
        self.step: np.ndarray | None = None  # the last call's log-softmax, when logprobs are wanted

    def __call__(self, logits: np.ndarray, ids: list[int]) -> int:
        for processor in self.processors:
            logits = np.asarray(processor(ids, logits), dtype=np.float32)
        if self.top is not None:  # demo/logprobs.py: after a grammar's mask, before penalty and temperature
            self.step = distribution(logits)
        if self.penalty != 1.0 and ids:
            seen = np.unique(np.asarray(ids, dtype=np.int64))
            scores = logits[seen]
            logits[seen] = np.where(scores < 0, scores * self.penalty, scores / self.penalty)
        if self.greedy:
            return int(np.argmax(logits))
        logits = logits / self.temperature
        if 0 < self.top_k < logits.size:
            candidates = np.argpartition(logits, -self.top_k)[-self.top_k:]
        else:
            candidates = np.arange(logits.size)
        scores = logits[candidates]
        order = np.argsort(-scores, kind="stable")
        candidates, scores = candidates[order], scores[order]
        probs = np.exp(scores - scores[0])
        probs /= probs.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p) + 1)  # the smallest set reaching top_p
            candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
        return int(candidates[self.rng.choice(len(probs), p=probs)])


# -- the decode loop ---------------------------------------------------------------------------------
class _Sequence:
    """One request in the shared context."""

    def __init__(self, request, seq: int, sampler: Sampler):
        self.request, self.seq, self.sampler = request, seq, sampler
        self.ids = list(request.input_ids)  # prompt and output: what the repetition penalty sees
        self.fed = 0  # prompt ids already in the cache
        self.new = 0
        self.next_token: int | None = None  # sampled, not yet in the cache
        self.stop_ids = set(request.stop_ids)

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.request.input_ids)


def _cells(request) -> int:
    return len(request.input_ids) + request.params.max_new_tokens


class DecodeLoop:
    """The model's decode loop; `submit` is thread-safe, the rest runs on the loop's thread."""

    def __init__(self, model: LlamaModel):
        self.model = model
        self.pending: queue.Queue = queue.Queue()
        self.waiting: deque = deque()  # taken from `pending`, not yet admitted (no free sequence or cells)
        self.active: list[_Sequence] = []
        self.free_seqs = list(range(model.settings.n_seq_max))
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.closed = False

    def submit(self, request) -> None:
        if self.closed:
            request.finish(LlamaCppError("the model was unloaded"))
            return
        self.pending.put(request)
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
                self._thread.start()

    def close(self, wait_s: float = 5.0) -> bool:
        """End the loop (every running request ends with an error); True once its thread has ended."""
        self.closed = True
        self.pending.put(_CLOSE)
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(wait_s)
        return thread is None or not thread.is_alive()

    def _run(self) -> None:
        while True:
            if not self._admit():
                with self._start_lock:
                    if self.pending.empty() or self.closed:
                        self._thread = None
                        if self.closed:
                            self._fail_all(LlamaCppError("the model was unloaded"))
                        return
                continue
            try:
                self._step()
            except Exception as e:  # ends every reply in this batch with an error, not the loop
                log.exception("llama.cpp decode step failed")
                self._fail_all(e)

    def _admit(self) -> bool:
        """Take waiting requests into free sequence ids; False when idle for IDLE_EXIT_S or closed."""
        if not self._collect():
            return False
        while self.waiting and self.free_seqs:
            request = self.waiting[0]
            if request.stopped():
                self.waiting.popleft().finish()
                continue
            need = _cells(request)
            if need > self.model.settings.seq_ctx:
                self.waiting.popleft().finish(LlamaCppError(
                    f"the prompt ({len(request.input_ids)} tokens) and reply budget "
                    f"({request.params.max_new_tokens}) do not fit the llama.cpp context "
                    f"({self.model.settings.seq_ctx} tokens a request)"))
                continue
            self.waiting.popleft()
            request.admitted()
            self.active.append(_Sequence(request, self.free_seqs.pop(0),
                                         Sampler(request.params, request.logits_processors)))
        return bool(self.active)

    def _collect(self) -> bool:
        """Move new requests from the queue to `waiting`, blocking while there is nothing to do."""
        block = not self.active and not self.waiting
        while True:
            try:
                request = self.pending.get(timeout=IDLE_EXIT_S) if block else self.pending.get_nowait()
            except queue.Empty:
                return bool(self.active or self.waiting)
            if request is _CLOSE:
                return False
            self.waiting.append(request)
            block = False

    def _step(self) -> None:
        self._drop_finished()
        if not self.active:
            return
        entries, outputs = self._batch()
        self.model.decode(entries)
        for index, sequence in outputs:
            try:
                self._take(sequence, self.model.logits(index))
            except Exception as e:  # this request's sampling failed (e.g. its grammar): end it, keep the others
                log.exception("llama.cpp sampling failed for one sequence")
                self._end(sequence, e)

    def _batch(self) -> tuple[list, list]:
        """This step's batch: every decoding sequence's next token first, then prompt pieces that fit."""
        entries, outputs = [], []
        room = self.model.settings.n_batch
        for s in self.active:
            if not s.prefilling:
                outputs.append((len(entries), s))
                entries.append((s.next_token, len(s.ids) - 1, s.seq, True))
        room -= len(entries)
        for s in self.active:
            if s.prefilling and room > 0:
                prompt = s.request.input_ids
                piece = prompt[s.fed:s.fed + room]
                for k, token in enumerate(piece):
                    last = s.fed + k == len(prompt) - 1
                    if last:
                        outputs.append((len(entries), s))
                    entries.append((token, s.fed + k, s.seq, last))
                s.fed += len(piece)
                room -= len(piece)
        return entries, outputs

    def _take(self, s: _Sequence, logits: np.ndarray) -> None:
        if s.request.stopped():
            self._end(s)
            return
        token = s.sampler(logits, s.ids)
        s.ids.append(token)
        s.new += 1
        s.next_token = token
        sampler = s.sampler
        s.request.deliver([token], None if sampler.top is None else [token_entry(sampler.step, token, sampler.top)])
        if token in s.stop_ids or s.new >= s.request.params.max_new_tokens:
            self._end(s)

    def _drop_finished(self) -> None:
        for s in list(self.active):
            if s.request.stopped():
                self._end(s)

    def _end(self, s: _Sequence, error: BaseException | None = None) -> None:
        if s not in self.active:
            return
        self.active.remove(s)
        self.model.forget(s.seq)
        self.free_seqs.append(s.seq)
        self.free_seqs.sort()
        s.request.finish(error)

    def _fail_all(self, error: BaseException) -> None:
        for s in list(self.active):
            self._end(s, error)
        while self.waiting:
            self.waiting.popleft().finish(error)
        while True:
            try:
                request = self.pending.get_nowait()
            except queue.Empty:
                return
            if request is not _CLOSE:
                request.finish(error)


# -- the backend ---------------------------------------------------------------------------------------
class LlamaCppBackend:
    """demo.stream.Backend for a GGUF file on llama.cpp."""

    name = LLAMA_CPP
    capabilities = Capabilities(batching=True, exact_prompt_ids=True, logits_processors=True)

    def __init__(self, model: LlamaModel):
        self.model = model
        self.loop = DecodeLoop(model)
        self._loaded = lambda: None

    def serve(self, loaded) -> None:
        """The LoadedModel (tokenizer, adapter, limits) whose requests this backend streams; held weakly,
        as it holds this backend."""
        self._loaded = weakref.ref(loaded)

    @property
    def decode_plan(self) -> str:
        s = self.model.settings
        from adapters.quant import gguf_type

        return (f"llama.cpp, {gguf_type(Path(self.model.path).name)} quantized in memory, {s.n_threads} "
                f"threads, up to {s.n_seq_max} sequences in one batch, {s.seq_ctx} tokens each, {s.kv_type} KV cache")

    def memory_bytes(self) -> int:
        if self.model.ctx is None:
            return 0
        return self.model.model_bytes() + self.model.context_bytes()

    def unload(self) -> None:
        if self.loop.close(wait_s=30.0):
            self.model.free()
        else:  # a decode step that does not return: better to keep its memory than to free it under it
            log.warning("the llama.cpp decode loop of %s did not end; its context is not freed", self.model.path)

    def stream(self, prompt: Prompt, params, cancel: CancelToken, stall_timeout_s: float = 120.0,
               timeout_s: float | None = None) -> Iterator[Chunk]:
        from ..engine import stream_tokens

        loaded = self._loaded()
        if loaded is None:
            raise LlamaCppError("the model was unloaded")
        return stream_tokens(loaded, prompt, params, cancel, self.loop, stall_timeout_s, timeout_s)


def load_gguf(entry, weights, adapter, started: float, defaults, wanted_context: int | None):
    """A LoadedModel for a GGUF entry on llama.cpp: the family adapter's tokenizer builds the prompt ids,
    llama.cpp holds the quantized weights. `defaults` and `wanted_context` are the loader's, as for any entry."""
    import re
    from dataclasses import replace

    from adapters.quant import gguf_type

    from ..loaded import LoadedModel

    from . import llama_cpp_status

    usable, reason = llama_cpp_status()
    if not usable:
        raise LlamaCppError(reason.replace("; GGUF entries run on transformers", "; use `engine: transformers`"))
    if not weights.local:
        raise LlamaCppError(f"{weights.location} is not downloaded; llama.cpp reads a local GGUF file")
    tokenizer = gguf_tokenizer(adapter, weights)
    wanted = wanted_context or DEFAULT_CONTEXT
    settings = LlamaSettings(seq_ctx=min(wanted, DEFAULT_CONTEXT))
    model = LlamaModel(Path(weights.location) / weights.gguf_file, settings)
    backend = LlamaCppBackend(model)
    kind = gguf_type(weights.gguf_file)
    bits = re.search(r"\d+", kind or "")
    loaded = LoadedModel(
        id=entry.id, model=None, tokenizer=tokenizer, adapter=adapter,
        defaults=defaults, context_length=settings.seq_ctx,
        load_seconds=time.perf_counter() - started,
        quant=replace(weights.quant, detail=f"{kind} file, kept quantized in memory by llama.cpp"),
        bits=int(bits.group()) if bits else None, engine_backend=backend,
        system_prompt=entry.system_prompt)
    backend.serve(loaded)
    return loaded


def gguf_tokenizer(adapter, weights):
    """The adapter's tokenizer for a GGUF file, converted once and cached as a tokenizer folder.

    transformers builds a GGUF's tokenizer from the file's vocabulary and merges in Python (20-30 s for
    SmolLM2 on 2 cores), which would be most of every load; the saved folder loads in a fraction of a second.
    The cache key is the file's path, size and modification time, and the transformers version."""
    import hashlib

    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    path = Path(weights.location) / weights.gguf_file
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}|"
                         f"{type(adapter).__name__}".encode()).hexdigest()[:24]
    folder = tokenizer_cache() / key
    if (folder / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(folder)
        except Exception:  # a damaged cache entry: convert again
            log.warning("the cached tokenizer in %s does not load; converting %s again", folder, path.name)
    tokenizer = adapter.load_tokenizer(weights)
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        partial = folder.with_name(f"{key}.{os.getpid()}.partial")
        try:
            tokenizer.save_pretrained(partial)
            os.replace(partial, folder)  # whole or not at all; another process may have won the race
        except OSError as e:  # a read-only cache only costs speed
            log.warning("could not cache the tokenizer of %s: %s", path.name, e)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


def tokenizer_cache() -> Path:
    return Path(os.environ.get("HUB_CACHE") or Path.home() / ".cache" / "demo-hub") / "gguf-tokenizers"
