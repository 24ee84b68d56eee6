#!/usr/bin/env python3
"""Runs one load command and measures the server side of it from /proc, for servers of several processes.

storyline-bench's own `--server-pid` reads one process. nginx (a master and N workers) and Pushpin (condure,
zurl, pushpin-proxy, pushpin-handler under a runner) are several, so scripts/bench-peers.sh measures every
server the same way, here:

- server: the process trees rooted at each --server PID (storyline; nginx's master; Pushpin's runner);
- aux: the trees rooted at each --aux PID, reported apart (redis-server for storyline-redis, the GRIP origin
  for Pushpin);
- generator: the load command and its children (storyline-bench workers, wrk);
- other: the machine's busy time minus the three above.

Memory is PSS (proportional set size, /proc/PID/smaps_rollup) summed over the server processes, so memory
nginx's workers share (nchan's shared-memory store) is counted once; RSS sums are kept too.

Windows follow storyline-bench's progress lines on stderr: memory "before" is read before the command starts,
"after connect" at "[label] N open, M failed", CPU over the publish window ("publishing ..." to "draining
...") or, for idle runs, over the hold ("holding the streams for D s"; D seconds). For commands without such
lines (wrk) pass --whole: CPU is then measured over the whole command.

Usage: measure.py --out FILE.json [--server PID]... [--aux PID]... [--whole] -- COMMAND ARGS...
The command's stdout and stderr pass through; the exit status is the command's.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
OPEN_LINE = re.compile(r"^\[[^\]]*\] (\d+) open, (\d+) failed")
PUBLISH_LINE = re.compile(r"^\[[^\]]*\] publishing ")
HOLD_LINE = re.compile(r"^\[[^\]]*\] holding the streams for ([0-9.]+) s")
DRAIN_LINE = re.compile(r"^\[[^\]]*\] draining ")


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(roots):
    kids = children_map()
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen or not os.path.exists(f"/proc/{pid}"):
            continue
        seen.add(pid)
        todo.extend(kids.get(pid, []))
    return sorted(seen)


def ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def machine_busy():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def memory(pids):
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return {"pss_bytes": pss, "rss_bytes": rss, "processes": len(pids)}


class Measure:
    def __init__(self, servers, auxes, generator_pid):
        self.servers, self.auxes, self.generator_pid = servers, auxes, generator_pid
        self.lock = threading.Lock()
        self.result = {"server_pids": tree(servers), "aux_pids": tree(auxes)}
        self.window_start = None
        self.generator_cpu_secs = None  # from rusage, for --whole

    def cpu_snapshot(self):
        generator = tree([self.generator_pid]) if self.generator_pid else []
        return {
            "t": time.monotonic(),
            "server": ticks(tree(self.servers)),
            "aux": ticks(tree(self.auxes)),
            "generator": ticks(generator),
            "machine": machine_busy(),
        }

    def start_window(self, how):
        with self.lock:
            if self.window_start is None:
                self.window_start = self.cpu_snapshot()
                self.result["cpu_window"] = how

    def end_window(self):
        with self.lock:
            if self.window_start is None or "cpu" in self.result:
                return
            end = self.cpu_snapshot()
            start = self.window_start
            secs = end["t"] - start["t"]
            if secs <= 0:
                return
            pct = {k: 100.0 * (end[k] - start[k]) / CLK_TCK / secs for k in ("server", "aux", "generator", "machine")}
            if self.generator_cpu_secs is not None:
                pct["generator"] = 100.0 * self.generator_cpu_secs / secs
            pct["other"] = max(0.0, pct["machine"] - pct["server"] - pct["aux"] - pct["generator"])
            self.result["cpu"] = {"window_secs": secs, **{f"{k}_percent": v for k, v in pct.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--server", type=int, action="append", default=[])
    parser.add_argument("--aux", type=int, action="append", default=[])
    parser.add_argument("--whole", action="store_true", help="CPU over the whole command (wrk)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")

    measure = Measure(args.server, args.aux, None)
    measure.result["memory_before"] = memory(tree(args.server))
    measure.result["command"] = command
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1)
    measure.generator_pid = proc.pid
    if args.whole:
        measure.start_window("whole command")
    for line in proc.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        if m := OPEN_LINE.match(line):
            measure.result["memory_after_connect"] = memory(tree(args.server))
            measure.result["streams_open"] = int(m.group(1))
        elif PUBLISH_LINE.match(line):
            measure.start_window("publish")
        elif m := HOLD_LINE.match(line):
            measure.start_window("hold")
            # Stop a little before the hold ends, so closing the streams is not counted as idle time.
            timer = threading.Timer(max(0.0, float(m.group(1)) - 0.2), measure.end_window)
            timer.daemon = True
            timer.start()
        elif DRAIN_LINE.match(line):
            measure.end_window()
            measure.result["memory_end_of_publish"] = memory(tree(args.server))
    if args.whole:
        # The command is gone by the end of the window: take its CPU from its rusage (children included).
        _, wait_status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        measure.generator_cpu_secs = usage.ru_utime + usage.ru_stime
    status = proc.wait()
    measure.end_window()
    measure.result["memory_end"] = memory(tree(args.server))
    measure.result["status"] = status
    before, after = measure.result["memory_before"], measure.result.get("memory_after_connect")
    opened = measure.result.get("streams_open", 0)
    if after and opened:
        measure.result["pss_per_stream_bytes"] = (after["pss_bytes"] - before["pss_bytes"]) / opened
        measure.result["rss_per_stream_bytes"] = (after["rss_bytes"] - before["rss_bytes"]) / opened
    with open(args.out, "w") as f:
        json.dump(measure.result, f, indent=2)
        f.write("\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
