import pytest


@pytest.fixture(params=["qgemm", "torch"])
def kernel(request, monkeypatch):
    """The layer built for our AVX512-BF16 kernel, or (as on CPUs without it) for torch's."""
    from localllm.kernels import cpu_qgemm

    if request.param == "qgemm" and not cpu_qgemm.available():
        pytest.skip("no AVX512-BF16 kernels on this CPU")
    if request.param == "torch":
        monkeypatch.setattr(cpu_qgemm, "available", lambda: False)
    return request.param
