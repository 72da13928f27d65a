"""The exceptions clemrs raises, all under :class:`ClemrsError`.

``ContextExceededError`` carries the attributes of clemcore's exception of the same name (``tokens_used``,
``tokens_left``, ``context_size``); the clemcore drop-in (:mod:`clemrs.clemcore`) re-raises it as clemcore's own.
"""

from typing import Optional

__all__ = ["ClemrsError", "ContextExceededError", "ModelConfigError", "BackendError"]


class ClemrsError(Exception):
    """Base class of every error clemrs raises about a model."""


class ModelConfigError(ClemrsError):
    """The selector, a registry, the selected entry or the key file cannot be used; the message lists every
    problem with its file, entry and key."""


class BackendError(ClemrsError):
    """The backend failed: the network, the provider's answer (after the retries clemrs makes), or inference."""


class ContextExceededError(ClemrsError):
    """The prompt plus ``max_tokens`` does not fit the model's context; raised before generating.

    Attributes:
        tokens_used: prompt tokens + ``max_tokens``.
        tokens_left: ``context_size - tokens_used`` (negative: by how much it overflows).
        context_size: the model's context size.
        batch_index: the row of a batch that overflowed, or ``None``.
    """

    def __init__(self, message: str = "Context limit exceeded", tokens_used: int = 0, tokens_left: int = 0,
                 context_size: int = 0, batch_index: Optional[int] = None):
        super().__init__(message)
        self.tokens_used = tokens_used
        self.tokens_left = tokens_left
        self.context_size = context_size
        self.batch_index = batch_index

    def __reduce__(self):
        return (type(self), (str(self), self.tokens_used, self.tokens_left, self.context_size, self.batch_index))
