#!/usr/bin/env python3
"""Render the golden outputs of chat templates exactly as Hugging Face transformers renders them.

Reads every `custom_chat_template` of the clemcore fixture registry (never copied into this
repository) plus a few templates written here, renders each over every conversation of
`conversations.json` with add_generation_prompt True and False, and writes `templates.json`:

    [{"model_name", "conversation_id", "add_generation_prompt", "expected"}, ...]

or, when jinja2 raises, `{"model_name", "conversation_id", "add_generation_prompt", "error",
"error_type", "error_line"}` (`error_type` "TemplateError" means the template's own
`raise_exception(...)`, whose message the Rust side must reproduce verbatim). The templates
written here are also saved to `inline_templates.json` ({name: source}) for the Rust test.

The environment replicates transformers' `_compile_jinja_template` (transformers is not needed):
ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks, AssistantTracker, loopcontrols), the
`tojson` filter as json.dumps, `raise_exception` and `strftime_now` (here on a fixed clock).

Usage: python3 make_template_goldens.py [path/to/clemcore-model-registry-230.json]
Needs Python 3.11 and jinja2 3.1.6.
"""

import datetime
import json
import pathlib
import sys
import traceback

import jinja2
from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_FIXTURE = HERE.parents[4] / "shared" / "fixtures" / "clemcore-model-registry-230.json"
CONVERSATIONS = HERE / "conversations.json"
OUTPUT = HERE / "templates.json"
INLINE_OUTPUT = HERE / "inline_templates.json"

# ---------------------------------------------------------------------------------------------
# Templates beyond the fixture (written for this project, so they may live in the repository).
# ---------------------------------------------------------------------------------------------

