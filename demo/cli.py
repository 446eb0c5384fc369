"""`python -m demo ...`: serve, list, chat, prompt, generate, batch, leaderboard, bench."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from adapters import AdapterError, FAMILIES
from adapters.weights import WeightsMissing

from .registry import ModelEntry, Registry, RegistryError, UnknownModelError, load_registry


class CliError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_libraries()
    try:
        return args.run(args) or 0
    except (CliError, RegistryError, UnknownModelError, AdapterError, WeightsMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# Library lines that say nothing to a user of the hub; --verbose shows them. The hub's own lines stay.
QUIET_LOGGERS = (
    # torchao (pulled in by transformers' quantizers) warns at import that its CUDA-only kernels
    # (mxfp8, cutlass) and triton are missing: true of every CPU build, and nothing the hub uses.
    "torchao",
    # torchao's import registers Enum classes with torch's pytree, which torch now calls deprecated.
    "torch.utils._pytree",
    # "Loading a GGUF checkpoint with its weights packed is fastest in float32": the hub has transformers
    # dequantize GGUF weights into plain layers, so that advice about packed kernels does not apply.
    "transformers.quantizers.quantizer_gguf",
)
# Deprecation notices raised inside these libraries are for their developers, not for the hub's users.
LIBRARY_MODULES = (r"(torch|torchao|transformers|accelerate|optimum|peft|gptqmodel|bitsandbytes|gradio|"
                   r"gradio_client|huggingface_hub|safetensors|tokenizers)(\.|$)")


def quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARY_MODULES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description="Multi-model chat demo hub")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=argparse.SUPPRESS,
                        help="registry YAML (default: $HUB_REGISTRY or model_registry.yaml)")
    parser.add_argument("--registry", help="registry YAML (default: $HUB_REGISTRY or model_registry.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    # `--registry` is also accepted after the command (`serve --registry FILE`, as the README shows);
    # SUPPRESS keeps a subcommand without it from resetting the value given before the command.
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the web app")
    serve.add_argument("--host", default=os.environ.get("HUB_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("HUB_PORT", "7860")))
    serve.add_argument("--memory-budget-gb", type=float, help="evict models above this (default: registry)")
    serve.add_argument("--preload", action="store_true", help="load the default model before serving")
    add_public_args(serve)
    serve.add_argument("--votes", help="SQLite file for arena votes and shared transcripts "
                                       "(default: $HUB_VOTES or data/votes.sqlite3)")
    serve.set_defaults(run=cmd_serve)

    hashpw = sub.add_parser("hash-password", help="print an --auth-file line for a user (asks the password)")
    hashpw.add_argument("user")
    hashpw.set_defaults(run=cmd_hash_password)

    lst = sub.add_parser("list", parents=[common],
                         help="list registry entries and whether their weights are here")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(run=cmd_list)

    chat = sub.add_parser("chat", parents=[common], help="chat in the terminal")
    add_model_args(chat)
    add_sampling_args(chat)
    chat.add_argument("--system", help="system prompt")
    chat.set_defaults(run=cmd_chat)

    prompt = sub.add_parser("prompt", parents=[common],
                            help="show the exact prompt ids and stops (no weights loaded)")
    add_model_args(prompt)
    prompt.add_argument("--messages", required=True, help="JSON file: a list of {role, content}")
    prompt.add_argument("--max-new-tokens", type=int, help="reply budget to reserve in the context")
    add_chat_option_args(prompt)
    prompt.add_argument("--json", action="store_true")
    prompt.set_defaults(run=cmd_prompt)

    gen = sub.add_parser("generate", parents=[common], help="generate one reply")
    add_model_args(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--messages", help="JSON file: a list of {role, content}")
    source.add_argument("--prompt", help="one user message")
    source.add_argument("--input-ids", help="raw prompt ids, comma separated (no template applied)")
    add_sampling_args(gen)
    add_chat_option_args(gen)
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(run=cmd_generate)

    batch = sub.add_parser("batch", parents=[common], help="predictions for a file of prompts, many at once")
    add_model_args(batch)
    batch.add_argument("--data-file", required=True,
                       help="one prompt per line, or JSONL of {\"messages\": [...]} or {\"prompt\": \"...\"}")
    batch.add_argument("--out", default="predictions.json", help="the JSON list of records (default: %(default)s)")
    batch.add_argument("--format", choices=["auto", "lines", "jsonl"], default="auto", dest="data_format",
                       help="auto: JSONL when the first line starts with '{'")
    batch.add_argument("--raw", action="store_true", help="send each text as is, with no chat template")
    batch.add_argument("--concurrency", type=int, help="prompts in flight at once (default: what the model "
                                                       "serves together: 16 on transformers, the entry's for a remote)")
    batch.add_argument("--resume", action="store_true", help="continue an interrupted job from its journal")
    add_sampling_args(batch)
    batch.set_defaults(run=cmd_batch)
    board = sub.add_parser("leaderboard", help="print the arena leaderboard; export the votes")
    board.add_argument("--votes", help="the votes database (default: $HUB_VOTES or data/votes.sqlite3)")
    board.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the intervals")
    board.add_argument("--jsonl", help="also write every vote to this JSONL file")
    board.add_argument("--csv", help="also write every vote to this CSV file")
    board.add_argument("--json", action="store_true", help="print the leaderboard as JSON")
    board.set_defaults(run=cmd_leaderboard)

    convert = sub.add_parser("convert", help="write a native transformers folder for an upstream checkpoint "
                                             "(ChatGLM3, Baichuan2, Qwen1) that needs no remote code")
    convert.add_argument("folder", help="the upstream checkpoint folder")
    convert.add_argument("out", help="the folder to write (replaced if it exists)")
    convert.set_defaults(run=cmd_convert)

    quant = sub.add_parser("quantize", help="quantize a full-precision folder to GPTQ or AWQ (gptqmodel)")
    quant.add_argument("src", help="a full-precision checkpoint folder")
    quant.add_argument("dst", help="a new folder for the quantized checkpoint")
    quant.add_argument("--method", choices=["gptq", "awq"], default="gptq")
    quant.add_argument("--bits", type=int, default=4, help="gptq: 2, 3, 4 or 8; awq: 4")
    quant.add_argument("--group-size", type=int, default=128, help="input columns sharing one scale (-1: one group)")
    quant.add_argument("--desc-act", action="store_true", help="gptq: quantize columns by activation order")
    quant.add_argument("--calibration", help="a JSON list of strings or one sample per line (default: built in)")
    quant.add_argument("--report-memory", action="store_true",
                       help="then load both and print full-precision vs quantized memory")
    quant.set_defaults(run=cmd_quantize)

    bench = sub.add_parser("bench", help="measure the hub against bare transformers; write JSON, table, plot")
    bench.add_argument("model", nargs="?", help="a registry id or a local folder (default: the registry's default)")
    bench.add_argument("--family", choices=sorted(["auto", *FAMILIES]), default=None)
    bench.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens (about)")
    bench.add_argument("--new-tokens", type=int, default=128, help="tokens to generate per request")
    bench.add_argument("--clients", default="1,2,4,8", help="concurrent client counts, comma separated")
    bench.add_argument("--repeats", type=int, default=3, help="repeats of every measurement, interleaved (medians are reported)")
    bench.add_argument("--rounds", type=int, default=1, help="requests per client in the concurrency runs")
    bench.add_argument("--out", default="bench-results", help="output folder")
    bench.add_argument("--no-server", action="store_true", help="skip the hub server (2) and (5)")
    bench.add_argument("--no-transformers-serve", action="store_true", help="skip the transformers serve baseline")
    bench.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp engine (a GGUF entry)")
    bench.add_argument("--batch-job", action="store_true", help="measure only 16 prompts through `batch` "
                       "against 16 sequential `generate` calls (target <= 0.4x); --concurrency sets the job's")
    bench.add_argument("--concurrency", type=int, help="with --batch-job: prompts in flight (default: as `batch`)")
    bench.add_argument("--engine", choices=["auto", "transformers", "llama.cpp"], default=None,
                       help="with --batch-job: the engine to run the job on (default: the entry's)")
    bench.add_argument("--structured", action="store_true", help="measure only constrained decoding: the same "
                       "prompts with and without a json_schema on each local engine (target <= 1.15x per token)")
    bench.set_defaults(run=cmd_bench)
    return parser


def add_public_args(serve) -> None:
    share = serve.add_argument_group("sharing and access")
    share.add_argument("--share", action="store_true", help="ask Gradio for a public link (needs internet)")
    share.add_argument("--share-server", metavar="HOST:PORT", help="a self-hosted frp tunnel server")
    share.add_argument("--auth", action="append", metavar="USER:PASS", help="a user (repeatable)")
    share.add_argument("--auth-file", help="users with hashed passwords, one user:pbkdf2_sha256$... a line")
    share.add_argument("--api-key", action="append", help="an API key for /v1 (repeatable; also $HUB_API_KEYS)")
    share.add_argument("--admin", action="append", metavar="USER",
                       help="an --auth/--auth-file user who may load and unload models (repeatable); without "
                            "it, model management is open on a loopback-only hub and off on a public one")
    share.add_argument("--trusted-proxies", metavar="ADDR[,ADDR]",
                       help="proxy addresses or networks (e.g. 127.0.0.1,10.0.0.0/8) whose X-Forwarded-For "
                            "names the client; without it every client is its socket address")
    limits = serve.add_argument_group("limits (default: the registry's `limits:` section)")
    limits.add_argument("--max-message-chars", type=int)
    limits.add_argument("--max-turns", type=int)
    limits.add_argument("--max-new-tokens", type=int, help="cap on a reply's length")
    limits.add_argument("--queue-size", type=int, help="requests that may wait per model before 'busy'")
    limits.add_argument("--generation-timeout", type=float, metavar="SECONDS")
    limits.add_argument("--rate-limit", type=int, metavar="PER_MINUTE", help="requests per client (0: off)")
    limits.add_argument("--max-request-bytes", type=int, metavar="BYTES",
                        help="largest request body (default 1000000); larger ones get 413 unread")


def proxy_list(value: str | None) -> tuple[str, ...]:
    """--trusted-proxies as addresses and networks; a bad one is named."""
    import ipaddress

    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise CliError(f"--trusted-proxies: {item!r} is not an IP address or network") from None
    return items


def add_model_args(parser) -> None:
    parser.add_argument("model", help="a registry id or a local checkpoint folder")
    parser.add_argument("--family", choices=sorted(["auto", *FAMILIES]), default=None,
                        help="override the family detected from the folder's files")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                        help="weights precision (default: the registry entry's; auto for a folder)")
    parser.add_argument("--quantization", choices=["bnb-4bit", "bnb-8bit"],
                        help="quantize a full-precision model at load with bitsandbytes")
    parser.add_argument("--engine", choices=["auto", "transformers", "llama.cpp"], default=None,
                        help="the engine to run it on (default: the registry entry's; auto for a folder)")


def add_chat_option_args(parser) -> None:
    parser.add_argument("--tools", metavar="FILE", help="JSON file: a list of OpenAI function tools for the template")
    parser.add_argument("--template-kwargs", metavar="JSON",
                        help="chat-template variables as a JSON object, e.g. '{\"enable_thinking\": false}'")


def chat_options_of(args):
    """The --tools file and --template-kwargs object, checked, as the adapters take them."""
    from adapters.base import ChatOptions
    from adapters.tools import check_tools

    tools = None
    if getattr(args, "tools", None):
        try:
            tools = json.loads(Path(args.tools).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CliError(f"--tools {args.tools}: cannot read tools: {e}") from None
        tools = check_tools(tools, "--tools")
    kwargs = {}
    if getattr(args, "template_kwargs", None):
        try:
            kwargs = json.loads(args.template_kwargs)
        except ValueError as e:
            raise CliError(f"--template-kwargs: not JSON: {e}") from None
        if not isinstance(kwargs, dict):
            raise CliError("--template-kwargs takes a JSON object, e.g. '{\"enable_thinking\": false}'")
    return ChatOptions(tools=tools, template_kwargs=kwargs)


def add_sampling_args(parser) -> None:
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--greedy", action="store_true",
                        help="plain argmax: no repetition penalty unless --repetition-penalty is given")


# -- model resolution -------------------------------------------------------------------------
def registry_of(args) -> Registry:
    return load_registry(args.registry)


def entry_for(args) -> ModelEntry:
    """A registry id, else a local folder (family detected from its files, or --family)."""
    entry = find_entry(args)
    if getattr(args, "quantization", None):
        from .registry import Quantization

        entry = entry.model_copy(update={"quantization": Quantization(method=args.quantization)})
    return entry


def find_entry(args) -> ModelEntry:
    model = args.model
    registry = None
    if not Path(model).exists():
        registry = registry_of(args)
    overrides = {k: v for k, v in (("family", args.family), ("dtype", getattr(args, "dtype", None)),
                                   ("engine", getattr(args, "engine", None))) if v}
    if registry is not None and model in registry:
        return checked(registry.get(model), overrides)
    if Path(model).is_dir() or Path(model).is_file():
        from .loader import folder_entry

        return checked(folder_entry(model, args.family or "auto"), overrides)
    known = ", ".join(e.id for e in registry) if registry else "none"
    raise UnknownModelError(f"{model!r} is neither a registry id ({known}) nor a folder")


def checked(entry: ModelEntry, overrides: dict) -> ModelEntry:
    """The entry with the command line's overrides, validated as a registry entry is (e.g. --engine)."""
    from pydantic import ValidationError

    if not overrides:
        return entry
    try:
        return ModelEntry.model_validate({**entry.model_dump(exclude_unset=True), **overrides})
    except ValidationError as e:
        first = e.errors()[0]
        flag = f"--{first['loc'][0]}" if first["loc"] else entry.id
        raise CliError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None


