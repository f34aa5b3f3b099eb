"""The tables `localllm bench` prints on stdout (Markdown, ready for a README), from a record."""

from __future__ import annotations


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:,.0f} MB"


def machine_line(record: dict) -> str:
    m = record["machine"]
    gpu = m.get("gpu")
    gpus = ", ".join(d["name"] for d in gpu["devices"]) + f" (driver {gpu['driver']})" if gpu else "no GPU"
    load = " ".join(str(x) for x in m["load_average"]) if m.get("load_average") else "unknown"
    versions = ", ".join(f"{k} {v}" for k, v in record["software"].items() if v)
    return f"machine: {m['cpu']}, {m['cores']} cores, {gpus}; load average {load}\nsoftware: {versions}"


def engine_label(name: str, figures: dict) -> str:
    engine = figures.get("engine", {})
    details = [engine.get(k) for k in ("quantization", "dtype", "device") if engine.get(k)]
    if engine.get("weights") and name != "localllm":
        details.insert(0, engine["weights"])
    return f"{name} {engine.get('version', '')}".strip() + (f" ({', '.join(details)})" if details else "")


def _ratio_lines(record: dict) -> list[str]:
    lines = []
    for pair, ratios in record.get("ratios", {}).items():
        if ratios:
            lines.append(f"{pair}: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items()))
    for name, figures in record["results"].items():
        if "skipped" in figures:
            lines.append(figures["skipped"])
    return lines


def throughput_report(record: dict) -> str:
    w = record["workload"]
    rows = []
    for name, f in record["results"].items():
        if "skipped" not in f:
            rows.append([engine_label(name, f), _num(f["requests_per_s"], 2), _num(f["input_tok_s"]), _num(f["output_tok_s"]),
                         _num(f["total_tok_s"]), _num(f["seconds"], 2), _mb(f["memory"].get("rss_growth_bytes"))])
    head = (f"bench throughput: {record['model']}, {w['num_prompts']} prompts x {w['input_len']} tokens in, "
            f"{w['output_len']} out (all at once, EOS ignored, seed {w['seed']})")
    table = _table(["engine", "requests/s", "input tok/s", "output tok/s", "total tok/s", "seconds", "RSS growth"], rows)
    return "\n".join([head, machine_line(record), "", table, "", *_ratio_lines(record)])


def latency_report(record: dict) -> str:
    w = record["workload"]
    rows = []
    for name, f in record["results"].items():
        if "skipped" in f:
            continue
        floor = f.get("floor") or {}
        fraction = floor.get("fraction_of_floor")
        rows.append([
            engine_label(name, f), _num(f["latency_s"]["mean"], 3), _num(f["latency_s"]["p99"], 3),
            _num(f["ttft_s"]["mean"] * 1000), _num(f["tpot_s"]["mean"] * 1000 if f["tpot_s"]["mean"] else None, 2),
            _num(f.get("decode_tok_s_total")), "-" if fraction is None else f"{fraction:.0%} of {floor['floor_output_tok_s']:,.0f}",
            _mb(f["memory"].get("cuda_max_allocated_bytes") or f["memory"].get("rss_growth_bytes")),
        ])
    head = (f"bench latency: {record['model']}, batch {w['batch_size']} x {w['input_len']} tokens in, {w['output_len']} out, "
            f"{w['num_iters']} iterations after {w['num_iters_warmup']} warm-up (EOS ignored, seed {w['seed']})")
    table = _table(["engine", "latency mean (s)", "latency p99 (s)", "TTFT mean (ms)", "TPOT mean (ms)",
                    "decode tok/s", "bandwidth floor (tok/s)", "memory"], rows)
    bandwidth = record.get("memory_bandwidth") or {}
    notes = [f"memory bandwidth {bandwidth['GBps']} GB/s ({bandwidth['method']})"] if bandwidth else []
    notes.append("memory: growth of the resident set over load and run (CPU) or torch's peak allocation (CUDA)")
    return "\n".join([head, machine_line(record), "", table, "", *notes, *_ratio_lines(record)])


def serve_report(record: dict) -> str:
    w = record["workload"]
    rows = []
    for p in record["points"]:
        at = f"rate {p['rate']:g}/s" + (f", max {p['concurrency']}" if p["concurrency"] else "") if p["rate"] else f"{p['concurrency']}"
        rows.append([
            at, f"{p['completed']}/{p['completed'] + p['failed']}", _num(p["request_throughput"], 2),
            _num(p["output_throughput"]), *(_num(p["ttft_ms"][q], 0) for q in ("mean", "p50", "p90", "p99")),
            *(_num(p["itl_ms"][q], 1) for q in ("mean", "p50", "p99")), _num(p["tpot_ms"]["mean"], 1),
            _num(p["e2e_ms"]["mean"] / 1000 if p["e2e_ms"]["mean"] else None, 2),
            _num(p["e2e_ms"]["p99"] / 1000 if p["e2e_ms"]["p99"] else None, 2),
        ])
    head = (f"bench serve: {record['model']} at {record['url']}{record['endpoint_path']}, {w['num_prompts']} requests a "
            f"point, {w['input_len']} words in, {w['output_len']} tokens out (seed {w['seed']})")
    table = _table(["concurrency", "done", "req/s", "output tok/s", "TTFT mean (ms)", "p50", "p90", "p99",
                    "ITL mean (ms)", "p50", "p99", "TPOT mean (ms)", "E2E mean (s)", "E2E p99 (s)"], rows)
    errors = [f"errors at point {i}: {'; '.join(p['errors'])}" for i, p in enumerate(record["points"]) if p["failed"]]
    return "\n".join([head, machine_line(record), "", table, *errors])
