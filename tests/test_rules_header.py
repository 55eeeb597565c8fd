"""The per-element rules header must stay usable from CUDA device code (the CUDA kernels will
include the same header as the CPU kernels). Compiled with nvcc when a toolkit is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

INCLUDE = Path(__file__).resolve().parents[1] / "cpp" / "include"

KERNEL = r"""
#include "fastmomentum/rules.hpp"
using namespace fastmomentum;
template <class T, Form F, bool N, Decay D, bool S>
__global__ void step(T* p, T* b, const T* g, Coeffs<T> k, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) rules::update<T, F, N, D, S>(p[i], b[i], g[i], k);
}
template <class T, Form F, bool N, Decay D, bool S>
void launch(T* p, T* b, const T* g, Coeffs<T> k, int n) {
    step<T, F, N, D, S><<<1, 32>>>(p, b, g, k, n);
}
template void launch<float, Form::torch, true, Decay::coupled, true>(
    float*, float*, const float*, Coeffs<float>, int);
template void launch<double, Form::keras, false, Decay::keras, false>(
    double*, double*, const double*, Coeffs<double>, int);
template void launch<float, Form::torch_first, false, Decay::keep, true>(
    float*, float*, const float*, Coeffs<float>, int);
Coeffs<float> host_side(const Hyper& h) { return rules::coeffs<float>(h); }
bool scales(const Coeffs<float>& k) { return rules::scales_grad(k); }
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc) on PATH")
@pytest.mark.skipif(not INCLUDE.is_dir(), reason="not run from a source checkout")
def test_rules_header_compiles_as_cuda_device_code(tmp_path):
    source = tmp_path / "rules_device.cu"
    source.write_text(KERNEL)
    proc = subprocess.run(
        ["nvcc", "-std=c++17", "-DFM_ISA=gpu", f"-I{INCLUDE}", "-arch=sm_75", "--fmad=false",
         "-c", str(source), "-o", str(tmp_path / "rules_device.o")],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
