"""`sgl.Engine`: the offline, in-process API. The scheduler runs on its own thread, the front end
(TokenizerManager) on an asyncio loop in another, so streams and async callers both work."""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import threading
from typing import Any, AsyncIterator, Iterator, Optional, Union

from sgl.runtime.config import ServerArgs
from sgl.runtime.executor.model_runner import ModelRunner
from sgl.runtime.executor.tensor_parallel import start_tp_workers
from sgl.runtime.loader.tokenizer import get_tokenizer
from sgl.runtime.request import ParsedRequest
from sgl.runtime.request_options import HiddenMode, RequestPolicy
from sgl.runtime.scheduler.loop import Call, run_scheduler_loop
from sgl.runtime.scheduler.scheduler import Scheduler
from sgl.runtime.tokenizer_manager import TokenizerManager

logger = logging.getLogger("sgl.engine")
Prompt = Union[str, list[str], None]


class Engine:
    """One replica in this process. Data parallelism (dp_size > 1) is the server's: its replicas
    are processes behind one front end (`sgl serve --dp-size N`, or `sgl.Runtime(dp_size=N)`)."""

    def __init__(self, model_path: Optional[str] = None, **kwargs: Any) -> None:
        self.server_args = ServerArgs.from_kwargs(model_path=model_path, **kwargs)
        if self.server_args.dp_size > 1:
            raise ValueError("sgl.Engine runs one replica in this process; dp_size > 1 is for the "
                             "server: `sgl serve --dp-size N` or sgl.Runtime(dp_size=N)")
        if self.server_args.disaggregation_mode != "null":
            raise ValueError("disaggregation_mode is for servers behind `sgl router "
                             "--pd-disaggregation`: `sgl serve --disaggregation-mode ...`")
        self._init_model()
        self._init_scheduler()
        self._init_front()

    def _init_model(self) -> None:
        self._tp_workers = self._start_tp_workers()
        args = self.server_args
        self.runner = ModelRunner(args)
        self.model_path = self.runner.model_path
        self.tokenizer = None if args.skip_tokenizer_init else get_tokenizer(
            self.model_path, args.tokenizer_path, args.trust_remote_code)

    def _start_tp_workers(self) -> list:
        """This node's follower ranks as spawned processes; this process is rank 0."""
        self.server_args, procs = start_tp_workers(self.server_args, multiprocessing.get_context("spawn"))
        return list(procs.values())

    def _init_scheduler(self) -> None:
        self.scheduler = Scheduler(self.server_args, self.runner, self.tokenizer,
                                   self.runner.loaded.eos_token_ids)
        self._inbox: "queue.Queue[Any]" = queue.Queue()
        self._stop = threading.Event()
        self._sched_thread = threading.Thread(
            target=run_scheduler_loop, args=(self.scheduler, self._inbox, self._emit, self._stop),
            name="sgl-scheduler", daemon=True)
        self._sched_thread.start()

    def _init_front(self) -> None:
        self.tm = TokenizerManager(self.tokenizer, self.runner.vocab_size, self.runner.context_len,
                                   self._inbox.put, self.server_args.grammar_backend,
                                   self.server_args.is_embedding,
                                   policy=RequestPolicy.from_args(self.server_args),
                                   matryoshka=self.runner.matryoshka)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="sgl-front", daemon=True)
        self._loop_thread.start()
        self.tm.loop = self._loop

    def _emit(self, outputs: list) -> None:
        self.tm.on_outputs(outputs)

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompt: Prompt = None, sampling_params: Union[dict, list, None] = None,
                 input_ids: Optional[list] = None, return_logprob: Union[bool, list] = False,
                 logprob_start_len: Union[int, list, None] = None,
                 top_logprobs_num: Union[int, list, None] = None,
                 return_text_in_logprobs: bool = False, stream: bool = False,
                 rid: Union[str, list, None] = None,
                 return_hidden_states: Union[HiddenMode, list[HiddenMode]] = False,
                 priority: Optional[int] = None) -> Union[dict, list, Iterator[dict]]:
        """SGLang's Engine.generate. return_hidden_states (True, "last", or one per prompt)
        needs the engine started with enable_return_hidden_states (or return_hidden_states_mode);
        priority orders admission with enable_priority_scheduling."""
        self._check_running()
        obj = _request(prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                       top_logprobs_num, return_text_in_logprobs, stream, rid,
                       return_hidden_states, priority)
        parsed = self.tm.parse(obj)  # raise ValueError here, in the caller's thread
        if stream:
            return self._stream_sync(obj, parsed)
        fut = asyncio.run_coroutine_threadsafe(_collect(self.tm, obj, parsed), self._loop)
        return fut.result()

    async def async_generate(self, prompt: Prompt = None, sampling_params: Union[dict, list, None] = None,
                             input_ids: Optional[list] = None, return_logprob: Union[bool, list] = False,
                             logprob_start_len: Union[int, list, None] = None,
                             top_logprobs_num: Union[int, list, None] = None,
                             return_text_in_logprobs: bool = False, stream: bool = False,
                             rid: Union[str, list, None] = None,
                             return_hidden_states: Union[HiddenMode, list[HiddenMode]] = False,
                             priority: Optional[int] = None) -> Union[dict, list, AsyncIterator[dict]]:
        self._check_running()
        obj = _request(prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                       top_logprobs_num, return_text_in_logprobs, stream, rid,
                       return_hidden_states, priority)
        parsed = self.tm.parse(obj)
        if stream:
            return self._stream_async(obj, parsed)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_collect(self.tm, obj, parsed), self._loop))

    def _stream_sync(self, obj: dict, parsed: ParsedRequest) -> Iterator[dict]:
        agen = self.tm.generate(obj, parsed)
        deltas = _Deltas()
        try:
            while True:
                fut = asyncio.run_coroutine_threadsafe(_anext(agen), self._loop)
                results = fut.result()
                if results is None:
                    return
                yield from deltas.chunks(results)
        finally:
            asyncio.run_coroutine_threadsafe(agen.aclose(), self._loop).result()

    async def _stream_async(self, obj: dict, parsed: ParsedRequest) -> AsyncIterator[dict]:
        agen = self.tm.generate(obj, parsed)
        deltas = _Deltas()
        try:
            while True:
                results = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_anext(agen), self._loop))
                if results is None:
                    return
                for chunk in deltas.chunks(results):
                    yield chunk
        finally:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(agen.aclose(), self._loop))

    # -- embeddings (is_embedding=True) --------------------------------------------------------
    def encode(self, prompt: Prompt = None, input_ids: Optional[list] = None,
               rid: Union[str, list, None] = None,
               dimensions: Optional[int] = None) -> Union[dict, list]:
        """{"embedding": [...], "meta_info": {...}} per prompt (a list for a batch), as SGLang's
        Engine.encode; pooled and normalized as the model's sentence-transformers files say.
        dimensions (Matryoshka-trained models only): the first `dimensions` values, renormalized
        when the model normalizes."""
        self._check_running()
        obj, parsed = self._parse_encode(prompt, input_ids, rid, dimensions)
        fut = asyncio.run_coroutine_threadsafe(_collect(self.tm, obj, parsed), self._loop)
        return fut.result()

    async def async_encode(self, prompt: Prompt = None, input_ids: Optional[list] = None,
                           rid: Union[str, list, None] = None,
                           dimensions: Optional[int] = None) -> Union[dict, list]:
        """`encode` for a running event loop (SGLang's Engine.async_encode): awaits the result
        instead of blocking the caller's loop."""
        self._check_running()
        obj, parsed = self._parse_encode(prompt, input_ids, rid, dimensions)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_collect(self.tm, obj, parsed), self._loop))

    def _parse_encode(self, prompt: Prompt, input_ids: Optional[list], rid: Union[str, list, None],
                      dimensions: Optional[int]) -> tuple[dict, ParsedRequest]:
        """The /encode body and its parse; a ValueError is raised in the caller's thread."""
        fields = {"text": prompt, "input_ids": input_ids, "rid": rid, "dimensions": dimensions}
        obj = {k: v for k, v in fields.items() if v is not None}
        return obj, self.tm.parse_encode(obj)

    # -- control ----------------------------------------------------------------------------
    def call_in_scheduler(self, fn: Any, timeout: Optional[float] = 60) -> Any:
        self._check_running()
        call = Call(fn)
        self._inbox.put(call)
        return call.future.result(timeout)

    def flush_cache(self) -> bool:
        return self.call_in_scheduler(lambda s: s.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        import dataclasses
        info = dataclasses.asdict(self.server_args)
        info.update(model_path=self.model_path, max_total_tokens=self.runner.max_total_tokens,
                    context_length=self.runner.context_len, vocab_size=self.runner.vocab_size,
                    chunked_prefill_size=self.runner.chunked_prefill_size,
                    max_running_requests=self.runner.max_running_requests, version=_version())
        return info

    def get_model_info(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "tokenizer_path": self.server_args.tokenizer_path or self.model_path,
                "is_generation": True}

    def _check_running(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("this sgl.Engine has been shut down; start a new one")

    def shutdown(self) -> None:
        """Stop the threads and release the weights, the KV pool and the CUDA graphs now, even
        if the engine object stays referenced (e.g. by the default backend)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._sched_thread.join(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=30)
        self.runner.shutdown()
        for p in self._tp_workers:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass


class _Deltas:
    """Turns cumulative results into SGLang Engine stream chunks: text and output_ids since the
    previous chunk of the same sequence; meta_info as of now."""

    def __init__(self) -> None:
        self.sent_text: dict[int, int] = {}
        self.sent_ids: dict[int, int] = {}

    def chunks(self, results: list[dict]) -> Iterator[dict]:
        for i, r in enumerate(results):
            t0, i0 = self.sent_text.get(i, 0), self.sent_ids.get(i, 0)
            text, ids = r["text"][t0:], r["output_ids"][i0:]
            if not text and not ids and r["meta_info"]["finish_reason"] is None:
                continue
            self.sent_text[i], self.sent_ids[i] = len(r["text"]), len(r["output_ids"])
            chunk = {"text": text, "output_ids": ids, "meta_info": r["meta_info"]}
            if len(results) > 1:
                chunk["index"] = i
            yield chunk


async def _collect(tm: TokenizerManager, obj: dict, parsed: ParsedRequest) -> Union[dict, list]:
    last = None
    async for results in tm.generate(obj, parsed):
        last = results
    parsed_batch = isinstance(obj.get("text"), list) or _is_batch_ids(obj.get("input_ids")) or len(last) > 1
    return last if parsed_batch else last[0]


async def _anext(agen: AsyncIterator) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None


def _is_batch_ids(ids: Any) -> bool:
    return isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)


def _request(prompt: Prompt, sampling_params: Any, input_ids: Any, return_logprob: Any,
             logprob_start_len: Any, top_logprobs_num: Any, return_text_in_logprobs: bool,
             stream: bool, rid: Any, return_hidden_states: Any, priority: Any) -> dict[str, Any]:
    obj = {"text": prompt, "input_ids": input_ids, "sampling_params": sampling_params,
           "return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
           "top_logprobs_num": top_logprobs_num, "return_text_in_logprobs": return_text_in_logprobs,
           "stream": stream, "rid": rid, "return_hidden_states": return_hidden_states,
           "priority": priority}
    return {k: v for k, v in obj.items() if v is not None}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("sgl")
    except PackageNotFoundError:
        return "0.0.0"
