"""Serve this bundle's Triton repository with the tritonserver of the nvidia-pytriton wheel (written by fbcompress).

    python3 -m venv serve && serve/bin/pip install -r serving-requirements.txt
    serve/bin/python serve_triton.py                       # triton/ on 0.0.0.0: HTTP 8000, gRPC 8001, metrics 8002
    serve/bin/python serve_triton.py --address 127.0.0.1 --http-port 18000 --grpc-port 18001 -- --log-verbose=1

Run it with the serving environment's Python: the server's Python backend runs the bundle's Python models in that
environment (its site-packages go on the models' path). The wheel keeps one Python-backend stub per Python version
apart from its backends; this puts the right one in place in a temporary copy, starts tritonserver with the wheel's
libraries, passes SIGTERM and Ctrl-C on to it, and removes the copy when the server stops. Arguments after `--` go
to tritonserver as they are. Standard library only.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wheel_paths():
    """(tritonserver binary, its libraries, backends directory, this Python's stub), or exit 2 naming what's missing."""
    try:
        import pytriton
    except ImportError:
        print("error: nvidia-pytriton is not installed in this Python: pip install -r serving-requirements.txt and "
              "run this script with that environment's python", file=sys.stderr)
        sys.exit(2)
    package = Path(pytriton.__file__).resolve().parent
    dist = package / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = (dist / "bin" / "tritonserver", package.parent / "nvidia_pytriton.libs", dist / "backends",
             dist / "python_backend_stubs" / version / "triton_python_backend_stub")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"error: the nvidia-pytriton wheel lacks {missing[0]} (Python {version})", file=sys.stderr)
        sys.exit(2)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default=str(HERE / "triton"), help="model repository (default: ./triton)")
    parser.add_argument("--address", default="0.0.0.0", help="address HTTP and gRPC listen on")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--check", action="store_true", help="check the wheel, print its paths and exit")
    parser.add_argument("extra", nargs="*", help="after --: more tritonserver arguments")
    args = parser.parse_args(argv)
    if args.check:
        print("\n".join(str(p) for p in wheel_paths()))
        return 0
    repository = Path(args.repository).resolve()
    if not repository.is_dir():
        print(f"error: model repository not found: {repository}", file=sys.stderr)
        return 2
    binary, libs, backends, stub = wheel_paths()
    with tempfile.TemporaryDirectory(prefix="triton-backends-") as tmp:
        local = Path(tmp) / "backends"
        shutil.copytree(backends, local)
        shutil.copy2(stub, local / "python" / "triton_python_backend_stub")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (sysconfig.get_paths()["purelib"], env.get("PYTHONPATH", ""))
                                            if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        command = [str(binary), "--model-repository", str(repository), "--backend-directory", str(local),
                   "--http-address", args.address, "--http-port", str(args.http_port),
                   "--grpc-address", args.address, "--grpc-port", str(args.grpc_port),
                   "--metrics-port", str(args.metrics_port), "--exit-on-error", "true", *args.extra]
        server = subprocess.Popen(command, env=env)

        def forward(signum, _frame):
            server.send_signal(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, forward)
        return server.wait()


if __name__ == "__main__":
    sys.exit(main())
