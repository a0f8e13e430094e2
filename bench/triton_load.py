"""Load on a real Triton server: a bundle's ensemble served by the nvidia-pytriton wheel's tritonserver (loopback),
driven by N concurrent clients for a bounded time, with dynamic batching on and off.

    python bench/triton_load.py --bundle BUNDLE --data DATA --out bench/results/DIR --label smoke \
        --clients 1,4,16 --seconds 20

BUNDLE has `triton/` with the ensemble (`fbcompress export --target triton --triton-kind cpu --triton-scorer
python`: the wheel has only the Python backend); DATA is its dataset (the test split's texts and images, or for a
search bundle its search queries, are what the clients send). Each client (a thread of bench/triton_load_client.py
in the serving environment, `make serve-env`) sends one request at a time: batch 1, raw text and image bytes in,
the score out. Each --batching mode serves a copy of the repository: "off" without `dynamic_batching` blocks, a
number with every batcher's max queue delay set to that many microseconds (export writes 100).

Per (batching, clients): requests/s, latency p50/p90/p99 (client side, ms), errors, the scorer's mean executed batch
(Triton's statistics: inferences / executions), and the server's memory (RSS of tritonserver and its Python stubs)
after each level; `--soak-rounds K` then keeps the most clients on one server for K rounds, memory after each. The
clients share the machine's cores with the server: on a 2-core VM they take part of the CPU the server would have,
as a co-located caller would. Results: `triton-load-<label>.json` and `.md` under --out, with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CLIENT = Path(__file__).with_name("triton_load_client.py")


def cases_of(bundle: Path, data: Path, limit: int) -> list[dict]:
    """What the clients send: (text, image path) pairs of the test split, or search queries for a query ensemble."""
    from fbcompress.data.dataset_dir import DatasetDir

    dataset = DatasetDir.open(data)
    inputs = json.loads((bundle / "manifest.json").read_text())["triton"]["ensemble"]["inputs"]
    if "query" in inputs:
        from fbcompress.data.search_sets import search_queries

        return [{"query": q.text} for q in search_queries(dataset, "test")[:limit]]
    return [{"text": r["text"], "image": str(dataset.root / r["image"])} for r in dataset.records("test")[:limit]]


def configured(bundle: Path, out: Path, mode: str) -> Path:
    """A copy of the bundle whose Triton configs have no dynamic_batching block (mode "off": each request runs
    alone) or wait up to `mode` microseconds to fill a batch (the exported configs wait
    `export.triton_max_queue_delay_us`)."""
    shutil.copytree(bundle, out)
    for config in (out / "triton").glob("*/config.pbtxt"):
        text = config.read_text()
        if mode == "off":
            text = re.sub(r"dynamic_batching \{[^}]*\}\n", "", text)
        else:
            text = re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {int(mode)}", text)
        config.write_text(text)
    return out


def server_rss_mib(session: int) -> float:
    """RSS of every process in the server's session (the launcher, tritonserver, the Python backend stubs)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == session:  # field 6 of stat: the session id
                total += int((proc / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def model_stats(http: str, model: str) -> dict:
    """Triton's statistics of `model`: inference and execution counts, and (count, ns) per timed phase."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def server_times(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per model, over one level: mean ms a request spends in it (`request`: queue + compute, Triton's `success`),
    of which waiting in its queue (`queue`), and the mean ms of one execution (`infer`, a whole batch)."""
    out = {}
    for model in after:
        phases = {}
        for name, key in (("request", "success"), ("queue", "queue"), ("infer", "compute_infer")):
            old, new = before[model]["inference_stats"][key], after[model]["inference_stats"][key]
            count = int(new["count"]) - int(old["count"])
            phases[name] = (int(new["ns"]) - int(old["ns"])) / count / 1e6 if count else float("nan")
        out[model] = phases
    return out


def drive(serving, server, models: list[str], scorer: str, cases_path: Path, clients: int, seconds: float,
          grpc: bool) -> dict:
    """One level: `clients` clients on the ensemble `models[0]` for `seconds`; client latencies, Triton's counts and
    per-model times (`models`: the ensemble and its steps)."""
    before = {m: model_stats(server.http, m) for m in models}
    command = [str(serving.python), str(CLIENT), server.grpc if grpc else server.http, models[0], str(cases_path),
               str(clients), str(seconds), *(["--grpc"] if grpc else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    if done.returncode:
        raise RuntimeError(f"load client failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    after = {m: model_stats(server.http, m) for m in models}
    latencies = np.asarray(result.pop("latencies_ms"))
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if len(latencies) else (float("nan"),) * 3
    executions = int(after[scorer]["execution_count"]) - int(before[scorer]["execution_count"])
    inferences = int(after[scorer]["inference_count"]) - int(before[scorer]["inference_count"])
    return {"clients": clients, **result, "requests_per_s": result["requests"] / result["seconds"],
            "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(latencies.mean()) if len(latencies) else float("nan"),
            "scorer_mean_batch": inferences / executions if executions else float("nan"),
            "server_ms": server_times(before, after), "server_rss_mib": server_rss_mib(server.process.pid)}


def markdown(record: dict) -> str:
    from fbcompress.evaluation.latency import machine_line

    lines = [f"# Triton load: {record['label']} bundle ({record['ensemble']})", "",
             f"Machine: {machine_line(record['machine'])}. Server: nvidia-pytriton {record['pytriton']} tritonserver, "
             f"scorer `{record['scorer_platform']}`, {record['protocol'].upper()} on loopback; clients: threads of "
             f"one process, batch 1, {record['seconds']:.0f} s per level, {record['cases']} distinct requests. "
             "Server RSS after start-up and warm-up: " + ", ".join(
                 f"{v:.0f} MiB (batching {k})" for k, v in record["rss_start_mib"].items()) + ".", "",
             "| batching (queue delay µs) | clients | requests/s | p50 ms | p90 ms | p99 ms | errors | "
             "scorer mean batch | server RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in record["levels"]:
        lines.append(f"| {row['batching']} | {row['clients']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p90_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | {row['scorer_mean_batch']:.2f} | "
                     f"{row['server_rss_mib']:.0f} |")
    timed = [row for row in record["levels"] if row.get("server_ms")]
    if timed:
        models = list(timed[0]["server_ms"])
        lines += ["", "Inside the server (Triton's statistics, mean ms per request: time in the model, queue wait in "
                  "brackets; the ensemble's is the whole server path, the rest of the client's mean is HTTP and the "
                  "client):", "", "| batching | clients | client mean ms | " + " | ".join(f"`{m}`" for m in models)
                  + " |", "|---" * (3 + len(models)) + "|"]
        lines += [f"| {row['batching']} | {row['clients']} | {row['mean_ms']:.2f} | " + " | ".join(
            f"{row['server_ms'][m]['request']:.2f} ({row['server_ms'][m]['queue']:.2f})" for m in models) + " |"
            for row in timed]
    soak = record.get("soak")
    if soak:
        lines += ["", f"Sustained load (batching {soak['batching']}, {soak['clients']} clients, "
                  f"{len(soak['rounds'])} rounds of {record['seconds']:.0f} s; server RSS {soak['rss_before_mib']:.0f} "
                  "MiB before the first):", "", "| round | requests | errors | requests/s | p99 ms | server RSS MiB |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['server_rss_mib']:.0f} |" for r in soak["rounds"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", required=True, help="names the result files: triton-load-<label>.*")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--batching", default="off,100,2000",
                        help="per server: off, or the batchers' max queue delay in microseconds")
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--soak-rounds", type=int, default=0,
                        help="then this many rounds at the most clients on one server: memory under sustained load")
    parser.add_argument("--soak-batching", default="100")
    parser.add_argument("--grpc", action="store_true")
    args = parser.parse_args()

    from fbcompress.core.errors import FbError
    from fbcompress.evaluation.latency import machine_info
    from fbcompress.serving.triton_server import TritonDist, serve

    manifest_path = args.bundle / "manifest.json"
    triton = json.loads(manifest_path.read_text()).get("triton", {}) if manifest_path.is_file() else {}
    if "ensemble" not in triton:
        parser.error(f"{args.bundle} has no Triton ensemble: fbcompress export --target triton --triton-scorer python")
    modes = args.batching.split(",")
    if any(mode != "off" and not mode.isdigit() for mode in modes) or not args.soak_batching.isdigit():
        parser.error("--batching: off or microseconds, comma-separated; --soak-batching: microseconds")
    try:
        serving = TritonDist.find()
    except FbError as exc:
        parser.error(str(exc))
    model, scorer = triton["ensemble"]["model_name"], triton["model_name"]
    models = [model, *triton["ensemble"]["steps"]]
    try:
        cases = cases_of(args.bundle, args.data, args.cases)
    except FbError as exc:
        parser.error(str(exc))
    levels = [int(n) for n in args.clients.split(",")]
    pytriton = subprocess.run([str(serving.python), "-c", "import importlib.metadata as m; "
                               "print(m.version('nvidia-pytriton'))"], capture_output=True, text=True).stdout.strip()
    record = {"label": args.label, "bundle": str(args.bundle), "ensemble": model,
              "scorer_platform": triton["platform"], "protocol": "grpc" if args.grpc else "http",
              "seconds": args.seconds, "cases": len(cases), "pytriton": pytriton, "machine": machine_info(),
              "rss_start_mib": {}, "levels": []}
    with tempfile.TemporaryDirectory(prefix="triton-load-") as tmp:
        cases_path = Path(tmp) / "cases.json"
        cases_path.write_text(json.dumps(cases))
        for batching in modes:
            bundle = configured(args.bundle, Path(tmp) / f"batching-{batching}", batching)
            with serve(bundle / "triton", serving, timeout=300) as server:
                drive(serving, server, models, scorer, cases_path, 2, args.warmup_seconds, args.grpc)  # warm-up
                record["rss_start_mib"][batching] = server_rss_mib(server.process.pid)
                for clients in levels:
                    row = drive(serving, server, models, scorer, cases_path, clients, args.seconds, args.grpc)
                    record["levels"].append({"batching": batching, **row})
                    print(json.dumps({k: v for k, v in record["levels"][-1].items() if k != "first_error"}),
                          flush=True)
                    time.sleep(1)
        if args.soak_rounds:  # memory under sustained load: the exported batching, the most clients, round after round
            bundle = configured(args.bundle, Path(tmp) / "soak", args.soak_batching)
            with serve(bundle / "triton", serving, timeout=300) as server:
                record["soak"] = {"batching": args.soak_batching, "clients": max(levels),
                                  "rss_before_mib": server_rss_mib(server.process.pid), "rounds": []}
                for round_ in range(args.soak_rounds):
                    row = drive(serving, server, models, scorer, cases_path, max(levels), args.seconds, args.grpc)
                    record["soak"]["rounds"].append({"round": round_ + 1, **{k: row[k] for k in (
                        "requests", "errors", "requests_per_s", "p99_ms", "server_rss_mib")}})
                    print(json.dumps(record["soak"]["rounds"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"triton-load-{args.label}.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / f"triton-load-{args.label}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
