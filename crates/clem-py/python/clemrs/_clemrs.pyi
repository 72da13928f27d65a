"""Type stub of the native module ``clemrs._clemrs`` (everything here is re-exported by ``clemrs``)."""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

# A chat message as clemcore's games send it: {"role": "system"|"user"|"assistant", "content": str,
# "image"?: str | list[str]} (image paths or URLs; they need a multimodal model).
Message = Mapping[str, Any]
# (prompt, response, response_text): the exact object sent, the exact object returned (with clemcore's
# `clem_player` record: call_start, call_duration, response, model_name), and the cleaned reply.
Triple = Tuple[Any, Dict[str, Any], str]
SpecLike = Union[str, Mapping[str, Any], "ModelSpec", Any]
PathLike = Union[str, "os.PathLike[str]"]

CALL_LOG_ENV: str

class ModelSpec:
    """A model specification: a (possibly partial) registry entry.

    Keys read as attributes (``spec.model_name``) or items (``spec["backend"]``). Two specs are equal when their
    contents are (key order aside).
    """

    def __init__(self, **keys: Any) -> None: ...
    @staticmethod
    def from_name(name: str) -> "ModelSpec":
        """``{"model_name": name}``."""
    @staticmethod
    def from_dict(spec: Mapping[str, Any]) -> "ModelSpec":
        """A spec from a dict, e.g. a registry entry."""
    @staticmethod
    def from_string(selector: str) -> "ModelSpec":
        """A model name, a JSON object or a Python dict literal, as ``clem -m`` reads it."""
    def unify(self, other: SpecLike) -> "ModelSpec":
        """The unification of both specs; ``ValueError`` when they conflict."""
    def to_dict(self) -> Dict[str, Any]:
        """The spec as a new dict."""
    def to_string(self) -> str:
        """The spec as compact JSON."""
    def has_attr(self, key: str) -> bool: ...
    def has_backend(self) -> bool: ...
    def has_temperature(self) -> bool: ...
    def is_programmatic(self) -> bool:
        """``mock`` or ``programmatic``: a player scripted by the game."""
    def is_human(self) -> bool:
        """``human`` or ``terminal``."""
    def __getattr__(self, key: str) -> Any: ...
    def __getitem__(self, key: str) -> Any: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class Model:
    """A loaded model (from :func:`load_model`), with clemcore's ``Model`` names.

    The GIL is released while it works; one model may be used from several threads at once (remote requests then
    run concurrently). Ctrl-C during a call cancels the request and raises ``KeyboardInterrupt`` within a second.
    """

    @property
    def model_spec(self) -> ModelSpec:
        """The unified spec the model was loaded from."""
    @property
    def model_name(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def batch_mode(self) -> str:
        """``"forward_pass"`` (local), ``"concurrent"`` (remote) or ``"sequential"``."""
    @property
    def gen_args(self) -> Dict[str, Any]:
        """The generation arguments as set (a copy)."""
    @property
    def temperature(self) -> float: ...
    @property
    def max_tokens(self) -> int: ...
    def generate_response(self, messages: Sequence[Message]) -> Triple:
        """One reply: ``(prompt, response, response_text)``.

        Raises ``ContextExceededError`` (before generating), ``BackendError``, ``ModelConfigError``, or
        ``KeyboardInterrupt`` on Ctrl-C.
        """
    def generate_batch_response(self, batch: Sequence[Sequence[Message]]) -> List[Union[Triple, BaseException]]:
        """One reply per message list, in input order, as one backend call (one forward pass for local models,
        concurrent requests for remote ones). A row that failed holds its exception instead of a triple."""
    def set_gen_args(self, **gen_args: Any) -> None:
        """Replaces every generation argument (``temperature``, ``max_tokens``; other keys go to the backend)."""
    def set_gen_arg(self, name: str, value: Any) -> None: ...
    def get_gen_arg(self, name: str) -> Any:
        """One generation argument; ``KeyError`` when it was never set."""

def load_model(
    spec: SpecLike,
    gen_args: Optional[Mapping[str, Any]] = None,
    *,
    registries: Optional[Sequence[PathLike]] = None,
    keys: Optional[PathLike] = None,
    threads: Optional[int] = None,
    resolve: bool = True,
) -> Model:
    """Loads a model.

    Args:
        spec: a model name (``"smollm2-135m"``), a selector string (JSON object or Python dict literal), a dict or
            a ``ModelSpec``; the first registry entry it unifies with is used.
        gen_args: defaults to ``{"temperature": 0.0, "max_tokens": 300}``.
        registries: registry files read first; then ``./model_registry.json``, then the packaged registry.
        keys: a key file; else ``./key.json``, else ``~/.clemcore/key.json``; environment variables below them.
        threads: threads for local inference (default: the backend's).
        resolve: ``False`` uses ``spec`` as it is (already unified, e.g. by clemcore), after checking it.

    Raises:
        ModelConfigError: nothing unifies, the entry or a file is unusable. BackendError: loading failed.
    """

def get_model_for(spec: SpecLike) -> Model:
    """``load_model(spec)``: the name clembench's guide uses."""

def list_models(*, registries: Optional[Sequence[PathLike]] = None, **filters: Any) -> List[ModelSpec]:
    """Registry entries, in priority order, that unify with ``filters`` (e.g. ``backend="llamacpp"``)."""

def backends() -> List[Dict[str, Any]]:
    """Every backend: ``{"name", "built", "key_section"}``."""
