"""Export bundles: ONNX, TensorRT engines and a Triton model repository, with a hashed manifest and a README.

`fbcompress export` writes `exported/NAME/` (see design.md, "Checkpoint and bundle formats"). Every module here
imports its heavy dependencies (torch, onnx, onnxruntime, tensorrt) lazily, so importing the package, or running
`fbcompress --help`, costs nothing and works on machines without TensorRT or a GPU.
"""
