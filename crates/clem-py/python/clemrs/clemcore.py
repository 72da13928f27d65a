"""clemcore drop-in: clemcore 3.7 plays its games on clemrs backends, in-process and batched.

Usage::

    python -m clemrs.clemcore install [DIR] [--only NAME ...]   # DIR: where you run `clem run` (default: .)
    python -m clemrs.clemcore uninstall [DIR]
    python -m clemrs.clemcore list

clemcore looks for ``<backend>_api.py`` files in the working directory before its packaged backends
(``BackendRegistry.from_packaged_and_cwd_files``). ``install`` writes one such file per backend clemrs implements
(``llamacpp_api.py``, ``huggingface_local_api.py``, ``openai_api.py``, ...); each defines one clemcore ``Backend``
whose models are :class:`ClemrsModel`, a clemcore ``BatchGenerativeModel`` that hands clemcore's unified
``ModelSpec`` to clemrs as it is (so clemcore's registries and key.json work unchanged). clemcore's runner then
batches (``clem run -b N``: one ``generate_batch_response`` call per batch), and a prompt that does not fit raises
clemcore's own ``ContextExceededError`` at once, without retries. ``uninstall`` removes exactly the files
``install`` wrote (they start with :data:`MARKER`), and nothing else.

Models that are only in clemrs's packaged registry (e.g. ``smollm2-135m``) are unknown to clemcore's registry:
``python -m clemrs.clemcore registry NAME ...`` adds their entries to ``./model_registry.json``.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, List, Optional

from clemrs import _clemrs
from clemrs.errors import ContextExceededError

__all__ = ["install", "uninstall", "drop_in_backends", "add_to_registry", "ClemrsBackend", "ClemrsModel", "MARKER"]

#: The first line of every file ``install`` writes; ``uninstall`` removes only files that start with it.
MARKER = "# clemrs drop-in backend for clemcore"

_TEMPLATE = '''{marker}: written by `python -m clemrs.clemcore install`, removed by `... uninstall`.
"""clemcore's `{name}` backend, served by clemrs in-process (batched; clemcore's ContextExceededError)."""
from clemrs.clemcore import ClemrsBackend  # noqa: F401  (the one Backend clemcore finds in this file)
'''

# Players are clemcore's own (`_player_programmed`, `_player_human`): no drop-in for them.
_PLAYERS = {"mock", "human"}


def drop_in_backends() -> List[str]:
    """The backends ``install`` writes a file for: every backend this clemrs build has, players excepted."""
    return [b["name"] for b in _clemrs.backends() if b["built"] and b["name"] not in _PLAYERS]


def _file(directory: Path, name: str) -> Path:
    return directory / f"{name}_api.py"


def _ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(MARKER)
    except OSError:
        return False


def install(directory: "str | Path" = ".", only: Optional[Iterable[str]] = None) -> List[Path]:
    """Writes the drop-in files into ``directory`` (all backends, or those named in ``only``) and returns their
    paths. A ``<backend>_api.py`` there that clemrs did not write is left alone: ``FileExistsError``."""
    directory = Path(directory)
    available = drop_in_backends()
    names = available if only is None else list(only)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"clemrs has no drop-in for {', '.join(unknown)} (it has: {', '.join(available)})")
    foreign = [str(_file(directory, n)) for n in names if _file(directory, n).exists() and not _ours(_file(directory, n))]
    if foreign:
        raise FileExistsError(f"not written over (not clemrs's): {', '.join(foreign)}")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = _file(directory, name)
        path.write_text(_TEMPLATE.format(marker=MARKER, name=name), encoding="utf-8")
        written.append(path)
    return written


def uninstall(directory: "str | Path" = ".") -> List[Path]:
    """Removes the drop-in files ``install`` wrote in ``directory`` and returns their paths."""
    directory = Path(directory)
    removed = []
    for path in sorted(directory.glob("*_api.py")):
        if _ours(path):
            path.unlink()
            removed.append(path)
    return removed


def add_to_registry(names: Iterable[str], directory: "str | Path" = ".") -> Path:
    """Adds clemrs's registry entries for the model ``names`` to ``directory/model_registry.json`` (created when
    missing; entries already there by name are kept), so clemcore's registry knows them."""
    path = Path(directory) / "model_registry.json"
    entries = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    if isinstance(entries, dict):
        entries = [entries]
    present = {e.get("model_name") for e in entries if isinstance(e, dict)}
    for name in names:
        found = _clemrs.list_models(model_name=name)
        if not found:
            raise ValueError(f"no clemrs registry entry is named {name!r}")
        if name not in present:
            entries.append(found[0].to_dict())
            present.add(name)
    path.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return path


