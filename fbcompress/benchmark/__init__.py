"""`fbcompress bench`: latency, throughput and memory of any model form, on the machine it runs on.

* `runners`: one runner per backend (PyTorch eager / fp16 / bf16 / compiled / CUDA graphs, ONNX Runtime CPU/CUDA/
  TensorRT EP, TensorRT engines) that turns a batch of design.md inputs into a zero-argument call for the timer.
  Each wraps the backend's `Scorer` (fbcompress.runtime.scoring / fbcompress.export), so `check` evaluates and times one
  loaded model.
* `matrix`: every model x batch size x text length (VSL: real length, optionally also padded), timed with
  `fbcompress.evaluation.latency.time_callable`, with memory readings and the machine beside the numbers.
* `report`: the table (Markdown), the JSON document and the PNG plots.
* the Click command lives with the others, in `fbcompress/commands/bench.py`.

Nothing heavy is imported here (torch, onnxruntime, matplotlib load inside the command), so `fbcompress --help`
stays instant.
"""

BACKENDS = ("auto", "pytorch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
