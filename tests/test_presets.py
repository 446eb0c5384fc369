"""Presets (`base:` without `adapter:`): another entry's loaded weights with their own name, generation
defaults and system prompt; and what Compare and the Arena say with fewer than two models."""
import re

import psutil
import pytest

from demo.hub import Hub
from demo.manager import NOT_LOADED, READY, UNAVAILABLE, ModelManager
from demo.registry import RegistryError, load_registry, parse_registry
from demo.ui import arena_handlers as arena
from demo.ui import compare_handlers as compare
from demo.ui import links
from demo.votes import VoteStore
from tests.fakes import scripted

PRESETS = """\
models:
  - id: base
    name: Base
    source: {path: %s}
    dtype: float32
    arena: false
  - id: calm
    name: Calm
    base: base
    generation: {greedy: true, max_new_tokens: 4}
    system_prompt: You are calm.
  - id: wild
    name: Wild
    base: base
    generation: {temperature: 0.9, top_p: 0.95}
"""


def error_of(text: str) -> str:
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "r.yaml")
    return str(info.value)


def test_a_preset_is_typed_and_its_mistakes_name_file_line_and_key():
    registry = parse_registry(PRESETS % "/tmp")
    calm = registry.get("calm")
    assert calm.preset and calm.base == "base" and calm.source is None and calm.system_prompt == "You are calm."
    assert not registry.get("base").arena and registry.get("calm").arena
    assert registry.presets_of("base") == ["calm", "wild"] and registry.family("calm") == registry.get("base").family
    assert error_of(PRESETS.replace("    base: base\n    generation: {greedy", "    base: base\n    dtype: float16\n"
                                    "    generation: {greedy") % "/tmp").startswith(
        "r.yaml:10: models[1].dtype: a preset (`base` without `adapter`) shares its base's loaded weights")
    assert error_of(PRESETS.replace("    system_prompt: You are calm.", "    system_promt: You are calm.") % "/tmp") == (
        "r.yaml:11: models[1].system_promt: unknown key 'system_promt'")
    assert error_of(PRESETS.replace("    arena: false", "    arena: sometimes") % "/tmp").startswith(
        "r.yaml:6: models[0].arena: Input should be a valid boolean")
    assert error_of(PRESETS.replace("base: base\n    generation: {temp", "base: calm\n    generation: {temp")
                    % "/tmp") == "r.yaml:14: models[2].base: 'calm': it is itself a preset; point at the full model"
    remote = "models:\n  - {id: r, name: R, backend: openai, base_url: 'http://h/v1'}\n  - {id: p, name: P, base: r}\n"
    assert error_of(remote).startswith("r.yaml:3: models[1].base: 'r': it is a remote model; a preset needs local")