def _to_clemcore(error: ContextExceededError) -> Exception:
    from clemcore.backends.utils import ContextExceededError as ClemcoreContextExceeded

    return ClemcoreContextExceeded(str(error), tokens_used=error.tokens_used, tokens_left=error.tokens_left,
                                   context_size=error.context_size)


def _make_classes():
    # clemcore is imported only when clemcore loads a drop-in file: install/uninstall work without it.
    from clemcore.backends import Backend, BatchGenerativeModel

    class ClemrsModel(BatchGenerativeModel):
        """A clemcore model served by clemrs: ``generate_batch_response`` is one clemrs call for the whole batch."""

        def __init__(self, model_spec):
            super().__init__(model_spec)
            # clemcore's unified spec, as it is: clemcore already picked the registry entry.
            self.clemrs_model = _clemrs.load_model(model_spec, resolve=False)

        def set_gen_args(self, **gen_args):
            super().set_gen_args(**gen_args)
            self.clemrs_model.set_gen_args(**gen_args)

        def set_gen_arg(self, arg_name, arg_value):
            super().set_gen_arg(arg_name, arg_value)
            self.clemrs_model.set_gen_arg(arg_name, arg_value)

        def generate_response(self, messages):
            try:
                return self.clemrs_model.generate_response(messages)
            except ContextExceededError as e:
                raise _to_clemcore(e) from e

        def generate_batch_response(self, batch_messages):
            results = self.clemrs_model.generate_batch_response(batch_messages)
            # clemcore's runner takes triples only: the first failed row fails the batch, as clemcore's own
            # huggingface_local backend does.
            for result in results:
                if isinstance(result, ContextExceededError):
                    raise _to_clemcore(result) from result
                if isinstance(result, BaseException):
                    raise result
            return results

    class ClemrsBackend(Backend):
        """clemcore's backend for every clemrs backend: the spec's ``backend`` says which."""

        def get_model_for(self, model_spec):
            return ClemrsModel(model_spec)

    ClemrsModel.__module__ = ClemrsBackend.__module__ = __name__
    return ClemrsBackend, ClemrsModel


_classes = None


def __getattr__(name):
    global _classes
    if name in ("ClemrsBackend", "ClemrsModel"):
        if _classes is None:
            _classes = _make_classes()
        return _classes[0] if name == "ClemrsBackend" else _classes[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clemrs.clemcore", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="write the drop-in <backend>_api.py files")
    p.add_argument("dir", nargs="?", default=".")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these backends")
    p = sub.add_parser("uninstall", help="remove the files install wrote")
    p.add_argument("dir", nargs="?", default=".")
    sub.add_parser("list", help="the backends install writes a file for")
    p = sub.add_parser("registry", help="add clemrs's entries of these models to DIR/model_registry.json")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--dir", default=".")
    a = ap.parse_args(argv)
    try:
        if a.command == "install":
            for path in install(a.dir, a.only):
                print(path)
        elif a.command == "uninstall":
            for path in uninstall(a.dir):
                print(path)
        elif a.command == "list":
            for name in drop_in_backends():
                print(name)
        else:
            print(add_to_registry(a.names, a.dir))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
