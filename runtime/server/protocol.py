"""Request models of the OpenAI-compatible routes (pydantic). Range checks live here so a bad
value is reported under the OpenAI field name; responses are built as plain dicts in
openai_api.py. Unknown fields are ignored, as OpenAI-style servers commonly do."""
from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

TokenIds = list[int]


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    strict: Optional[bool] = None  # accepted; the schema is always enforced


class ResponseFormat(BaseModel):
    """OpenAI's response_format: "text" (no constraint), "json_object" (any JSON object),
    "json_schema" (the given schema; enforced by the grammar backend)."""
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions, SGLang extras included."""
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: Optional[Union[str, list[str]]] = None
    stop_regex: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    logit_bias: Optional[dict[str, float]] = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    user: Optional[str] = None
    # SGLang extras
    top_k: int = Field(-1, ge=-1)
    min_p: float = Field(0.0, ge=0, le=1)
    min_tokens: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0, le=2)
    regex: Optional[str] = None
    json_schema: Optional[str] = None
    ebnf: Optional[str] = None
    ignore_eos: bool = False
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    rid: Optional[str] = None
    response_format: Optional[ResponseFormat] = None

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (off) or >= 1")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        for key, bias in (v or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias for token {key} must be in [-100, 100], got {bias}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Optional[Union[str, list[str]]]) -> Optional[Union[str, list[str]]]:
        if v is not None and any(not s for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("stop strings must not be empty")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    max_tokens: Optional[int] = Field(16, ge=0)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must not be an empty list")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: Optional[str]) -> Optional[str]:
        if v:
            raise ValueError("suffix is not supported")
        return v


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Optional[str] = None


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: Union[str, dict[str, Any]]


class MessageToolCall(BaseModel):
    """A past call in an assistant message of the history."""
    model_config = ConfigDict(extra="ignore")
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[MessageToolCall]] = None
    tool_call_id: Optional[str] = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text":
                raise ValueError(f"content part type {part.type!r} is not supported (text only)")
        return "".join(part.text or "" for part in self.content)


_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None  # accepted; forced calls always follow the schema

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _FUNCTION_NAME.fullmatch(v):
            raise ValueError("must be 1-64 characters of a-z, A-Z, 0-9, _ and -")
        return v

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        if v:
            check_json_schema(v)
        return v


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class NamedToolChoice(BaseModel):
    """tool_choice={"type": "function", "function": {"name": ...}}: call exactly that one."""
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: ChosenFunction


def check_json_schema(schema: Any) -> None:
    """ValueError when `schema` is not a valid JSON schema (jsonschema's meta-schema check)."""
    import jsonschema
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"invalid JSON schema: {e.message}") from None


# apply_chat_template's own arguments, which chat_template_kwargs may not override
_RENDER_ARGS = {"conversation", "messages", "tools", "documents", "chat_template", "tokenize",
                "add_generation_prompt", "continue_final_message", "return_dict", "padding",
                "truncation", "max_length", "return_tensors", "tokenizer_kwargs",
                "return_assistant_tokens_mask"}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    continue_final_message: bool = False
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: bool = True
    chat_template_kwargs: Optional[dict[str, Any]] = None
    separate_reasoning: bool = True   # with --reasoning-parser: reasoning_content apart
    stream_reasoning: bool = True     # stream reasoning_content as it comes (else in one piece)

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        taken = sorted(set(v or {}) & _RENDER_ARGS)
        if taken:
            raise ValueError(f"{taken} are set by the server, not through chat_template_kwargs")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: Optional[list[Tool]]) -> Optional[list[Tool]]:
        names = [t.function.name for t in v or []]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"function names must be unique; {dup!r} appears twice")
        return v

    @property
    def num_new_tokens(self) -> Optional[int]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens
