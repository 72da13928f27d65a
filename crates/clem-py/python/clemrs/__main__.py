"""``python -m clemrs``: the package's command line (the ``clem`` command belongs to clemcore).

    python -m clemrs generate -m MODEL [--messages FILE | PROMPT] [-t T] [-l N] [--json]
    python -m clemrs list [FILTER=VALUE ...]

``generate`` prints the reply, or with ``--json`` the triple ``{prompt, response, response_text}`` as
``clem generate --json`` does; ``list`` prints ``model_name<TAB>backend`` of the registry entries (filters as
``list_models``, e.g. ``backend=llamacpp``). The clemcore drop-in has its own: ``python -m clemrs.clemcore``.
"""

import argparse
import json
import sys

import clemrs


def _value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clemrs", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="one generation")
    g.add_argument("-m", "--model", required=True, help="a model name, or a JSON object / Python dict selector")
    g.add_argument("--messages", help="a JSON file with the list of messages ('-' for standard input)")
    g.add_argument("prompt", nargs="?", help="the user message, when no --messages file is given")
    g.add_argument("-t", "--temperature", type=float, default=0.0)
    g.add_argument("-l", "--max-tokens", type=int, default=300)
    g.add_argument("--json", action="store_true", help="print the whole triple as JSON")
    ls = sub.add_parser("list", help="registry entries, in priority order")
    ls.add_argument("filters", nargs="*", metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    try:
        if a.command == "list":
            filters = {}
            for f in a.filters:
                key, sep, value = f.partition("=")
                if not sep:
                    ap.error(f"filter {f!r} is not KEY=VALUE")
                filters[key] = _value(value)
            for spec in clemrs.list_models(**filters):
                print(f"{spec.to_dict().get('model_name')}\t{spec.to_dict().get('backend')}")
            return 0
        if a.messages:
            text = sys.stdin.read() if a.messages == "-" else open(a.messages, encoding="utf-8").read()
            messages = json.loads(text)
        elif a.prompt is not None:
            messages = [{"role": "user", "content": a.prompt}]
        else:
            ap.error("give a PROMPT or --messages FILE")
        model = clemrs.load_model(a.model, {"temperature": a.temperature, "max_tokens": a.max_tokens})
        prompt, response, text = model.generate_response(messages)
        if a.json:
            print(json.dumps({"prompt": prompt, "response": response, "response_text": text}, indent=2,
                             ensure_ascii=False))
        else:
            print(text)
        return 0
    except (clemrs.ClemrsError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
