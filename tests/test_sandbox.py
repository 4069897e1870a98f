"""The sandbox and what crosses its boundary: limits, isolation, plain data, the static look."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from autograder import wire
from autograder.compare import CheckFailed
from autograder.guard import ForbiddenCall, call_student
from autograder.limits import Limits, isolation
from autograder.remote import Sandbox, SandboxGone, Session, StudentError
from autograder.static import Submission, tamper_findings
from tests.conftest import REPO

# ----------------------------------------------------------------------------- wire


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, "text", [1, 2.0, "x"], (1, (2, 3)), {"a": [1, {"b": None}]},
    np.arange(6, dtype=np.int32).reshape(2, 3), np.float32(1.5), np.array([], dtype=bool),
    torch.randn(2, 3, dtype=torch.float64), torch.tensor([1, 2], dtype=torch.int64),
    "a\ud83d\ude00b", "lone \udc80 low", ["\ud800", {"k": "\udfff\ud800"}], "\U0001F600 \u6c49",
])
def test_wire_round_trips_plain_data(value):
    back = wire.decode(json.loads(json.dumps(wire.encode(value))))
    if isinstance(value, torch.Tensor):
        assert isinstance(back, torch.Tensor) and back.dtype == value.dtype and torch.equal(back, value)
    elif isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and np.array_equal(back, value)
    else:
        assert back == value and type(back) is type(value)


def test_wire_keeps_nan_and_infinity():
    back = wire.decode(json.loads(json.dumps(wire.encode([float("nan"), float("inf"), -float("inf")]))))
    assert np.isnan(back[0]) and back[1] == float("inf") and back[2] == -float("inf")


def test_wire_hands_back_a_handle_for_objects_and_refuses_them_without_one():
    class Thing:
        pass

    with pytest.raises(wire.Unencodable, match="Thing"):
        wire.encode(Thing())
    assert wire.encode(Thing(), handle=lambda obj: 7) == {"__h__": 7, "type": "Thing"}


@pytest.mark.parametrize("message", [
    {"__nd__": "object", "shape": [1], "data": ""},
    {"__nd__": "float64", "shape": [2], "data": "AAAA"},
    {"__nd__": "float64", "shape": [-1], "data": ""},
    {"__float__": "__import__('os')"},
    {"__pickle__": "gASV"},
    {"__h__": 3},
    {"__name__": "os.system"},
    {},
])
def test_wire_rejects_malformed_or_hostile_messages(message):
    with pytest.raises(wire.WireError):
        wire.decode(message)


def test_wire_parse_rejects_non_json():
    with pytest.raises(wire.WireError, match="JSON"):
        wire.parse(b"\x80\x04pickle")


# ----------------------------------------------------------------------------- static look

def test_static_look_resolves_import_aliases_through_the_notebook():
    sub = Submission(["import torch.nn.functional as F\n\ndef helper(x, w):\n    return F.conv2d(x, w)\n\n"
                      "def my_conv(x, w):\n    return helper(x, w)\n",
                      "from sklearn.linear_model import Perceptron as P\nmodel = P()\n"
                      "def fit():\n    return model\n"],
                     ["import numpy as np"])
    assert sub.violations("my_conv", (), ("torch.nn.functional.conv2d",)) == ["helper uses F.conv2d"]
    assert sub.violations("fit", ("sklearn",), ()) == ["model uses P"]
    assert sub.violations("my_conv", ("sklearn",), ()) == []


@pytest.mark.parametrize("code, finding", [
    ("exec('import sklearn')", "uses exec"),
    ("m = __import__('sklearn')", "uses __import__"),
    ("import importlib\nimportlib.import_module('sklearn')", "imports importlib"),
    ("import sys\nsys.setprofile(None)", "uses .setprofile"),
    ("import sys\nsys.modules['autograder'] = None", "uses .modules"),
    ("import threading\nthreading.Thread(target=print).start()", "imports threading"),
    ("from autograder.checks import ch01_perceptron", "imports from autograder.checks"),
    ("f = (lambda: 0).__globals__", "uses .__globals__"),
    ("import os\nos.kill(1, 9)", "uses .kill"),
    ("x = ().__class__.__base__.__subclasses__()", "uses .__subclasses__"),
    ("g = getattr(print, '__globals__')", "uses the string '__globals__'"),
])
def test_tamper_findings_flag_tools_that_can_switch_off_the_guard(code, finding):
    assert finding in tamper_findings(Submission([code]))


def test_tamper_findings_leave_ordinary_code_alone():
    code = ("import numpy as np\nimport torch\nfrom torch import nn\n\nclass Net(nn.Module):\n"
            "    def forward(self, x):\n        return sum(p.sum() for p in self.modules() if p is not self)\n"
            "def f(x):\n    return np.maximum(x, 0)\n")
    assert tamper_findings(Submission([code])) == []


# ----------------------------------------------------------------------------- the sandbox itself



@pytest.fixture
def session():
    sandbox = Sandbox(Limits(cell_seconds=5, notebook_seconds=60, memory_mb=2048),
                      hide=[str(REPO / "solutions")])
    sandbox.start()
    yield Session(sandbox, Submission(["def double(x):\n    return x * 2\n"]))
    sandbox.close()


def run(session, code):
    return session.sandbox.request({"op": "exec", "code": code})


@pytest.mark.sandbox
def test_sandbox_returns_plain_data_and_handles(session):
    run(session, "import numpy as np\ndef double(x):\n    return x * 2\n"
                 "class Box:\n    pass\ndef box():\n    return Box()\n")
    assert np.array_equal(session.name("double")(np.arange(3)), [0, 2, 4])
    handle = session.name("box")()
    assert "Box" in repr(handle)
    with pytest.raises(StudentError, match="NameError"):
        session.name("missing")(1)


@pytest.mark.sandbox
def test_sandbox_guard_turns_student_errors_into_check_failures(session):
    run(session, "def broken(x):\n    raise NotImplementedError()\n"
                 "def uses_sklearn(x):\n    import sklearn.linear_model\n    return x\n")
    with pytest.raises(CheckFailed, match="NotImplementedError - replace"):
        call_student(session.name("broken"), 1, task="t")
    sub = Submission(["def uses_sklearn(x):\n    import sklearn.linear_model\n    return x\n"])
    session.submission = sub
    with pytest.raises(ForbiddenCall, match="uses_sklearn imports sklearn.linear_model"):
        call_student(session.name("uses_sklearn"), 1, task="t", modules=("sklearn",))


@pytest.mark.sandbox
def test_sandbox_run_time_guard_catches_what_the_source_hides(session):
    run(session, "import numpy as np\nname = 'sklearn.linear_model'\n"
                 "def sneaky(x):\n    import sys\n    return sys.modules[name].Perceptron().get_params()\n"
                 "import sklearn.linear_model\n")
    with pytest.raises(ForbiddenCall, match="called sklearn"):
        call_student(session.name("sneaky"), 1, task="t", modules=("sklearn",))


@pytest.mark.sandbox
def test_sandbox_cuts_printed_output(session):
    reply = run(session, "print('x' * 1_000_000)")
    assert reply["ok"] and len(reply["output"]) < 25_000 and "characters of output cut" in reply["output"]


@pytest.mark.sandbox
def test_sandbox_memory_limit_raises_memory_error(session):
    reply = run(session, "hog = bytearray(8 * 2**30)")
    assert not reply["ok"] and reply["error"]["type"] == "MemoryError"


@pytest.mark.sandbox
def test_sandbox_time_limit_kills_it_with_a_reason(session):
    with pytest.raises(SandboxGone, match="time limit"):
        run(session, "while True:\n    pass")
    assert session.sandbox.proc.poll() is not None


@pytest.mark.sandbox
def test_sandbox_that_exits_is_reported_not_fatal(session):
    assert run(session, "import sys\nsys.exit(3)")["error"]["type"] == "SystemExit"
    with pytest.raises(SandboxGone, match="exit code 4"):
        run(session, "import os\nos._exit(4)")


@pytest.mark.sandbox
def test_sandbox_reply_cap_ends_an_oversized_answer():
    sandbox = Sandbox(Limits(cell_seconds=20, notebook_seconds=60, reply_bytes=2**20))
    sandbox.start()
    try:
        session = Session(sandbox, Submission([]))
        run(session, "import numpy as np\ndef big():\n    return np.zeros(10**6)\n")
        with pytest.raises(SandboxGone, match="output limit"):
            session.name("big")()
    finally:
        sandbox.close()


@pytest.mark.sandbox
def test_sandbox_is_isolated_where_the_kernel_allows_it(session):
    iso = isolation()
    if not iso.namespaces:
        pytest.skip(f"no namespaces on this machine ({iso.reason}); the CLI warns about it")
    reply = run(session, "import os, socket\n"
                         "print(os.listdir(%r))\n"
                         "print(os.getppid())\n"
                         "print(os.getcwd())\n"
                         "print([p for p in os.listdir('/proc') if p.isdigit()])\n"
                         "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\n"
                         "except OSError as e:\n    print('network:', type(e).__name__)\n"
                         % str(REPO / "solutions"))
    lines = reply["output"].splitlines()
    assert reply["ok"], reply
    assert lines[0] == "[]", "the solutions folder must look empty from the sandbox"
    assert lines[1] == "0", "the sandbox must not see its parent process"
    assert lines[2] == "/tmp/work"
    assert lines[3] == "['1']", "the sandbox must see no other process in /proc"
    assert lines[4].startswith("network:")
    if iso.drop_user:
        uid = run(session, "import os\nprint(os.getuid())")["output"].strip()
        assert int(uid) != 0 and int(uid) != os.getuid()


def test_limits_refuse_nonsense_values():
    with pytest.raises(ValueError, match="cell_seconds"):
        Limits(cell_seconds=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)


def test_isolation_says_clearly_what_it_cannot_enforce():
    from autograder.limits import Isolation

    nothing = Isolation(namespaces=False, user_namespace=False, drop_user=False, reason="no unshare")
    lines = nothing.warnings(Limits())
    assert any("network" in line and "no unshare" in line for line in lines)
    assert any("own user" in line for line in lines)
    assert Isolation(True, False, True).warnings(Limits()) == []


@pytest.mark.sandbox
def test_sandbox_still_sees_the_course_when_it_lives_under_tmp(tmp_path):
    """A checkout in /tmp (as on some CI machines) stays visible although /tmp is replaced."""
    if not isolation().namespaces:
        pytest.skip(f"no namespaces on this machine ({isolation().reason})")
    course = tmp_path / "checkout"
    (course / "secret").mkdir(parents=True)
    (course / "module.txt").write_text("visible")
    (course / "secret" / "answers.txt").write_text("hidden")
    (tmp_path / "elsewhere.txt").write_text("other")
    sandbox = Sandbox(Limits(cell_seconds=10, notebook_seconds=30), hide=[str(course / "secret")],
                      keep=[str(course)])
    sandbox.start()
    try:
        reply = sandbox.request({"op": "exec", "code": (
            "import os\n"
            f"print(open({str(course / 'module.txt')!r}).read())\n"
            f"print(os.listdir({str(course / 'secret')!r}))\n"
            f"print(os.path.exists({str(tmp_path / 'elsewhere.txt')!r}))\n")})
    finally:
        sandbox.close()
    assert reply["ok"], reply
    assert reply["output"].split() == ["visible", "[]", "False"]


@pytest.mark.sandbox
def test_sandbox_cannot_read_the_held_out_digits(session):
    """Every way of reading scikit-learn's digits in the sandbox misses the held-out rows."""
    from autograder.heldout import DIGITS_HELD_OUT, digits_file, digits_split

    if not isolation().namespaces:
        pytest.skip(f"no namespaces on this machine ({isolation().reason}); the CLI warns about it")
    reply = run(session, "import gzip\nfrom sklearn.datasets import load_digits\n"
                         "from llmcourse.datasets import load_digits as course_digits\n"
                         "print(load_digits().data.shape[0])\n"
                         f"print(len(gzip.open({digits_file()!r}).read().splitlines()))\n"
                         "s = course_digits()\nprint(len(s.y_train) + len(s.y_test))\n")
    assert reply["ok"], reply
    assert reply["output"].split() == [str(1797 - DIGITS_HELD_OUT)] * 3
    X_vis, _, X_held, _ = digits_split()
    assert len(X_vis) == 1797 - DIGITS_HELD_OUT and len(X_held) == DIGITS_HELD_OUT
    vis = {x.tobytes() for x in X_vis}
    assert sum(x.tobytes() not in vis for x in X_held) > 0.9 * DIGITS_HELD_OUT, "held-out rows must be new"
    from sklearn.datasets import load_digits

    assert load_digits().data.shape[0] == 1797, "the trusted process still reads the whole file"


def test_held_out_rows_follow_the_course_secret(monkeypatch):
    from autograder.heldout import digits_split

    monkeypatch.delenv("AUTOGRADER_SECRET", raising=False)
    published = digits_split()[3]
    monkeypatch.setenv("AUTOGRADER_SECRET", "course-2027")
    secret = digits_split()[3]
    monkeypatch.setenv("AUTOGRADER_SECRET", "another")
    other = digits_split()[3]
    assert len(published) == len(secret) == len(other)
    assert not np.array_equal(published, secret) and not np.array_equal(secret, other)


@pytest.mark.sandbox
def test_sandbox_never_receives_the_course_secret(monkeypatch):
    monkeypatch.setenv("AUTOGRADER_SECRET", "do-not-leak")
    sandbox = Sandbox(Limits(cell_seconds=10, notebook_seconds=30))
    sandbox.start()
    try:
        reply = sandbox.request({"op": "exec", "code": "import os\nprint(sorted(os.environ))\n"
                                                       "print('do-not-leak' in str(os.environ))"})
    finally:
        sandbox.close()
    assert reply["ok"], reply
    assert "AUTOGRADER_SECRET" not in reply["output"] and reply["output"].split()[-1] == "False"
