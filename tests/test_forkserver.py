"""tests/forkserver.py: a forked run behaves as the fresh interpreter it stands in for (its own process, working
directory, environment, argv, exit code, output), and what it must not fork goes to a real subprocess."""

from __future__ import annotations

import os
import sys

import forkserver

CODE = """import os, sys
print(os.getpid(), os.getcwd(), os.environ.get("RB_PROBE"), sys.argv[1:], sys.path[0] == "", __name__)
print("to stderr", file=sys.stderr)
if sys.argv[1] == "fail":
    raise ValueError("the cause")
sys.exit(int(sys.argv[1]))
"""


def test_a_forked_run_is_its_own_process_with_its_directory_environment_arguments_and_exit_code(tmp_path):
    env = {**os.environ, "RB_PROBE": "seen"}
    p = forkserver.run([sys.executable, "-c", CODE, "3"], tmp_path, env, timeout=120, stderr_apart=True)
    pid, cwd, probe, argv, path0, name = p.stdout.split(" ", 5)
    assert int(pid) != os.getpid() and cwd == str(tmp_path.resolve()) and probe == "seen"
    assert argv == "['3']" and path0 == "True" and name.strip() == "__main__"
    assert p.returncode == 3 and p.stderr == "to stderr\n"
    if os.environ.get("ROBUST_BUNDLES_TEST_FORK", "1") != "0":
        assert forkserver.server([sys.executable, "-c", CODE], env) is not None  # forked, not started fresh
    # an uncaught exception: the traceback on stderr (merged into stdout here), exit code 1
    p = forkserver.run([sys.executable, "-c", CODE, "fail"], tmp_path, env, timeout=120)
    assert p.returncode == 1 and "ValueError: the cause" in p.stdout and "to stderr" in p.stdout
    # another module, or a PYTHONPATH (read at start-up), gets a fresh interpreter
    assert forkserver.server([sys.executable, "-m", "torch.distributed.run"], env) is None
    assert forkserver.server([sys.executable, "-c", CODE], {**env, "PYTHONPATH": str(tmp_path)}) is None
    p = forkserver.run([sys.executable, "-c", CODE, "0"], tmp_path, {**env, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert p.returncode == 0 and "seen" in p.stdout