def load_for(args, entry=None):
    """Load the model the command names (or `entry`, made from it); a LoRA/PEFT entry needs the registry to
    find its base."""
    entry = entry or entry_for(args)
    # gptqmodel prints its banner and kernel choices on stdout: keep stdout for the command's own output
    with contextlib.redirect_stdout(sys.stderr):
        return load_model(entry, registry_of(args)) if entry.base else load_model(entry)


def params_of(args, defaults):
    values = {k: getattr(args, k, None) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                   "repetition_penalty", "seed")}
    if getattr(args, "greedy", False):
        values["greedy"] = True
        if values["repetition_penalty"] is None:
            values["repetition_penalty"] = 1.0
    return defaults.override(values)


def read_messages(path: str) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: cannot read messages: {e}") from None
    if not isinstance(data, list):
        raise CliError(f"{path}: expected a JSON list of {{role, content}} objects")
    return data


def load_model(entry: ModelEntry, registry: Registry | None = None):
    """Load an entry; a LoRA/PEFT entry loads its base entry first."""
    from .loader import load_entry

    base = load_model(registry.get(entry.base), registry) if entry.base else None
    return load_entry(entry, base)


# -- commands ---------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from .manager import ModelManager

    from .decodeplan import cpu_isa

    manager = ModelManager(registry_of(args))
    isa = cpu_isa()
    rows = [dict(id=s.id, name=s.name, status=s.status, detail=s.detail,
                 family=manager.registry.family(s.id), engine=s.engine, decode_plan=s.decode_plan,
                 decode=decode_of(manager.registry.get(s.id), isa),
                 memory_bytes=s.memory_bytes, shares_weights_of=manager.registry.get(s.id).base)
            for s in manager.states()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['id']:<24} {row['status']:<12} {row['engine']:<13} {row['name']}"
                  + (f"  ({row['detail']})" if row["detail"] else ""))
    return 0


