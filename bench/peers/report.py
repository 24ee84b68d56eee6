#!/usr/bin/env python3
"""Writes peers.md from the runs of scripts/bench-peers.sh: one table per scenario with every server side by
side and the storyline/nchan ratios, plus the date, the machine, the versions and the exact commands.

Inputs (in the directory of --manifest): runs.jsonl (one line per run, written by the script), and per run
<server>-<scenario>[-r<rep>].json (storyline-bench's report, or wrk-post.lua's summary) and .procs.json
(measure.py).

When the script repeats the scenarios (PEERS_REPEAT), each table column is the server's **median run** (by p99
latency for publish scenarios, requests/s for ingress, memory per stream for idle), shown whole so its figures
belong together, with a row listing the key figure of every run so the spread is visible.

With --benchmarks FILE, the report (headings one level down) also replaces the part of FILE between
BEGIN_MARK and END_MARK, and the median runs' latency plots are copied to --plots-dir and linked from it.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone

BEGIN_MARK = "<!-- bench-peers:begin (written by scripts/bench-peers.sh; edits here are overwritten) -->"
END_MARK = "<!-- bench-peers:end -->"

SCENARIO_TITLES = {
    "1x100": "1 story × 100 streams",
    "1x2000": "1 story × 2,000 streams",
    "10x200": "10 stories × 200 streams",
    "1x10000": "1 story × 10,000 streams",
    "1000x5": "1,000 stories × 5 streams, 1,000 events/s in total",
    "idle19000": "idle: 19,000 streams held, nothing published",
    "ingress": "ingress: POST throughput, no subscribers (wrk)",
}


def sh(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def dpkg_version(pkg):
    return sh("dpkg-query", "-W", "-f=${Version}", pkg) or "not installed"


def load(directory, name):
    if not name:
        return None
    path = os.path.join(directory, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(obj, *path):
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def num(value, digits=1, thousands=False):
    if value is None:
        return "–"
    if thousands:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def kib(value):
    return "–" if value is None else f"{value / 1024:.1f} KiB"


def mib(value):
    return "–" if value is None else f"{value / 1048576:.1f} MiB"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


class Row:
    """A table row: a label, how to read a value from a run, and whether it gets a ratio."""

    def __init__(self, label, value, show, ratio_note=None):
        self.label, self.value, self.show, self.ratio_note = label, value, show, ratio_note


def percent(v):
    return "–" if v is None else num(v, 0) + "%"


def cpu_rows(generator_label, server_ratio):
    """Where the machine's CPU went during a run: the server, its helper process, the load tool, the rest."""
    return [
        Row("server CPU (all its processes)", lambda b, p: get(p, "cpu", "server_percent"), percent,
            "lower is better" if server_ratio else None),
        Row("aux CPU (redis / GRIP origin)", lambda b, p: get(p, "cpu", "aux_percent") if get(p, "aux_pids") else None,
            percent),
        Row(generator_label, lambda b, p: get(p, "cpu", "generator_percent"), percent),
        Row("other CPU (interference)", lambda b, p: get(p, "cpu", "other_percent"), percent),
    ]


