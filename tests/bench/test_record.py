import json

import pytest
import torch

from localllm.bench.floor import decode_floor, kv_bytes_per_token, weight_bytes_read
from localllm.bench.machine import measure_memory_bandwidth, software_versions
from localllm.bench.record import SCHEMA_VERSION, command_line, new_record, write_json


def test_record_carries_machine_versions_command_and_workload(tmp_path):
    record = new_record("latency", {"num_prompts": 2}, ["/usr/bin/localllm", "bench", "latency", "my model"],
                        results={"localllm": {}})
    assert record["schema_version"] == SCHEMA_VERSION and record["kind"] == "latency"
    assert record["command"] == "localllm bench latency 'my model'"
    machine = record["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["memory_bytes"] > 0
    assert len(machine["load_average"]) == 3
    if torch.cuda.is_available():
        assert machine["gpu"]["devices"][0]["name"]
    else:
        assert machine["gpu"] is None
    software = record["software"]
    assert set(software) >= {"python", "localllm", "torch", "transformers", "llama_cpp"}
    assert software["torch"] and software["python"].count(".") == 2
    assert record["workload"] == {"num_prompts": 2} and record["results"] == {"localllm": {}}
    assert record["date"].endswith("Z")
    path = tmp_path / "sub" / "r.json"
    write_json(record, str(path))
    assert json.loads(path.read_text()) == record
    assert not (tmp_path / "sub" / "r.json.partial").exists()


def test_a_pipe_or_device_path_is_written_through_not_replaced(tmp_path):
    """`--json /dev/null` once replaced the machine's /dev/null with a plain file (the atomic
    write renames over its target). A FIFO stands in for the device here."""
    import os
    import stat
    import threading

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    write_json({"kind": "serve", "value": 1}, str(pipe))
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert json.loads(received[0]) == {"kind": "serve", "value": 1}
    assert not (tmp_path / "pipe.partial").exists()


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        new_record("speed", {})


def test_command_line_of_python_m():
    assert command_line(["/x/localllm/__main__.py", "bench", "serve", "--url", "http://h:1"]) == \
        "localllm bench serve --url http://h:1"


def test_versions_name_missing_packages_as_none(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name == "llama_cpp_python":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert software_versions()["llama_cpp"] is None


def test_weight_bytes_count_each_tensor_once_and_the_embedding_only_as_lm_head():
    embed = torch.zeros(100, 8)  # 3200 bytes
    layer = torch.zeros(8, 8, dtype=torch.bfloat16)  # 128 bytes
    rope = torch.zeros(50, 8)
    tensors = [("model.embed_tokens.weight", embed), ("model.layers.0.w", layer), ("lm_head.weight", embed),
               ("model.layers.0.rotary_emb.cos_sin_cache", rope)]
    assert weight_bytes_read(tensors, embedding_is_lm_head=True) == 3200 + 128
    untied = [("model.embed_tokens.weight", embed), ("model.layers.0.w", layer), ("lm_head.weight", embed.clone())]
    assert weight_bytes_read(untied, embedding_is_lm_head=False) == 128 + 3200
    # The int4 path's 8-bit head: its two packed planes stream, its codes (read a few rows a step) do not.
    planes = torch.zeros(25, 8, dtype=torch.uint8)
    codes = torch.zeros(100, 8, dtype=torch.int8)
    int8_head = [("model.embed_tokens.weight", embed), ("lm_head.high_packed", planes), ("lm_head.codes", codes)]
    assert weight_bytes_read(int8_head, embedding_is_lm_head=False) == 200
    assert kv_bytes_per_token(30, 3, 64, 4) == 46080


def test_decode_floor_arithmetic():
    bandwidth = {"GBps": 10.0, "method": "given"}
    floor = decode_floor({"weight_bytes": 900_000_000, "kv_bytes_per_token": 1000}, bandwidth, batch_size=4,
                         mean_context=25_000, seconds_per_output_token=0.2)
    # (0.9 GB + 4 x 25k x 1 kB = 1.0 GB) / 10 GB/s = 0.1 s a step, for 4 tokens
    assert floor["floor_seconds_per_step"] == pytest.approx(0.1)
    assert floor["floor_output_tok_s"] == pytest.approx(40.0)
    assert floor["fraction_of_floor"] == pytest.approx(0.5)
    assert floor["bandwidth_source"] == "given"
    assert "fraction_of_floor" not in decode_floor({"weight_bytes": 1, "kv_bytes_per_token": 1}, bandwidth, 1, 1, None)


def test_memory_bandwidth_is_measured_and_says_how():
    bw = measure_memory_bandwidth("cpu", size_bytes=16 << 20, repeats=2)
    assert bw["GBps"] > 0.1 and bw["device"] == "cpu"
    assert bw["method"].startswith("measured: torch copy_ of a 16 MiB buffer")
