"""Running the CLI in the test process, the bundled model loaded once."""


class CliRun:
    """What a CLI call returned, shaped like subprocess.CompletedProcess."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


_SHARED_MODELS: dict = {}


def _shared_bundled(original):
    """load_model that loads the bundled model once per (device, dtype) in this test process: the CLI
    tests run the real parser and commands in-process and share the weights instead of paying a Python
    start and a model load per call."""
    def load_model(spec=None, device=None, dtype=None, device_map=None):
        if spec not in (None, "bundled") or device_map is not None:
            return original(spec, device=device, dtype=dtype, device_map=device_map)
        key = (device, dtype)
        if key not in _SHARED_MODELS:
            _SHARED_MODELS[key] = original(spec, device=device, dtype=dtype)
        return _SHARED_MODELS[key]
    return load_model


def run_cli(*args, check=True) -> CliRun:
    """`synapse ARGS` in this process: synapse_core.cli.main.main with stdout and stderr captured.

    The bundled model is shared between calls (see _shared_bundled); every other spec loads as the
    command asks. A child process is still used where the process itself is under test (start-up
    time, `python -m synapse_core`, exit codes of a real process): see test_cli.py."""
    import contextlib
    import io

    from synapse_core.cli.main import main
    from synapse_core.model import loading

    out, err = io.StringIO(), io.StringIO()
    original = loading.load_model
    loading.load_model = _shared_bundled(original)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        loading.load_model = original
    run = CliRun(code, out.getvalue(), err.getvalue())
    if check:
        assert run.returncode == 0, run.stderr
    return run
