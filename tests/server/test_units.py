"""Server pieces that need no live server: the detokenizer process's decoding, metrics text,
error shapes."""
from __future__ import annotations

from sgl.runtime.io_struct import TokenOutput
from sgl.runtime.server.detokenizer_process import Detokenizer
from sgl.runtime.server.errors import from_value_error, guess_param
from sgl.runtime.server.ipc import OutputBatch
from sgl.runtime.server.metrics import Histogram, ServerMetrics


class ByteTokenizer:
    """Token i is byte i; decoding replaces incomplete UTF-8 like real tokenizers do."""

    def decode(self, ids, skip_special_tokens=True, **kw):
        return bytes(ids).decode("utf-8", errors="replace")


def _out(rid, ids, finished=None):
    return TokenOutput(rid=rid, new_token_ids=ids, finished_reason=finished)


def test_detokenizer_emits_whole_characters_only():
    detok = Detokenizer(ByteTokenizer())
    snow = list("a☃".encode())  # 'a' then a 3-byte character
    params = {"r": (True, True, False)}
    deltas = [detok.process(OutputBatch([_out("r", [b])], params)).outputs[0].text_delta
              for b in snow]
    assert deltas == ["a", "", "", "☃"]


def test_detokenizer_trims_matched_stop_token_and_forgets_finished():
    detok = Detokenizer(ByteTokenizer())
    batch = OutputBatch([_out("r", [104, 105, 33], {"type": "stop", "matched": 33})],
                        {"r": (True, True, False)})
    assert detok.process(batch).outputs[0].text_delta == "hi"
    assert not detok.decoders and not detok.params
    keep = OutputBatch([_out("k", [104, 33], {"type": "stop", "matched": 33})],
                       {"k": (True, True, True)})
    assert detok.process(keep).outputs[0].text_delta == "h!"  # no_stop_trim


def test_detokenizer_without_tokenizer_leaves_text_unset():
    out = Detokenizer(None).process(OutputBatch([_out("r", [1])])).outputs[0]
    assert out.text_delta is None


def test_histogram_is_cumulative():
    h = Histogram("x", "help", (0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 5.0):
        h.observe(v)
    lines = h.render('m="a"')
    assert 'x_bucket{m="a",le="0.1"} 1' in lines and 'x_bucket{m="a",le="1.0"} 3' in lines
    assert 'x_bucket{m="a",le="+Inf"} 4' in lines and 'x_count{m="a"} 4' in lines


def test_metrics_render_gauges_and_counters():
    m = ServerMetrics('my "model"')
    m.on_finish({"prompt_tokens": 5, "completion_tokens": 3, "cached_tokens": 2}, 0.2, aborted=True)
    text = m.render({"num_running_reqs": 2, "token_usage": 0.5})
    assert 'sglang:num_running_reqs{model_name="my \\"model\\""} 2.0' in text
    assert 'sglang:prompt_tokens_total{model_name="my \\"model\\""} 5' in text
    assert 'sglang:num_aborted_requests_total{model_name="my \\"model\\""} 1' in text


def test_error_param_names_the_field():
    assert guess_param("sampling_params.top_p must be in (0, 1]") == "sampling_params.top_p"
    assert guess_param("stream must be of type bool") == "stream"
    err = from_value_error(ValueError("sampling_params.max_new_tokens must be >= 0"),
                           {"sampling_params.max_new_tokens": "max_tokens"})
    assert (err.status, err.param, err.message) == (400, "max_tokens", "max_tokens must be >= 0")