def decode_of(entry, isa: str) -> dict | None:
    """A local entry's decode settings (registry and HUB_* variables) and the CPU its plan is chosen for."""
    if entry.remote or entry.decode is None:
        return None
    from .decodeplan import with_environment

    return {**with_environment(entry.decode).model_dump(), "isa": isa}


def cmd_prompt(args) -> int:
    from .promptview import prompt_report, prompt_source

    entry = entry_for(args)
    loaded = prompt_source(entry, registry_of(args) if entry.base else None)  # LoRA, preset: like its base
    result = prompt_report(loaded, read_messages(args.messages), args.max_new_tokens, chat_options_of(args))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["text"])
        print(f"\n[{result['prompt_tokens']} tokens; stop ids {result['stop_token_ids']}]", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    from .engine import stream_chat, stream_ids

    chat = chat_options_of(args)  # checked before the weights load
    loaded = load_for(args)
    params = params_of(args, loaded.defaults)
    if args.input_ids:
        try:
            ids = [int(x) for x in args.input_ids.split(",") if x.strip()]
        except ValueError:
            raise CliError("--input-ids takes comma-separated integers") from None
        stream = stream_ids(loaded, ids, params)
    else:
        messages = read_messages(args.messages) if args.messages else [{"role": "user", "content": args.prompt}]
        stream = stream_chat(loaded, messages, params, chat=chat)
    last = None
    for last in stream:
        if not args.json:
            print(last.delta, end="", flush=True)
    if args.json:
        result = {"prompt_ids": last.prompt_ids, "output_ids": last.output_ids, "text": last.text,
                  "finish_reason": last.finish_reason, "error": last.error, "stats": asdict(last.stats)}
        if not args.input_ids:
            result.update(split_reply(loaded, messages, chat, last))
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"\n[{last.finish_reason}; {last.stats.summary()}]", file=sys.stderr)
    return 1 if last.finish_reason == "error" else 0


