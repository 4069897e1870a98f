import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LinearRegression

from autograder.guard import ForbiddenCall, call_guarded, static_violations

X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]])
Y = np.array([1.0, 2.0, 4.0])


def own_fit(X, y):
    A = np.column_stack([X, np.ones(len(X))])
    return np.linalg.lstsq(A, y, rcond=None)[0]


def alias_fit(X, y):
    return LinearRegression().fit(X, y).coef_


def import_fit(X, y):
    from sklearn.linear_model import LinearRegression as LR

    return LR().fit(X, y).coef_


def _helper(X, y):
    return LinearRegression().fit(X, y).coef_


def helper_fit(X, y):
    return _helper(X, y)


def test_guard_lets_an_honest_solution_run():
    np.testing.assert_allclose(call_guarded(own_fit, X, Y, task="fit", modules=["sklearn"]), own_fit(X, Y))


@pytest.mark.parametrize("fn", [alias_fit, import_fit, helper_fit])
def test_guard_static_look_finds_sklearn(fn):
    assert static_violations(fn, modules=["sklearn"])
    with pytest.raises(ForbiddenCall, match="sklearn"):
        call_guarded(fn, X, Y, task="fit", modules=["sklearn"])


def test_guard_run_time_watch_catches_code_without_source():
    namespace = {}
    exec("def hidden(X, y):\n    m = __import__('sk' + 'learn.linear_model', fromlist=['x'])\n"
         "    return getattr(m, 'Linear' + 'Regression')().fit(X, y).coef_\n", namespace)
    assert static_violations(namespace["hidden"], modules=["sklearn"]) == []
    with pytest.raises(ForbiddenCall, match="called sklearn"):
        call_guarded(namespace["hidden"], X, Y, task="fit", modules=["sklearn"])


def test_guard_catches_forbidden_builtin_callables():
    x = torch.randn(1, 1, 4, 4)
    k = torch.randn(1, 1, 3, 3)

    def conv(x, k):
        return getattr(F, "conv" + "2d")(x, k)

    with pytest.raises(ForbiddenCall, match="conv2d"):
        call_guarded(conv, x, k, task="conv", callables=[F.conv2d])


def test_guard_catches_a_forbidden_call_whose_error_is_swallowed():
    def swallow(X, y):
        try:
            LinearRegression().fit(X, y)
        except Exception:  # noqa: BLE001
            pass
        return own_fit(X, y)

    namespace = {"LinearRegression": LinearRegression, "own_fit": own_fit}
    exec("def swallow(X, y):\n    try:\n        LinearRegression().fit(X, y)\n    except Exception:\n"
         "        pass\n    return own_fit(X, y)\n", namespace)
    with pytest.raises(ForbiddenCall):
        call_guarded(namespace["swallow"], X, Y, task="fit", modules=["sklearn"])


def test_guard_passes_through_the_student_exception():
    def broken(X, y):
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError):
        call_guarded(broken, X, Y, task="fit", modules=["sklearn"])


def test_guard_run_time_watch_catches_c_functions_of_a_forbidden_module():
    """torch.tanh is C code: no Python frame, so the watch reads the module the built-in belongs to."""
    namespace = {"torch": torch}
    exec("def hidden(x):\n    return float(torch.tanh(torch.tensor(x)))\n", namespace)  # no source to read
    with pytest.raises(ForbiddenCall, match=r"called torch \(torch\.\S+\) at string, line 2"):
        call_guarded(namespace["hidden"], 0.5, task="t", modules=("torch",))
    assert call_guarded(namespace["hidden"], 0.5, task="t", modules=("sklearn",)) == pytest.approx(np.tanh(0.5))


def test_forbidden_call_through_course_code_the_notebook_provides_is_not_the_students():
    """The setup cell imports llmcourse.datasets; it uses scikit-learn, the student does not."""
    from tests.notebook_kernel import kernel

    ns = kernel("from llmcourse.datasets import load_digits\n",
                "def count():\n    return len(load_digits().y_train)\n")
    assert call_guarded(ns["count"], task="t", modules=["sklearn"]) == 1438


def test_forbidden_call_is_attributed_to_the_students_line():
    from tests.notebook_kernel import kernel

    ns = kernel("import numpy as np\nfrom sklearn.model_selection import train_test_split as tts\n",
                "def split(X):\n    n = len(X)\n    a, b = tts(X, test_size=0.5)\n    return a\n")
    with pytest.raises(ForbiddenCall, match=r"called sklearn at test-kernel-\d+-1, line 3: `a, b = tts\(X, "
                                            r"test_size=0.5\)` - this task asks you to write it yourself "
                                            r"without sklearn"):
        call_guarded(ns["split"], np.arange(6), task="t", modules=["sklearn"], static=False)
