"""OpenAI-compatible routes as adapters over the native front end: a request becomes a /generate
object (prompt or chat template -> ids, OpenAI params -> SGLang sampling params), results become
OpenAI response and stream-chunk dicts."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from sgl.runtime.disaggregation.messages import BOOTSTRAP_FIELDS
from sgl.runtime.grammar import ANY_JSON_OBJECT, validate
from sgl.runtime.reasoning_parser import prompt_opens_reasoning
from sgl.runtime.server import openai_format as fmt
from sgl.runtime.server import tools as tl
from sgl.runtime.server.errors import ApiError, from_value_error, pydantic_error, read_json
from sgl.runtime.server.protocol import ChatCompletionRequest, CompletionRequest, ResponseFormat
from sgl.runtime.server.streaming import collect, error_event, sse, sse_response, stream_results

# Internal names in parse errors -> the OpenAI field the client actually sent.
_COMPLETION_ALIASES = {"sampling_params.max_new_tokens": "max_tokens",
                       "sampling_params.min_new_tokens": "min_tokens", "sampling_params.": "",
                       "input_ids": "prompt", "text": "prompt"}
_CHAT_ALIASES = {**_COMPLETION_ALIASES, "input_ids": "messages", "text": "messages"}


class OpenAIServing:
    def __init__(self, front: Any, model_names: list[str], context_len: int,
                 chat_template: Optional[str] = None, tool_call_parser: Optional[str] = None,
                 model_path: str = "", reasoning_parser: Optional[str] = None) -> None:
        self.front, self.model_names = front, model_names
        self.reasoning_parser = reasoning_parser
        self.context_len, self.chat_template = context_len, chat_template
        self.created = int(time.time())
        name = tool_call_parser or tl.default_parser_name(model_path, self._template_text())
        self.tool_parser = tl.parser_class(name)

    @classmethod
    def from_context(cls, ctx: Any) -> OpenAIServing:
        """From the HTTP server's ServerContext."""
        return cls(ctx.front, ctx.model_names, ctx.info["context_length"], ctx.chat_template,
                   ctx.args.tool_call_parser, ctx.model_path, ctx.args.reasoning_parser)

    def models(self) -> dict[str, Any]:
        name = self.model_names[0]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created,
                                            "owned_by": "sgl", "root": name,
                                            "max_model_len": self.context_len}]}

    # -- /v1/completions -------------------------------------------------------------------
    async def completions(self, request: Request) -> Any:
        req = self._validate(CompletionRequest, await read_json(request))
        obj = {"sampling_params": self._sampling(req, req.max_tokens), "rid": req.rid,
               "stream": req.stream, **_bootstrap(req)}
        if isinstance(req.prompt, str) or isinstance(req.prompt[0], str):
            obj["text"] = req.prompt
        else:
            obj["input_ids"] = req.prompt
        if req.logprobs is not None:
            obj.update(return_logprob=True, top_logprobs_num=req.logprobs,
                       return_text_in_logprobs=True, logprob_start_len=0 if req.echo else -1)
        parsed = await self._parse(obj, _COMPLETION_ALIASES)
        echoes = self._echo_texts(req, parsed) if req.echo else None
        view = fmt.CompletionView(req, f"cmpl-{uuid.uuid4().hex}", self.model_names[0], echoes)
        if req.stream:
            return await sse_response(request, self._stream(view, obj, parsed))
        results = await collect(request, self.front, obj, parsed)
        return JSONResponse(view.response(results))

    def _echo_texts(self, req: CompletionRequest, parsed: Any) -> list[str]:
        if isinstance(req.prompt, str):
            return [req.prompt]
        if isinstance(req.prompt[0], str):
            return list(req.prompt)
        tokenizer = self.front.tokenizer
        return [tokenizer.decode(ids) if tokenizer else "" for ids in parsed.prompts]

    # -- /v1/chat/completions --------------------------------------------------------------
    async def chat(self, request: Request) -> Any:
        req = self._validate(ChatCompletionRequest, await read_json(request))
        plan = tl.plan_tools(req, self.tool_parser, self.front.grammar_backend)
        max_new = req.num_new_tokens if req.num_new_tokens is not None else self.context_len
        sampling = self._sampling(req, max_new)
        if plan is not None:
            plan.apply(sampling)
        prompt = self._chat_prompt(req, plan)
        obj = {"input_ids": await self.front.off_loop(self.front.tokenize, prompt), "sampling_params": sampling,
               "rid": req.rid, "stream": req.stream, **_bootstrap(req)}
        if req.logprobs:
            obj.update(return_logprob=True, top_logprobs_num=req.top_logprobs or 0,
                       return_text_in_logprobs=True)
        elif req.top_logprobs:
            raise ApiError("top_logprobs requires logprobs=true", param="top_logprobs")
        parsed = await self._parse(obj, _CHAT_ALIASES)
        view = fmt.ChatView(req, f"chatcmpl-{uuid.uuid4().hex}", self.model_names[0],
                            plan.parser if plan is not None else None,
                            self._reasoning(req, prompt))
        if req.stream:
            return await sse_response(request, self._stream(view, obj, parsed))
        results = await collect(request, self.front, obj, parsed)
        return JSONResponse(view.response(results))

    def _reasoning(self, req: ChatCompletionRequest, prompt: str) -> Optional[fmt.Reasoning]:
        """How to split reasoning from the answer: only with --reasoning-parser and when the
        request wants it apart; the output starts inside the reasoning when the template
        opened the think block at the end of the prompt."""
        name = self.reasoning_parser
        if name is None or not req.separate_reasoning:
            return None
        return fmt.Reasoning(name, prompt_opens_reasoning(prompt, name) or None,
                             req.stream_reasoning)

    def _chat_prompt(self, req: ChatCompletionRequest, plan: Optional[tl.ToolPlan]) -> str:
        tokenizer = self.front.tokenizer
        if tokenizer is None:
            raise ApiError("chat needs a tokenizer; the server runs with --skip-tokenizer-init",
                           param="messages")

        def render(messages: list[dict[str, Any]], tools: Optional[list] = None) -> str:
            return tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False,
                add_generation_prompt=not req.continue_final_message,
                continue_final_message=req.continue_final_message, chat_template=self.chat_template,
                **(req.chat_template_kwargs or {}))
        try:
            messages = self._messages(req, plan)
            if plan is None or not plan.offered:
                text = render(messages)
            else:
                text = tl.render_with_tools(render, messages, plan.offered, plan.parser)
        except Exception as e:  # template errors (jinja raise_exception, bad role order, ...)
            raise ApiError(f"messages: cannot apply the chat template: {e}",
                           param="messages") from None
        return text

    def _messages(self, req: ChatCompletionRequest, plan: Optional[tl.ToolPlan]) -> list[dict]:
        native = "tool_calls" in (self._template_text() or "")
        parser = plan.parser if plan is not None else self.tool_parser()
        return tl.template_messages(req.messages, native, parser)

    def _template_text(self) -> Optional[str]:
        template = self.chat_template or getattr(self.front.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    # -- shared ----------------------------------------------------------------------------
    def _validate(self, model: type, obj: dict[str, Any]) -> Any:
        try:
            req = model.model_validate(obj, strict=True)
        except ValidationError as e:
            raise pydantic_error(e) from None
        if req.model not in self.model_names:
            raise ApiError(f"model {req.model!r} does not exist; this server serves "
                           f"{self.model_names[0]!r}", param="model", code="model_not_found")
        return req

    async def _parse(self, obj: dict[str, Any], aliases: dict[str, str]) -> Any:
        try:
            return await self.front.parse_async({k: v for k, v in obj.items() if v is not None})
        except ValueError as e:
            raise from_value_error(e, aliases) from None

    def _sampling(self, req: Any, max_new_tokens: Optional[int]) -> dict[str, Any]:
        json_schema = self._response_format(req.response_format)
        if json_schema is not None and req.json_schema is not None:
            raise ApiError("give response_format or json_schema, not both",
                           param="response_format")
        json_schema = json_schema or req.json_schema
        sp = {"max_new_tokens": max_new_tokens, "min_new_tokens": req.min_tokens,
              "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
              "min_p": req.min_p, "frequency_penalty": req.frequency_penalty,
              "presence_penalty": req.presence_penalty,
              "repetition_penalty": req.repetition_penalty,
              "stop": req.stop, "stop_regex": req.stop_regex, "stop_token_ids": req.stop_token_ids, "ignore_eos": req.ignore_eos,
              "skip_special_tokens": req.skip_special_tokens, "no_stop_trim": req.no_stop_trim,
              "seed": req.seed, "n": req.n, "logit_bias": req.logit_bias, "regex": req.regex,
              "json_schema": json_schema, "ebnf": req.ebnf}
        return {k: v for k, v in sp.items() if v is not None}

    def _response_format(self, rf: Optional[ResponseFormat]) -> Optional[str]:
        """response_format -> the json_schema sampling param, checked here so that a bad schema
        is a 400 naming response_format."""
        if rf is None or rf.type == "text":
            return None
        if self.front.grammar_backend == "none":
            raise ApiError("response_format needs a grammar backend; the server runs with "
                           "--grammar-backend none", param="response_format")
        if rf.type == "json_object":
            return ANY_JSON_OBJECT
        if rf.json_schema is None:
            raise ApiError("response_format: type 'json_schema' needs a `json_schema` object "
                           "({name, schema, strict})", param="response_format")
        if rf.json_schema.schema_ is None:
            return ANY_JSON_OBJECT
        text = json.dumps(rf.json_schema.schema_)
        try:
            validate("json", text, self.front.grammar_backend)
        except ValueError as e:
            raise ApiError(f"response_format.json_schema.schema: {e}",
                           param="response_format") from None
        return text

    async def _stream(self, view: Any, obj: dict[str, Any], parsed: Any) -> AsyncIterator[str]:
        last, num_sent = None, 0
        try:
            async for results in stream_results(self.front, obj, parsed):
                last = results
                for chunk in view.chunks(results):
                    num_sent += 1
                    yield sse(chunk)
            if view.req.include_usage and last is not None:
                yield sse(view.usage_chunk(last))
        except Exception as e:
            if not num_sent:  # no headers sent yet: an error status (sse_response)
                raise
            yield error_event(e)  # headers are sent: report in-band, then end the stream
        yield "data: [DONE]\n\n"


def _bootstrap(req: Any) -> dict[str, Any]:
    """The bootstrap fields a PD router added, passed on to the native request."""
    return {name: getattr(req, name) for name in BOOTSTRAP_FIELDS if getattr(req, name) is not None}