def cmd_batch(args) -> int:
    from tqdm import tqdm

    from .batchjob import JOB_ROWS, BatchError, Job, Paths, default_concurrency, job_entry, sole_user

    if args.concurrency is not None and args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    loaded = load_for(args, job_entry(entry_for(args), args.concurrency or JOB_ROWS))
    concurrency = args.concurrency or default_concurrency(loaded)
    sole_user(loaded, concurrency)
    job = Job(loaded, Path(args.data_file), Paths.beside(args.out), params_of(args, loaded.defaults), args.raw,
              concurrency, args.data_format)
    bar = lambda total, initial: tqdm(total=total, initial=initial, unit="prompt", desc=loaded.id, file=sys.stderr)
    try:
        records = job.run(args.resume, bar)
    except BatchError as e:
        raise CliError(str(e)) from None
    errors = sum(r["finish_reason"] == "error" for r in records)
    print(f"wrote {len(records)} records to {args.out} ({errors} errors); settings in {job.paths.settings}",
          file=sys.stderr)
    return 0


def split_reply(loaded, messages, chat, last) -> dict:
    """The reply's reasoning, answer and tool calls, as the family's parser reads its text (or, for a model
    served elsewhere, as its server split them)."""
    from adapters.replyparse import ReplyDelta
    from adapters.tools import tool_names

    from .replies import reply_parser

    parser = reply_parser(loaded, messages, chat, tool_names(chat.tools))
    if parser is None:
        whole = ReplyDelta(last.reasoning, last.text, list(last.tool_calls))
    else:
        whole = parser.feed(last.text).add(parser.finish())
    return {"reasoning": whole.reasoning, "content": whole.content,
            "tool_calls": [call.openai() for call in whole.tool_calls]}


