"""Runs the tests' Python scripts in one long-lived interpreter, so that torch, timm and
onnxruntime are imported once per test run instead of once per script (about 9 s of CPU for
`import timm` on a 2-core AMD EPYC). Each script runs exactly as `python SCRIPT ARGS...` would
run it, as `__main__`, with its own sys.argv; its stdout and stderr are captured.

Protocol (tests/common/mod.rs, `python_script`): one JSON line per request on stdin,
{"script": PATH, "args": [...]}, and one JSON line per answer on the original stdout,
{"ok": BOOL, "stdout": TEXT, "stderr": TEXT}. Anything native code prints goes to stderr.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback

# Answers go to a copy of the original stdout; fd 1 itself now points at stderr, so that
# native libraries printing to it cannot break the protocol.
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

for line in sys.stdin:
    request = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    ok = True
    sys.argv = [request["script"], *request["args"]]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(request["script"], run_name="__main__")
        except SystemExit as e:
            ok = e.code in (None, 0)
        except BaseException:
            traceback.print_exc()
            ok = False
    answers.write(json.dumps({"ok": ok, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
    answers.flush()
