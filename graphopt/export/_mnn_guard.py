"""Runs MNN's ONNX converter inside a guard. Executed as a script in a subprocess by
graphopt.export.mnn, never imported by graphopt itself.

    python -I _mnn_guard.py EVENTS_FILE ONNX MNN [--fp16]

Why: MNN 3.6.1's Python wrapper (`mnnconvert`, `import MNN.tools`) runs
`os.system("pip install -U aliyun-log-python-sdk")` when that package is missing and
sends each conversion's details to a remote log service. This script calls the C++
converter (`_tools.mnnconvert`) directly, without importing MNN.tools, and installs an
audit hook that refuses -- and records in EVENTS_FILE -- any attempt to start a process
or open a network connection, and an import blocker for MNN.tools and aliyun. The parent
also gives it a PATH without pip, an empty HOME, and (as root, where possible) a network
namespace of its own.
"""

import sys

_BLOCKED_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "urllib.Request")
_BLOCKED_MODULES = ("MNN.tools", "aliyun")


def main() -> int:
    events_file, onnx_path, mnn_path = sys.argv[1:4]
    fp16 = "--fp16" in sys.argv[4:]
    events = open(events_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def hook(event, args):
        if event in _BLOCKED_EVENTS:
            events.write(f"{event} {str(args)[:200]}\n")
            raise PermissionError(f"graphopt's MNN guard refused {event}")

    class Blocker:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in _BLOCKED_MODULES):
                events.write(f"import {name}\n")
                raise ImportError(f"graphopt's MNN guard refused to import {name}")
            return None

    sys.meta_path.insert(0, Blocker)
    sys.addaudithook(hook)
    if "--import-mnn-tools" in sys.argv[4:]:  # used by the tests: what the guard does to MNN.tools
        try:
            import MNN.tools  # noqa: F401
        except BaseException as e:  # noqa: BLE001
            events.write(f"refused: {type(e).__name__}: {e}\n")
        return 0
    import _tools

    args = ["mnnconvert", "-f", "ONNX", "--modelFile", onnx_path, "--MNNModel", mnn_path, "--bizCode", "graphopt"]
    if fp16:
        args.append("--fp16")
    ok = _tools.mnnconvert(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
