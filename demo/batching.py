"""Continuous batching: one decode loop per model that serves every request of that model at once.

A request is prefilled alone (so its first token is exactly what `generate` computes), then its KV cache
joins the batch, left-padded to the batch's length. Every step feeds one token per active request through
a single forward pass: on a memory-bound CPU (and on a GPU) a batch of 4 costs little more than a batch of
1. Requests join and leave between steps; a finished row is cut out of the cache, and columns that are
padding in every remaining row are trimmed, so a request that ends up alone runs unpadded again.

Each request keeps its own sampling (temperature, top_p, top_k, repetition penalty, seed), logits
processors (a grammar, demo/structured.py), stop ids and cancel. The loop also replaces `generate()` for a
single stream: it skips generate's per-step bookkeeping, and for Llama-shaped models each step runs the
checked lean step of `demo.fastdecode`.
"""
from __future__ import annotations

import atexit
import inspect
import logging
import queue
import threading
import weakref
from dataclasses import dataclass

import torch

from .decodeplan import LinearPlan
from .fastdecode import LeanDecode
from .logprobs import distribution, token_entry
from .memory import model_bytes, trim_c_heap
from .prepack import KERNELS, Packing
from .rounding import heavy_tailed, within_rounding

log = logging.getLogger(__name__)

MAX_BATCH = 8
IDLE_EXIT_S = 2.0  # the loop's thread ends after this long without work; the next request restarts it
_CLOSE = object()  # put in the queue by close(): end the thread once the batch is empty
_RUNNING: "weakref.WeakSet[BatchedDecoder]" = weakref.WeakSet()


ROWWISE = "hub_rowwise_sdpa"  # the attention implementation a batched model runs with


