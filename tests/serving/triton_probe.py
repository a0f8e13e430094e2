"""Run in the serving environment (tritonclient, numpy < 2) by tests/serving: sends the requests a test asks for and
prints one JSON line per request ({"output": [...]} or {"error": ...}). Arguments: URL PROTOCOL CASES_JSON
[--concurrent], where each
case is {"model", "inputs": [{"name", "datatype", "shape", "data" (list) or "file" (bytes of a file)}], "output"}."""

import json
import sys

import numpy as np


def tensor(module, spec):
    if "file" in spec:
        with open(spec["file"], "rb") as handle:
            values = np.array([[handle.read()]], dtype=object)
    elif spec["datatype"] == "BYTES":
        values = np.array([[v.encode() if isinstance(v, str) else v for v in row] for row in spec["data"]],
                          dtype=object)
    else:
        values = np.array(spec["data"], dtype={"FP32": np.float32, "INT64": np.int64}[spec["datatype"]])
    value = module.InferInput(spec["name"], list(values.shape), spec["datatype"])
    value.set_data_from_numpy(values)
    return value


def main():
    url, protocol = sys.argv[1], sys.argv[2]
    with open(sys.argv[3]) as handle:
        cases = json.load(handle)
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    if "--concurrent" in sys.argv:  # every case in flight at once (HTTP): the server may batch them
        client = module.InferenceServerClient(url, concurrency=len(cases))
        pending = [client.async_infer(case["model"], [tensor(module, s) for s in case["inputs"]]) for case in cases]
        for case, request in zip(cases, pending, strict=True):
            print(json.dumps({"output": request.get_result().as_numpy(case["output"]).tolist()}), flush=True)
        return
    client = module.InferenceServerClient(url)
    for case in cases:
        try:
            result = client.infer(case["model"], [tensor(module, s) for s in case["inputs"]])
            print(json.dumps({"output": result.as_numpy(case["output"]).tolist()}), flush=True)
        except Exception as exc:  # noqa: BLE001 - the server's refusal is the result
            print(json.dumps({"error": str(exc)}), flush=True)


if __name__ == "__main__":
    main()