def test_the_shipped_registry_has_two_presets_of_the_embedded_model():
    registry = load_registry()
    precise, creative = registry.get("smollm2-135m-precise"), registry.get("smollm2-135m-creative")
    assert precise.base == creative.base == "smollm2-135m" and precise.preset and creative.preset
    assert precise.generation.greedy and creative.generation.temperature == 0.9 and creative.generation.top_p == 0.95
    assert precise.system_prompt and creative.system_prompt and precise.system_prompt != creative.system_prompt
    hub = Hub(registry, ModelManager(registry))
    assert hub.compare_default() == ["smollm2-135m-precise", "smollm2-135m-creative"]
    assert sorted(hub.arena_ids()) == ["smollm2-135m-creative", "smollm2-135m-precise"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A random Llama of ~50 MB (float32): large enough that the process's growth measures it."""
    from tests.tiny import make_tiny_chat_model

    return make_tiny_chat_model(tmp_path_factory.mktemp("preset") / "tiny", hidden=256, layers=2)


def rss() -> int:
    """The process's resident size with freed memory given back: loading trims the C heap (decode
    preparation does), so an untrimmed baseline would count earlier tests' garbage against the load."""
    from demo.memory import free_memory

    free_memory()
    return psutil.Process().memory_info().rss


def test_presets_share_the_loaded_weights_and_bring_their_own_prompt_and_sampling(tiny_base):
    from demo.engine import complete

    manager = ModelManager(parse_registry(PRESETS % tiny_base), 10**10)
    before = rss()
    base = manager.get("base")
    size = base.memory_bytes
    assert size > 40 * 2**20
    grown_by_base = rss() - before
    calm, wild = manager.get("calm"), manager.get("wild")
    grown_by_presets = rss() - before - grown_by_base
    # The process grows by one model's weights: the presets add none.
    assert grown_by_presets < 0.1 * size and grown_by_base > 0.5 * size, (grown_by_base, grown_by_presets, size)
    assert calm.model is base.model is wild.model and calm.lock is base.lock
    assert calm.memory_bytes == wild.memory_bytes == 0 and manager.used_bytes() == size
    state = manager.state("calm")
    assert state.status == READY and state.memory_bytes == 0 and "preset of base" in state.detail
    # Own defaults over the base's; the system prompt goes first unless the conversation brings one.
    assert calm.defaults.greedy and calm.defaults.max_new_tokens == 4 and wild.defaults.temperature == 0.9
    reply = complete(calm, [{"role": "user", "content": "hi"}])
    prompt = calm.tokenizer.decode(reply.prompt_ids)
    assert "You are calm." in prompt and reply.stats.new_tokens <= 4
    own = complete(calm, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert "You are calm." not in calm.tokenizer.decode(own.prompt_ids)
    assert "You are calm." not in wild.tokenizer.decode(complete(wild, [{"role": "user", "content": "hi"}],
                                                                 wild.defaults.override({"max_new_tokens": 2})).prompt_ids)
    # Unloading a preset leaves its base; unloading the base takes its presets along (they hold its weights).
    assert manager.unload("calm") and manager.loaded_ids() == ["base", "wild"]
    del base, calm, wild, reply, own
    assert manager.unload("base") and manager.loaded_ids() == []
    assert manager.state("wild").status == NOT_LOADED
    assert rss() < before + grown_by_base / 2


def fake_load(entry, base=None):
    """Scripted models; a preset shares its base's fake like the real loader shares weights."""
    from demo.loader import preset_of

    if base is not None:
        return preset_of(entry, base)
    loaded = scripted(f"{entry.id} says hi", step_s=0.001)
    loaded.id = entry.id
    return loaded


def test_eviction_goes_by_the_base_and_takes_its_presets_along():
    text = (PRESETS % "/tmp") + "  - {id: other, name: Other, source: {path: /tmp}}\n"
    manager = ModelManager(parse_registry(text), 10**10, loader=fake_load)
    manager.get("calm")  # loads its base first
    manager.get("other")
    manager.get("calm")  # using a preset keeps its base recently used
    assert manager.loaded_ids() == ["other", "base", "calm"]
    manager.budget = manager.used_bytes() - 1  # one model must go: the least recently used is `other`
    manager._evict_over_budget(keep=set())
    assert manager.loaded_ids() == ["base", "calm"]
    manager.budget = 1  # the preset holds nothing: the base goes, and its preset with it
    manager._evict_over_budget(keep=set())
    assert manager.loaded_ids() == []


def one_model_hub(tmp_path, available):
    registry = parse_registry(PRESETS % "/tmp", "r.yaml")
    hub = Hub(registry, ModelManager(registry, loader=fake_load), votes=VoteStore(tmp_path / "v.sqlite3"))
    hub.available_ids = lambda: list(available)
    return hub


def test_with_fewer_than_two_models_compare_and_arena_say_so_at_once(tmp_path):
    hub = one_model_hub(tmp_path, ["base"])
    # On load: both tabs explain, with how to add a model.
    updates = links.on_load(hub, {})
    compare_status, arena_status = updates[4], updates[5]
    assert compare_status.startswith("⚠️ Compare needs at least two available models; this hub has 1 (base). "
                                     "To add one, give `r.yaml` another entry under `models:` with a `source:`")
    assert arena_status.startswith("⚠️ The Arena needs at least two available models; this hub has none; "
                                   "base is marked `arena: false`. To add one,")
    assert "a preset of a model you have (`base:` its id" in arena_status
    # On Enter: the message stays in the box, the explanation on the status line; the reply step keeps it.
    text, session, *_, status = arena.user_message(hub, "hello", arena.new_session())
    assert text == "hello" and status == f"{arena_status} Nothing was sent."
    *_, kept = next(arena.reply(hub, session))
    assert kept == {"__type__": "update"}
    text, session, *_, status = compare.user_message(hub, "hello", [], compare.new_session())
    assert text == "hello" and status == f"{compare_status} Nothing was sent."
    *_, kept = next(compare.reply(hub, session, True))
    assert kept == {"__type__": "update"}


def test_with_two_presets_compare_opens_on_them_and_the_arena_draws_them(tmp_path):
    hub = one_model_hub(tmp_path, ["base", "calm", "wild"])
    updates = links.on_load(hub, {})
    assert updates[3]["value"] == ["calm", "wild"] and updates[4] == updates[5] == {"__type__": "update"}
    session = arena.new_session()
    arena.start_round(hub, session)
    assert sorted(session.round.models) == ["calm", "wild"]  # `arena: false` keeps the base out
    text, session, *_, status = arena.user_message(hub, "hello", session)
    assert text == "" and status == ""
    *_, status = list(arena.reply(hub, session))[-1]
    assert "Both answers are in" in status
    *_, status = arena.vote(hub, session, "a")
    assert re.match(r"Vote #\d+ saved", status)


def test_a_preset_of_an_unavailable_base_is_unavailable_with_the_reason():
    manager = ModelManager(parse_registry(PRESETS % "/nonexistent/base"))
    state = manager.state("calm")
    assert state.status == UNAVAILABLE and state.detail == "base base: folder /nonexistent/base does not exist"
