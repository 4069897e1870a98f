import pytest
import torch

from llmcourse.hardware import device


def test_device_defaults_to_an_available_backend(monkeypatch):
    monkeypatch.delenv("LLMCOURSE_DEVICE", raising=False)
    dev = device()
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert dev.type == expected


def test_device_cpu_can_always_be_forced(monkeypatch):
    assert device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LLMCOURSE_DEVICE", "cpu")
    assert device() == torch.device("cpu")


def test_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="must be one of"):
        device("tpu")
    with pytest.raises(ValueError, match="must be one of"):
        device(3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_requested_without_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        device("cuda")


def test_device_is_reachable_as_llmcourse_device():
    import llmcourse

    assert callable(llmcourse.device)
    assert llmcourse.device("cpu") == torch.device("cpu")
