"""The CLI starts numpy's BLAS on one thread (the engine has the cores), unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.device

PROBE = (
    "import edge_asd.cli, numpy, threadpoolctl; "
    "print(max(p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'))"
)


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("2", "2")])
def test_blas_threads_of_the_cli(given: str | None, expected: str) -> None:
    pytest.importorskip("threadpoolctl")
    if (os.cpu_count() or 1) < 2 and given is not None:
        pytest.skip("one core: OpenBLAS caps its threads at the core count")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
