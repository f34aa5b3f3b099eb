"""`localllm bench serve` against our own server on 127.0.0.1, over the scripted fake engine."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from localllm.cli.main import app

runner = CliRunner()


def counting_reply(prompt, params):
    """One piece per asked token, so every stream has exactly max_tokens tokens."""
    return [f" t{i}" for i in range(params.max_tokens)]


@pytest.fixture
def server(fake_server):
    return fake_server(reply=counting_reply, step_delay=0.003)


def invoke(*args):
    result = runner.invoke(app, ["bench", "serve", *args])
    assert "Traceback" not in result.output
    return result


def test_concurrency_sweep_statistics_json_and_plot(server, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "p.png"
    result = invoke("--url", server.url + "/v1/", "--num-prompts", "6", "--input-len", "8", "--output-len", "5",
                    "--concurrency", "1,3", "--json", str(out), "--plot", str(png), "--seed", "4")
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["kind"] == "serve" and record["model"] == "fake" and record["url"] == server.url
    assert record["endpoint_path"] == "/v1/completions" and record["served_models"] == ["fake"]
    assert record["workload"] == {"num_prompts": 6, "input_len": 8, "output_len": 5, "seed": 4}
    assert "bench serve" in record["command"] or record["command"]
    assert record["machine"]["cores"] >= 1 and "localllm" in record["software"]
    assert [(p["concurrency"], p["rate"]) for p in record["points"]] == [(1, None), (3, None)]
    for point in record["points"]:
        assert point["completed"] == 6 and point["failed"] == 0 and point["errors"] == []
        assert point["output_tokens"] == 30  # from the usage chunks: 6 requests x 5 tokens
        assert point["prompt_tokens"] == 6 * 8  # the fake engine: one token a word
        assert point["ttft_ms"]["n"] == 6 and point["e2e_ms"]["n"] == 6 and point["tpot_ms"]["n"] == 6
        assert point["itl_ms"]["n"] == 6 * 4  # 5 chunks: 4 gaps each
        for key in ("ttft_ms", "itl_ms", "e2e_ms", "tpot_ms"):
            s = point[key]
            assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        assert point["ttft_ms"]["max"] <= point["e2e_ms"]["max"]
        assert point["request_throughput"] == pytest.approx(6 / point["duration_s"])
        assert point["output_throughput"] == pytest.approx(30 / point["duration_s"])
        assert len(point["requests"]) == 6
    # 6 + 6 requests of the two points plus the test request, each a distinct 8-word prompt.
    added = server.engine.added
    assert len(added) == 13 and len({r.prompt for r in added}) == 13
    assert all(len(r.prompt.split()) == 8 and r.params.ignore_eos for r in added)
    assert sorted(r.params.max_tokens for r in added) == [2] + [5] * 12
    # Closed loop at 3: with 6 requests and a few ms a token, several ran at once.
    assert record["points"][1]["duration_s"] < record["points"][0]["duration_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # stdout: the table; stderr: progress (drawn without a terminal), the file names.
    assert "| concurrency |" in result.stdout and "| 3 | 6/6 |" in result.stdout
    assert "concurrency 3" in result.stderr and f"results: {out}" in result.stderr
    server.wait_idle()


def test_poisson_rate_with_a_cap_and_the_chat_endpoint(server, tmp_path):
    out = tmp_path / "r.json"
    result = invoke("--url", server.url, "--endpoint", "chat", "--num-prompts", "5", "--input-len", "4",
                    "--output-len", "3", "--rate", "200", "--concurrency", "2", "--json", str(out), "--no-ignore-eos")
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["endpoint_path"] == "/v1/chat/completions" and record["ignore_eos"] is False
    (point,) = record["points"]
    assert (point["concurrency"], point["rate"]) == (2, 200.0)
    assert point["completed"] == 5 and point["output_tokens"] == 15
    assert not any(r.params.ignore_eos for r in server.engine.added)
    assert "rate 200/s, max 2" in result.stdout


def test_default_json_file_is_written_in_the_working_directory(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--url", server.url, "--num-prompts", "2", "--input-len", "3", "--output-len", "2")
    assert result.exit_code == 0, result.output
    (written,) = tmp_path.glob("bench-serve-*.json")
    assert json.loads(written.read_text())["points"][0]["completed"] == 2


def test_a_server_that_refuses_every_request_is_one_error_line(server):
    result = invoke("--url", server.url, "--model", "not-served", "--num-prompts", "2", "--input-len", "3",
                    "--output-len", "2")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the test request to ") and "HTTP 404" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_api_key_is_sent_and_its_absence_explained(fake_server, tmp_path):
    server = fake_server(reply=counting_reply, settings={"api_key": "sesame"})
    result = invoke("--url", server.url, "--num-prompts", "2", "--input-len", "3", "--output-len", "2")
    assert result.exit_code == 1 and "401" in result.stderr and "--api-key" in result.stderr
    result = invoke("--url", server.url, "--num-prompts", "2", "--input-len", "3", "--output-len", "2",
                    "--api-key", "sesame", "--json", str(tmp_path / "run.json"))
    assert result.exit_code == 0, result.output


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from localllm.bench.plot import PlotUnavailable, plot_serve

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable, match=r"--plot needs matplotlib: pip install 'localllm\[bench\]'"):
        plot_serve({"points": []}, str(tmp_path / "p.png"))
    assert not (tmp_path / "p.png").exists()