SMOLLM2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_STYLE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{%- set ns = namespace(turns=0, last_role=none) %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n" }}
{{- "Now: " + strftime_now("%A %B %-d %Y, %H:%M:%S (%I %p) day %j %y %%") + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions." }}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if ns.last_role == message.role and message.role == 'user' %}
        {{- raise_exception("Two user messages in a row (turn " ~ ns.turns ~ ")") }}
    {%- endif %}
    {%- set ns.last_role = message.role %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{{- "<|reserved_special_token_0|>" ~ ns.turns }}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# A ChatML template with assistant-mask `{% generation %}` blocks (as in SmolLM3 / Qwen training templates).
GENERATION_CHATML = """{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation -%}
        {{- message.content | trim }}
        {%- set inner = 'scoped' %}
        {%- if message.tool_calls is defined %}
            {%- for call in message.tool_calls %}
<tool_call>
{{ call.function | tojson }}
</tool_call>
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {% else %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {% endif %}
{%- endfor %}
{{- 'inner is ' ~ (inner is defined) ~ '\\n' }}
{%- if add_generation_prompt %}
{% generation %}
<|im_start|>assistant
{% endgeneration %}
{%- endif %}
"""

# Exercises the Python semantics chat templates lean on: printing of Python values, tojson options,
# str methods, filters, tests, loop variables and loop controls, slicing, namespace, macros.
PYTHON_SEMANTICS = """{%- macro show(v) -%}[{{ v }}]{%- endmacro -%}
values: {{ true }} {{ True }} {{ false }} {{ none }} {{ None }} {{ 1.0 }} {{ 2.5 }} {{ 10 / 4 }} {{ 10 // 4 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 0.1 + 0.2 }} {{ -0.0 }} {{ 3 * 'ab' }} {{ undefined_var }}|
containers: {{ [1, 2.0, 'x', none, true] }} {{ {'a': 1, 'b': [true, none], 'c': "it's"} }} {{ messages[:1] }} {{ messages[1:] }} {{ messages|map(attribute='content')|map('trim')|list }} {{ messages|map(attribute='content')|map('title')|list }}
strings: {{ messages|length }} {{ (messages[0].content ~ '')|length }} {{ 'a-b-c'.split('-') }} {{ '  x y  '.split() }} {{ ' pad '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  l'.lstrip() }}|{{ 'r  '.rstrip() }}|
{{ 'hello world'.title() }} {{ "they're bill's friends" | title }} {{ "they're bill's friends".title() }} {{ 'mIxEd'.upper() }} {{ 'mIxEd'.lower() }} {{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'a.b.c'.replace('.', '/') }} {{ 'ß'.upper() }} {{ 'éCOLE'|capitalize }} {{ 'éCOLE'.capitalize() }} {{ '  trim me  '|trim }}|{{ 'a,b'.split(',', 1) }}
filters: {{ ['b', 'a']|join(', ') }} {{ messages|map(attribute='role')|join('/') }} {{ messages|selectattr('role', 'equalto', 'user')|list|length }} {{ 'abc'|list }} {{ missing|default('dflt') }} {{ none|default('not used') }} {{ ''|default('lax', true) }} {{ [3, 1, 2]|sort|first }} {{ [3, 1, 2]|max }} {{ (messages|last).role }} {{ 'x' ~ 1 ~ 'y' }} {{ [1, 2, 3]|sum }} {{ 3.7|int }} {{ 3|float }} {{ '<a & "b" \\'c\\'>'|e }} {{ [1,2,3]|reverse|list }} {{ {'b': 1, 'a': 2}|dictsort }} {{ ['a', 'b']|unique|list }} {{ 'abc'|upper }} {{ 'Hello World'|lower }} {{ 'hello'|replace('l', 'L') }} {{ '%s=%d'|format('n', 3) }} {{ 2.567|round(1) }} {{ -3|abs }}
tests: {{ 'x' is string }} {{ 1 is number }} {{ true is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ messages is sequence }} {{ 'abc' is sequence }} {{ 'abc' is iterable }} {{ {} is mapping }} {{ none is none }} {{ nothing is defined }} {{ messages is defined }} {{ tools is none }} {{ 3 is odd }} {{ 4 is even }} {{ 'x' in 'xyz' }} {{ 'role' in messages[0] }} {{ 5 is divisibleby 5 }} {{ true is boolean }} {{ true is true }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }}
json: {{ messages[0]|tojson }} {{ {'k': '<>&\\'"é😀', 'n': [1, 1.0, none, false]}|tojson }} {{ 'é😀\\n\\t\\u0001'|tojson(ensure_ascii=true) }} {{ {'b': 1, 'a': {'y': [], 'x': {}}}|tojson(indent=2, sort_keys=true) }} {{ [1, {'a': 2}]|tojson(separators=(',', ':')) }} {{ {'a': [1, 2]}|tojson(indent='--') }} {{ [1, 2]|tojson(indent=0) }} {{ 'x'|tojson(true, 1) }}
{% set ns = namespace(count=0, roles=[]) %}
{%- for message in messages %}
{%- if loop.index0 > 5 %}{% break %}{% endif %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- set ns.count = ns.count + 1 %}
{%- set ns.roles = ns.roles + [message.role] %}
{{ loop.index }}/{{ loop.length }} {{ loop.index0 }} {{ loop.revindex }} {{ loop.revindex0 }} first={{ loop.first }} last={{ loop.last }}{% if loop.previtem is defined %} prev={{ loop.previtem.role }}{% endif %}{% if loop.nextitem is defined %} next={{ loop.nextitem.role }}{% endif %} {{ loop.cycle('odd', 'even') }} {{ show(message.role|upper) }}: {{ message['content'] }}
{% endfor %}
count={{ ns.count }} roles={{ ns.roles }} {{ ns.roles|join(',') }}
{% for k, v in messages[0].items() %}{{ k }}={{ v|length }};{% endfor %} {{ messages[0].get('role') }} {{ messages[0].get('nope', 'fallback') }} {{ messages[0].get('nope') }} {{ messages[0].keys()|list }}
{% for i in range(3) %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %} {{ range(2, 10, 3)|list }}
more: {{ 'a' ~ true ~ none ~ 1.0 ~ 2 }} {{ {'b': 1, 'a': 2}|dictsort }} {{ {'a': 1}|items|list }} {{ (1, 'x') }} {{ [1, 2, 3][::-1] }} {{ 'abc'[1:] }} {{ messages[-1:]|length }} {{ '%s|%s'|format(true, none) }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** -1 }} {{ 1 / 3 }} {{ 'abc' * 0 }}| {{ [1] + [2] }} {{ 1 == 1.0 }} {{ '{}-{}'.format(1, 'a') }} {{ '1'|int + 1 }} {{ 'abc'|int }} {{ '3.5'|float }} {{ [3, 1]|sort(reverse=true) }} {{ dict(a=1) }} {{ namespace(a=1).a }} {{ 'A' if false }}| {{ x|default }}| {{ messages|selectattr('role', 'eq', 'user')|map(attribute='role')|list }} {{ messages|rejectattr('role', 'in', ['system'])|list|length }} {{ messages|map(attribute='content')|map('length')|list }}
{%- set a, b = 1, 2 %} {{ a }}{{ b }}
{%- macro f(a, b='d') %}{{ a }}{{ b }}{% endmacro %} {{ f(1) }}{{ f(1, b=2) }}
{%- filter upper %} abc{% endfilter %}
{%- set blk %} x{{ messages|length }}y {% endset %} [{{ blk }}]
{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %} {{ 'x' in {'x': 1} }} {{ messages[0].role|default('x', true) }} {{ [none, '', 0, 'a']|select|list }} {{ ['a', 'B']|map('upper')|join }}
{%- if messages[-1].role == 'assistant' and not add_generation_prompt %}
{{ raise_exception('semantics: last message is from the assistant (' ~ messages[-1].content[:10] ~ ')') }}
{%- endif %}
{% if add_generation_prompt %}GEN{% endif %}
"""

# Whitespace control: trim_blocks, lstrip_blocks, `-`/`+` markers, comments, indented blocks.
WHITESPACE = """{# a comment on its own line #}
  {# an indented comment #}
{% for message in messages %}
    {% if message.role == 'system' %}
        [SYS] {{ message.content }}
    {% elif loop.last %}
		{% if add_generation_prompt %}
        [LAST+GEN] {{ message.content -}}   
        {% else %}
        [LAST] {{- message.content }}
        {%- endif %}
    {% else %}
    {%+ if true %}[{{ message.role }}]{% endif +%}
 {{ message.content }}   {% raw %}{% generation %}{{ keep }}{% endraw %}
    {% endif %}
{% endfor %}
  {%- if add_generation_prompt %}
assistant:
  {% endif %}
end
"""

# Corner cases of jinja2 semantics, one probe per line.
EDGE_PROBES = """{{ messages[0].content[0] }}|{{ messages[0]['nope'] }}|{{ messages[0].nope is defined }}|{{ 'abc'|first }}{{ 'abc'|last }}|{{ []|first }}|
{{ 'a\\nb'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|
{{ messages|length > 1 and messages[1].role == 'user' }} {{ messages[0].content.split('\\n')|length }} {{ 'a' < 'B' }} {{ none == none }} {{ [] == [] }} {{ 'x' if messages else 'y' }}
{{ (messages|selectattr('role', 'equalto', 'system')|list)[0].content if messages|selectattr('role', 'equalto', 'system')|list else '-' }}
{{ messages|groupby('role')|map(attribute='grouper')|list }} {{ messages|map(attribute='role')|unique|list }}
{{ [1, 2, 3]|batch(2)|list }} {{ [1, 2, 3]|slice(2)|list }}
{{ messages|selectattr('tool_calls', 'defined')|list|length }} {{ messages|selectattr('tool_calls')|list|length }} {{ messages|rejectattr('content')|list|length }}
{{ 'aab'|replace('a', 'x', 1) }} {{ 42|string|length }} {{ 1.5|int }} {{ -1.5|int }} {{ '0x1f'|int(0, 16) }} {{ ' 7 '|int }} {{ true|int }} {{ '2.5'|float }} {{ 'x'|float }}
{{ 1 + 1.0 }} {{ 2 * 3.0 }} {{ 7 / 7 }} {{ 2 ** 0.5 }} {{ 10 ** 20 }} {{ 2 ** 70 }}
{{ 'abc'.find('c') }} {{ 'aXbX'.count('X') }} {{ 'abc'.endswith('bc') }} {{ '   '.isspace() }} {{ 'ab1'.isalnum() }} {{ 'Ab'.islower() }} {{ 'AB'.isupper() }} {{ '12'.isdigit() }}
{{ 'a b'.split(' ') }} {{ 'a,,b'.split(',') }} {{ ''.split() }} {{ ''.split(',') }} {{ 'a\\n\\nb\\n'.splitlines() }} {{ 'a\\nb'.splitlines(true) }} {{ 'a  b c'.rsplit(None, 1) }}
{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role[0] }}{% else %}empty{% endfor %}
{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {{ loop is defined }}
{{ {'a': none}|tojson }} {{ 1e-7|tojson }} {{ (0.1 + 0.2)|tojson }} {{ 1e16|tojson }} {{ 'x'|list|tojson }} {{ {'a': 1}.items()|list|tojson }}
{{ 'é'|upper }} {{ 'ǆemal'.title() }} {{ 'ΣΑΣ'|lower }} {{ 'ǆemal'|capitalize }} {{ 'hello-world foo(bar)'|title }} {{ 'hello-world foo(bar)'.title() }}
{{ namespace(a=[1]).a + [2] }} {{ messages[0] == messages[0] }} {{ 3 in [1, 2, 3] }} {{ 'role' in messages[0].keys() }} {{ messages[0].values()|list|length }}
{{ '%-5s|%05.1f|%d%%'|format('ab', 3.14159, 7) }} {{ '%s'|format([1, 'a']) }}
{{ [1, [2, [3]]] }} {{ {'a': {'b': {}}} }} {{ {1: 'int key'} }}
{% set x = 5 %}{% if x is divisibleby(5) %}div{% endif %} {{ 'A'|lower is lower }} {{ 1 if true else 2 }}
{{ "multi
line" }} {{ '\\u00e9' }} {{ '\\x41' }} {{ '\\t'|length }} {{ "it\\'s" }}
{{ messages|last|tojson(indent=1) }}
{{ 'abc'|center(8) }}|{{ 'abc'|center(9) }}|{{ 'ab'|center(7) }}|{{ messages[0].content|truncate(12) }}|{{ messages[0].content|truncate(12, true) }}|{{ messages[0].content|truncate(10, end='…', leeway=0) }}|{{ messages[0].content|wordcount }}
"""

EXTRA_TEMPLATES = [
    ("inline:smollm2-chatml", SMOLLM2_CHATML),
    ("inline:llama-3-style", LLAMA3_STYLE),
    ("inline:generation-chatml", GENERATION_CHATML),
    ("inline:python-semantics", PYTHON_SEMANTICS),
    ("inline:whitespace", WHITESPACE),
    ("inline:edge-probes", EDGE_PROBES),
]

# ---------------------------------------------------------------------------------------------
# transformers' jinja environment (transformers/utils/chat_template_utils.py), replicated.
# ---------------------------------------------------------------------------------------------


class AssistantTracker(Extension):
    """transformers' `{% generation %}` tag: a CallBlock whose caller's output is returned as is."""

    tags = {"generation"}

    def __init__(self, environment: ImmutableSandboxedEnvironment):
        super().__init__(environment)
        self._rendered_blocks = None
        self._generation_indices = None

    def parse(self, parser: jinja2.parser.Parser) -> nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context: jinja2.nodes.EvalContext, caller: jinja2.runtime.Macro) -> str:
        rv = caller()
        if self.is_active():
            start_index = len("".join(self._rendered_blocks))
            end_index = start_index + len(rv)
            self._generation_indices.append((start_index, end_index))
        return rv

    def is_active(self) -> bool:
        return self._rendered_blocks or self._generation_indices


def make_environment(now: datetime.datetime) -> ImmutableSandboxedEnvironment:
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return now.strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def template_line(exc: BaseException):
    """The template line jinja2 reports for an exception (its rewritten traceback), if any."""
    lineno = getattr(exc, "lineno", None)
    if lineno is not None:
        return lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


def fixture_templates(fixture: pathlib.Path):
    registry = json.loads(fixture.read_text(encoding="utf-8"))
    out = []
    for entry in registry:
        template = entry.get("model_config", {}).get("custom_chat_template")
        if template:
            out.append((entry["model_name"], template))
    return out


def main() -> None:
    fixture = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FIXTURE
    data = json.loads(CONVERSATIONS.read_text(encoding="utf-8"))
    now = datetime.datetime.fromisoformat(data["now"])
    env = make_environment(now)
    templates = fixture_templates(fixture)
    assert len(templates) == 23, f"expected 23 custom chat templates in {fixture}, found {len(templates)}"
    templates += EXTRA_TEMPLATES

    cases = []
    for model_name, source in templates:
        compiled = env.from_string(source)
        for conversation in data["conversations"]:
            for add_generation_prompt in (True, False):
                case = {
                    "model_name": model_name,
                    "conversation_id": conversation["id"],
                    "add_generation_prompt": add_generation_prompt,
                }
                kwargs = dict(data["special_tokens"])
                kwargs.update(conversation.get("variables", {}))
                tools = kwargs.pop("tools", None)
                documents = kwargs.pop("documents", None)
                try:
                    case["expected"] = compiled.render(
                        messages=conversation["messages"],
                        tools=tools,
                        documents=documents,
                        add_generation_prompt=add_generation_prompt,
                        **kwargs,
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is a golden too
                    case["error"] = str(exc)
                    case["error_type"] = type(exc).__name__
                    case["error_line"] = template_line(exc)
                cases.append(case)

    OUTPUT.write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    inline = {name: source for name, source in EXTRA_TEMPLATES}
    INLINE_OUTPUT.write_text(json.dumps(inline, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum(1 for c in cases if "error" in c)
    print(f"{len(templates)} templates, {len(cases)} cases ({errors} errors) -> {OUTPUT}")


if __name__ == "__main__":
    main()