def cmd_chat(args) -> int:
    from .engine import CancelToken, stream_chat

    loaded = load_for(args)
    params = params_of(args, loaded.defaults)
    history = [{"role": "system", "content": args.system}] if args.system else []
    print(f"Chatting with {loaded.id}. Ctrl-C stops a reply; /reset clears; /exit or Ctrl-D quits.")
    while True:
        try:
            text = input("\n> ").strip()
        except EOFError:
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = history[:1] if history and history[0]["role"] == "system" else []
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        cancel, last = CancelToken(), None
        try:
            for last in stream_chat(loaded, history, params, cancel):
                print(last.delta, end="", flush=True)
        except KeyboardInterrupt:
            cancel.cancel()
        if last is not None:
            print(f"\n[{last.finish_reason}; {last.stats.summary()}]" + (f" {last.error}" if last.error else ""))
            history.append({"role": "assistant", "content": last.text})


def cmd_convert(args) -> int:
    from adapters import detect_family
    from adapters.native import convert_folder

    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        raise CliError(f"{folder / 'config.json'}: not found; give an upstream checkpoint folder")
    out = convert_folder(folder, Path(args.out), detect_family(folder))
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it; "
          f"the hub serves it with the same chat format")
    return 0


def cmd_quantize(args) -> int:
    from .quantize import format_report, memory_report, quantize, read_calibration

    calibration = read_calibration(args.calibration) if args.calibration else None
    dst = quantize(args.src, args.dst, args.method, args.bits, args.group_size, args.desc_act, calibration)
    print(f"wrote {args.method} {args.bits}-bit checkpoint to {dst}")
    if args.report_memory:
        print(format_report(memory_report(args.src, dst)))
    return 0


