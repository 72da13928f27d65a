"""Makes cleaning.json: output-cleaning cases with the results of clemcore's own cleaning code path.

The function below is clemcore 3.7's `split_and_clean_batch_outputs` + `split_and_clean_cot_output`
(clemcore/backends/huggingface_local_api.py) reduced to the string operations; the re-tokenizing of the CoT
answer is left out (every case is shorter than max_tokens, where it only round-trips the text).
Run: python3 make_cleaning_goldens.py  (Python 3.11, standard library only)
"""
import json
import re
from pathlib import Path


def clemcore_clean(model_output, prompt_text, cfg, pad_token=None):
    response_text = model_output.replace(prompt_text, '').strip()
    if 'output_split_prefix' in cfg:
        prefix = cfg['output_split_prefix']
        if prefix in response_text:
            response_text = response_text.rsplit(prefix, maxsplit=1)[1]
    if pad_token is not None and (response_text.startswith(pad_token) or response_text.endswith(pad_token)):
        response_text = response_text.replace(pad_token, "")
    response_text = re.sub(cfg['eos_to_cull'], "", response_text)
    cot_content = None
    if cfg.get('cot_output'):
        if cfg.get('cot_start_tag'):
            response_text = response_text.replace(cfg['cot_start_tag'], "")
        parts = re.split(cfg['cot_end_tag'], response_text)
        cot_content = parts[0]
        answer = parts[-1] if len(parts) >= 2 else ""
        response_text = answer.strip()
    return response_text, cot_content


IM = {"eos_to_cull": "<\\|im_end\\|>"}
GEMMA = {"eos_to_cull": "<end_of_turn>\n*<eos>"}
QWQ = {"eos_to_cull": "<\\|im_end\\|>", "cot_output": True, "cot_start_tag": "<think>", "cot_end_tag": "</think>"}
GPTOSS = {"eos_to_cull": "<\\|return\\|>", "cot_output": True, "cot_start_tag": "<|channel|>analysis<|message|>",
          "cot_end_tag": "<\\|end\\|><\\|start\\|>assistant(<\\|channel\\|>commentary to=assistant)*<\\|channel\\|>final<\\|message\\|>"}
P = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

CASES = [
    ("chatml", P + "GREET: Hello<|im_end|>", P, IM, None),
    ("eos in the middle too", P + "a<|im_end|>b<|im_end|>", P, IM, None),
    ("no eos", P + "plain answer", P, IM, None),
    ("surrounding whitespace", P + "  \n spaced \t<|im_end|>\n", P, IM, None),
    ("python-only whitespace \\x1c", P + "\x1cword\x1f", P, IM, None),
    ("unicode", P + "Grüße, 東京 👋<|im_end|>", P, IM, None),
    ("prompt twice", P + "echo " + P + "x<|im_end|>", P, IM, None),
    ("empty prompt", "just text<|im_end|>", "", IM, None),
    ("gemma eos with newlines", "<bos>u\nreply<end_of_turn>\n\n<eos>", "<bos>u\n", GEMMA, None),
    ("gemma eos without newlines", "<bos>u\nreply<end_of_turn><eos>", "<bos>u\n", GEMMA, None),
    ("split prefix last occurrence", "USER: q ASSISTANT: a ASSISTANT: final</s>", "USER: q",
     {"eos_to_cull": "</s>", "output_split_prefix": "ASSISTANT:"}, None),
    ("split prefix absent", "USER: q reply</s>", "USER: q", {"eos_to_cull": "</s>", "output_split_prefix": "assistant\n"}, None),
    ("split prefix newline", "system\nuser\nq\nassistant\nthe answer<|eot_id|>", "x",
     {"eos_to_cull": "<\\|eot_id\\|>", "output_split_prefix": "assistant\n"}, None),
    ("empty eos pattern", "P answer", "P", {"eos_to_cull": ""}, None),
    ("dollar anchors before final newline", "P answer END\n", "P", {"eos_to_cull": "END$"}, None),
    ("dollar at very end", "P answer END", "P", {"eos_to_cull": " END$"}, None),
    ("backslash Z", "P answer END\n", "P", {"eos_to_cull": "END\\Z"}, None),
    ("lookbehind", "P x</s> y</s>", "P", {"eos_to_cull": "(?<=y)</s>"}, None),
    ("backreference", "P <a>x</a><b>y</b>", "P", {"eos_to_cull": "<(\\w)>|</(\\w)>"}, None),
    ("brace literal", "P a{b}c", "P", {"eos_to_cull": "{b}"}, None),
    ("counted repeat", "P xxxxx!", "P", {"eos_to_cull": "x{2,3}"}, None),
    ("pad tokens at start", "<pad><pad>P reply</s>", "P", {"eos_to_cull": "</s>"}, None),
    ("left padding removed", "<pad><pad>Preply</s>", "P", {"eos_to_cull": "</s>"}, "<pad>"),
    ("pad inside only is kept", "Pre<pad>ply", "P", {"eos_to_cull": "</s>"}, "<pad>"),
    ("cot think", P + "<think>\nreasoning here\n</think>\n\nThe answer<|im_end|>", P, QWQ, None),
    ("cot end never came", P + "<think>still thinking", P, QWQ, None),
    ("cot twice takes last", P + "a</think>b</think> c<|im_end|>", P, QWQ, None),
    ("cot tag in template", P + "reasoning</think>answer<|im_end|>", P, QWQ, None),
    ("gpt-oss final channel", "<|start|>assistant<|channel|>analysis<|message|>think think<|end|><|start|>assistant<|channel|>final<|message|>Paris<|return|>",
     "<|start|>assistant", GPTOSS, None),
    ("gpt-oss with commentary", "X<|channel|>analysis<|message|>t<|end|><|start|>assistant<|channel|>commentary to=assistant<|channel|>final<|message|>ok<|return|>",
     "X", GPTOSS, None),
]


def main():
    out = []
    for name, output, prompt, cfg, pad in CASES:
        text, cot = clemcore_clean(output, prompt, cfg, pad)
        out.append({"name": name, "output": output, "prompt": prompt, "model_config": cfg, "pad_token": pad,
                    "response_text": text, "cot_content": cot})
    path = Path(__file__).with_name("cleaning.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(out)} cases to {path}")


if __name__ == "__main__":
    main()
