"""The GEMV tables are data files picked by device name (kernels/gemv_tables.py); --gemv-configs
lays a file's entries over them and --disable-gemv turns the GEMV off, both applied by the runner.
All on the CPU: device names are strings here."""
from __future__ import annotations

import json
import shutil

import pytest
import transformers

from sgl.kernels import linear as linear_mod
from sgl.kernels.gemv_tables import (
    TABLE_DIR,
    find_table,
    normalize_device_name,
    read_table,
    shipped_table,
    write_table,
)
from sgl.runtime.config import ServerArgs

H200_FILE = TABLE_DIR / "nvidia-h200.json"
SM90_NAMES = ["NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe",
              "NVIDIA H100 NVL"]
OTHER_NAMES = ["NVIDIA H20", "NVIDIA A100-SXM4-80GB", "NVIDIA H1000", "NVIDIA GeForce RTX 4090"]


def test_device_names_normalise_to_file_stems():
    assert normalize_device_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert normalize_device_name("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"
    assert normalize_device_name("  NVIDIA  H200 ") == "nvidia-h200"


@pytest.mark.parametrize("name", SM90_NAMES)
def test_h100_and_h200_resolve_to_the_h200_probed_table(name):
    assert find_table(name) == H200_FILE
    assert shipped_table(name) == read_table(H200_FILE)


@pytest.mark.parametrize("name", OTHER_NAMES)
def test_other_devices_have_no_table(name):
    assert find_table(name) is None
    assert shipped_table(name) == {}


def test_shipped_h200_table_covers_the_8b_linears():
    """Every batch-1 linear of Llama-3.1-8B at TP 1 (the model the table was probed for, whose
    config ships in runtime/configs) has an entry: merged qkv and gate_up, o, down, LM head."""
    import sgl.runtime
    (root,) = list(sgl.runtime.__path__)
    c = transformers.AutoConfig.from_pretrained(f"{root}/configs/llama-3.1-8b-dummy")
    q_len = c.num_attention_heads * c.head_dim
    qkv_len = q_len + 2 * c.num_key_value_heads * c.head_dim
    shapes = {(qkv_len, c.hidden_size), (c.hidden_size, q_len), (2 * c.intermediate_size, c.hidden_size),
              (c.hidden_size, c.intermediate_size), (c.vocab_size, c.hidden_size)}
    assert set(read_table(H200_FILE)) == shapes


def test_a_table_for_the_exact_device_wins(tmp_path):
    shutil.copy(H200_FILE, tmp_path / H200_FILE.name)
    exact = tmp_path / "nvidia-h100-80gb-hbm3.json"
    write_table(exact, {(8, 8): None}, "NVIDIA H100 80GB HBM3", "test")
    pcie = tmp_path / "pcie.json"
    pcie.write_text(json.dumps({"also_for": ["nvidia-h100-pcie"], "configs": {}}))
    assert find_table("NVIDIA H100 80GB HBM3", tmp_path) == exact
    assert find_table("NVIDIA H100 PCIe", tmp_path) == pcie  # the longest listed prefix
    assert find_table("NVIDIA H100 NVL", tmp_path) == tmp_path / H200_FILE.name


def test_gemv_configs_entries_go_over_the_shipped_table(tmp_path, gemv_settings):
    shipped = read_table(H200_FILE)
    (shape, _), *_ = shipped.items()
    override = {shape: None, (1024, 512): (2, 512, 4, 3, 2)}  # one shipped shape to cuBLAS, one new
    path = tmp_path / "probed.json"
    write_table(path, override, "NVIDIA H100 80GB HBM3", "test")
    gemv_settings(True, str(path))
    table = linear_mod.gemv_table_for("NVIDIA H100 80GB HBM3")
    assert table == {**shipped, **override} and table[shape] is None
    assert linear_mod.gemv_table_for("NVIDIA A100-SXM4-80GB") == override
    gemv_settings()
    assert linear_mod.gemv_table_for("NVIDIA H100 80GB HBM3") == shipped


@pytest.mark.parametrize("doc,match", [
    ({"6144,4096": [2, 1024, 4, 3, 1]}, "configs"),             # the bare mapping, no "configs"
    ({"configs": {"6144x4096": None}}, "6144x4096"),
    ({"configs": {"6144,4096": [2, 1024, 4]}}, "6144,4096"),
    ({"configs": {"6144,4096": [2, 0, 4, 3, 1]}}, "6144,4096"),
    ({"configs": {"6144,4096": "fast"}}, "6144,4096"),
])
def test_malformed_tables_name_the_entry(tmp_path, doc, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match):
        read_table(path)
    with pytest.raises(ValueError, match="gemv_configs"):
        ServerArgs(gemv_configs=str(path))


def test_missing_table_file_is_a_server_args_error(tmp_path):
    with pytest.raises(ValueError, match="gemv_configs.*cannot read"):
        ServerArgs(gemv_configs=str(tmp_path / "absent.json"))


def test_the_runner_applies_disable_gemv_and_gemv_configs(tmp_path, gemv_settings):
    from sgl.runtime.executor.model_runner import ModelRunner
    transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path)
    table = tmp_path / "probed.json"
    write_table(table, {(1024, 512): (2, 512, 4, 3, 2)}, "NVIDIA H100 80GB HBM3", "test")
    common = {"model_path": str(tmp_path), "load_format": "dummy", "skip_tokenizer_init": True,
              "max_total_tokens": 64}
    runner = ModelRunner(ServerArgs(**common, disable_gemv=True, gemv_configs=str(table)))
    runner.shutdown()
    assert not linear_mod.gemv_enabled()
    assert linear_mod.gemv_table_for("NVIDIA A100-SXM4-80GB") == {(1024, 512): (2, 512, 4, 3, 2)}
    runner = ModelRunner(ServerArgs(**common))
    runner.shutdown()
    assert linear_mod.gemv_enabled()
    assert linear_mod.gemv_table_for("NVIDIA A100-SXM4-80GB") == {}