def cmd_serve(args) -> int:
    from pydantic import ValidationError

    from .app import serve
    from .auth import AuthError

    if args.share_server and not re.fullmatch(r"[^\s:]+:\d+", args.share_server):
        raise CliError(f"--share-server takes HOST:PORT (got {args.share_server!r})")
    args.trusted_proxies = proxy_list(args.trusted_proxies)
    try:
        return serve(args)
    except AuthError as e:
        raise CliError(str(e)) from None
    except ValidationError as e:
        from .app import LIMIT_ARGS

        first = e.errors()[0]
        flag = {field: arg for arg, field in LIMIT_ARGS.items()}.get(first["loc"][0], first["loc"][0])
        raise CliError(f"--{flag.replace('_', '-')}: {first['msg']}") from None


def cmd_hash_password(args) -> int:
    import getpass

    from .auth import hash_password

    password = getpass.getpass(f"password for {args.user}: ")
    if not password or password != getpass.getpass("again: "):
        raise CliError("the passwords are empty or differ")
    print(f"{args.user}:{hash_password(password)}")
    return 0


def cmd_leaderboard(args) -> int:
    from .ratings import battles_from_votes, leaderboard
    from .votes import VoteStore, export_csv, export_jsonl, votes_path

    path = votes_path(args.votes)
    if not path.is_file():
        raise CliError(f"{path}: no votes database here (serve writes it; --votes or $HUB_VOTES picks another)")
    votes = VoteStore(path).votes()
    board = leaderboard(battles_from_votes(votes), rounds=max(args.bootstrap, 0))
    if args.json:
        print(json.dumps({"votes": board.battles, "models": board.models, "win_rate_matrix": board.matrix,
                          "rows": [{**asdict(r), "win_rate": r.win_rate} for r in board.rows]}, indent=2))
    else:
        print_board(board, path)
    for target, export in ((args.jsonl, export_jsonl), (args.csv, export_csv)):
        if target:
            print(f"wrote {export(votes, target)} votes to {target}", file=sys.stderr)
    return 0