def publish_rows():
    lat = lambda k: (lambda b, p: get(b, "latency_ms", k))  # noqa: E731
    return [
        Row("streams open / failed", lambda b, p: (get(b, "streams", "open"), get(b, "streams", "failed")),
            lambda v: f"{v[0]} / {v[1]}" if v[0] is not None else "–"),
        Row("published ok / failed", lambda b, p: (get(b, "publish", "ok"), get(b, "publish", "failed")),
            lambda v: f"{v[0]} / {v[1]}" if v[0] is not None else "–"),
        Row("expected / delivered", lambda b, p: (get(b, "deliveries", "expected"), get(b, "deliveries", "delivered")),
            lambda v: f"{v[0]} / {v[1]}" if v[0] is not None else "–"),
        Row("lost / dup", lambda b, p: (get(b, "deliveries", "lost"), get(b, "deliveries", "duplicated")),
            lambda v: f"{v[0]} / {v[1]}" if v[0] is not None else "–"),
        Row("**deliveries/s**", lambda b, p: get(b, "deliveries", "per_sec"), lambda v: num(v, thousands=True),
            "higher is better"),
        Row("latency p50 ms", lat("p50"), num, "lower is better"),
        Row("latency p90 ms", lat("p90"), num),
        Row("**latency p99 ms**", lat("p99"), num, "lower is better"),
        Row("latency p99.9 ms", lat("p999"), num),
        Row("latency max ms", lat("max"), num),
        Row("publish p50 / p99 ms",
            lambda b, p: (get(b, "publish", "latency_ms", "p50"), get(b, "publish", "latency_ms", "p99")),
            lambda v: f"{num(v[0])} / {num(v[1])}"),
        Row("publisher lag p99 ms", lambda b, p: get(b, "publish", "lag_ms", "p99"), num),
        Row("publish window s (events/s offered)",
            lambda b, p: (get(b, "publish", "window_secs"), get(b, "publish", "achieved_rate")),
            lambda v: f"{num(v[0])} ({num(v[1], 0)})"),
        *cpu_rows("generator CPU", server_ratio=True),
        Row("server memory per stream (PSS)", lambda b, p: get(p, "pss_per_stream_bytes"), kib, "lower is better"),
        Row("server memory after connect / end of publishing (PSS)",
            lambda b, p: (get(p, "memory_after_connect", "pss_bytes"), get(p, "memory_end_of_publish", "pss_bytes")),
            lambda v: f"{mib(v[0])} / {mib(v[1])}"),
    ]


def idle_rows():
    return [
        Row("streams open / failed", lambda b, p: (get(b, "streams", "open"), get(b, "streams", "failed")),
            lambda v: f"{v[0]} / {v[1]}" if v[0] is not None else "–"),
        Row("open at end", lambda b, p: get(b, "streams", "open_at_end"), lambda v: "–" if v is None else str(v)),
        Row("connect s", lambda b, p: get(b, "streams", "connect_secs"), lambda v: num(v, 2)),
        Row("server memory before (PSS)", lambda b, p: get(p, "memory_before", "pss_bytes"), mib),
        Row("server memory after connect (PSS)", lambda b, p: get(p, "memory_after_connect", "pss_bytes"), mib),
        Row("**server memory per stream (PSS)**", lambda b, p: get(p, "pss_per_stream_bytes"), kib,
            "lower is better"),
        Row("server memory per stream (RSS sum)", lambda b, p: get(p, "rss_per_stream_bytes"), kib),
        Row("server CPU while idle", lambda b, p: get(p, "cpu", "server_percent"), lambda v: num(v, 1) + "%"
            if v is not None else "–"),
        Row("other CPU (interference)", lambda b, p: get(p, "cpu", "other_percent"), percent),
    ]


def ingress_rows():
    lat = lambda k: (lambda b, p: get(b, "latency_ms", k))  # noqa: E731

    def errors(b, p):
        e = get(b, "errors")
        return None if e is None else (e["status"], e["connect"] + e["read"] + e["write"] + e["timeout"])

    return [
        Row("**requests/s**", lambda b, p: get(b, "requests_per_sec"), lambda v: num(v, thousands=True),
            "higher is better"),
        Row("requests", lambda b, p: get(b, "requests"), lambda v: num(v, thousands=True)),
        Row("non-2xx / socket errors", errors, lambda v: "–" if v is None else f"{v[0]} / {v[1]}"),
        Row("latency p50 ms", lat("p50"), lambda v: num(v, 2), "lower is better"),
        Row("latency p90 ms", lat("p90"), lambda v: num(v, 2)),
        Row("**latency p99 ms**", lat("p99"), lambda v: num(v, 2), "lower is better"),
        Row("latency p99.9 ms", lat("p99_9"), lambda v: num(v, 2)),
        *cpu_rows("generator CPU (wrk)", server_ratio=False),
    ]


def kind_of(scenario):
    return "ingress" if scenario == "ingress" else ("idle" if scenario.startswith("idle") else "publish")


def key_figure(kind, bench, procs):
    """The figure a run is ranked by to find the median run, and how it is shown."""
    if kind == "publish":
        return get(bench, "latency_ms", "p99"), lambda v: num(v)
    if kind == "ingress":
        return get(bench, "requests_per_sec"), lambda v: num(v, thousands=True)
    return get(procs, "pss_per_stream_bytes"), kib


