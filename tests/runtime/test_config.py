"""Server arguments: validation at construction, the CLI generated from the dataclass."""
from __future__ import annotations

import argparse

import pytest
import torch

from sgl.runtime.config import TOOL_CALL_PARSERS, ServerArgs
from sgl.runtime.executor.pool_sizing import static_fraction
from sgl.runtime.server.tools.parsers import ALIASES, PARSERS


@pytest.mark.parametrize("kwargs,field", [
    ({"schedule_policy": "lifo"}, "schedule_policy"), ({"load_format": "pt"}, "load_format"),
    ({"dtype": "int8"}, "dtype"), ({"tool_call_parser": "mistral9"}, "tool_call_parser"),
    ({"max_total_tokens": 1}, "max_total_tokens"), ({"mem_fraction_static": 1.5}, "mem_fraction_static"),
    ({"no_such_flag": 1}, "no_such_flag"),
    ({"enable_custom_all_reduce": True, "tp_size": 2, "nnodes": 2, "dist_init_addr": "10.0.0.1:5000"},
     "enable_custom_all_reduce"),
    ({"dist_timeout": 0}, "dist_timeout"), ({"custom_all_reduce_max_bytes": 8}, "custom_all_reduce_max_bytes"),
    ({"enable_priority_scheduling": True, "schedule_policy": "lpm"}, "enable_priority_scheduling"),
    ({"priority_scheduling_preemption_threshold": -1}, "priority_scheduling_preemption_threshold"),
    ({"return_hidden_states_mode": "all"}, "return_hidden_states_mode"),
])
def test_bad_server_args_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ServerArgs.from_kwargs(**kwargs)


def test_hidden_states_mode_from_the_two_flags():
    modes = [ServerArgs(enable_return_hidden_states=e, return_hidden_states_mode=m).hidden_states_mode
             for e, m in [(False, None), (True, None), (False, "last"), (True, "last")]]
    assert modes == [None, "full", "last", "last"]  # an explicit mode wins, as in SGLang


def test_tool_call_parser_choices_match_the_parsers():
    assert set(TOOL_CALL_PARSERS) == set(PARSERS) | set(ALIASES)


def test_cli_round_trip():
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = ServerArgs.from_cli_args(parser.parse_args(
        ["--max-total-tokens", "512", "--disable-radix-cache", "--cuda-graph-bs", "1", "2", "4",
         "--schedule-policy", "lpm", "--tool-call-parser", "qwen25"]))
    assert (args.max_total_tokens, args.disable_radix_cache, args.cuda_graph_bs) == (512, True, [1, 2, 4])
    assert (args.schedule_policy, args.tool_call_parser, args.port) == ("lpm", "qwen25", 30000)
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule-policy", "lifo"])


def test_cli_flags_that_replaced_environment_variables(tmp_path):
    table = tmp_path / "gemv.json"
    table.write_text('{"configs": {"1024,512": [2, 512, 4, 3, 2]}}')
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = ServerArgs.from_cli_args(parser.parse_args(
        ["--disable-gemv", "--gemv-configs", str(table), "--dist-timeout", "90",
         "--custom-all-reduce-max-bytes", "65536"]))
    assert (args.disable_gemv, args.gemv_configs, args.dist_timeout, args.custom_all_reduce_max_bytes) == \
        (True, str(table), 90, 65536)
    default = ServerArgs.from_cli_args(parser.parse_args([]))
    assert (default.disable_gemv, default.gemv_configs, default.dist_timeout) == (False, None, None)
    assert default.custom_all_reduce_max_bytes == ServerArgs().custom_all_reduce_max_bytes


def test_default_static_fraction_leaves_float32_twice_the_headroom():
    # weights + KV share of GPU memory when --mem-fraction-static is unset: activations, graph
    # pools and kernel modules get the rest, which doubles with 4-byte elements
    assert static_fraction(torch.bfloat16) == pytest.approx(0.88)
    assert static_fraction(torch.float16) == pytest.approx(0.88)
    assert static_fraction(torch.float32) == pytest.approx(0.76)
