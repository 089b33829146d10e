"""The published `sglang` frontend (PyPI) as the client of `sgl serve`: its RuntimeEndpoint runs
gen, batches, select (all three choice methods), fork/join in both modes, streaming through
`text_async_iter(return_meta_data=True)`, regex, json_schema, dtypes and stop_regex, and every
result is checked against a reference (direct /generate calls, sgl's own frontend, jsonschema).

sglang is installed in a venv of its own (kept in the pytest cache), with `--no-deps` plus the
small packages its frontend imports; the heavy ones it imports too (torch, numpy, pydantic...)
are read from this test venv through a `.pth` path line, which adds the folder to sys.path
without running this venv's own `.pth` files, so `sgl` itself is not importable there. The
program runs in a subprocess (tests/server/sglang_client_program.py). Skipped only when sglang
cannot be installed at all (no package index)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import sgl
from tests.server.conftest import generate

SGLANG_VERSION = "0.5.23"
# What `import sglang` needs beyond what this venv already has (found by trying the import).
FRONTEND_IMPORTS = ["orjson", "pybase64", "pillow", "msgspec", "ipython", "aiohttp", "psutil"]
PROGRAM = Path(__file__).with_name("sglang_client_program.py")
GREEDY = {"max_new_tokens": 6, "temperature": 0}
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}


def _pip(python: Path, *args: str) -> subprocess.Popen:
    """This venv's pip installing into the client's (which has none: `venv --without-pip`)."""
    return subprocess.Popen([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                             "--no-warn-conflicts", "--disable-pip-version-check", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="session")
def sglang_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Path:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    name = f"sglang-client-{SGLANG_VERSION}"
    root = Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)
    python = root / "venv" / "bin" / "python"
    ready = root / "ready"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(root / "venv")],
                       check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                  "get_paths()['purelib'])"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        Path(purelib, "zz_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # sglang itself (without its server's dependencies) and what its frontend imports, at once
        client, imports = _pip(python, "--no-deps", f"sglang=={SGLANG_VERSION}"), _pip(python, *FRONTEND_IMPORTS)
        (_, client_err), (_, imports_err) = client.communicate(timeout=900), imports.communicate(timeout=900)
        if client.returncode != 0:
            pytest.skip(f"cannot install sglang=={SGLANG_VERSION}: {client_err[-500:]}")
        assert imports.returncode == 0, imports_err[-2000:]
        ready.write_text("ok")
    return python


@pytest.fixture(scope="session")
def client_result(sglang_python: Path, server: Any, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("sglang-client")  # not the repository: `sgl` stays out of reach
    probe = subprocess.run([str(sglang_python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('sgl') is None, u.find_spec('sglang').origin)"],
                           cwd=cwd, capture_output=True, text=True, timeout=300)
    assert probe.stdout.startswith("True"), probe.stdout + probe.stderr  # the real sglang only
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(sglang_python), str(PROGRAM), server.url, json.dumps(SCHEMA)],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_gen_and_batch_match_generate(client_result: dict, server: Any) -> None:
    direct = generate(server.url, {"text": "The capital of France is", "sampling_params": GREEDY})
    assert client_result["gen"]["text"] == direct["text"]
    assert client_result["gen"]["meta"]["completion_tokens"] == 6
    for prompt, text in zip(["One plus one is", "The sky is"], client_result["batch"]):
        assert text == generate(server.url, {"text": prompt, "sampling_params": GREEDY})["text"]
    assert "model_path" in client_result["server_info_keys"]


CHOICES = [" yes", " no", " maybe"]
METHODS = {"token_length_normalized": sgl.token_length_normalized,
           "greedy_token_selection": sgl.greedy_token_selection,
           "unconditional_likelihood_normalized": sgl.unconditional_likelihood_normalized}


@pytest.mark.parametrize("method", list(METHODS))
def test_select_matches_sgl_frontend(client_result: dict, server: Any, method: str) -> None:
    @sgl.function
    def pick(s):
        s += "Is the sky blue? Answer:" + sgl.select("choice", choices=CHOICES,
                                                      choices_method=METHODS[method])

    ours = pick.run(backend=sgl.RuntimeEndpoint(server.url))
    theirs = client_result["select"][method]
    if method == "token_length_normalized":
        assert theirs["decision"] == ours["choice"]
    elif method == "unconditional_likelihood_normalized":
        # sglang scores the unconditional pass on its healing tokens too: check its decision
        # by its own numbers (the conditional logprobs are compared with sgl's below)
        scores = theirs["meta"]["normalized_unconditional_prompt_logprobs"]
        assert theirs["decision"] == CHOICES[scores.index(max(scores))]
    else:  # greedy: sglang's first column is a healing token shared by every choice
        assert theirs["decision"] in CHOICES and len(theirs["meta"]["greedy_logprob_matrix"]) == 3
    # sglang averages over the two healing tokens before each choice too, so compare the
    # logprob of each choice's own (last) token, which both frontends read from the server
    ours_last = [lps[-1][0] for lps in ours.get_meta_info("choice")["input_token_logprobs"]]
    theirs_last = [lps[-1][0] for lps in theirs["meta"]["input_token_logprobs"]]
    assert theirs_last == pytest.approx(ours_last, abs=1e-3)


def test_fork_join_both_modes(client_result: dict, server: Any) -> None:
    gathered = client_result["fork"]["gather_variable"]
    colors = [generate(server.url, {"text": f"Two colors: Color {i}:", "sampling_params":
                                    dict(GREEDY, max_new_tokens=3)})["text"] for i in (1, 2)]
    assert gathered["color"] == colors
    joined = client_result["fork"]["concate_and_append"]
    before = f"Two colors: Color 1:{colors[0]} Color 2:{colors[1]} Done."
    assert joined["text"] == before + joined["after"]
    after = generate(server.url, {"text": before, "sampling_params": dict(GREEDY, max_new_tokens=3)})
    assert joined["after"] == after["text"]


def test_stream_with_meta_data(client_result: dict) -> None:
    chunks = client_result["stream"]
    assert "".join(text for text, _, _ in chunks) == client_result["story"]
    counts = [n for _, n, _ in chunks]
    assert counts == sorted(counts) and counts[-1] == 12
    assert chunks[-1][2] == {"type": "length", "length": 12}
    assert all(reason is None for _, _, reason in chunks[:-1])


def test_constrained_gens(client_result: dict, server: Any) -> None:
    out = client_result["constrained"]
    assert re.fullmatch(r"[0-9]{3}", out["digits"])
    jsonschema.validate(json.loads(out["person"]), SCHEMA)
    int(out["int"]), float(out["float"])
    assert out["bool"] in ("True", "False")
    assert isinstance(json.loads(out["string"]), str)
    # stop_regex: finished at the first digit, which stays in the text (SGLang's behaviour)
    assert client_result["counted_meta"]["finish_reason"] == {"type": "stop", "matched": "[0-9]"}
    assert re.search(r"[0-9]$", out["counted"]) and not re.search(r"[0-9]", out["counted"][:-1])
