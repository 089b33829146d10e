"""One program, three backends: the in-process engine, an sgl/SGLang server (native /generate)
and any OpenAI-compatible endpoint (for example `sgl serve`'s /v1 routes).

    python examples/switch_backends.py                                # local engine
    python examples/switch_backends.py --backend http://127.0.0.1:30000
    python examples/switch_backends.py --openai http://127.0.0.1:30000/v1 --model default
"""
from common import make_backend, parse_args

import sgl


@sgl.function
def answer(s, question):
    s += sgl.user(question + " Answer in one sentence.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=32))
    s += sgl.user("Was that answer certain? Reply yes or no.")
    s += sgl.assistant(sgl.select("certain", choices=["yes", "no"]))


def extra(parser):
    parser.add_argument("--openai", help="base URL of an OpenAI-compatible API (…/v1)")
    parser.add_argument("--model", default="default", help="model name for --openai")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--completion", action="store_true", help="use /completions instead of chat")


if __name__ == "__main__":
    args = parse_args(__doc__, extra)
    if args.openai:
        backend = sgl.OpenAI(args.model, base_url=args.openai, api_key=args.api_key or "none",
                             is_chat_model=not args.completion)
    else:
        backend = make_backend(args.backend)
    print("backend:", type(backend).__name__, backend.get_model_info().get("model_path"))
    state = answer.run(question="Why do leaves change color in autumn?", temperature=0, backend=backend)
    print("answer: ", state["answer"])
    print("certain:", state["certain"])
