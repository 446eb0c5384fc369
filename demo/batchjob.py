"""Batch predictions: a file of prompts through the engine, many at once, journaled so that a kill loses
nothing already done.

The prompts go through the same engine as every other caller (`stream_chat`, or `stream_ids` for
`--raw`), submitted from `concurrency` threads at once: a local model's batched decode loop then serves
them together (one forward pass per step for all of them), and a remote engine gets that many streams.
Every finished record is appended to a JSON-lines journal beside the output and fsynced before the next
is taken, so `--resume` after any interruption (even kill -9) keeps every record written and runs only the
rest. When every line has its record, the output is written in input order and the journal removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .engine import CancelToken, stream_chat, stream_ids
from .limits import BUSY, capped
from .params import GenerationParams

BUSY_RETRIES = 60  # a full wait line (here or on a remote) is retried, this many times at most
BUSY_WAIT_S = 1.0


class BatchError(ValueError):
    """The job cannot start: an unreadable data file, a journal of another job, --raw on a remote model."""


@dataclass
class Item:
    """One line of the data file: what to send, or why it cannot be sent."""

    index: int  # position among the file's non-blank lines: the record's place in the output
    line: int  # line number in the file (1-based), for error messages
    input: object  # as read: the text of a plain line, the object of a JSON line, the raw text of a bad one
    messages: list[dict] | None = None
    text: str | None = None  # --raw: sent as is
    error: str | None = None


@dataclass
class Paths:
    out: Path
    journal: Path
    settings: Path

    @classmethod
    def beside(cls, out: str | Path) -> "Paths":
        out = Path(out)
        stem = out.name[:-5] if out.name.endswith(".json") else out.name
        return cls(out, out.with_name(stem + ".journal.jsonl"), out.with_name(stem + ".settings.json"))


# -- reading the data file ------------------------------------------------------------------------
def read_items(path: str | Path, raw: bool = False, fmt: str = "auto") -> list[Item]:
    """Blank lines are skipped; `fmt` auto is JSONL when the first non-blank line starts with '{'."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"{path}: cannot read the data file: {e}") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise BatchError(f"{path}: no prompts (the file is empty)")
    jsonl = fmt == "jsonl" or fmt == "auto" and numbered[0][1].lstrip().startswith("{")
    parse = _json_item if jsonl else _plain_item
    return [parse(index, n, line, raw) for index, (n, line) in enumerate(numbered)]


def _plain_item(index: int, n: int, line: str, raw: bool) -> Item:
    if raw:
        return Item(index, n, line, text=line)
    return Item(index, n, line, messages=[{"role": "user", "content": line}])


def _json_item(index: int, n: int, line: str, raw: bool) -> Item:
    try:
        data = json.loads(line)
    except ValueError as e:
        return Item(index, n, line, error=f"line {n}: not JSON: {e}")
    if not isinstance(data, dict) or len({"messages", "prompt"} & set(data)) != 1:
        return Item(index, n, data, error=f'line {n}: expected an object with "messages" or "prompt"')
    if "prompt" in data:
        if not isinstance(data["prompt"], str):
            return Item(index, n, data, error=f'line {n}: "prompt" must be text')
        return _plain_item(index, n, data["prompt"], raw) if raw else Item(
            index, n, data, messages=[{"role": "user", "content": data["prompt"]}])
    if raw:
        return Item(index, n, data, error=f'line {n}: --raw sends text as is; use "prompt", not "messages"')
    messages = data["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return Item(index, n, data, error=f'line {n}: "messages" must be a list of {{role, content}} objects')
    return Item(index, n, data, messages=messages)


# -- the journal ----------------------------------------------------------------------------------
class Journal:
    """Records as JSON lines, each flushed and fsynced; the first line describes the job it belongs to."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._lock = threading.Lock()

    def open(self, job: dict, resume: bool) -> dict[int, dict]:
        """Start the journal, or with `resume` reopen it: returns the records already written, by index."""
        done: dict[int, dict] = {}
        if self.path.exists() and not resume:
            raise BatchError(f"{self.path} holds an unfinished job: --resume continues it (delete the file "
                             "to start over)")
        if resume and self.path.exists():
            done = self._recover(job)
            self._file = open(self.path, "a", encoding="utf-8")
            return done
        self._file = open(self.path, "w", encoding="utf-8")
        self._append({"job": job})
        return done

    def _recover(self, job: dict) -> dict[int, dict]:
        data = self.path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]  # a line cut short by a kill is dropped
        if len(whole) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
        lines = [json.loads(line) for line in whole.decode("utf-8").splitlines() if line.strip()]
        if not lines or "job" not in lines[0]:
            raise BatchError(f"{self.path}: not a batch journal (delete it to start over)")
        job = json.loads(json.dumps(job))  # as the journal holds it (a tuple reads back as a list)
        differs = [k for k in job if k in JOB_IDENTITY and lines[0]["job"].get(k) != job[k]]
        if differs:
            raise BatchError(f"{self.path} was written by another job ({', '.join(differs)} differ): run it "
                             "with the same model, data file and settings, or delete the journal")
        return {r["index"]: r for r in lines[1:]}

    def write(self, record: dict) -> None:
        with self._lock:
            self._append(record)

    def _append(self, value: dict) -> None:
        self._file.write(json.dumps(value, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


JOB_IDENTITY = ("model", "data_sha256", "raw", "params")  # what a resumed job must share with the first


# -- running --------------------------------------------------------------------------------------
def record(item: Item, output: str = "", finish_reason: str = "error", prompt_tokens: int = 0,
           new_tokens: int = 0, error: str | None = None) -> dict:
    return {"index": item.index, "line": item.line, "input": item.input, "output": output,
            "finish_reason": finish_reason, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "error": error}


def predict(loaded, item: Item, params: GenerationParams, cancel: CancelToken,
            retries: int = BUSY_RETRIES) -> dict:
    """One item through the engine; a full wait line is retried, any other failure is the record's error."""
    if item.error:
        return record(item, error=item.error)
    for _ in range(retries + 1):
        last = None
        try:
            stream = (stream_ids(loaded, loaded.tokenizer(item.text)["input_ids"], params, cancel)
                      if item.text is not None else stream_chat(loaded, item.messages, params, cancel))
            for last in stream:
                pass
        except Exception as e:  # a crash in one prompt (a bad message, a tokenizer error) ends that record only
            return record(item, error=f"{type(e).__name__}: {e}")
        if last is None:
            return record(item, error="the engine returned nothing")
        if last.code != BUSY or cancel.cancelled:
            break
        time.sleep(BUSY_WAIT_S)
    return record(item, last.text, last.finish_reason, last.stats.prompt_tokens, last.stats.new_tokens,
                  last.error)


def run_items(loaded, items: Sequence[Item], params: GenerationParams, concurrency: int,
              on_record: Callable[[dict], None], cancel: CancelToken | None = None) -> None:
    """Send `items` `concurrency` at a time; `on_record` gets each record as it finishes (in any order).

    Records of a job cancelled meanwhile (Ctrl-C) are not reported: they did not finish."""
    cancel = cancel or CancelToken()
    pending = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="batch") as pool:
        running = set()
        try:
            while True:
                while len(running) < max(1, concurrency):
                    item = next(pending, None)
                    if item is None:
                        break
                    running.add(pool.submit(predict, loaded, item, params, cancel))
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    if not (cancel.cancelled and result["finish_reason"] == "cancelled"):
                        on_record(result)
        except BaseException:
            cancel.cancel()  # Ctrl-C: the engine ends every running request within a step
            raise