KEY_LABEL = {"publish": "p99 ms of each run", "ingress": "requests/s of each run", "idle": "memory per stream, each run"}


def median_run(kind, reps):
    """reps: [(run, bench, procs)] in run order -> the median of those with a key figure (else the first run)."""
    measured = sorted((r for r in reps if key_figure(kind, r[1], r[2])[0] is not None),
                      key=lambda r: key_figure(kind, r[1], r[2])[0])
    return measured[(len(measured) - 1) // 2] if measured else reps[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--start", required=True)
    parser.add_argument("--servers", required=True)
    parser.add_argument("--workers", required=True)
    parser.add_argument("--scale", default="1")
    parser.add_argument("--storyline-bin", default="")
    parser.add_argument("--note", default="")
    parser.add_argument("--script-args", default="")
    parser.add_argument("--repo", default="", help="the storyline checkout (default: the one holding --manifest)")
    parser.add_argument("--benchmarks", default="", help="Markdown file whose marked section gets the report")
    parser.add_argument("--plots-dir", default="", help="where the median runs' plots are copied (with --benchmarks)")
    args = parser.parse_args()
    directory = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    servers = args.servers.split()
    storylines = [s for s in servers if s.startswith("storyline")]

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    nproc = os.cpu_count()
    repo = args.repo or sh("git", "-C", directory, "rev-parse", "--show-toplevel") or os.path.dirname(directory)
    commit = sh("git", "-C", repo, "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--", "crates")
    bin_time = ""
    bin_commit = ""
    if args.storyline_bin and os.path.exists(args.storyline_bin):
        mtime = os.path.getmtime(args.storyline_bin)
        bin_time = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        for line in sh("git", "-C", repo, "log", "-50", "--format=%h %ct").splitlines():
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                continue  # not a git checkout, or git complained
            h, t = fields
            if int(t) <= mtime:
                bin_commit = h
                break
    rustc_runs = [r for r in runs if r.get("kind") in ("bench", "wrk") and (r.get("rustc_before", "0") != "0" or r.get("rustc_after", "0") != "0")]

    out = []
    w = out.append
    w("# storyline next to nchan and Pushpin")
    w("")
    if args.note:
        w(f"> **{args.note}**")
        w("")
    w(f"- **Date:** {args.start} to {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} (UTC), all from this one run.")
    w(f"- **Machine:** {nproc} logical CPUs (`nproc`), {cpu_model}, Linux {sh('uname', '-r')}, loopback only. "
      "The server under test, the load generator (and redis-server / the GRIP origin) **share these cores**.")
    binary = os.path.relpath(args.storyline_bin, repo) if args.storyline_bin else "?"
    same = bin_commit == commit
    w(f"- **storyline:** binary `{binary}` built {bin_time}, when the newest commit was `{bin_commit or '?'}`"
      + ("" if same else f" (HEAD is now `{commit}`{', with uncommitted changes under crates/' if dirty else ''}:"
         " the binary may not contain the latest commits)")
      + f"; `STORYLINE_WORKERS={args.workers}`.")
    w(f"- **nchan:** nginx {dpkg_version('nginx')} + libnginx-mod-nchan {dpkg_version('libnginx-mod-nchan')} "
      f"(Debian), memory store, `worker_processes {args.workers}`.")
    w(f"- **Pushpin:** {dpkg_version('pushpin')} with condure {dpkg_version('condure')} and zurl "
      f"{dpkg_version('zurl')} (Debian), no message rate limit.")
    w(f"- **Redis:** {dpkg_version('redis-server')}; **wrk:** {dpkg_version('wrk')}.")
    if args.scale != "1":
        w(f"- **Scale:** stream counts (1,000×5: stories) divided by {args.scale}; see the streams row of each table.")
    if rustc_runs:
        w(f"- **Noise:** `rustc` was running (another engineer's build) at the start or end of {len(rustc_runs)} of "
          "the runs; see \"other CPU\" and treat latencies of those runs as noisy.")
    else:
        w("- **Noise:** no `rustc` process was seen at the start or end of any run; \"other CPU\" shows what else ran.")
    w(f"- **Command:** `{args.script_args}`")
    w("")
    w("**deliveries/s** is storyline-bench's figure: deliveries (including those that arrive during the 3 s drain) "
      "÷ the publish window (first scheduled POST until the last POST is answered). When a server slows its "
      "POSTs down (publisher lag, a longer window, fewer events/s offered) or delivers late, compare it together "
      "with the window, the lag and the latency rows, not alone.")
    w("")
    w("How to read: each column is a fresh server; the load tool is `storyline-bench` (same binary, same payload "
      "marks) for every server, wrk for ingress. Ratio columns are storyline ÷ nchan: for deliveries/s and "
      "requests/s above 1 is better for storyline, for latency, CPU and memory below 1 is. Server CPU and memory "
      "are summed over all of a server's processes (nginx master + workers; Pushpin's condure, zurl, proxy and "
      "handler), memory as PSS so nchan's shared memory counts once. CPU is % of one core over the publish window.")
    w("")

    groups = {}  # (server, scenario) -> runs in order (several when the script repeats)
    for r in runs:
        groups.setdefault((r["server"], r["scenario"]), []).append(r)
    repeats = max((len(g) for g in groups.values()), default=1)
    if repeats > 1:
        w(f"Each scenario ran **{repeats} times** (idle once), the servers interleaved within each round so that "
          "noise from the shared machine falls on all of them alike. Each column shows the server's **median run** "
          "(by p99 for publish scenarios, requests/s for ingress), whole; the first row lists that figure for "
          "every run, in run order, to show the spread.")
        w("")
    plots = []  # (scenario, server, source svg path)
    scenarios = []
    for r in runs:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    for scenario in scenarios:
        title = SCENARIO_TITLES.get(scenario, scenario)
        kind = kind_of(scenario)
        rows = {"publish": publish_rows, "idle": idle_rows, "ingress": ingress_rows}[kind]()
        data, chosen, every = {}, {}, {}
        for s in servers:
            reps = [(r, load(directory, r.get("json")), load(directory, r.get("procs")))
                    for r in groups.get((s, scenario), []) if r.get("kind") in ("bench", "wrk")]
            if not reps:
                continue
            run, b, p = median_run(kind, reps)
            data[s], chosen[s] = (b, p), run
            every[s] = [key_figure(kind, rb, rp) for _, rb, rp in reps]
            if run.get("plot"):
                plots.append((scenario, s, os.path.join(directory, run["plot"])))
        sample = next((b for b, _ in data.values() if b and "params" in b), None)
        extra = ""
        if sample:
            p = sample["params"]
            extra = (f" — {p['streams']} streams over {p['stories']} stories"
                     + (f", {p['rate']:g} events/s, {p['payload_bytes']} B, {p['duration_secs']:g} s"
                        if p["scenario"] == "publish" else f", held {p['duration_secs']:g} s")
                     + (f", {p['procs']} generator processes" if p["procs"] > 1 else ""))
        w(f"## {title}{extra}")
        w("")
        header = ["", *servers] + [f"{s.replace('storyline-', 'sl-')} / nchan" for s in storylines if "nchan" in data]
        w("| " + " | ".join(header) + " |")
        w("|" + "---|" * len(header))
        if max((len(v) for v in every.values()), default=1) > 1:
            cells = [KEY_LABEL[kind]]
            for s in servers:
                figures = every.get(s)
                cells.append(" / ".join(show(v) for v, show in figures) if figures else "–")
            cells += [""] * (len(header) - len(cells))
            w("| " + " | ".join(cells) + " |")
        for row in rows:
            cells = [row.label]
            values = {}
            for s in servers:
                if s in data:
                    b, p = data[s]
                    try:
                        values[s] = row.value(b, p)
                        cells.append(row.show(values[s]) if b is not None or p is not None else "no report")
                    except (TypeError, KeyError):
                        cells.append("–")
                else:
                    cells.append("skipped" if groups.get((s, scenario)) else "not run")
            if "nchan" in data:
                for s in storylines:
                    if row.ratio_note and s in data and not isinstance(values.get(s), tuple):
                        cells.append(ratio(values.get(s), values.get("nchan")))
                    else:
                        cells.append("")
            w("| " + " | ".join(cells) + " |")
        w("")
        for s in servers:
            for r in groups.get((s, scenario), []):
                name = r.get("json", s).removesuffix(".json") if repeats > 1 else s
                if r.get("kind") == "skipped":
                    w(f"- {name}: skipped — {r.get('reason')}")
                    continue
                if r.get("status") not in ("0", None):
                    w(f"- {name}: the load command exited with status {r.get('status')}")
                b, p = load(directory, r.get("json")), load(directory, r.get("procs"))
                for note in (b or {}).get("notes", []):
                    w(f"- {name}: {note}")
                failures = get(b, "streams", "failures") or {}
                drops = get(b, "streams", "drop_reasons") or {}
                lost, dup = get(b, "deliveries", "lost"), get(b, "deliveries", "duplicated")
                if failures:
                    w(f"- {name}: stream failures: {failures}")
                if drops:
                    w(f"- {name}: streams that ended early: {drops}")
                if (lost or dup) and r is not chosen.get(s):
                    w(f"- {name}: lost {lost}, duplicated {dup}")
                noisy = []
                if r.get("kind") in ("bench", "wrk") and (r.get("rustc_before") != "0" or r.get("rustc_after") != "0"):
                    noisy.append("rustc (another build) was running at its start or end")
                other = get(p, "cpu", "other_percent")
                if other is not None and other > 20:
                    noisy.append(f"other processes used {other:.0f}% of a core during the window")
                if noisy:
                    w(f"- {name}: **noisy**: " + "; ".join(noisy))
        w("@@PLOTS:" + scenario + "@@")
        w("")

    w("## Exact commands")
    w("")
    w("Every server was started fresh for each run (configs generated from `bench/peers/*.template` into a temp "
      "dir; `<random>` is the run's JWT secret, the token reaches storyline-bench as `BENCH_TOKEN`), then measured "
      "with `python3 bench/peers/measure.py --out <run>.procs.json --server <pid> [--aux <pid>] -- <command>`."
      + (" Later rounds repeat the first round's commands with fresh ports, labels and file names." if repeats > 1 else ""))
    w("")
    for r in runs:
        if r.get("kind") not in ("bench", "wrk") or r.get("rep", "1") != "1":
            continue
        w(f"**{r['server']} / {r['scenario']}**")
        w("")
        w("```sh")
        w(r.get("start", ""))
        w(r.get("command", ""))
        w("```")
        w("")

    def with_plots(lines, link_dir, base):
        """Replaces each scenario's plot marker with links to its median runs' plots (relative to base)."""
        result = []
        for line in lines:
            if line.startswith("@@PLOTS:"):
                scenario = line[len("@@PLOTS:"):-2]
                links = []
                for sc, server, src in plots:
                    if sc != scenario or not os.path.exists(src):
                        continue
                    target = src if link_dir is None else os.path.join(link_dir, f"{server}-{sc}.svg")
                    links.append(f"[{server}]({os.path.relpath(target, base)})")
                if links:
                    if result and result[-1] != "":
                        result.append("")
                    result.append("Latency distribution of the median runs: " + " · ".join(links))
                continue
            result.append(line)
        return result

    with open(args.out, "w") as f:
        f.write("\n".join(with_plots(out, None, os.path.dirname(os.path.abspath(args.out)))).rstrip() + "\n")

    if args.benchmarks:
        bench_path = os.path.abspath(args.benchmarks)
        plots_dir = os.path.abspath(args.plots_dir or os.path.dirname(bench_path))
        os.makedirs(plots_dir, exist_ok=True)
        for old in os.listdir(plots_dir):
            if old.endswith(".svg"):
                os.remove(os.path.join(plots_dir, old))
        for scenario, server, src in plots:
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(plots_dir, f"{server}-{scenario}.svg"))
        section = [("#" + line) if line.startswith("#") else line
                   for line in with_plots(out, plots_dir, os.path.dirname(bench_path))]
        with open(bench_path) as f:
            text = f.read()
        if BEGIN_MARK not in text or END_MARK not in text:
            raise SystemExit(f"{args.benchmarks} has no {BEGIN_MARK!r} ... {END_MARK!r} section to replace")
        head, rest = text.split(BEGIN_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        with open(bench_path, "w") as f:
            f.write(head + BEGIN_MARK + "\n" + "\n".join(section).rstrip() + "\n" + END_MARK + tail)


if __name__ == "__main__":
    main()
