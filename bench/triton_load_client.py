"""Load client for bench/triton_load.py, run in the serving environment (tritonclient, numpy < 2).

    python bench/triton_load_client.py URL MODEL CASES_JSON CLIENTS SECONDS [--grpc]

CASES_JSON: [{"text": ..., "image": path}] or [{"query": ...}]. CLIENTS threads, each with its own connection,
send one request at a time (batch 1, as shoppers and product pages do) for SECONDS, cycling through the cases from
different offsets. Prints one JSON object: requests, errors (and the first error), seconds, per-request latencies
(ms) in completion order.
"""

import json
import sys
import threading
import time

import numpy as np


def bytes_input(module, name, value):
    tensor = module.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value]], dtype=object))
    return tensor


def requests_of(module, cases):
    out = []
    for case in cases:
        if "query" in case:
            out.append([bytes_input(module, "query", case["query"].encode())])
        else:
            with open(case["image"], "rb") as handle:
                image = handle.read()
            out.append([bytes_input(module, "text", case["text"].encode()), bytes_input(module, "image", image)])
    return out


def main():
    url, model, cases_path, clients, seconds = sys.argv[1:6]
    clients, seconds = int(clients), float(seconds)
    if "--grpc" in sys.argv:
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    with open(cases_path) as handle:
        cases = json.load(handle)
    latencies, errors, lock = [], [], threading.Lock()
    deadline = [0.0]
    start_gate = threading.Barrier(clients + 1)

    def worker(offset):
        client = module.InferenceServerClient(url)
        requests = requests_of(module, cases)
        start_gate.wait()
        i = offset
        while time.perf_counter() < deadline[0]:
            begin = time.perf_counter()
            try:
                client.infer(model, requests[i % len(requests)])
                elapsed = (time.perf_counter() - begin) * 1000
                with lock:
                    latencies.append(elapsed)
            except Exception as exc:  # counted, not fatal: the benchmark reports errors
                with lock:
                    errors.append(str(exc)[:300])
            i += 1

    threads = [threading.Thread(target=worker, args=(k * len(cases) // clients,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    begin = time.perf_counter()
    deadline[0] = begin + seconds
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    print(json.dumps({"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
                      "seconds": elapsed, "latencies_ms": latencies}))


if __name__ == "__main__":
    main()
