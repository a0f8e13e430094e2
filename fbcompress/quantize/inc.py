"""`--method inc`: why Intel Neural Compressor cannot make the ONNX files this command ships, checked, not assumed.

What was found beside this stack (torch 2.13 CPU, onnx 1.23, onnxruntime 1.32, numpy 2.4):

* INC's ONNX Runtime backend is the separate `onnx-neural-compressor` 1.0; `pip install --dry-run` resolves it to
  numpy 1.26.4, i.e. it would downgrade numpy below what torch/transformers here run with. Not installable beside us.
* `neural-compressor` 3.x dropped the 2.x API (`fit`, `PostTrainingQuantConfig`); `neural-compressor-pt` 3.10
  (+ torchao 0.18) installs cleanly, but it quantizes *PyTorch* modules (PT2E), not an ONNX graph. Tried on the
  smoke student: `neural_compressor.torch.export.export` (torch.export with dynamic batch/text dims) had not
  returned after 500 s on this 2-core machine and was killed, so no tuned model, let alone an ONNX file with the
  Q/DQ placement and scales `model.int8.trt.onnx` / `model.int8.onnx` need, came out of it.

So `--method inc` refuses before doing any work and says the above; the accuracy-aware loop INC would provide is
the fall-back of `ort-static` (per-node error ranking, nodes returned to FP until the tolerance holds).
"""

from __future__ import annotations

from importlib import metadata

from fbcompress.core.errors import FbError

PACKAGES = ("onnx-neural-compressor", "neural-compressor-pt", "neural-compressor")


def installed() -> dict[str, str]:
    """The INC distributions present, with versions."""
    out = {}
    for dist in PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def refuse() -> None:
    """Raise the one-line reason `--method inc` cannot produce the files `fbcompress quantize` ships."""
    found = installed()
    have = ", ".join(f"{k} {v}" for k, v in found.items()) if found else "no INC package installed"
    raise FbError(
        f"--method inc cannot produce the ONNX files quantize ships ({have}): INC's ONNX backend "
        "onnx-neural-compressor 1.0 pins numpy<2 (pip would downgrade numpy 2.x to 1.26.4), and neural-compressor-pt "
        "3.10 quantizes PyTorch modules only (its PT2E torch.export of the student did not finish in 500 s here); "
        "use --method ort-static, whose accuracy fall-back is the accuracy-aware loop"
    )
