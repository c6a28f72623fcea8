"""Builds fused_rnn._C against the installed torch.

CUDA sources are compiled whenever nvcc and a CUDA build of torch are present, with or without
a GPU on the machine. FUSED_RNN_CPU_ONLY=1 forces a CPU-only build. Without a GPU to detect,
the architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0": A100, H100/H200).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def find_cuda_home():
    """The toolkit root that holds nvcc and libcudart. torch guesses it from nvcc's folder, which
    can be a wrapper script's (/usr/local/bin), and linking then fails on -lcudart."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if not root or not os.path.exists(os.path.join(root, "bin", "nvcc")):
            continue
        if glob.glob(os.path.join(root, "lib64", "libcudart.so*")) or glob.glob(
                os.path.join(root, "targets", "*", "lib", "libcudart.so*")):
            return root
    return None


def want_cuda():
    if os.environ.get("FUSED_RNN_CPU_ONLY", "0") not in ("", "0"):
        return False, "FUSED_RNN_CPU_ONLY is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if find_cuda_home() is None:
        return False, "no CUDA toolkit (nvcc) found"
    return True, ""


def nvidia_wheel_includes():
    """cublas_v2.h / cusparse.h that the CUDA torch wheel's headers include live here."""
    found = []
    for site in sys.path:
        found += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        found += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({p for p in found if os.path.isdir(p)})


def find_cublas(cuda_home):
    """libcublas to link: the toolkit's, else the one the CUDA torch wheel brings (the toolkit on
    these machines ships no cuBLAS). Linked by path; at run time its soname resolves to the copy
    torch has already loaded."""
    dirs = [os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")]
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "lib"))
        dirs += glob.glob(os.path.join(site, "nvidia", "cublas", "lib"))
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, "libcublas.so*")), key=len)
        if found:
            return found[0]
    raise RuntimeError("fused_rnn: no libcublas found next to the CUDA toolkit or in the torch "
                       "wheel's nvidia packages; set FUSED_RNN_CPU_ONLY=1 for a CPU-only build")


# The CPU kernels are built for the widest at::vec capability the building machine has, as
# -march=native would: AVX-512 (lanes of 16 floats), else AVX2 (8), else generic x86-64 code.
# Each tier's features, as /proc/cpuinfo names them (every AVX2 CPU has F16C); _build_info
# records the build's, and fused_rnn/_ops.py refuses to load the build on a CPU without them.
# FUSED_RNN_NO_AVX512=1 stops at AVX2, FUSED_RNN_NO_AVX2=1 builds generic code.
AVX2_FEATURES = ("avx2", "fma", "f16c")
CPU_TIERS = (
    ("AVX512", "FUSED_RNN_NO_AVX512",
     AVX2_FEATURES + ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    ("AVX2", "FUSED_RNN_NO_AVX2", AVX2_FEATURES),
)


def cpu_switches():
    """The CPU_TIERS switches set in the environment."""
    return tuple(switch for _, switch, _ in CPU_TIERS
                 if os.environ.get(switch, "0") not in ("", "0"))


def cpu_simd_flags():
    """(compiler flags, capability name, features) of the widest tier (CPU_TIERS) that the
    building machine has and the environment does not turn off (cpu_switches)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    # A tier is off with its own switch or a narrower tier's (no AVX2: no AVX-512 either).
    off = cpu_switches()
    for i, (capability, _, features) in enumerate(CPU_TIERS):
        if not any(switch in off for _, switch, _ in CPU_TIERS[i:]) and all(
                feature in flags for feature in features):
            compile_flags = [f"-m{feature}" for feature in features]
            return compile_flags + [f"-DCPU_CAPABILITY={capability}",
                                    f"-DCPU_CAPABILITY_{capability}"], capability, features
    return [], "DEFAULT", ()


def extension():
    use_cuda, why_not = want_cuda()
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/reference.cpp", "csrc/sequence.cpp",
               "csrc/stack.cpp", "csrc/cpu/rnn_cpu.cpp", "csrc/cpu/buffer_pool.cpp"]
    simd_flags, capability, features = cpu_simd_flags()
    # at::parallel_for is header code: without -fopenmp its "omp parallel" compiles to nothing and
    # every range runs on one thread. The soname libgomp.so.1 resolves to the runtime torch loaded.
    # Functions on 64-byte lines: a hot loop's alignment then depends on its own function only.
    # Unaligned, an unrelated edit that moved the packed kernel by 48 bytes made an LSTM forward
    # (T 50, B 8, I = H = 1024) 3.5% slower, 8 alternating runs (1.03x faster aligned).
    cxx_flags = ["-O3", "-fopenmp", "-falign-functions=64"] + simd_flags
    link_flags = ["-fopenmp"]
    extra = {"cxx": cxx_flags}
    archs = ""
    if use_cuda:
        cuda_home = find_cuda_home()
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        extra["cxx"] = cxx_flags + ["-DFUSED_RNN_WITH_CUDA"]
        extra["nvcc"].append("-DFUSED_RNN_WITH_CUDA")
        ext = cpp_extension.CUDAExtension(
            "fused_rnn._C", sources, extra_compile_args=extra,
            include_dirs=nvidia_wheel_includes(),
            extra_link_args=link_flags + [find_cublas(cuda_home)],
        )
        print(f"fused_rnn: building CPU + CUDA kernels (archs {archs}, CUDA_HOME {cuda_home})")
    else:
        ext = cpp_extension.CppExtension("fused_rnn._C", sources, extra_compile_args=extra,
                                         extra_link_args=link_flags)
        print(f"fused_rnn: building CPU kernels only ({why_not})")
    write_build_info(use_cuda, archs, capability, features)
    return ext


def write_build_info(use_cuda, archs, capability, features):
    """What the build holds, for fused_rnn.backend_info()."""
    with open(os.path.join(ROOT, "fused_rnn", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"CPU_CAPABILITY = {capability!r}\n")
        f.write(f"CPU_FEATURES = {tuple(features)!r}\n")
        f.write(f"CPU_SWITCHES = {cpu_switches()!r}\n")
        f.write(f"CPU_TIERS = {CPU_TIERS!r}\n")
        f.write(f"CUDA = {use_cuda!r}\n")
        f.write(f"CUDA_ARCHS = {archs!r}\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n")


setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused RNN/LSTM/GRU kernels for PyTorch: CPU and CUDA, drop-in torch.nn modules",
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.9",
)
