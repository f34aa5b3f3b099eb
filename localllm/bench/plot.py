"""`bench serve --plot FILE.png`: output throughput and TTFT percentiles against concurrency (or
request rate), one point per sweep step, from the run's record."""

from __future__ import annotations

from localllm.errors import LocalLLMError


class PlotUnavailable(LocalLLMError):
    pass


def plot_serve(record: dict, path: str) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'localllm[bench]' (or matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = record["points"]
    by_rate = points[0]["rate"] is not None
    xs = [p["rate"] if by_rate else p["concurrency"] for p in points]
    xlabel = "request rate (requests/s, Poisson)" if by_rate else "concurrent clients"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)

    # NOTE: requests/s is output tokens/s over the fixed output length: one curve says both.
    left.plot(xs, [p["output_throughput"] for p in points], "o-", color="tab:blue")
    for x, p in zip(xs, points):
        left.annotate(f"{p['request_throughput']:.2f} req/s", (x, p["output_throughput"]), textcoords="offset points",
                      xytext=(0, 6), ha="center", fontsize=7)
    left.set_xlabel(xlabel)
    left.set_ylabel("output tokens/s")
    left.set_ylim(bottom=0, top=max(p["output_throughput"] for p in points) * 1.15)
    left.set_title("throughput")

    for q, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
        right.plot(xs, [p["ttft_ms"][q] for p in points], style, label=f"TTFT {q}")
    right.set_xlabel(xlabel)
    right.set_ylabel("time to first token (ms)")
    right.set_ylim(bottom=0)
    right.set_title("time to first token")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xticks(xs)
        axis.margins(x=0.08)
        axis.grid(alpha=0.3)

    work = record["workload"]
    machine = record["machine"]
    gpu = machine.get("gpu")
    where = gpu["devices"][0]["name"] if gpu else f"{machine['cpu']}, {machine['cores']} cores"
    fig.suptitle(f"localllm bench serve: {record['model']} at {record['url']} ({where}); "
                 f"{work['input_len']} words in, {work['output_len']} tokens out, {work['num_prompts']} requests a point",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