def print_board(board, path) -> None:
    print(f"{board.battles} votes in {path}")
    if not board.rows:
        return
    width = max(len(r.model) for r in board.rows)
    print(f"{'#':>2}  {'model':<{width}}  rating  95% interval  votes  wins  losses  ties  win rate")
    for k, r in enumerate(board.rows, 1):
        print(f"{k:>2}  {r.model:<{width}}  {r.rating:6.0f}  {r.lower:5.0f} – {r.upper:<5.0f} {r.votes:6d} "
              f"{r.wins:5d} {r.losses:7d} {r.ties:5d}  {r.win_rate:7.0%}")
    print("\nwin rate of row vs column (ties count half)")
    print(" " * (width + 2) + "  ".join(f"{m[:8]:>8}" for m in board.models))
    for model, line in zip(board.models, board.matrix):
        print(f"{model:<{width}}  " + "  ".join(f"{'–' if x is None else f'{x:.0%}':>8}" for x in line))


def cmd_bench(args) -> int:
    import signal

    from bench.report import markdown, write  # the bench is a package of its own, beside demo/
    from bench.run import BenchConfig, run_bench

    # SIGTERM unwinds like Ctrl-C, so the `finally` of each server the bench started stops that server
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.model is None:
        registry = registry_of(args)
        if not registry.default_id:
            raise CliError("the registry has no models; name one to bench")
        args.model = registry.default_id
    if args.batch_job:
        return cmd_bench_batch_job(args)
    if args.structured:
        return cmd_bench_structured(args)
    try:
        clients = tuple(sorted({int(c) for c in args.clients.split(",") if c.strip()}))
    except ValueError:
        raise CliError("--clients takes comma-separated integers, e.g. 1,2,4,8") from None
    if not clients or min(clients) < 1 or args.new_tokens < 1 or args.prompt_tokens < 1 or args.repeats < 1:
        raise CliError("--clients, --new-tokens, --prompt-tokens and --repeats must be positive")
    config = BenchConfig(entry=entry_for(args), prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                         clients=clients, out=Path(args.out), repeats=args.repeats, rounds=args.rounds,
                         hub_server=not args.no_server, transformers_serve=not (args.no_server or args.no_transformers_serve),
                         llama_cpp=not args.no_llama_cpp)
    report = run_bench(config, log=lambda text: print(text, file=sys.stderr, flush=True))
    paths = write(report, config.out)
    print(markdown(report))
    print(f"wrote {paths['json']}, {paths['table']}, {paths['plot']}", file=sys.stderr)
    return 0


def cmd_bench_structured(args) -> int:
    from bench.structured import local_engines, markdown, run_structured_bench

    if args.new_tokens < 1 or args.repeats < 1:
        raise CliError("--new-tokens and --repeats must be positive")
    entry = entry_for(args)
    engines = [e for e in local_engines(entry) if not (args.no_llama_cpp and e == "llama.cpp")]
    report = run_structured_bench(entry, args.new_tokens, args.repeats, engines,
                                  log=lambda text: print(text, file=sys.stderr, flush=True))
    return bench_report(report, markdown(report), Path(args.out) / "structured.json")


def cmd_bench_batch_job(args) -> int:
    from bench.batchjob import markdown, run_batch_bench

    if args.new_tokens < 1 or args.repeats < 1 or (args.concurrency or 1) < 1:
        raise CliError("--new-tokens, --repeats and --concurrency must be positive")
    from demo.batchjob import JOB_ROWS, job_entry

    entry = entry_for(args)
    loaded = load_for(args, entry)  # as `generate` loads it
    job = job_entry(entry, args.concurrency or JOB_ROWS)  # as `batch` loads it
    job_loaded = load_for(args, job) if job != entry else loaded
    report = run_batch_bench(loaded, args.new_tokens, args.repeats, args.concurrency, job_loaded=job_loaded,
                             log=lambda text: print(text, file=sys.stderr, flush=True))
    return bench_report(report, markdown(report), Path(args.out) / "batch-job.json")


def bench_report(report: dict, table: str, path: Path) -> int:
    """A bench part's report as JSON at `path`, and its table on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table)
    print(f"wrote {path}", file=sys.stderr)
    return 0