def can_batch(model) -> bool:
    """Whether `model` is an SDPA decoder whose every cache layer is a plain, growing key/value pair."""
    try:
        from transformers import DynamicCache, PreTrainedModel
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    if not isinstance(model, PreTrainedModel) or getattr(model.config, "is_encoder_decoder", False):
        return False
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", ROWWISE):
        return False
    try:
        if "past_key_values" not in inspect.signature(model.forward).parameters:
            return False
    except (TypeError, ValueError):
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a cache this loop does not know how to pad and cut
        return False
    # Sliding-window, linear-attention or recurrent layers would need their own padding rules.
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def rowwise_attention(model) -> None:
    """Switch `model` to SDPA run row by row over each row's own, unpadded keys, when the loop asks for it.

    Padding changes SDPA's summation order, so a padded row's logits would drift from what `generate`
    computes for it alone and greedy outputs could differ. Without `row_lengths` (prefill, generate()) the
    function is plain SDPA, so nothing else changes.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module, query, key, value, attention_mask, *args, row_lengths=None, **kwargs):
        if row_lengths is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        width = key.shape[2]
        rows = [sdpa_attention_forward(module, query[b:b + 1], key[b:b + 1, :, width - n:],
                                       value[b:b + 1, :, width - n:], None, *args, **kwargs)[0]
                for b, n in enumerate(row_lengths)]
        return torch.cat(rows, dim=0), None

    AttentionInterface.register(ROWWISE, attention)
    AttentionMaskInterface.register(ROWWISE, sdpa_mask)
    if model.config._attn_implementation != ROWWISE:
        model.set_attn_implementation(ROWWISE)


def row_consistent_linears(model, max_batch: int, extra=(), packing: Packing | None = None) -> dict:
    """Make every Linear give each row of a batch exactly what it gives that row alone; returns the plan of
    each Linear ({Linear: LinearPlan}), which the lean step (demo.fastdecode) reads.

    BLAS kernels pick their kernel by the number of rows, so a batch can round differently from 1 row
    (here: bf16 down_proj, 1536 inputs). Each distinct Linear shape is probed once; where a batch
    disagrees, the layer runs in chunks of the largest row count that agrees (prefill and a single stream
    never split).

    Such a layer is also probed for whether, from two rows on, a row gets the same bits in any batch
    (`paired`; here oneDNN's multi-row kernels do). The lean step then runs it whole, a single row as
    two (`whole`): batch-invariant, but not the one-row kernel's bits.
    """
    groups: dict = {}
    for module in dict.fromkeys([*model.modules(), *extra]):
        if type(module) is torch.nn.Linear:
            # one kernel, one probe: a packed q_proj runs the fused q/k/v matrix (demo.prepack), so the
            # packed shape is part of the key, and o_proj (the same in/out as q_proj) gets its own probe
            group = packing.group_of(module) if packing is not None else None
            key = (module.in_features, module.out_features, module.weight.dtype, group.shape if group else None)
            groups.setdefault(key, []).append(module)
    plans = {}
    for modules in groups.values():
        chunk = _agreeing_rows(modules[0], max_batch)
        paired = chunk < max_batch and _rows_agree_from_two(modules[0], max_batch)
        for module in modules:
            whole = None
            if chunk < max_batch:
                whole = module.forward
                module.forward = _in_chunks(module.forward, chunk)
            plans[module] = LinearPlan(chunk, paired, whole)
    return plans


def split_shapes(plans: dict, max_batch: int) -> dict:
    """{(in, out): rows} of the Linears that run in chunks of fewer rows than the loop's batch."""
    return {(m.in_features, m.out_features): p.rows for m, p in plans.items() if p.rows < max_batch}


@torch.inference_mode()
def _agreeing_rows(linear: torch.nn.Linear, max_batch: int, trials: int = 8) -> int:
    """The largest row count whose every chunk matches row-by-row results, on heavy-tailed inputs
    (a wide range of magnitudes makes any change in summation order show up in the rounding).

    A wide layer compares many outputs per trial, so it needs fewer trials: a vocabulary projection
    (49,152 outputs a row) gets 2, which keeps its probe to a tenth of a second."""
    agreeing = max_batch
    for x in _probe_batches(linear, max_batch, trials, seed=0):
        # forward(), not __call__: a probe is no real step, so the module's hooks must not see it
        alone = torch.cat([linear.forward(x[i:i + 1]) for i in range(max_batch)])
        for rows in range(2, agreeing + 1):  # every first-`rows` batch against the same rows alone
            if not torch.equal(linear.forward(x[:rows]), alone[:rows]):
                agreeing = rows - 1
                break
        if agreeing == 1:
            break
    return agreeing


@torch.inference_mode()
def _rows_agree_from_two(linear: torch.nn.Linear, max_batch: int, trials: int = 8) -> bool:
    """Whether every row of a 2..max_batch-row call gets the bits it gets in a 2-row call beside another
    row (a kernel for two rows or more that computes each row on its own), and values within rounding of
    the one-row kernel's."""
    for x in _probe_batches(linear, max_batch, trials, seed=1):
        paired = torch.cat([linear.forward(x[[i, (i + 1) % max_batch]])[:1] for i in range(max_batch)])
        if any(not torch.equal(linear.forward(x[:rows]), paired[:rows]) for rows in range(2, max_batch + 1)):
            return False
        if not within_rounding(paired, torch.cat([linear.forward(x[i:i + 1]) for i in range(max_batch)]),
                               terms=linear.in_features):
            return False
    return True


def _probe_batches(linear: torch.nn.Linear, max_batch: int, trials: int, seed: int):
    """`trials` heavy-tailed inputs [max_batch, 1, in] for `linear`, fewer for a wide layer (see _agreeing_rows)."""
    weight = linear.weight
    device = "cpu" if weight.is_meta else weight.device  # a packed Linear's plain weight is freed (demo.prepack)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(max(2, min(trials, -(-trials * 4096 // linear.out_features)))):
        yield heavy_tailed((max_batch, 1, linear.in_features), generator).to(device, weight.dtype)


def _in_chunks(forward, rows: int):
    def run(x, *args, **kwargs):
        if x.dim() < 3 or x.shape[0] <= rows:
            return forward(x, *args, **kwargs)
        return torch.cat([forward(part, *args, **kwargs) for part in x.split(rows)])
    return run


@dataclass
class _Slot:
    request: object  # the engine's _Run: input_ids, params, stop_ids, logits_processors, stopped(), deliver(), finish()
    history: torch.Tensor  # prompt + generated ids, [1, n], for the repetition penalty
    processors: list
    generator: torch.Generator | None
    position: int = 0  # position id of the next token fed to the model
    next_token: int = 0
    generated: int = 0
    done: bool = False


class BatchedDecoder:
    """The decode loop of one model; `submit` is thread-safe, everything else runs on the loop's thread."""

    def __init__(self, model, max_batch: int = MAX_BATCH, lean: bool = True, prepack: bool = True,
                 exact: bool = False, exact_packing: bool = True, prefill_model=None, prefill_together: bool = False,
                 kernel: str = "oneDNN"):
        """`lean`, `prepack` and `exact` as the decode plan says (demo.decodeplan); `exact_packing`: pack only
        where the packed products are bitwise F.linear's (else within rounding, for a float32 plan);
        `prefill_model`: a copy of the model in another dtype that prefills (float32 on a CPU without bf16
        kernels), whose cache is then held in the decode model's dtype; `prefill_together`: the prompts waiting
        at a step are prefilled in one call (a batch job's plan), not one by one; `kernel`: what packed
        projections run on (demo.prepack.KERNELS)."""
        self.model, self.max_batch, self.prefill_model = model, max_batch, prefill_model
        self.prefill_together = prefill_together
        rowwise_attention(model)
        step = LeanDecode.fuse(model, exact) if lean else None
        self.packing = Packing(exact_packing, KERNELS[kernel])
        if step is not None and prepack:
            step.prepack(self.packing)
        if self.packed:
            trim_c_heap()  # the plain weights just freed go back to the system
        self.linears = row_consistent_linears(model, max_batch, step.linears() if step else (), self.packing)
        self.split_linears = split_shapes(self.linears, max_batch)
        if step is not None:
            step.linear_plans = self.linears
        self.lean = step if step is not None and step.checked() else None
        self.pending: queue.Queue = queue.Queue()
        self.active: list[_Slot] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # [batch, cache length]: 1 real token, 0 left padding
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._exiting = False

    @property
    def packed(self) -> int:
        return len(self.packing)

    def extra_bytes(self) -> int:
        """Memory the loop holds beside the model's own tensors: the prefill copy's weights."""
        return model_bytes(self.prefill_model) if self.prefill_model is not None else 0

    def restore_stock(self) -> None:
        """Stock Linears again (plain weights, their own forward), for PEFT: call once the loop is closed."""
        self.packing.unpack()
        self.prefill_model = None  # generate() prefills with the model itself
        for module, plan in self.linears.items():
            if plan.whole is not None:
                module.__dict__.pop("forward", None)
        self.linears, self.lean = {}, None

    def submit(self, request) -> None:
        self.pending.put(request)
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="batched-decode", daemon=True)
                self._thread.start()
                _RUNNING.add(self)

    def close(self, wait_s: float = 0.0) -> None:
        """Let the loop's thread end as soon as its batch is empty, so an unloaded model can be freed."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.pending.put(_CLOSE)
            thread.join(wait_s)

    def _exit(self, wait_s: float) -> None:
        """At interpreter exit: end every row now and join the thread (see `_end_loops_at_exit`)."""
        self._exiting = True
        self.close(wait_s)

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if self._exiting:
                self._fail_all(RuntimeError("the process is exiting"))
                return
            if not self._admit():
                with self._start_lock:  # no work for a while: end, unless a request just arrived
                    if self.pending.empty():
                        self._thread = None
                        return
                continue
            if self.active:
                try:
                    self._step()
                except Exception as e:  # ends every reply in this batch with an error, not the loop
                    log.exception("batched decode step failed")
                    self._fail_all(e)

    def _admit(self) -> bool:
        """Prefill waiting requests into free rows; False when idle for IDLE_EXIT_S."""
        waited, together = False, []
        while len(self.active) + len(together) < self.max_batch:
            try:
                block = not self.active and not waited
                request = self.pending.get(timeout=IDLE_EXIT_S) if block else self.pending.get_nowait()
            except queue.Empty:
                break
            waited = True
            if request is _CLOSE:
                if self.active or together:
                    continue
                return False
            if request.stopped():
                request.finish()
                continue
            if self.prefill_together:
                together.append(request)
                continue
            try:
                self._prefill(request)
            except Exception as e:
                log.exception("prefill failed")
                request.finish(e)
        if together:
            try:
                self._prefill_together(together)
            except Exception as e:
                log.exception("prefill failed")
                for request in together:
                    request.finish(e)
        return bool(self.active)

    @torch.inference_mode()
    def _prefill(self, request) -> None:
        from transformers import DynamicCache

        request.admitted()
        ids = torch.tensor([request.input_ids], device=self._device())
        cache = DynamicCache(config=self.model.config)
        out = (self.prefill_model or self.model)(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
        self._hold_in_decode_dtype(cache)
        slot = _Slot(request, ids, *sampling_of(request.params, self._device()), position=ids.shape[1])
        # The first token before the row joins: a request whose sampling fails never touches the batch.
        self._take(slot, out.logits[:, -1, :])
        self._merge(cache, torch.ones_like(ids))
        self.active.append(slot)

    @torch.inference_mode()
    def _prefill_together(self, requests: list) -> None:
        """Prefill several prompts in one call, left-padded to the longest (the rows' keys are right-aligned,
        as the shared cache holds them). Faster than one call each where more rows cost little more (float32
        on a CPU); a first token is then within rounding of its prompt's prefill alone, not bitwise."""
        from transformers import DynamicCache

        device, width = self._device(), max(len(r.input_ids) for r in requests)
        ids = torch.zeros(len(requests), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, request in enumerate(requests):
            request.admitted()
            n = len(request.input_ids)
            ids[row, width - n:] = torch.tensor(request.input_ids, device=device)
            mask[row, width - n:] = 1
        cache = DynamicCache(config=self.model.config)
        out = (self.prefill_model or self.model)(input_ids=ids, attention_mask=mask,
                                                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                                 past_key_values=cache, use_cache=True, logits_to_keep=1)
        self._hold_in_decode_dtype(cache)
        slots = []
        for row, request in enumerate(requests):
            n = len(request.input_ids)
            slot = _Slot(request, ids[row:row + 1, width - n:], *sampling_of(request.params, device), position=n)
            slots.append(slot)
            try:
                self._take(slot, out.logits[row:row + 1, -1, :])
            except Exception as e:  # this row's sampling failed: it ends at the next step, the others go on
                log.exception("sampling failed for one row")
                request.finish(e)
                slot.done = True
        self._merge(cache, mask)
        self.active.extend(slots)

    def _hold_in_decode_dtype(self, cache) -> None:
        """Keys and values of a prefill copy's cache in the decode dtype, as the decode steps add them."""
        if self.prefill_model is None:
            return
        dtype = self.model.get_input_embeddings().weight.dtype
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)

    @torch.inference_mode()
    def _step(self) -> None:
        self._drop_finished()
        if not self.active:
            return
        device = self._device()
        tokens = torch.tensor([[s.next_token] for s in self.active], device=device)
        positions = torch.tensor([[s.position] for s in self.active], device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.active), 1)], dim=1)
        # No attention mask: each row attends over its own real keys only (see rowwise_attention).
        lengths = [s.position + 1 for s in self.active]
        if self.lean is not None:
            logits = self.lean.step(tokens, positions, self.cache, lengths)
        else:
            logits = self.model(input_ids=tokens, position_ids=positions, past_key_values=self.cache,
                                use_cache=True, row_lengths=lengths).logits[:, -1, :]
        for row, slot in enumerate(self.active):
            slot.position += 1
            try:
                self._take(slot, logits[row:row + 1])
            except Exception as e:  # this row's sampling failed (e.g. NaN scores): end it, keep the others
                log.exception("sampling failed for one row")
                slot.request.finish(e)
                slot.done = True

    def _take(self, slot: _Slot, logits: torch.Tensor) -> None:
        """Pick the next token of one row from its logits, hand it over, and decide whether the row ends."""
        scores = logits.to(dtype=torch.float32)
        hub_processors = getattr(slot.request, "logits_processors", None)
        if hub_processors:  # the request's own (a grammar): first, as generate() puts them before its warpers
            row, ids = scores[0], slot.history[0].tolist()
            for fn in hub_processors:
                row = torch.as_tensor(fn(ids, row), dtype=torch.float32, device=row.device)
            scores = row.unsqueeze(0)
        top = slot.request.params.logprobs
        # logprobs (demo/logprobs.py): of the model's own scores, before the penalty, temperature, top-k, top-p
        step = distribution(scores[0]) if top is not None else None
        for processor in slot.processors:
            scores = processor(slot.history, scores)
        if not slot.processors.sample:
            token = int(scores.argmax(dim=-1))
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=slot.generator))
        slot.history = torch.cat([slot.history, slot.history.new_tensor([[token]])], dim=1)
        slot.next_token, slot.generated = token, slot.generated + 1
        slot.request.deliver([token], None if step is None else [token_entry(step, token, top)])
        request = slot.request
        if token in request.stop_ids or slot.generated >= request.params.max_new_tokens or request.stopped():
            slot.done = True

    # -- the shared cache ---------------------------------------------------------------------
    def _merge(self, cache, mask: torch.Tensor) -> None:
        """Append prefilled requests' cache (its rows' real tokens: `mask`, [rows, length]) as new rows,
        left-padding the shorter side."""
        length = mask.shape[1]
        if self.cache is None or not self.active:
            self.cache, self.mask = cache, mask
            return
        width = self.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat(_pad_left([mine.keys, theirs.keys], -2), dim=0)
            mine.values = torch.cat(_pad_left([mine.values, theirs.values], -2), dim=0)
        self.mask = torch.cat(_pad_left([self.mask, mask], -1), dim=0)
        assert self.mask.shape[1] == max(width, length)

    def _drop_finished(self) -> None:
        finished = [s for s in self.active if s.done or s.request.stopped()]
        if not finished:
            return
        for slot in finished:
            slot.request.finish()
        keep = [i for i, s in enumerate(self.active) if not (s.done or s.request.stopped())]
        self.active = [self.active[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self._device())
        self.mask = self.mask.index_select(0, index)
        start = int((self.mask.sum(dim=0) > 0).nonzero()[0])  # columns of padding in every row go
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _fail_all(self, error: Exception) -> None:
        for slot in self.active:
            slot.request.finish(error)
        self.active, self.cache, self.mask = [], None, None

    def _device(self):
        return next(self.model.parameters()).device


@atexit.register
def _end_loops_at_exit(wait_s: float = 10.0) -> None:
    """Join the loops' daemon threads before the interpreter finalizes.

    A daemon thread still inside torch (trimming the cache after the last reply) while the main
    thread tears down torch's static state makes the process abort with "terminate called without an
    active exception", so `python -m demo generate` would print its answer and still exit with 134.
    """
    for decoder in list(_RUNNING):
        decoder._exit(wait_s)


def _pad_left(tensors: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """Zero-pad each tensor at the start of `dim` to the longest length."""
    longest = max(t.shape[dim] for t in tensors)
    padded = []
    for t in tensors:
        missing = longest - t.shape[dim]
        if missing:
            shape = list(t.shape)
            shape[dim] = missing
            t = torch.cat([t.new_zeros(shape), t], dim=dim)
        padded.append(t)
    return padded


def sampling_of(params, device) -> tuple[list, torch.Generator | None]:
    """The logits processors of `generate` for these params, and a per-request seeded generator."""
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    kwargs = params.generate_kwargs()
    processors = []
    if kwargs.get("repetition_penalty") not in (None, 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(kwargs["repetition_penalty"]))
    if not kwargs["do_sample"]:
        return _Processors(processors, sample=False), None
    if kwargs.get("temperature") not in (None, 1.0):
        processors.append(TemperatureLogitsWarper(kwargs["temperature"]))
    if kwargs.get("top_k"):
        processors.append(TopKLogitsWarper(kwargs["top_k"]))
    if kwargs.get("top_p") is not None and kwargs["top_p"] < 1.0:
        processors.append(TopPLogitsWarper(kwargs["top_p"]))
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    return _Processors(processors, sample=True), generator


class _Processors(list):
    """A list of logits processors that also knows whether the row samples or takes the argmax."""

    def __init__(self, items, sample: bool):
        super().__init__(items)
        self.sample = sample
