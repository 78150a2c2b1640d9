"""PNG charts for bench/RESULTS.md, drawn with matplotlib from the same runs
the tables are built from (report.py passes them in): one-way delay over
time for the slow receiver (relay vs HAProxy), latency CDFs of the 1000-pair
audio scenario (relay, HAProxy, direct), and server CPU per GiB / per frame
(relay vs HAProxy; the direct runs have no server). run.sh installs
matplotlib from PyPI when it is missing; without it no chart is drawn and
the report says so.
"""

import os


def write(groups, runs, directory, get):
    """Draws the charts into DIRECTORY/charts; returns (title, relative path) pairs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out = os.path.join(directory, "charts")
    os.makedirs(out, exist_ok=True)
    drawn = []

    def save(fig, name, title):
        path = os.path.join(out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        drawn.append((title, f"charts/{name}"))

    # 1. The slow receiver: p50 and p99 one-way delay per second, relay vs HAProxy.
    fig, ax = plt.subplots(figsize=(8, 4))
    plotted = False
    for run_id, label, color in (("slow-relay", "relay", "tab:blue"), ("slow-pipe", "HAProxy", "tab:orange")):
        seconds = get(runs.get(run_id), "seconds") or []
        for quantile, style in (("p99", "-"), ("p50", "--")):
            points = [(s["start_s"], s["latency_us"][quantile] / 1000.0) for s in seconds
                      if s.get("frames") and s.get("latency_us", {}).get(quantile) is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=color, marker=".",
                        label=f"{label} {quantile}")
                plotted = True
    if plotted:
        ax.set_xlabel("seconds into the window")
        ax.set_ylabel("one-way delay (ms)")
        ax.set_yscale("log")
        ax.set_title("Slow receiver (1200 B x 100/s, reader 60 KB/s): delay per second")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        save(fig, "slow-receiver-delay.png", "Slow receiver: p50 and p99 one-way delay per second, relay vs HAProxy")
    else:
        plt.close(fig)

    # 2. 1000 audio pairs: latency CDF of the median runs.
    fig, ax = plt.subplots(figsize=(8, 4))
    plotted = False
    for group, label in ((groups["paced_relay"], "relay"), (groups["paced_pipe"], "HAProxy"),
                         (groups["paced_direct"], "direct (no server)")):
        cdf = get(group.median, "latency_cdf_us") or []
        if cdf:
            ax.plot([p["us"] / 1000.0 for p in cdf], [p["q"] for p in cdf], label=label)
            plotted = True
    if plotted:
        ax.set_xscale("log")
        ax.set_xlabel("one-way latency (ms)")
        ax.set_ylabel("fraction of frames")
        ax.set_title("1000 audio pairs (160 B at 50 frames/s): latency CDF (median runs)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        save(fig, "audio-latency-cdf.png", "1000 audio pairs: one-way latency CDF, relay vs HAProxy vs direct")
    else:
        plt.close(fig)

    # 3. Server CPU: per GiB for the floods, per frame for audio.
    bars = [(label, get(relay.median, "server", "cpu_s_per_gib"), get(pipe.median, "server", "cpu_s_per_gib"))
            for label, relay, pipe in groups["floods"]]
    bars = [bar for bar in bars if bar[1] is not None and bar[2] is not None]
    if bars:
        fig, ax = plt.subplots(figsize=(9, 4))
        x = range(len(bars))
        ax.bar([i - 0.2 for i in x], [b[1] for b in bars], width=0.4, label="relay")
        ax.bar([i + 0.2 for i in x], [b[2] for b in bars], width=0.4, label="HAProxy")
        ax.set_xticks(list(x))
        ax.set_xticklabels([b[0] for b in bars], rotation=20, ha="right")
        ax.set_ylabel("server CPU seconds per GiB delivered")
        ax.set_title("Floods: server CPU per GiB (median runs; lower is better)")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
        save(fig, "cpu-per-gib.png", "Server CPU per GiB, relay vs HAProxy (the floods)")
    per_frame = [(label, get(g.median, "server", "cpu_us_per_frame")) for label, g in groups["per_frame"]]
    per_frame = [bar for bar in per_frame if bar[1] is not None]
    if per_frame:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([b[0] for b in per_frame], [b[1] for b in per_frame],
               color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(per_frame)])
        ax.set_ylabel("server CPU µs per frame")
        ax.set_title("1000 audio pairs: server CPU per frame (median runs)")
        ax.grid(True, axis="y", alpha=0.3)
        save(fig, "cpu-per-frame.png", "Server CPU per frame: relay vs HAProxy, and the cluster across nodes")
    return drawn
