"""clemrs: clembench's model backends, in Rust, for Python.

The names are clemcore's. As in clembench's guide "How to use the clembench model backend directly"::

    import clemrs

    model = clemrs.get_model_for("smollm2-135m")
    prompt, response, response_text = model.generate_response(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}])

- :func:`load_model` (``spec``, ``gen_args``, ``registries=``, ``keys=``, ``threads=``) and :func:`get_model_for`
  return a :class:`Model`; registries and keys are found as the ``clem`` command finds them (``./model_registry.json``
  then the packaged registry; ``./key.json`` then ``~/.clemcore/key.json``, then environment variables).
- :class:`Model`: ``generate_response(messages)``, ``generate_batch_response(batch)``, ``model_spec``, ``name``,
  ``gen_args``, ``set_gen_args(**kw)``, ``set_gen_arg(name, value)``, ``get_gen_arg(name)``. The GIL is released
  while it works; one model may be used from several threads; Ctrl-C cancels a call.
- :class:`ModelSpec`, :func:`list_models`, :func:`backends`.
- Errors: :class:`ClemrsError` > :class:`ContextExceededError`, :class:`ModelConfigError`, :class:`BackendError`.

clemcore itself runs its games on clemrs with ``python -m clemrs.clemcore install`` (see :mod:`clemrs.clemcore`).
"""

from clemrs._clemrs import (
    Model as Model,
    ModelSpec as ModelSpec,
    backends as backends,
    get_model_for as get_model_for,
    list_models as list_models,
    load_model as load_model,
)
from clemrs.errors import (
    BackendError as BackendError,
    ClemrsError as ClemrsError,
    ContextExceededError as ContextExceededError,
    ModelConfigError as ModelConfigError,
)

from importlib.metadata import PackageNotFoundError as _NotFound, version as _version

try:
    __version__ = _version("clemrs")
except _NotFound:  # imported from a source tree
    __version__ = "0+unknown"

__all__ = [
    "load_model",
    "get_model_for",
    "list_models",
    "backends",
    "Model",
    "ModelSpec",
    "ClemrsError",
    "ContextExceededError",
    "ModelConfigError",
    "BackendError",
]
