"""A stand-in for a CPU without native bf16 (Colab's CPU runtime, an AMD EPYC Zen 3), on one that
has it: once torch is imported, its native-bf16 probes answer False, so "auto" picks fp32.

    export PYTHONPATH=$PWD/benchmarks/no_bf16 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
    python -m pytest          # or any benchmark script

The two variables hold oneDNN's and ATen's kernels to AVX2, as on such a CPU (clock and memory stay
the host's, so times are a stand-in, not that CPU's). Python imports this module at start-up from
PYTHONPATH (an absolute path, so the suite's subprocesses import it too); torch is not imported
here, so a process that never imports torch stays free of it.
"""

import importlib.abc
import importlib.machinery
import sys

PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_amx_fp16_supported")


class _PatchTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for mod in (module.cpu, module._C._cpu):
                for probe in PROBES:
                    if hasattr(mod, probe):
                        setattr(mod, probe, lambda: False)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchTorch())
