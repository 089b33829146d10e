"""Chat templates: the text a role adds before and after its content.

A template is found by name (`get_chat_template`), by matching a model path
(`get_chat_template_by_model_path`), or derived from a tokenizer's own Jinja template
(`chat_template_from_jinja`), which is what the local backend uses first."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum, auto


class ChatTemplateStyle(Enum):
    PLAIN = auto()
    LLAMA2 = auto()  # the system message sits inside the first [INST] block


@dataclasses.dataclass
class ChatTemplate:
    name: str
    default_system_prompt: str | None
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    image_token: str = "<image>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN

    def get_prefix_and_suffix(self, role: str, hist_messages: list[dict]) -> tuple[str, str]:
        if role not in self.role_prefix_and_suffix:
            raise ValueError(f"chat template {self.name!r} has no role {role!r}")
        prefix, suffix = self.role_prefix_and_suffix[role]
        if self.style is ChatTemplateStyle.LLAMA2:
            first = len(hist_messages) == 0
            if role == "system" and first:
                return "<s>[INST] " + prefix, suffix
            if role == "user" and first:
                return "<s>" + prefix, suffix
            if role == "user" and len(hist_messages) == 1 and hist_messages[0]["role"] == "system":
                return "", suffix  # already inside the system message's [INST]
        return prefix, suffix

    def get_prompt(self, messages: list[dict]) -> str:
        text = ""
        for i, msg in enumerate(messages):
            prefix, suffix = self.get_prefix_and_suffix(msg["role"], messages[:i])
            text += prefix + msg["content"] + suffix
        return text


_TEMPLATES: dict[str, ChatTemplate] = {}
_MATCHERS: list[Callable[[str], str | None]] = []


def register_chat_template(template: ChatTemplate) -> None:
    _TEMPLATES[template.name] = template


def register_chat_template_matching_function(fn: Callable[[str], str | None]) -> Callable:
    _MATCHERS.append(fn)
    return fn


def get_chat_template(name: str) -> ChatTemplate:
    if name not in _TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(_TEMPLATES)}")
    return _TEMPLATES[name]


def get_chat_template_by_model_path(model_path: str | None) -> ChatTemplate:
    for fn in _MATCHERS:
        name = fn(model_path or "")
        if name is not None:
            return get_chat_template(name)
    return get_chat_template("default")


register_chat_template(ChatTemplate(
    name="default", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"),
                            "assistant": ("ASSISTANT:", "\n")}))

_CHATML_ROLES = {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user", "assistant")}
register_chat_template(ChatTemplate(
    name="chatml", default_system_prompt=None, role_prefix_and_suffix=_CHATML_ROLES,
    stop_str=("<|im_end|>",)))
register_chat_template(ChatTemplate(
    name="qwen", default_system_prompt="You are a helpful assistant.",
    role_prefix_and_suffix=_CHATML_ROLES, stop_str=("<|im_end|>",)))
register_chat_template(ChatTemplate(
    name="smollm2", role_prefix_and_suffix=_CHATML_ROLES, stop_str=("<|im_end|>",),
    default_system_prompt="You are a helpful AI assistant named SmolLM, trained by Hugging Face"))

register_chat_template(ChatTemplate(
    name="llama-3-instruct", default_system_prompt=None, stop_str=("<|eot_id|>",),
    role_prefix_and_suffix={
        r: (("<|begin_of_text|>" if r == "system" else "")
            + f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>")
        for r in ("system", "user", "assistant")}))
register_chat_template(ChatTemplate(
    name="llama-2-chat", default_system_prompt=None, style=ChatTemplateStyle.LLAMA2,
    role_prefix_and_suffix={"system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
                            "user": ("[INST] ", " [/INST]"), "assistant": ("", " </s>")}))
register_chat_template(ChatTemplate(
    name="mistral", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("[SYSTEM_PROMPT] ", " [/SYSTEM_PROMPT]"),
                            "user": ("[INST] ", " [/INST]"), "assistant": ("", " </s><s>")}))


@register_chat_template_matching_function
def _match_by_name(model_path: str) -> str | None:
    p = model_path.lower()
    rules = [(("llama-3", "instruct"), "llama-3-instruct"), (("llama3", "instruct"), "llama-3-instruct"),
             (("llama-2", "chat"), "llama-2-chat"), (("mistral", "instruct"), "mistral"),
             (("mixtral", "instruct"), "mistral"), (("smollm",), "smollm2"), (("qwen",), "qwen"),
             (("chatml",), "chatml"), (("hermes",), "chatml")]
    for needles, name in rules:
        if all(n in p for n in needles):
            return name
    return None


# --- derived from a tokenizer's Jinja template ------------------------------------------------

_MARK = {"system": "\x01SYS\x01", "user": "\x01USR\x01", "assistant": "\x01AST\x01"}


def chat_template_from_jinja(tokenizer, name: str = "tokenizer") -> ChatTemplate | None:
    """Derive per-role prefix/suffix by rendering the tokenizer's template on marker messages.
    Returns None when the template does not decompose into independent per-role pieces (e.g.
    Llama-2's system-inside-[INST]); callers then fall back to name matching."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return _derive(lambda msgs, gen=False: tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=gen), name)
    except Exception:  # any template that does not render on our markers: not decomposable
        return None


def _derive(render: Callable, name: str) -> ChatTemplate | None:
    msgs = [{"role": r, "content": _MARK[r]} for r in ("system", "user", "assistant")]
    texts = [render(msgs[:k]) for k in (1, 2, 3)]
    pieces = [texts[0], texts[1][len(texts[0]):], texts[2][len(texts[1]):]]
    if not (texts[1].startswith(texts[0]) and texts[2].startswith(texts[1])):
        return None
    roles = {}
    for msg, piece in zip(msgs, pieces):
        prefix, sep, suffix = piece.partition(msg["content"])
        if not sep or any(m in prefix + suffix for m in _MARK.values()):
            return None
        roles[msg["role"]] = (prefix, suffix)
    if render(msgs[:2], True)[len(texts[1]):] != roles["assistant"][0]:
        return None
    default_system = _default_system(render, roles)
    if default_system is False:
        return None
    stop = roles["assistant"][1].strip()
    return ChatTemplate(name=name, default_system_prompt=default_system or None,
                        role_prefix_and_suffix=roles, stop_str=(stop,) if stop else ())


def _default_system(render: Callable, roles: dict) -> str | None | bool:
    """The system prompt the template inserts when none is given; False if it does something
    else we cannot express."""
    user_only = render([{"role": "user", "content": _MARK["user"]}])
    user_piece = roles["user"][0] + _MARK["user"] + roles["user"][1]
    if user_only == user_piece:
        return None
    head = user_only[: len(user_only) - len(user_piece)]
    sys_prefix, sys_suffix = roles["system"]
    if not user_only.endswith(user_piece) or not head.startswith(sys_prefix) or not head.endswith(sys_suffix):
        return False
    return head[len(sys_prefix): len(head) - len(sys_suffix)]


register_chat_template(ChatTemplate(
    name="claude", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("", ""), "user": ("\n\nHuman: ", ""),
                            "assistant": ("\n\nAssistant:", "")}))
