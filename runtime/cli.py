"""The `sgl` command: `sgl generate "prompt"`, `sgl serve [flags]`, `sgl router [flags]`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

from sgl.runtime.config import ServerArgs


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sgl {generate,serve,router} ...\n\n"
              "  generate  print a completion of a prompt\n"
              "  serve     start the HTTP server (SGLang and OpenAI routes)\n"
              "  router    balance requests over several sgl servers")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "generate":
        return generate_main(rest)
    if cmd == "serve":
        from sgl.runtime.server.launch import run_as_command
        run_as_command(rest)  # never returns: the process ends with the server
    if cmd == "router":
        from sgl.runtime.router import main as router_main
        return router_main(rest)
    print(f"sgl: unknown command {cmd!r}; try `sgl --help`", file=sys.stderr)
    return 2


def generate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sgl generate", description="Print a completion of PROMPT.")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--chat", action="store_true", help="Wrap the prompt in the model's chat template.")
    parser.add_argument("--json", action="store_true", help="Print the whole result as JSON.")
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO) if args.log_requests else logging.WARNING)
    from sgl.runtime.engine import Engine
    server_args = ServerArgs.from_cli_args(args)
    params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
              "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}
    with Engine(**{k: v for k, v in vars(server_args).items()}) as engine:
        prompt = args.prompt
        if args.chat:
            prompt = engine.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        out = engine.generate(prompt, params)
    print(json.dumps(out, indent=2) if args.json else out["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
