"""`fbcompress bench`: latency, throughput and memory of any model form, on the machine it runs on.

* `runners`: one runner per backend (PyTorch eager / compiled / CUDA graphs, ONNX Runtime CPU/CUDA/TensorRT EP,
  TensorRT engines) that turns a batch of design.md inputs into a zero-argument call for the timer.
* `matrix`: every model x batch size x text length (VSL: real length, optionally also padded), timed with
  `fbcompress.latency.time_callable`, with memory readings and the machine beside the numbers.
* `report`: the table (Markdown), the JSON document and the PNG plots.
* `cli`: the Click command, registered at the end of `fbcompress/cli.py`.

Kept apart from the scoring backends in `fbcompress.scoring`/`fbcompress.export` because timing needs what
scoring hides: inputs already on the device, pre-bound I/O buffers, explicit synchronisation.
"""

from fbcompress.benchmark.matrix import BENCH_SCHEMA, BenchSettings, run_bench
from fbcompress.benchmark.runners import BACKENDS, Target, open_runner

__all__ = ["BACKENDS", "BENCH_SCHEMA", "BenchSettings", "Target", "open_runner", "run_bench"]