@dataclass
class Job:
    """A whole batch job: the data file, the model, the settings, and where the results go."""

    loaded: object
    data_file: Path
    paths: Paths
    params: GenerationParams
    raw: bool = False
    concurrency: int = 8
    fmt: str = "auto"

    def settings(self) -> dict:
        params = capped(self.loaded.limits, self.params)
        return {"model": self.loaded.id, "backend": "openai" if self.loaded.remote else "local",
                "data_file": str(self.data_file.resolve()), "data_sha256": sha256(self.data_file),
                "raw": self.raw, "params": params.as_dict(), "concurrency": self.concurrency}

    def run(self, resume: bool = False, progress=None) -> list[dict]:
        """Run the lines that have no record yet; write the output and the settings; return the records."""
        if self.raw and self.loaded.remote:
            raise BatchError("--raw needs a local model: a remote engine's chat endpoint applies its own template")
        if not self.paths.out.parent.is_dir():
            raise BatchError(f"{self.paths.out.parent}: no such folder for the output")
        items = read_items(self.data_file, self.raw, self.fmt)
        settings = self.settings()
        journal = Journal(self.paths.journal)
        done = journal.open(settings, resume)
        todo = [item for item in items if item.index not in done]
        bar = progress(len(items), len(items) - len(todo)) if progress else None
        started = time.perf_counter()

        def keep(result: dict) -> None:
            journal.write(result)
            done[result["index"]] = result
            if bar is not None:
                bar.update(1)

        try:
            run_items(self.loaded, todo, capped(self.loaded.limits, self.params), self.concurrency, keep)
        finally:
            journal.close()
            if bar is not None:
                bar.close()
        records = [done[item.index] for item in items]
        settings.update(elapsed_s=round(time.perf_counter() - started, 3), records=len(records),
                        errors=sum(r["finish_reason"] == "error" for r in records), resumed=len(items) - len(todo))
        write_json(self.paths.settings, settings)
        write_json(self.paths.out, records)
        self.paths.journal.unlink()  # everything it held is in the output now
        return records


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, value) -> None:
    """Write through a temporary file and rename, so a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


JOB_ROWS = 16  # prompts of a job one decode step of a local transformers model serves, by default


def job_entry(entry, rows: int = JOB_ROWS):
    """The entry as a job loads it: a local transformers model decodes for throughput, `rows` prompts a step
    (demo.decodeplan.for_throughput). Other engines, LoRA entries and presets load as they are."""
    from .backends import TRANSFORMERS, choose_engine
    from .decodeplan import for_throughput
    from .registry import DecodeSettings

    if entry.remote or entry.base or choose_engine(entry) != TRANSFORMERS:
        return entry
    return entry.model_copy(update={"decode": for_throughput(entry.decode or DecodeSettings(), rows)})


def default_concurrency(loaded) -> int:
    """As many as the model serves at once: its remote's stream limit, else its decode loop's rows."""
    from .batching import MAX_BATCH

    decoder = getattr(loaded, "decoder", None)
    return getattr(loaded, "concurrency", None) or (decoder.max_batch if decoder is not None else MAX_BATCH)


def sole_user(loaded, concurrency: int) -> None:
    """Admit `concurrency` requests at once to a model this process alone uses (the CLI, the bench): the
    default gate lets one run and a few wait, and a job would otherwise spend its time retrying "busy"."""
    from .limits import Gate

    loaded.gate = Gate(concurrency, loaded.limits.queue_size)
