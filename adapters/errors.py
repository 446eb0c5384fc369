"""The adapters' errors (a leaf, so that every adapter module can raise them without importing base)."""


class AdapterError(ValueError):
    """A family cannot build a prompt or resolve a stop marker for this tokenizer."""


class ContextTooLong(AdapterError):
    """Even the last message alone leaves no room for a reply in the model's context."""
