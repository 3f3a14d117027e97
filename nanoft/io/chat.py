"""Chat templates in plain Python: a list of messages -> the one string a chat model was fine-tuned on.

    render_chat(tok.chat_template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)

A model's chat template is a Jinja program stored with its tokenizer (tokenizer_config.json, or the GGUF key
tokenizer.chat_template). nanoft does not run Jinja: it recognises which of two formats a template writes and
writes that format itself (tests/test_chat.py checks the strings against transformers' Jinja rendering).

    ChatML (SmolLM2, Qwen2.5):   <|im_start|>system\\nYou are ...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n
        each message as <|im_start|>{role}\\n{content}<|im_end|>\\n. A template may carry a default system message
        that it writes when the first message is not one (SmolLM2's: "You are a helpful AI assistant named SmolLM,
        trained by Hugging Face").
    Llama 3:  <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>
        each message as <|start_header_id|>{role}<|end_header_id|>\\n\\n{content stripped}<|eot_id|>. Llama 3.1 and
        later always open with a system message that carries two dates ("Cutting Knowledge Date: December 2023\\n
        Today Date: 07 Dec 2026\\n\\n") before the caller's system text.
add_generation_prompt=True ends the string with the header of an assistant turn, so that generation writes the answer.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Optional

SUPPORTED = "ChatML (SmolLM2, Qwen2.5) and Llama 3 / 3.1+"
ROLES = ("system", "user", "assistant")


@dataclass
class ChatFormat:
    name: str                                 # "chatml" or "llama3"
    default_system: Optional[str] = None      # ChatML: the system message written when the first message is not one
    knowledge_date: Optional[str] = None      # Llama 3.1+: "December 2023" (None: Llama 3.0, no system preamble)
    default_date: Optional[str] = None        # Llama 3.1+: the template's "Today Date" when it does not read the clock
    date_from_clock: bool = False             # Llama 3.2: today's date (strftime_now("%d %b %Y") in the template)


def _jinja_string(literal: str) -> str:
    """The text of a Jinja string literal's inside: backslash escapes like \\n resolved."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), literal)


def chat_format(template: str) -> ChatFormat:
    """Which format a chat template writes, with the constants it fills in; an unknown template is an error."""
    if not isinstance(template, str) or not template:
        raise ValueError("this tokenizer has no chat template: pass chat_template= (a Jinja template string in "
                         f"one of the formats nanoft renders: {SUPPORTED})")
    if "<think>" in template or "<|im_start|>" not in template and "<|start_header_id|>" not in template:
        start = " ".join(template.split())[:80]
        raise ValueError(f"unsupported chat template ({start!r}...): nanoft renders {SUPPORTED} templates; render "
                         "this one with transformers' apply_chat_template, or set tokenizer.chat_template to one of "
                         "those")
    if "<|im_start|>" in template:
        # the default system message is a string literal: '<|im_start|>system\n...<|im_end|>' (or "...")
        found = re.search(r"""(['"])<\|im_start\|>system(?:\n|\\n)((?:(?!\1)[^\\]|\\.)*?)<\|im_end\|>""", template)
        return ChatFormat("chatml", default_system=None if found is None else _jinja_string(found.group(2)))
    knowledge = re.search(r"Cutting Knowledge Date: ([^\"'\\\n]+)", template)
    if knowledge is None:
        return ChatFormat("llama3")
    default_date = re.search(r"""set date_string = ['"]([^'"]+)['"]""", template)
    return ChatFormat("llama3", knowledge_date=knowledge.group(1),
                      default_date=None if default_date is None else default_date.group(1),
                      date_from_clock="strftime_now" in template)


def _check(messages):
    if not messages:
        raise ValueError("no messages to render: pass a list like [{'role': 'user', 'content': 'Hi'}]")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"bad chat message {str(m)[:100]}: each message is a dict with 'role' one of {ROLES} "
                             "and 'content' a string (tool calls are not rendered by nanoft)")


def render_chat(template, messages, add_generation_prompt: bool = False, bos_token: str = "",
                date_string: Optional[str] = None) -> str:
    """The chat as the model's template writes it. `template` is the Jinja text or a ChatFormat; `bos_token` is
    written where Llama 3 templates write it; `date_string` ("26 Jul 2024") overrides Llama 3.1+'s Today Date."""
    fmt = template if isinstance(template, ChatFormat) else chat_format(template)
    _check(messages)
    if fmt.name == "chatml":
        if messages[0]["role"] != "system" and fmt.default_system is not None:
            messages = [{"role": "system", "content": fmt.default_system}] + list(messages)
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def turn(role, content):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"

    text = bos_token
    if fmt.knowledge_date is not None:
        # Llama 3.1+: the first turn is always a system turn, with the dates ahead of the caller's system message
        system = ""
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"].strip(), messages[1:]
        if date_string is None:
            date_string = time.strftime("%d %b %Y") if fmt.date_from_clock else (fmt.default_date or "26 Jul 2024")
        text += turn("system", f"Cutting Knowledge Date: {fmt.knowledge_date}\nToday Date: {date_string}\n\n{system}")
    text += "".join(turn(m["role"], m["content"].strip()) for m in messages)  # Jinja's trim is Python's strip
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")
